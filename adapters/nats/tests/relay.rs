//! The relay and the follower against a real nats-server (started on a free
//! loopback port, killed on drop) and a real RocksDB log: what lands in the
//! stream, where a relay without its checkpoint resumes, which subjects
//! events get, and that a replica holds the leader's positions and versions.

use berth_core::events::ContainerSpec;
use berth_core::log::{AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::{DomainEvent, EventId, Position, StreamId, StreamKind};
use berth_log_rocksdb::RocksLog;
use berth_nats::inspect::stream_messages;
use berth_nats::{Follower, FollowerConfig, Relay, RelayConfig, RelayError, StreamError, StreamSettings};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

struct NatsServer {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server (apt-get install nats-server)");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer { child, url: format!("nats://127.0.0.1:{port}"), _store: store }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event_id(sequence: u64) -> EventId {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&sequence.to_be_bytes());
    EventId::v7(1, random)
}

fn append(log: &dyn EventLog, stream: StreamId, event: DomainEvent, sequence: u64) {
    let request = AppendRequest {
        command_id: None,
        actor: "test".into(),
        recorded_at_ms: sequence,
        streams: vec![StreamAppendRequest {
            stream,
            expected: ExpectedVersion::Any,
            events: vec![NewEvent { event_id: event_id(sequence), event }],
        }],
    };
    log.append(request).expect("append");
}

fn append_volumes(log: &dyn EventLog, from: u64, count: u64) {
    for sequence in from..from + count {
        let name = format!("v{sequence}");
        let event =
            DomainEvent::VolumeCreated { name: name.clone(), driver: "local".into(), labels: BTreeMap::new(), created_ms: sequence };
        append(log, StreamId::new(StreamKind::Volume, name), event, sequence);
    }
}

async fn wait_published(relay: &Relay, position: u64) {
    let mut status = relay.subscribe();
    tokio::time::timeout(WAIT, status.wait_for(|status| status.published_position.0 >= position))
        .await
        .expect("the relay published in time")
        .unwrap();
}

fn open_log(dir: &tempfile::TempDir) -> Arc<RocksLog> {
    Arc::new(RocksLog::open(&dir.path().join("log")).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_lost_its_checkpoint_resumes_at_the_stream_end_and_repeats_nothing() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    append_volumes(log.as_ref(), 0, 200);
    let relay = Relay::start(log.clone(), RelayConfig::new(nats.url.clone(), StreamSettings::new("berth"))).await.unwrap();
    wait_published(&relay, 200).await;
    relay.stop().await;

    // As if the checkpoint were lost, or older than the dedup window.
    log.save_checkpoint(&berth_nats::relay::checkpoint_name("berth"), Position(0), &[]).unwrap();
    append_volumes(log.as_ref(), 200, 50);
    let relay = Relay::start(log.clone(), RelayConfig::new(nats.url.clone(), StreamSettings::new("berth"))).await.unwrap();
    wait_published(&relay, 250).await;
    assert_eq!(relay.status().duplicate_count, 0, "nothing was published again");
    relay.stop().await;

    let messages = stream_messages(&nats.url, "berth").await.unwrap();
    let positions: Vec<u64> = messages.iter().map(|message| message.position.unwrap()).collect();
    assert_eq!(positions, (1..=250).collect::<Vec<_>>());
    let sequences: Vec<u64> = messages.iter().map(|message| message.sequence).collect();
    assert_eq!(sequences, (1..=250).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_carry_their_vch_in_the_subject() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    let container = StreamId::new(StreamKind::Container, "c0ffee");
    let created = DomainEvent::ContainerCreated {
        name: "web".into(),
        vch: "prod.eu".into(),
        image_id: "sha256:ab".into(),
        spec: ContainerSpec::default(),
        created_ms: 1,
    };
    append(log.as_ref(), container.clone(), created, 1);
    append(log.as_ref(), StreamId::new(StreamKind::Vch, "prod.eu"), DomainEvent::VchDeleted, 2);
    append_volumes(log.as_ref(), 3, 1);
    // The relay starts after the container's creation, so it must find the VCH in the log.
    log.save_checkpoint(&berth_nats::relay::checkpoint_name("berth"), Position(1), &[]).unwrap();
    append(log.as_ref(), container, DomainEvent::ContainerStarted { started_ms: 4 }, 4);
    let relay = Relay::start(log.clone(), RelayConfig::new(nats.url.clone(), StreamSettings::new("berth"))).await.unwrap();
    wait_published(&relay, 4).await;
    relay.stop().await;
    let subjects: Vec<String> = stream_messages(&nats.url, "berth").await.unwrap().into_iter().map(|message| message.subject).collect();
    assert_eq!(
        subjects,
        [
            "berth.prod%2Eeu.vch.prod%2Eeu.VchDeleted",
            "berth.default.volume.v3.VolumeCreated",
            "berth.prod%2Eeu.container.c0ffee.ContainerStarted"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_berth_did_not_publish_stops_the_relay_with_the_reason() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir);
    append_volumes(log.as_ref(), 0, 3);
    let relay = Relay::start(log.clone(), RelayConfig::new(nats.url.clone(), StreamSettings::new("berth"))).await.unwrap();
    wait_published(&relay, 3).await;
    relay.stop().await;
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    async_nats::jetstream::new(client).publish("berth.someone.else", "hello".into()).await.unwrap().await.unwrap();
    match Relay::start(log.clone(), RelayConfig::new(nats.url.clone(), StreamSettings::new("berth"))).await {
        Err(RelayError::Stream(StreamError::ForeignMessage { sequence: 4, .. })) => {}
        Err(other) => panic!("expected a foreign-message error, got {other}"),
        Ok(_) => panic!("the relay started on a stream it does not own"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replica_holds_the_leaders_events_at_the_same_positions_and_versions() {
    let nats = NatsServer::start();
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = open_log(&leader_dir);
    append_volumes(leader.as_ref(), 0, 30);
    for sequence in 30..40 {
        append(leader.as_ref(), StreamId::new(StreamKind::Volume, "v3"), DomainEvent::VolumeRemoved, sequence);
    }
    let relay = Relay::start(leader.clone(), RelayConfig::new(nats.url.clone(), StreamSettings::new("berth"))).await.unwrap();
    wait_published(&relay, 40).await;

    let follower_dir = tempfile::tempdir().unwrap();
    let replica = open_log(&follower_dir);
    let follower =
        Follower::start(replica.clone(), FollowerConfig { server_url: nats.url.clone(), stream_name: "berth".into() }).await.unwrap();
    let mut status = follower.subscribe();
    tokio::time::timeout(WAIT, status.wait_for(|status| status.position.0 >= 40)).await.expect("the follower caught up").unwrap();
    assert_eq!(follower.status().lag_event_count(), 0);
    follower.stop().await;
    relay.stop().await;

    let on_leader = leader.read_all(Position(0), 100).unwrap();
    let on_replica = replica.read_all(Position(0), 100).unwrap();
    assert_eq!(on_replica.len(), 40);
    for (leader_event, replica_event) in on_leader.iter().zip(&on_replica) {
        let mut expected = leader_event.clone();
        // See the follower's doc: command ids stay on the leader.
        expected.command_id = None;
        assert_eq!(replica_event, &expected);
    }
}
