//! Networking against the real host: bridges, veths, name resolution through /etc/hosts,
//! published ports, network modes none and host, live connect/disconnect, and cleanup.

mod common;

use berth_runtime::*;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn run_in(fixture: &Fixture, id: &str, script: &str) -> (i64, String) {
    let exec = ExecSpec { args: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() };
    let mut process = fixture.runtime.exec(id, &exec).expect("exec");
    let mut output = String::new();
    process.take_stdout().expect("stdout").read_to_string(&mut output).expect("read stdout");
    let mut errors = String::new();
    process.take_stderr().expect("stderr").read_to_string(&mut errors).expect("read stderr");
    output.push_str(&errors);
    (process.wait().expect("wait"), output)
}

fn host(args: &[&str]) -> String {
    let output = Command::new(args[0]).args(&args[1..]).output().expect("host command");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn on_network(fixture: &Fixture, name: &str, attachments: Vec<NetworkAttachment>, script: &str) -> ContainerRunSpec {
    let mut spec = fixture.spec(&unique_id(name), script);
    spec.hostname = name.to_string();
    spec.network_mode = NetworkMode::Bridge(attachments);
    spec
}

#[test]
fn two_containers_reach_each_other_by_name() {
    let fixture = Fixture::new();
    let network = NetworkGuard::new(&fixture.runtime, "net-pair", 201, false);
    let web =
        on_network(&fixture, "web", vec![network.address(2)], "echo hello-from-web > /var/www/index.html; exec httpd -f -p 80 -h /var/www");
    let client = on_network(&fixture, "client", vec![network.address(3)], "trap 'exit 0' TERM; while true; do sleep 0.1; done");
    let _web_guard = fixture.create(&web);
    let _client_guard = fixture.create(&client);
    fixture.runtime.start(&web.id).unwrap();
    fixture.runtime.start(&client.id).unwrap();
    fixture
        .runtime
        .update_hosts(
            &client.id,
            &[("10.201.0.0".into(), vec![]), (network.address(2).ip.to_string(), vec!["web".into(), "web.alias".into()])],
        )
        .unwrap();
    fixture.runtime.update_hosts(&web.id, &[(network.address(3).ip.to_string(), vec!["client".into()])]).unwrap();

    let (code, output) = run_in(&fixture, &client.id, "cat /etc/hosts; ping -c1 -W5 web");
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("web web.alias"), "{output}");
    let (code, output) = run_in(&fixture, &web.id, "ping -c1 -W5 client && hostname");
    assert_eq!(code, 0, "{output}");
    assert!(output.ends_with("web\n"), "{output}");
    let mut fetched = String::new();
    for _ in 0..50 {
        let (code, output) = run_in(&fixture, &client.id, "wget -q -O - http://web.alias/");
        fetched = output;
        if code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fetched, "hello-from-web\n");
    let (code, routes) = run_in(&fixture, &client.id, "ip route");
    assert_eq!(code, 0);
    assert!(routes.contains(&format!("default via {}", network.spec.gateway)), "{routes}");
}

#[test]
fn a_published_port_reaches_the_container() {
    let fixture = Fixture::new();
    let network = NetworkGuard::new(&fixture.runtime, "net-port", 202, false);
    let mut spec = on_network(
        &fixture,
        "served",
        vec![network.address(2)],
        "echo published-ok > /var/www/index.html; exec httpd -f -p 80 -h /var/www",
    );
    spec.port_bindings = vec![PortBinding { container_port: 80, protocol: PortProtocol::Tcp, host_ip: None, host_port: 0 }];
    let _guard = fixture.create(&spec);
    let started = fixture.runtime.start(&spec.id).unwrap();
    let [published] = started.published_ports.as_slice() else { panic!("{:?}", started.published_ports) };
    assert!(published.host_port > 0);
    assert_eq!(fixture.runtime.published_ports(&spec.id).unwrap(), started.published_ports);
    let mut response = String::new();
    for _ in 0..50 {
        response.clear();
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", published.host_port)) {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            stream.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let _ = stream.read_to_string(&mut response);
            if response.contains("published-ok") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(response.contains("200 OK") && response.contains("published-ok"), "{response}");
    // The port closes with the container.
    fixture.runtime.kill(&spec.id, libc::SIGKILL).unwrap();
    fixture.runtime.wait_exit(&spec.id, Some(TEST_WAIT_TIMEOUT)).unwrap();
    eventually("the proxy to close", || TcpStream::connect(("127.0.0.1", published.host_port)).is_err());
}

#[test]
fn network_mode_none_has_only_loopback() {
    let fixture = Fixture::new();
    let id = unique_id("none");
    let _guard = fixture.create(&fixture.spec(&id, "ip -o link; ping -c1 -W1 127.0.0.1 >/dev/null && echo lo-works"));
    fixture.runtime.start(&id).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(0));
    let log = fixture.log_text(&id);
    let interfaces: Vec<&str> = log.lines().filter(|line| line.contains(": <")).collect();
    assert_eq!(interfaces.len(), 1, "{log}");
    assert!(interfaces[0].contains("lo:"), "{log}");
    assert!(log.contains("lo-works"), "{log}");
}

