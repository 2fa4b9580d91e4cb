//! TLS for a VCH's Docker API, as vic-machine's endpoint served it on 2376:
//! the server certificate and key the administrator gave `berth vch create`,
//! and optionally a CA whose certificates clients must present (Docker's
//! `--tlsverify`: client certificates are how docker users authenticate).
//!
//! `server_config` turns the PEM texts into a rustls configuration and says
//! which part is wrong when it cannot; `serve` runs the Docker API service
//! behind it. berth does not generate certificates: the material comes from
//! the administrator, and is checked when the VCH is created, not when the
//! first client connects.

use anyhow::{anyhow, bail, Context as _};
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// A client that connects and never finishes its handshake would otherwise
/// hold a task and a socket for ever; honest clients need well under a second.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After an accept error that is not one connection's (out of file
/// descriptors), retrying at once would spin; axum::serve waits as long.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The PEM texts of a VCH's TLS (what `berth vch create` read from files).
/// Serializable so that the server can keep it with the VCH's other secrets
/// (the key must not enter the log).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsMaterial {
    /// The server certificate, then any intermediates, leaf first.
    pub server_cert_pem: String,
    /// The server certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC), unencrypted.
    pub server_key_pem: String,
    /// Clients must present a certificate this CA signed (`--tlsverify`); any client may connect without it.
    pub client_ca_pem: Option<String>,
}

impl TlsMaterial {
    /// Docker's name for the mode: "tlsverify" when client certificates are required, "tls" otherwise.
    pub fn mode(&self) -> &'static str {
        if self.client_ca_pem.is_some() {
            "tlsverify"
        } else {
            "tls"
        }
    }
}

// Debug without the key: the material ends up in logs next to the request.
impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsMaterial")
            .field("server_cert_pem", &format_args!("<{} bytes>", self.server_cert_pem.len()))
            .field("server_key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem.as_ref().map(|pem| format!("<{} bytes>", pem.len())))
            .finish()
    }
}

/// The rustls configuration for `material`, or an error naming the part
/// that is wrong (the administrator fixes a file, not a TLS library).
pub fn server_config(material: &TlsMaterial) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&material.server_cert_pem, "the server certificate PEM")?;
    let key = private_key(&material.server_key_pem)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("the TLS library offers no protocol version")?;
    let builder = match &material.client_ca_pem {
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for (index, ca) in certificates(ca_pem, "the client CA PEM")?.into_iter().enumerate() {
                roots.add(ca).map_err(|error| anyhow!("certificate {} of the client CA PEM cannot be a CA: {error}", index + 1))?;
            }
            // Requires a certificate from every client: an unauthenticated
            // client is refused during the handshake, before any request.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| anyhow!("the client CA cannot verify client certificates: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => {
            anyhow!("the key does not match the certificate (--tls-server-key must be the private key of --tls-server-cert)")
        }
        // webpki's error carries no better text than its variant name; old tools write v1 certificates.
        rustls::Error::InvalidCertificate(_) if format!("{error:?}").contains("UnsupportedCertVersion") => anyhow!(
            "the server certificate is an X.509 version 1 certificate; berth needs version 3 (one with extensions, such as a subjectAltName)"
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            anyhow!("the server certificate PEM does not hold a valid X.509 certificate: {error}")
        }
        other => anyhow!("the server key cannot be used: {other}"),
    })?;
    // The Docker API is HTTP/1.1 only (attach and exec upgrade the connection).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM text; `what` names it in errors.
fn certificates(text: &str, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|error| anyhow!("{what} is not valid PEM: {error}"))?;
    if certificates.is_empty() {
        // A swapped pair of files is the likeliest mistake: say so.
        if text.contains("PRIVATE KEY-----") {
            bail!("{what} holds no certificate but a private key (are the certificate and key files swapped?)");
        }
        bail!("{what} holds no certificate (want a -----BEGIN CERTIFICATE----- block)");
    }
    Ok(certificates)
}

