//! Published ports: a userland TCP/UDP proxy from a host address to the container's address,
//! run by the shim so it lives exactly as long as the container.

use crate::spec::{PortBinding, PortProtocol, PublishedPort};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a proxied TCP connection waits for the container to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP flow with no reply traffic for this long is forgotten.
pub const UDP_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Distinct UDP clients tracked per port; more are dropped rather than exhausting sockets.
pub const MAX_UDP_FLOWS: usize = 1024;
/// Largest UDP datagram.
const MAX_DATAGRAM_BYTES: usize = 65_536;

/// Errors binding published ports.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot publish {protocol} port {host_ip}:{host_port} (for container port {container_port}): {source}")]
    Bind { protocol: &'static str, host_ip: IpAddr, host_port: u16, container_port: u16, source: io::Error },
}

enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// One bound host port and where its traffic goes.
pub struct PortProxy {
    listener: Listener,
    target: SocketAddr,
    published: PublishedPort,
}

/// Binds every binding (host port 0 picks a free one) toward `container_ip`.
pub fn bind_all(bindings: &[PortBinding], container_ip: Ipv4Addr) -> Result<Vec<PortProxy>, ProxyError> {
    bindings
        .iter()
        .map(|binding| {
            let host_ip = binding.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let address = SocketAddr::new(host_ip, binding.host_port);
            let bind_error = |source| ProxyError::Bind {
                protocol: binding.protocol.as_str(),
                host_ip,
                host_port: binding.host_port,
                container_port: binding.container_port,
                source,
            };
            let (listener, local) = match binding.protocol {
                PortProtocol::Tcp => {
                    let listener = TcpListener::bind(address).map_err(bind_error)?;
                    let local = listener.local_addr().map_err(bind_error)?;
                    (Listener::Tcp(listener), local)
                }
                PortProtocol::Udp => {
                    let socket = UdpSocket::bind(address).map_err(bind_error)?;
                    let local = socket.local_addr().map_err(bind_error)?;
                    (Listener::Udp(socket), local)
                }
            };
            Ok(PortProxy {
                listener,
                target: SocketAddr::new(IpAddr::V4(container_ip), binding.container_port),
                published: PublishedPort {
                    container_port: binding.container_port,
                    protocol: binding.protocol,
                    host_ip,
                    host_port: local.port(),
                },
            })
        })
        .collect()
}

impl PortProxy {
    pub fn published(&self) -> PublishedPort {
        self.published.clone()
    }

    /// Serves the port on background threads until the process exits.
    pub fn spawn(self) {
        let target = self.target;
        match self.listener {
            Listener::Tcp(listener) => {
                std::thread::spawn(move || serve_tcp(listener, target));
            }
            Listener::Udp(socket) => {
                std::thread::spawn(move || serve_udp(socket, target));
            }
        }
    }
}

fn serve_tcp(listener: TcpListener, target: SocketAddr) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        std::thread::spawn(move || {
            let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
                // Nothing listens in the container: close the client like docker-proxy does.
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (Ok(client_reader), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone()) else { return };
            let forward = std::thread::spawn(move || pipe_half(client_reader, upstream));
            pipe_half(upstream_reader, client);
            let _ = forward.join();
        });
    }
}

/// Copies one direction, then half-closes so the other side sees EOF.
fn pipe_half(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

fn serve_udp(socket: UdpSocket, target: SocketAddr) {
    let socket = Arc::new(socket);
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let Ok((size, client)) = socket.recv_from(&mut buffer) else { continue };
        let existing = flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&client).cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let Some(upstream) = open_udp_flow(&socket, &flows, client, target) else { continue };
                upstream
            }
        };
        let _ = upstream.send(&buffer[..size]);
    }
}

fn open_udp_flow(
    socket: &Arc<UdpSocket>,
    flows: &Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
    client: SocketAddr,
    target: SocketAddr,
) -> Option<Arc<UdpSocket>> {
    if flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len() >= MAX_UDP_FLOWS {
        return None;
    }
    let upstream = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).ok()?;
    upstream.connect(target).ok()?;
    upstream.set_read_timeout(Some(UDP_FLOW_IDLE_TIMEOUT)).ok()?;
    let upstream = Arc::new(upstream);
    flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(client, upstream.clone());
    let (socket, flows, replies) = (socket.clone(), flows.clone(), upstream.clone());
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
        while let Ok(size) = replies.recv(&mut buffer) {
            let _ = socket.send_to(&buffer[..size], client);
        }
        flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&client);
    });
    Some(upstream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn tcp_and_udp_ports_forward_to_the_target() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = echo.accept().unwrap();
            let mut buffer = [0u8; 5];
            stream.read_exact(&mut buffer).unwrap();
            stream.write_all(&buffer).unwrap();
        });
        let udp_echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp_echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 16];
            let (size, from) = udp_echo.recv_from(&mut buffer).unwrap();
            udp_echo.send_to(&buffer[..size], from).unwrap();
        });
        let loopback = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let bindings = [
            PortBinding { container_port: echo_port, protocol: PortProtocol::Tcp, host_ip: loopback, host_port: 0 },
            PortBinding { container_port: udp_port, protocol: PortProtocol::Udp, host_ip: loopback, host_port: 0 },
        ];
        let proxies = bind_all(&bindings, Ipv4Addr::LOCALHOST).unwrap();
        let published: Vec<PublishedPort> = proxies.iter().map(PortProxy::published).collect();
        assert!(published.iter().all(|port| port.host_port != 0));
        proxies.into_iter().for_each(PortProxy::spawn);

        let mut client = TcpStream::connect(("127.0.0.1", published[0].host_port)).unwrap();
        client.write_all(b"hello").unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"hello");

        let udp_client = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp_client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        udp_client.send_to(b"ping", ("127.0.0.1", published[1].host_port)).unwrap();
        let mut buffer = [0u8; 16];
        let size = udp_client.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..size], b"ping");
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let binding = PortBinding {
            container_port: 80,
            protocol: PortProtocol::Tcp,
            host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            host_port: port,
        };
        let error = bind_all(&[binding], Ipv4Addr::LOCALHOST).err().unwrap().to_string();
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    }
}