#[test]
fn network_mode_host_shares_the_host_network() {
    let fixture = Fixture::new();
    let id = unique_id("hostnet");
    let mut spec = fixture.spec(&id, "readlink /proc/self/ns/net");
    spec.network_mode = NetworkMode::Host;
    let _guard = fixture.create(&spec);
    fixture.runtime.start(&id).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(0), "{}", fixture.log_text(&id));
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(fixture.log_text(&id).trim(), ours.to_string_lossy());
}

#[test]
fn internal_networks_get_no_default_route_or_nat() {
    let fixture = Fixture::new();
    let network = NetworkGuard::new(&fixture.runtime, "net-internal", 203, true);
    let spec = on_network(&fixture, "inside", vec![network.address(2)], "ip route");
    let _guard = fixture.create(&spec);
    fixture.runtime.start(&spec.id).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&spec.id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(0));
    let routes = fixture.log_text(&spec.id);
    assert!(!routes.contains("default"), "{routes}");
    assert!(routes.contains(&network.spec.subnet), "{routes}");
    let nat = host(&["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(!nat.contains(&format!("berth:{}", network.spec.id)), "{nat}");
}

#[test]
fn live_connect_and_disconnect() {
    let fixture = Fixture::new();
    let first = NetworkGuard::new(&fixture.runtime, "net-first", 204, false);
    let second = NetworkGuard::new(&fixture.runtime, "net-second", 205, false);
    let spec = on_network(&fixture, "mover", vec![first.address(2)], "trap 'exit 0' TERM; while true; do sleep 0.1; done");
    let _guard = fixture.create(&spec);
    fixture.runtime.start(&spec.id).unwrap();
    fixture.runtime.connect(&spec.id, &second.address(9)).unwrap();
    assert!(fixture.runtime.connect(&spec.id, &second.address(9)).is_err());
    let (code, output) = run_in(&fixture, &spec.id, &format!("ip -o addr; ping -c1 -W5 {}", second.spec.gateway));
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(&format!("eth1    inet {}/24", second.address(9).ip)) || output.contains(&second.address(9).ip.to_string()),
        "{output}"
    );
    let hosts = std::fs::read_to_string(fixture.state_path().join("containers").join(&spec.id).join("etc/hosts")).unwrap();
    assert!(hosts.contains(&format!("{}\tmover", second.address(9).ip)), "{hosts}");

    fixture.runtime.disconnect(&spec.id, &first.spec.id).unwrap();
    let (code, output) = run_in(&fixture, &spec.id, "ip -o addr; ip route");
    assert_eq!(code, 0, "{output}");
    assert!(!output.contains(&first.address(2).ip.to_string()), "{output}");
    assert!(output.contains(&format!("default via {}", second.spec.gateway)), "{output}");
    assert!(fixture.runtime.disconnect(&spec.id, &first.spec.id).is_err());
    assert!(!host(&["ip", "-o", "link"]).contains(&veth_host_name(&spec.id, &first.spec.id)));
}