fn private_key(text: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(text.as_bytes()) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) if text.contains("ENCRYPTED PRIVATE KEY-----") => {
            bail!("the server key PEM is encrypted; berth needs it unencrypted (`openssl pkey -in KEY -out PLAIN`)")
        }
        Err(pem::Error::NoItemsFound) if text.contains("CERTIFICATE-----") => {
            bail!("the server key PEM holds no private key but a certificate (are the certificate and key files swapped?)")
        }
        Err(pem::Error::NoItemsFound) => {
            bail!("the server key PEM holds no private key (want a PKCS#8, RSA or EC -----BEGIN ... PRIVATE KEY----- block)")
        }
        Err(error) => bail!("the server key PEM is not valid PEM: {error}"),
    }
}

/// Serves `service` (the Docker API) over TLS on `listener` until `shutdown`
/// completes. Each connection's handshake and HTTP/1.1 exchange run on their
/// own task, so a slow or failing client never holds up the others; a failed
/// handshake (no or an untrusted client certificate, plain HTTP on the TLS
/// port) is logged at debug and dropped. On shutdown it stops accepting and
/// asks open connections to close once their current request is answered;
/// it returns without waiting for them (a `docker events` stream may never end).
pub async fn serve<S>(listener: TcpListener, config: Arc<ServerConfig>, service: S, shutdown: impl Future<Output = ()> + Send + 'static)
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let acceptor = TlsAcceptor::from(config);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "accepting a Docker API connection");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "accepting Docker API connections; retrying in {ACCEPT_ERROR_PAUSE:?}");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        tokio::spawn(serve_connection(acceptor.clone(), stream, peer, service.clone(), stopped.clone()));
    }
    let _ = stop.send(true);
}

/// Errors of one connection that went away before it was accepted; the listener is fine.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

async fn serve_connection<S>(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    // Interactive attach sends keystrokes one by one: do not hold them back.
    let _ = stream.set_nodelay(true);
    let handshake = tokio::select! {
        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => result,
        () = stop_requested(&mut stopped) => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake of a Docker API client failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake of a Docker API client timed out after {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let service = TowerToHyperService::new(service.map_request(|request: Request<hyper::body::Incoming>| request.map(Body::new)));
    // with_upgrades: docker attach and exec hijack the connection (HTTP upgrade to a raw stream).
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "Docker API connection ended with an error");
    }
}

