//! `berth serve` end to end: it starts on its defaults in a fresh data
//! directory, answers `/_ping` and `/version` (with and without a version
//! prefix), refuses bad versions in Docker's words, stops cleanly on SIGTERM
//! and SIGINT, and comes back with its state.

mod support;

use support::Server;

#[test]
fn serves_ping_and_version_and_stops_cleanly() {
    let mut server = Server::start();
    let (status, headers, body) = server.get("/_ping");
    assert_eq!(status, 200);
    assert_eq!(body, "OK");
    assert!(headers.to_ascii_lowercase().contains("api-version: 1.47"), "{headers}");
    let (status, _, body) = server.get("/v1.44/version");
    assert_eq!(status, 200);
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["ApiVersion"], "1.47");
    assert_eq!(version["Os"], "linux");
    let (status, _, body) = server.get("/v1.99/version");
    assert_eq!(status, 400);
    assert!(body.contains("client version 1.99 is too new"), "{body}");
    let (status, _, body) = server.get("/v1.12/version");
    assert_eq!(status, 400);
    assert!(body.contains("too old"), "{body}");
    let (status, _, body) = server.get("/no/such/endpoint");
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["message"], "page not found");
    let status = server.terminate();
    assert!(status.success(), "berth exits 0 on SIGTERM: {status:?}");
}

#[test]
fn restarts_on_the_same_log_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start_in(dir.path(), &[]);
    assert_eq!(first.get("/_ping").0, 200);
    first.terminate();
    let mut second = Server::start_in(dir.path(), &[]);
    assert_eq!(second.get("/_ping").0, 200);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(second.child.id() as i32, libc::SIGINT) };
    let status = second.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The bootstrap ran once: one VCH and three networks, whatever the restarts.
    let output = std::process::Command::new(support::berth_binary())
        .args(["log", "tail", "-n", "100", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.matches("VchCreated").count(), 1, "{text}");
    assert_eq!(text.matches("NetworkCreated").count(), 3, "{text}");
    let verify =
        std::process::Command::new(support::berth_binary()).args(["log", "verify", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("ok: 4 events"));
}

#[test]
fn refuses_a_non_loopback_listener_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(support::berth_binary())
        .args(["serve", "--docker-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("without TLS"));
}