#[test]
fn delete_and_remove_network_clean_up_the_host() {
    let fixture = Fixture::new();
    let network = NetworkGuard::new(&fixture.runtime, "net-clean", 206, false);
    let bridge = bridge_name(&network.spec.id);
    let comment = format!("berth:{}", network.spec.id);
    assert!(host(&["ip", "-o", "link"]).contains(&bridge));
    assert!(host(&["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]).contains(&comment));
    // Idempotent.
    fixture.runtime.ensure_network(&network.spec).unwrap();
    assert_eq!(host(&["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]).matches(&comment).count(), 1);

    let spec = on_network(&fixture, "doomed", vec![network.address(2)], "trap 'exit 0' TERM; while true; do sleep 0.1; done");
    fixture.runtime.create(&spec).unwrap();
    fixture.runtime.start(&spec.id).unwrap();
    let veth = veth_host_name(&spec.id, &network.spec.id);
    assert!(host(&["ip", "-o", "link"]).contains(&veth));
    assert!(std::path::Path::new("/run/netns").join(netns_name(&spec.id)).exists());
    fixture.runtime.delete(&spec.id).unwrap();
    fixture.runtime.delete(&spec.id).unwrap();
    assert!(!host(&["ip", "-o", "link"]).contains(&veth));
    assert!(!std::path::Path::new("/run/netns").join(netns_name(&spec.id)).exists());
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory/berth/{}", spec.id)).exists());
    assert!(matches!(fixture.runtime.state(&spec.id), Err(RuntimeError::ContainerNotFound { .. })));

    fixture.runtime.remove_network(&network.spec.id).unwrap();
    fixture.runtime.remove_network(&network.spec.id).unwrap();
    assert!(!host(&["ip", "-o", "link"]).contains(&bridge));
    assert!(!host(&["iptables", "-w", "-t", "nat", "-S"]).contains(&comment));
    assert!(!host(&["iptables", "-w", "-S"]).contains(&comment));
}

#[test]
fn starting_on_an_unknown_network_is_a_clear_error_and_leaves_nothing_behind() {
    let fixture = Fixture::new();
    let attachment = NetworkAttachment {
        network_id: unique_id("net-missing"),
        ip: "10.207.0.2".parse().unwrap(),
        prefix_length: 24,
        gateway: "10.207.0.1".parse().unwrap(),
    };
    let spec = on_network(&fixture, "orphan", vec![attachment], "true");
    let _guard = fixture.create(&spec);
    assert!(matches!(fixture.runtime.start(&spec.id), Err(RuntimeError::NetworkNotFound { .. })));
    assert!(!std::path::Path::new("/run/netns").join(netns_name(&spec.id)).exists());
    assert_eq!(fixture.runtime.state(&spec.id).unwrap(), RuntimeState::Created);
}

/// The sequence `docker run … ; docker rm …; docker run …` drives: one container is deleted
/// (its shim, runc state, veth and netns torn down) while the next is created and started on
/// the same bridge, with other threads polling `list`. The new container's exit must be
/// recorded as soon as its `echo` ends: no stray descriptor, lock or timeout of the deleted
/// container's teardown may hold it up (the 10-second symptom seen through the berth server).
#[test]
fn deleting_one_container_does_not_delay_the_exit_of_one_started_meanwhile() {
    let fixture = Fixture::new();
    let network = NetworkGuard::new(&fixture.runtime, "net-churn", 207, false);
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let (runtime, polling) = (fixture.runtime.clone(), polling.clone());
        std::thread::spawn(move || {
            while polling.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = runtime.list();
            }
        })
    };
    for round in 0..5u8 {
        let old = on_network(&fixture, &format!("churn-old{round}"), vec![network.address(10 + round)], "echo hi");
        let new = on_network(&fixture, &format!("churn-new{round}"), vec![network.address(100 + round)], "echo hi");
        let _old_guard = fixture.create(&old);
        fixture.runtime.start(&old.id).unwrap();
        assert_eq!(fixture.runtime.wait_exit(&old.id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(0));

        let deleter = {
            let (runtime, id) = (fixture.runtime.clone(), old.id.clone());
            std::thread::spawn(move || runtime.delete(&id))
        };
        let _new_guard = fixture.create(&new);
        let started_at = std::time::Instant::now();
        fixture.runtime.start(&new.id).unwrap();
        let exit = fixture.runtime.wait_exit(&new.id, Some(TEST_WAIT_TIMEOUT)).unwrap();
        let took = started_at.elapsed();
        deleter.join().unwrap().unwrap();
        assert_eq!(exit, Some(0), "round {round}");
        assert!(took < Duration::from_secs(2), "round {round}: the exit of `echo hi` took {took:?} to be recorded");
    }
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();
}