/// Completes once `serve` stops, or is dropped (its sender goes away unsent).
async fn stop_requested(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here, not across an await.
    let _ = stopped.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    //! Certificates come from the openssl command line tool (Debian has it),
    //! so the tests check rustls against material made the way an
    //! administrator makes it, not by the library under test.

    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM texts.
    struct Pki {
        ca: String,
        server_cert: String,
        server_key: String,
        client_cert: String,
        client_key: String,
    }

    fn openssl(directory: &Path, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(directory)
            .output()
            .unwrap_or_else(|error| panic!("these tests need the openssl command line tool: {error}"));
        assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn read(directory: &Path, name: &str) -> String {
        std::fs::read_to_string(directory.join(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    fn make_pki() -> Pki {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let dir = directory.path();
        std::fs::write(
            dir.join("ext.cnf"),
            "[ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n\
             [server]\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n\
             [client]\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        for name in ["ca", "server", "client"] {
            let key = format!("{name}-key.pem");
            openssl(dir, &[&["genpkey"][..], &ec, &["-out", &key]].concat());
        }
        openssl(dir, &["req", "-new", "-key", "ca-key.pem", "-subj", "/CN=berth test CA", "-out", "ca.csr"]);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "ca.csr",
                "-signkey",
                "ca-key.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-extensions",
                "ca",
                "-out",
                "ca.pem",
            ],
        );
        for (name, serial) in [("server", "2"), ("client", "3")] {
            let (key, csr, cert) = (format!("{name}-key.pem"), format!("{name}.csr"), format!("{name}.pem"));
            openssl(dir, &["req", "-new", "-key", &key, "-subj", &format!("/CN=berth test {name}"), "-out", &csr]);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca-key.pem",
                    "-set_serial",
                    serial,
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    name,
                    "-out",
                    &cert,
                ],
            );
        }
        Pki {
            ca: read(dir, "ca.pem"),
            server_cert: read(dir, "server.pem"),
            server_key: read(dir, "server-key.pem"),
            client_cert: read(dir, "client.pem"),
            client_key: read(dir, "client-key.pem"),
        }
    }

    fn material(pki: &Pki, client_ca: bool) -> TlsMaterial {
        TlsMaterial {
            server_cert_pem: pki.server_cert.clone(),
            server_key_pem: pki.server_key.clone(),
            client_ca_pem: client_ca.then(|| pki.ca.clone()),
        }
    }

    /// A running `serve` of a one-route router; stops when dropped.
    struct Server {
        port: u16,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(config: Arc<ServerConfig>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = axum::Router::new().route("/_ping", axum::routing::get(|| async { "OK" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, router, async move {
            let _ = stopped.await;
        }));
        Server { port, stop: Some(stop), task }
    }

    fn client_config(pki: &Pki, with_certificate: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_certificate {
            let chain = vec![CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap()];
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap()).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }

    /// `GET https://127.0.0.1:PORT/_ping` with `config`, off the runtime (ureq blocks).
    async fn ping(port: u16, config: Arc<rustls::ClientConfig>) -> Result<String, String> {
        tokio::task::spawn_blocking(move || {
            let agent = ureq::AgentBuilder::new().tls_config(config).timeout(Duration::from_secs(10)).build();
            match agent.get(&format!("https://127.0.0.1:{port}/_ping")).call() {
                Ok(response) => response.into_string().map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_https_without_client_certificates() {
        let pki = make_pki();
        let config = server_config(&material(&pki, false)).expect("a valid pair");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let server = start(config).await;
        assert_eq!(ping(server.port, client_config(&pki, false)).await, Ok("OK".to_string()));
        // Without --tlsverify a client certificate is not asked for, and not in the way.
        assert_eq!(ping(server.port, client_config(&pki, true)).await, Ok("OK".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_client_ca_only_clients_with_a_signed_certificate_get_in() {
        let pki = make_pki();
        let server = start(server_config(&material(&pki, true)).unwrap()).await;
        let refused = ping(server.port, client_config(&pki, false)).await;
        // Refused by the handshake (an alert), not by a timeout or a closed port.
        assert!(
            refused.as_ref().is_err_and(|error| error.contains("CertificateRequired")),
            "a client without a certificate got {refused:?}"
        );
        // The failed handshake did not stop the accept loop.
        assert_eq!(ping(server.port, client_config(&pki, true)).await, Ok("OK".to_string()));
        // A certificate of another CA is refused too.
        let other = make_pki();
        let foreign = Pki { ca: pki.ca.clone(), ..other };
        let refused = ping(server.port, client_config(&foreign, true)).await;
        assert!(refused.as_ref().is_err_and(|error| error.contains("alert")), "a client certificate of another CA got {refused:?}");
        assert_eq!(ping(server.port, client_config(&pki, true)).await, Ok("OK".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_http_and_garbage_on_the_tls_port_do_not_stop_it() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let pki = make_pki();
        let server = start(server_config(&material(&pki, false)).unwrap()).await;
        let mut plain = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        plain.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await.expect("the server hangs up");
        assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP was answered: {answer:?}");
        // A client that connects and says nothing holds only its own task.
        let _silent = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        assert_eq!(ping(server.port, client_config(&pki, false)).await, Ok("OK".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_accepting() {
        let pki = make_pki();
        let mut server = start(server_config(&material(&pki, false)).unwrap()).await;
        assert_eq!(ping(server.port, client_config(&pki, false)).await, Ok("OK".to_string()));
        let _ = server.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut server.task).await.expect("serve returns on shutdown").unwrap();
        assert!(TcpStream::connect(("127.0.0.1", server.port)).await.is_err(), "the listener is closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upgraded_connection_becomes_a_raw_stream_as_attach_needs() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let pki = make_pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Docker's hijack: answer 101, then echo what the client sends on the raw stream.
        let router = axum::Router::new().route(
            "/echo",
            axum::routing::post(|mut request: Request<Body>| async move {
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let Ok(upgraded) = upgrade.await else { return };
                    let mut stream = TokioIo::new(upgraded);
                    let mut buffer = [0u8; 5];
                    if stream.read_exact(&mut buffer).await.is_ok() {
                        let _ = stream.write_all(&buffer).await;
                    }
                });
                Response::builder().status(101).header("connection", "Upgrade").header("upgrade", "tcp").body(Body::empty()).unwrap()
            }),
        );
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, server_config(&material(&pki, false)).unwrap(), router, async move {
            let _ = stopped.await;
        }));
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = tokio_rustls::TlsConnector::from(client_config(&pki, false)).connect(name, tcp).await.expect("handshake");
        tls.write_all(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await.expect("an answer").unwrap();
            assert_eq!(read, 1, "the connection closed after {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        tls.write_all(b"hello").await.unwrap();
        let mut echoed = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut echoed)).await.expect("the echo").unwrap();
        assert_eq!(&echoed, b"hello");
    }

    #[test]
    fn names_the_wrong_part_of_the_material() {
        let pki = make_pki();
        let error = |material: TlsMaterial| format!("{:#}", server_config(&material).expect_err("refused"));
        let good = material(&pki, true);

        let garbage = error(TlsMaterial { server_cert_pem: "not a certificate".into(), ..good.clone() });
        assert!(garbage.contains("the server certificate PEM holds no certificate"), "{garbage}");
        let swapped =
            error(TlsMaterial { server_cert_pem: pki.server_key.clone(), server_key_pem: pki.server_cert.clone(), ..good.clone() });
        assert!(swapped.contains("the server certificate PEM holds no certificate but a private key"), "{swapped}");
        let truncated = error(TlsMaterial { server_cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n".into(), ..good.clone() });
        assert!(truncated.contains("the server certificate PEM is not valid PEM"), "{truncated}");
        let bad_der =
            error(TlsMaterial { server_cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(), ..good.clone() });
        assert!(bad_der.contains("the server certificate PEM does not hold a valid X.509 certificate"), "{bad_der}");

        let no_key = error(TlsMaterial { server_key_pem: "garbage".into(), ..good.clone() });
        assert!(no_key.contains("the server key PEM holds no private key"), "{no_key}");
        let wrong_key = error(TlsMaterial { server_key_pem: pki.client_key.clone(), ..good.clone() });
        assert!(wrong_key.contains("the key does not match the certificate"), "{wrong_key}");
        let encrypted = error(TlsMaterial {
            server_key_pem: "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".into(),
            ..good.clone()
        });
        assert!(encrypted.contains("encrypted"), "{encrypted}");

        let no_ca = error(TlsMaterial { client_ca_pem: Some("garbage".into()), ..good.clone() });
        assert!(no_ca.contains("the client CA PEM holds no certificate"), "{no_ca}");
        let key_as_ca = error(TlsMaterial { client_ca_pem: Some(pki.server_key.clone()), ..good.clone() });
        assert!(key_as_ca.contains("the client CA PEM holds no certificate"), "{key_as_ca}");

        assert!(!format!("{good:?}").contains("PRIVATE KEY"), "Debug leaks the key: {good:?}");
        assert_eq!((good.mode(), material(&pki, false).mode()), ("tlsverify", "tls"));
    }

    #[test]
    fn refuses_a_version_1_certificate_by_name() {
        let directory = tempfile::tempdir().unwrap();
        let dir = directory.path();
        // A config without extensions: `openssl req -x509` then writes version 1.
        std::fs::write(dir.join("v1.cnf"), "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n").unwrap();
        openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem"]);
        openssl(dir, &["req", "-x509", "-config", "v1.cnf", "-key", "key.pem", "-days", "2", "-out", "cert.pem"]);
        let material = TlsMaterial { server_cert_pem: read(dir, "cert.pem"), server_key_pem: read(dir, "key.pem"), client_ca_pem: None };
        let error = format!("{:#}", server_config(&material).expect_err("a v1 certificate"));
        assert!(error.contains("X.509 version 1 certificate; berth needs version 3"), "{error}");
    }

    #[test]
    fn accepts_the_key_forms_openssl_writes() {
        let pki = make_pki();
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("key.pem"), &pki.server_key).unwrap();
        // "EC PRIVATE KEY" (SEC1), as `openssl ec` and older tools write it; the default is PKCS#8.
        openssl(directory.path(), &["ec", "-in", "key.pem", "-out", "sec1.pem"]);
        let sec1 = read(directory.path(), "sec1.pem");
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        // A bundle of certificate and key in one file works for both parts.
        let bundle = format!("{}{}", pki.server_cert, sec1);
        server_config(&TlsMaterial { server_cert_pem: bundle.clone(), server_key_pem: bundle, client_ca_pem: None })
            .expect("SEC1 key accepted");
    }
}
