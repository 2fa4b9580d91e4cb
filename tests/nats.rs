//! The NATS relay, the follower and the portal's live event stream, end to
//! end against real `nats-server` processes (Debian's 2.9) that the tests
//! start on free loopback ports and kill on drop.
//!
//! - A SIGKILL of berth mid-publish and a SIGKILL of NATS while berth keeps
//!   taking writes leave the stream holding exactly the log's events, in
//!   order, each once.
//! - A 3-node cluster keeps a 3-replica stream available with a node down.
//! - After a random workload a follower's views equal the leader's, writes to
//!   it are refused, and its event stream resumes with `Last-Event-ID`
//!   without a gap.
//! - An unreachable NATS leaves berth serving and the relay visibly degraded
//!   until NATS comes; NATS without JetStream and a conflicting stream stop
//!   the start with a clear error.

mod support;

use berth_core::RecordedEvent;
use berth_nats::inspect::{stream_messages, StoredMessage};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{berth_binary, http_request, wait_for_line, Server};

/// Generous: CI machines are slow and shared.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STREAM: &str = "berth";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One nats-server process, restartable with the same port and store; killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    args: Vec<String>,
}

impl Nats {
    fn single(store: &Path) -> Nats {
        Nats::with_jetstream(store, true)
    }

    fn with_jetstream(store: &Path, jetstream: bool) -> Nats {
        let port = free_port();
        let monitor_port = free_port();
        let mut args: Vec<String> =
            vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string(), "-m".into(), monitor_port.to_string()];
        if jetstream {
            args.extend(["-js".into(), "-sd".into(), store.display().to_string()]);
        }
        let mut nats = Nats { child: None, port, monitor_port, args };
        nats.start();
        nats
    }

    /// Three servers routed to each other on loopback, one JetStream cluster.
    fn cluster(dir: &Path) -> Vec<Nats> {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for index in 0..3 {
            let port = free_port();
            let monitor_port = free_port();
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            let args = vec![
                "-js".to_string(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-m".into(),
                monitor_port.to_string(),
                "-sd".into(),
                dir.join(format!("node-{index}")).display().to_string(),
                "-n".into(),
                format!("node-{index}"),
                "--cluster_name".into(),
                "berth-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", cluster_ports[index]),
                "--routes".into(),
                routes.join(","),
            ];
            let mut node = Nats { child: None, port, monitor_port, args };
            node.start();
            nodes.push(node);
        }
        nodes
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let mut command = Command::new("nats-server");
        command.args(&self.args).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the server dies with the test even if the runner is killed.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("starting nats-server (apt-get install nats-server)");
        self.child = Some(child);
        let port = self.port;
        wait_until(STARTUP_TIMEOUT, "nats-server listens", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    /// SIGKILL: the harshest way a NATS server goes away.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn monitor(&self, path: &str) -> serde_json::Value {
        let (_, _, body) = http_request(&format!("127.0.0.1:{}", self.monitor_port), "GET", path, None);
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `berth serve` with its portal address.
struct Leader {
    server: Server,
    portal: String,
}

fn start_leader(data_dir: &Path, extra_args: &[&str]) -> Leader {
    let server = Server::start_in(data_dir, extra_args);
    let portal = wait_for_line(&server.stdout_lines, "portal listening on http://", STARTUP_TIMEOUT);
    Leader { server, portal }
}

fn metrics(portal: &str) -> HashMap<String, f64> {
    let (status, _, body) = http_request(portal, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn metric(portal: &str, name: &str) -> f64 {
    metrics(portal).get(name).copied().unwrap_or_else(|| panic!("no metric {name} on {portal}"))
}

fn wait_relay_caught_up(portal: &str) {
    wait_until(CATCH_UP_TIMEOUT, "the relay has published the whole log", || {
        let values = metrics(portal);
        values.get("berth_relay_up") == Some(&1.0) && values.get("berth_relay_published_position") == values.get("berth_log_head_position")
    });
}

fn create_volume(leader: &Leader, name: &str) {
    let (status, _, body) = leader.server.post("/volumes/create", &format!("{{\"Name\":\"{name}\"}}"));
    assert_eq!(status, 201, "creating volume {name}: {body}");
}

/// Every event of the log, read beside (or after) a running berth.
fn log_events(data_dir: &Path) -> Vec<RecordedEvent> {
    let output =
        Command::new(berth_binary()).args(["log", "tail", "--json", "-n", "100000000", "--data-dir"]).arg(data_dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).expect("an event per line")).collect()
}

/// Every message of the stream; retried, because right after a node is lost
/// the cluster may still be electing the leader that creates consumers.
fn read_stream(url: &str) -> Vec<StoredMessage> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        match runtime.block_on(stream_messages(url, STREAM)) {
            Ok(messages) => return messages,
            Err(error) if Instant::now() < deadline => eprintln!("reading the stream failed ({error}); retrying"),
            Err(error) => panic!("reading the stream: {error}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The stream holds a gap-free prefix of the log, in order, each event once.
fn assert_stream_is_log_prefix(messages: &[StoredMessage], events: &[RecordedEvent]) {
    assert!(messages.len() <= events.len(), "the stream has {} messages, the log {} events", messages.len(), events.len());
    for (index, (message, event)) in messages.iter().zip(events).enumerate() {
        assert_eq!(
            message.position,
            Some(event.position.0),
            "message {index} (sequence {}) is not the log's event {index}",
            message.sequence
        );
        assert_eq!(message.event.as_ref(), Some(event), "message {index} carries another event");
        assert_eq!(message.message_id.as_deref(), Some(event.event_id.to_string().as_str()));
        if index > 0 {
            assert_eq!(message.sequence, messages[index - 1].sequence + 1, "stream sequences have a gap at message {index}");
        }
        let kind = event.stream.kind.as_str();
        assert!(message.subject.starts_with("berth.") && message.subject.contains(&format!(".{kind}.")), "{}", message.subject);
        assert!(message.subject.ends_with(event.event.type_name()), "{}", message.subject);
    }
}

fn assert_stream_is_log(url: &str, data_dir: &Path) {
    let messages = read_stream(url);
    let events = log_events(data_dir);
    assert_eq!(messages.len(), events.len(), "the stream must hold every event of the log exactly once");
    assert_stream_is_log_prefix(&messages, &events);
}

/// Fills a log with volume-create commands from `berth log stress`, so a
/// relay that starts on it has a backlog to publish.
fn preload(data_dir: &Path, event_count: usize) {
    let mut stress = Command::new(berth_binary())
        .args(["log", "stress", "--writers", "16", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(stress.stdout.take().unwrap()).lines();
    let mut acked = 0;
    for line in lines.map_while(Result::ok) {
        if line.starts_with("ack ") {
            acked += 1;
            if acked >= event_count {
                break;
            }
        }
    }
    let _ = stress.kill();
    let _ = stress.wait();
    assert!(acked >= event_count, "berth log stress stopped after {acked} acknowledgements");
}

fn sigkill(server: &mut Server) {
    let _ = server.child.kill();
    let _ = server.child.wait();
}

#[test]
fn the_relay_survives_a_berth_sigkill_and_a_nats_restart_without_loss_or_duplicate() {
    let nats_dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::single(&nats_dir.path().join("store"));
    let data = tempfile::tempdir().unwrap();
    preload(data.path(), 5_000);

    // Killed while the relay works through the backlog: acks in flight are lost.
    let mut leader = start_leader(data.path(), &["--nats", &nats.url()]);
    wait_until(CATCH_UP_TIMEOUT, "the relay has published something", || metric(&leader.portal, "berth_relay_published_position") > 0.0);
    sigkill(&mut leader.server);
    let partial = read_stream(&nats.url());
    assert_stream_is_log_prefix(&partial, &log_events(data.path()));
    eprintln!("the stream held {} messages when berth was killed", partial.len());

    // Restarted, it publishes the rest, each event once.
    let leader = start_leader(data.path(), &["--nats", &nats.url()]);
    for index in 0..20 {
        create_volume(&leader, &format!("before-{index}"));
    }
    wait_relay_caught_up(&leader.portal);
    assert_stream_is_log(&nats.url(), data.path());

    // NATS dies: berth keeps taking writes and says the relay is degraded.
    nats.kill();
    for index in 0..20 {
        create_volume(&leader, &format!("during-{index}"));
    }
    wait_until(CATCH_UP_TIMEOUT, "the relay reports itself down", || metric(&leader.portal, "berth_relay_up") == 0.0);
    assert!(metric(&leader.portal, "berth_relay_lag_events") >= 20.0);

    // NATS returns with its store: the relay resumes by itself.
    nats.start();
    for index in 0..20 {
        create_volume(&leader, &format!("after-{index}"));
    }
    wait_relay_caught_up(&leader.portal);
    assert_stream_is_log(&nats.url(), data.path());
    assert!(metric(&leader.portal, "berth_relay_restarts") >= 1.0);
}

#[test]
fn a_three_node_cluster_keeps_the_stream_available_with_one_node_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Nats::cluster(dir.path());
    wait_until(STARTUP_TIMEOUT, "the JetStream cluster has a meta leader", || {
        nodes.iter().all(|node| node.monitor("/jsz")["meta_cluster"]["leader"].as_str().is_some_and(|leader| !leader.is_empty()))
    });
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let all_urls = urls.join(",");
    let data = tempfile::tempdir().unwrap();
    let leader = start_leader(data.path(), &["--nats", &all_urls, "--nats-replicas", "3"]);
    for index in 0..30 {
        create_volume(&leader, &format!("first-{index}"));
    }
    wait_relay_caught_up(&leader.portal);

    // Stop the stream's leader if the monitor names it, else the first node.
    let details = nodes[0].monitor("/jsz?accounts=true&streams=true");
    let stream_leader = details["account_details"]
        .as_array()
        .and_then(|accounts| {
            accounts
                .iter()
                .flat_map(|account| account["stream_detail"].as_array().cloned().unwrap_or_default())
                .find(|stream| stream["name"] == STREAM)
        })
        .and_then(|stream| stream["cluster"]["leader"].as_str().map(str::to_string));
    let stopped = stream_leader.and_then(|name| name.strip_prefix("node-").and_then(|index| index.parse::<usize>().ok())).unwrap_or(0);
    nodes[stopped].kill();

    for index in 0..30 {
        create_volume(&leader, &format!("second-{index}"));
    }
    wait_relay_caught_up(&leader.portal);
    let survivor = &urls[(stopped + 1) % 3];
    assert_stream_is_log(survivor, data.path());
}

/// A deterministic workload of volume and network creates and removes.
fn random_workload(leader: &Leader, seed: u64, operation_count: usize) {
    let mut state = seed;
    let mut next = move || {
        // xorshift64: reproducible from the seed printed on failure.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut volumes: Vec<String> = Vec::new();
    let mut networks: Vec<String> = Vec::new();
    for index in 0..operation_count {
        match next() % 4 {
            0 => {
                let name = format!("vol-{seed}-{index}");
                create_volume(leader, &name);
                volumes.push(name);
            }
            1 if !volumes.is_empty() => {
                let name = volumes.swap_remove((next() as usize) % volumes.len());
                let (status, _, body) = http_request(&leader.server.docker_address, "DELETE", &format!("/volumes/{name}"), None);
                assert_eq!(status, 204, "seed {seed}: removing volume {name}: {body}");
            }
            2 => {
                let name = format!("net-{seed}-{index}");
                let (status, _, body) =
                    leader.server.post("/networks/create", &format!("{{\"Name\":\"{name}\",\"Labels\":{{\"index\":\"{index}\"}}}}"));
                assert_eq!(status, 201, "seed {seed}: creating network {name}: {body}");
                networks.push(name);
            }
            _ if !networks.is_empty() => {
                let name = networks.swap_remove((next() as usize) % networks.len());
                let (status, _, body) = http_request(&leader.server.docker_address, "DELETE", &format!("/networks/{name}"), None);
                assert_eq!(status, 204, "seed {seed}: removing network {name}: {body}");
            }
            _ => {}
        }
    }
}

/// A running `berth follow`, killed on drop.
struct Follower {
    child: Child,
    docker_address: String,
    portal: String,
}

impl Follower {
    fn start(nats_url: &str, data_dir: &Path) -> Follower {
        let mut child = Command::new(berth_binary())
            .args(["follow", "--nats", nats_url, "--docker-listen", "127.0.0.1:0", "--portal-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting berth follow");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let portal = wait_for_line(&lines, "portal listening on http://", STARTUP_TIMEOUT);
        let docker_address = wait_for_line(&lines, "Docker API listening on tcp://", STARTUP_TIMEOUT);
        Follower { child, docker_address, portal }
    }

    fn terminate(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "berth follow exits 0 on SIGTERM: {status:?}");
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn views(portal: &str) -> serde_json::Value {
    let (status, _, body) = http_request(portal, "GET", "/api/views", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_follower_caught_up(follower: &Follower, leader: &Leader) {
    let head = metric(&leader.portal, "berth_log_head_position");
    wait_until(CATCH_UP_TIMEOUT, "the follower's views reach the leader's head", || {
        let values = metrics(&follower.portal);
        values.get("berth_views_position") == Some(&head) && values.get("berth_follower_lag_events") == Some(&0.0)
    });
}

/// Reads SSE events (position, JSON) from a raw connection until `count`
/// events arrived or the server ended the stream.
fn read_sse(address: &str, path: &str, last_event_id: Option<u64>, count_max: usize) -> Vec<(u64, serde_json::Value)> {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let header = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: berth\r\nAccept: text/event-stream\r\n{header}\r\n").unwrap();
    let mut events = Vec::new();
    let mut id = None;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if let Some(text) = line.strip_prefix("id: ") {
            id = text.trim().parse().ok();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((id.take().expect("an id before the data"), serde_json::from_str(data).expect("JSON data")));
            if events.len() >= count_max {
                break;
            }
        } else if line.trim() == "0" {
            // The final chunk: the server ended the stream.
            break;
        }
    }
    events
}

#[test]
fn a_follower_serves_the_leaders_views_and_its_event_stream_resumes_without_gaps() {
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = Nats::single(&nats_dir.path().join("store"));
    let data = tempfile::tempdir().unwrap();
    let leader = start_leader(data.path(), &["--nats", &nats.url()]);
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = Follower::start(&nats.url(), follower_dir.path());

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("workload seed {seed}");
    random_workload(&leader, seed, 120);
    wait_follower_caught_up(&follower, &leader);
    assert_eq!(views(&follower.portal), views(&leader.portal), "seed {seed}: the follower's views differ from the leader's");

    // The Docker API of a follower reads, and refuses writes in Docker's words.
    let (status, _, body) = http_request(&follower.docker_address, "GET", "/volumes", None);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http_request(&follower.docker_address, "POST", "/volumes/create", Some("{\"Name\":\"nope\"}"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only follower"), "{body}");
    // Its lag behind the leader shows in /info, as Docker's SystemStatus and labels.
    let (status, _, body) = http_request(&follower.docker_address, "GET", "/info", None);
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let system_status = info["SystemStatus"].as_array().unwrap_or_else(|| panic!("no SystemStatus: {body}"));
    assert!(system_status.iter().any(|pair| pair[0] == "follower.lag_events" && pair[1] == "0"), "{body}");
    assert!(system_status.iter().any(|pair| pair[0] == "role" && pair[1] == "follower"), "{body}");

    // A restarted follower resumes from its own replica and catches up.
    follower.terminate();
    random_workload(&leader, seed.wrapping_mul(31) | 1, 40);
    let follower = Follower::start(&nats.url(), follower_dir.path());
    wait_follower_caught_up(&follower, &leader);
    assert_eq!(views(&follower.portal), views(&leader.portal), "seed {seed}: after a restart the follower's views differ");

    // Its event stream, cut after 30 events and resumed from Last-Event-ID, has every position once.
    let head = metric(&follower.portal, "berth_log_head_position") as u64;
    let first = read_sse(&follower.portal, "/api/events", None, 30);
    assert_eq!(first.len(), 30);
    let resumed = read_sse(&follower.portal, "/api/events?follow=false", Some(first.last().unwrap().0), usize::MAX);
    let positions: Vec<u64> = first.iter().chain(&resumed).map(|(id, _)| *id).collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());
    for (id, event) in first.iter().chain(&resumed) {
        assert_eq!(event["position"].as_u64(), Some(*id));
    }
    // The leader's stream carries the same events.
    let leader_events = read_sse(&leader.portal, "/api/events?follow=false", None, usize::MAX);
    assert_eq!(leader_events.len(), positions.len());
    for ((_, on_leader), (_, on_follower)) in leader_events.iter().zip(first.iter().chain(&resumed)) {
        assert_eq!(on_leader["event_id"], on_follower["event_id"]);
        assert_eq!(on_leader["event"], on_follower["event"]);
    }
}

#[test]
fn the_portal_streams_live_events_with_heartbeats_filters_and_refuses_bad_requests() {
    let data = tempfile::tempdir().unwrap();
    let leader = start_leader(data.path(), &["--portal-heartbeat-interval", "200ms"]);
    let head = metric(&leader.portal, "berth_log_head_position") as u64;

    // Live: a client waiting at the head sees heartbeats, then the new event.
    let mut stream = std::net::TcpStream::connect(&leader.portal).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET /api/events?since={head} HTTP/1.1\r\nHost: berth\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut seen = String::new();
    let started = Instant::now();
    // Heartbeats are SSE comment lines: a colon, then the text.
    while !seen.lines().any(|line| line.starts_with(':') && line.contains("heartbeat")) {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        seen.push_str(&line);
        assert!(started.elapsed() < Duration::from_secs(20), "no heartbeat: {seen}");
    }
    create_volume(&leader, "live-one");
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if line.starts_with("data: ") {
            assert!(line.contains("VolumeCreated") && line.contains("live-one"), "{line}");
            break;
        }
    }
    drop(reader);
    drop(stream);

    // Filters: only what was asked for.
    create_volume(&leader, "filtered");
    let volumes = read_sse(&leader.portal, "/api/events?kind=volume&follow=false", None, usize::MAX);
    assert_eq!(volumes.len(), 2);
    assert!(volumes.iter().all(|(_, event)| event["stream"]["kind"] == "volume"));
    let one = read_sse(&leader.portal, "/api/events?id=filtered&vch=default&follow=false", None, usize::MAX);
    assert_eq!(one.len(), 1);
    assert!(read_sse(&leader.portal, "/api/events?vch=elsewhere&follow=false", None, usize::MAX).is_empty());

    // Bad filters and positions: 400 with the reason.
    for (path, reason) in [
        ("/api/events?kind=pod", "unknown kind"),
        ("/api/events?since=999999", "beyond the log's head"),
        ("/api/events?since=x", "not a log position"),
        ("/api/events?colour=red", "unknown query parameter"),
    ] {
        let (status, _, body) = http_request(&leader.portal, "GET", path, None);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body}");
    }

    // `berth events` prints the same stream in the terminal.
    let output = Command::new(berth_binary()).args(["events", "--server", &format!("http://{}", leader.portal)]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().count() as u64, head + 2, "{text}");
    assert_eq!(text.matches("VolumeCreated").count(), 2, "{text}");
    let output =
        Command::new(berth_binary()).args(["events", "--kind", "pod", "--server", &format!("http://{}", leader.portal)]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown kind"));
}

/// Runs `berth serve` expecting it to fail at start; returns its stderr.
fn serve_expecting_failure(data_dir: &Path, extra_args: &[&str]) -> String {
    let slot = support::AddressSlot::claim();
    let mut child = Command::new(berth_binary())
        .args(["serve", "--docker-listen", "127.0.0.1:0", "--portal-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args([
            "--bip",
            &format!("10.{}.0.1/24", slot.index),
            "--default-address-pool",
            &format!("base=10.{}.128.0/17,size=24", slot.index),
        ])
        .args(extra_args)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "berth serve should have refused to start");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth serve kept running instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    stderr
}

#[test]
fn an_unreachable_nats_degrades_the_relay_and_a_misconfigured_one_stops_the_start() {
    // Unreachable: berth serves, the relay says why it is down, and catches up once NATS is there.
    let nats_dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::single(&nats_dir.path().join("store"));
    nats.kill();
    let data = tempfile::tempdir().unwrap();
    let leader = start_leader(data.path(), &["--nats", &nats.url()]);
    assert_eq!(leader.server.get("/_ping").0, 200);
    create_volume(&leader, "while-down");
    assert_eq!(metric(&leader.portal, "berth_relay_up"), 0.0);
    nats.start();
    wait_relay_caught_up(&leader.portal);
    assert_stream_is_log(&nats.url(), data.path());
    drop(leader);

    // The same stream asked for with another retention: refused, both values named.
    let stderr = serve_expecting_failure(data.path(), &["--nats", &nats.url(), "--nats-retention", "interest"]);
    assert!(stderr.contains("exists with retention = limits") && stderr.contains("interest"), "{stderr}");

    // A stream of another log (ahead of this fresh one): refused.
    let other = tempfile::tempdir().unwrap();
    let stderr = serve_expecting_failure(other.path(), &["--nats", &nats.url()]);
    assert!(stderr.contains("belongs to another berth log"), "{stderr}");

    // A NATS without JetStream: refused with the reason.
    let plain = Nats::with_jetstream(nats_dir.path(), false);
    let stderr = serve_expecting_failure(other.path(), &["--nats", &plain.url()]);
    assert!(stderr.contains("no JetStream"), "{stderr}");

    // A bad address: refused.
    let stderr = serve_expecting_failure(other.path(), &["--nats", "nats://bad host:x"]);
    assert!(stderr.contains("bad NATS address"), "{stderr}");
}
