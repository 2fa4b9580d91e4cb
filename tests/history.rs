//! `berth replay` and `berth audit` against the log of a running berth: the
//! views as they were at a position and at a time, and who did what.

mod support;

use std::process::Command;
use support::Server;

fn berth(args: &[&str], data_dir: &std::path::Path) -> String {
    let output = Command::new(support::berth_binary()).args(args).arg("--data-dir").arg(data_dir).output().unwrap();
    assert!(output.status.success(), "berth {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn replay_and_audit_read_history_beside_a_live_berth() {
    let server = Server::start();
    assert_eq!(server.post("/v1.47/volumes/create", r#"{"Name":"first"}"#).0, 201);
    let head_after_first: u64 = {
        let text = berth(&["log", "tail", "-n", "1", "--json"], &server.data_dir);
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap()["position"].as_u64().unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(server.post("/v1.47/volumes/create", r#"{"Name":"second"}"#).0, 201);
    assert_eq!(support::http_request(&server.docker_address, "DELETE", "/v1.47/volumes/first", None).0, 204);

    // At the position after the first create: only "first".
    let at_position: serde_json::Value =
        serde_json::from_str(&berth(&["replay", "--until", &head_after_first.to_string(), "--json"], &server.data_dir)).unwrap();
    let volumes: Vec<&str> = at_position["volumes"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(volumes, vec!["first"]);
    // At a time between the two creates: the same.
    let at_time: serde_json::Value = serde_json::from_str(&berth(&["replay", "--until", &between, "--json"], &server.data_dir)).unwrap();
    assert_eq!(at_time["volumes"], at_position["volumes"]);
    // Now: only "second".
    let now = berth(&["replay", "--until", "999999999", "--json"], &server.data_dir);
    let now: serde_json::Value = serde_json::from_str(&now).unwrap();
    assert_eq!(now["volumes"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["second"]);

    let audit = berth(&["audit", "--kind", "volume", "--json"], &server.data_dir);
    let entries: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let described: Vec<(String, String)> =
        entries.iter().map(|e| (e["event"].as_str().unwrap().to_string(), e["stream"].as_str().unwrap().to_string())).collect();
    assert_eq!(
        described,
        vec![
            ("VolumeCreated".to_string(), "volume/first".to_string()),
            ("VolumeCreated".to_string(), "volume/second".to_string()),
            ("VolumeRemoved".to_string(), "volume/first".to_string()),
        ]
    );
    assert!(entries.iter().all(|e| e["actor"] == "docker"));
    let by_id = berth(&["audit", "--id", "sec"], &server.data_dir);
    assert_eq!(by_id.lines().count(), 1, "{by_id}");
    // The portal's live stream carries each object's view as it was after each event.
    let portal = support::wait_for_line(&server.stdout_lines, "portal listening on http://", std::time::Duration::from_secs(30));
    let (status, _, body) = support::http_request(&portal, "GET", "/api/events?kind=volume&follow=false&views=true", None);
    assert_eq!(status, 200);
    let views: Vec<serde_json::Value> = body
        .split("\n\n")
        .filter(|block| block.contains("event: view"))
        .map(|block| serde_json::from_str(block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap())
        .collect();
    assert_eq!(views.len(), 3, "{body}");
    assert_eq!(views[0]["view"]["name"], "first");
    assert_eq!(views[1]["view"]["name"], "second");
    assert!(views[2]["view"].is_null(), "a removed volume has no view: {}", views[2]);
    // Bad input gets a clear error.
    let output = Command::new(support::berth_binary())
        .args(["replay", "--until", "yesterday", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("neither a position"));
}
