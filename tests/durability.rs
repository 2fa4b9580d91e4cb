//! Durability: a child process appends under load through the command bus
//! and is killed with SIGKILL at a random moment; after reopening, every
//! acknowledged append is in the log at its acknowledged position, and the
//! log verifies (nothing half-written). Repeated many times in one run.

mod support;

use berth_core::log::EventLog;
use berth_core::{DomainEvent, Position};
use berth_log_rocksdb::RocksLog;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILL_ROUNDS: usize = 20;

#[test]
fn every_acknowledged_append_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    for round in 0..KILL_ROUNDS {
        let mut child = Command::new(support::berth_binary())
            .args(["log", "stress", "--writers", "16", "--data-dir"])
            .arg(dir.path())
            .env("BERTH_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it run for a varying while, then kill it mid-flight.
        let wait = Duration::from_millis(150 + (round as u64 * 37) % 400);
        let started = Instant::now();
        let mut round_acks = 0;
        while started.elapsed() < wait || round_acks == 0 {
            if let Ok(line) = receiver.recv_timeout(Duration::from_millis(20)) {
                let mut parts = line.split_whitespace();
                assert_eq!(parts.next(), Some("ack"), "{line}");
                acknowledged.push((parts.next().unwrap().to_string(), parts.next().unwrap().parse().unwrap()));
                round_acks += 1;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the stress child made no progress");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements printed before the kill still count.
        while let Ok(line) = receiver.recv_timeout(Duration::from_millis(100)) {
            let mut parts = line.split_whitespace();
            if parts.next() == Some("ack") {
                if let (Some(name), Some(Ok(position))) = (parts.next(), parts.next().map(str::parse)) {
                    acknowledged.push((name.to_string(), position));
                }
            }
        }
        reader.join().unwrap();

        // Reopening verifies every envelope; then every ack must be there.
        let log = RocksLog::open(&dir.path().join("log")).unwrap_or_else(|error| panic!("round {round}: {error}"));
        let events = log.read_all(Position(0), usize::MAX).unwrap();
        for (name, position) in &acknowledged {
            let event = events.get(*position as usize - 1).unwrap_or_else(|| panic!("round {round}: ack {name} at {position} lost"));
            match &event.event {
                DomainEvent::VolumeCreated { name: recorded, .. } => assert_eq!(recorded, name, "round {round}: position {position}"),
                other => panic!("round {round}: position {position} holds {other:?}"),
            }
        }
    }
    assert!(acknowledged.len() > KILL_ROUNDS * 10, "too few appends to mean anything: {}", acknowledged.len());
}
