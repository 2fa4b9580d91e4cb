//! `berth vch ...` on the wire: the real binary against a tiny fake admin API
//! that records each request (method, path, JSON body) and answers canned
//! JSON. It checks what the CLI sends and how it reports answers and
//! failures; the end-to-end run against berth and vcsim lives elsewhere.
//!
//! Self-contained on purpose (no `mod support`): these tests need no berth
//! server, so they stay fast and independent of the shared helpers. The TLS
//! tests make their certificates with the openssl command line tool.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// One request the fake admin API received.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    body: String,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("body {:?} is not JSON: {error}", self.body))
    }
}

/// A fake admin API on a free loopback port: it answers the canned
/// responses in order, one per connection, then closes its listener.
struct FakeAdmin {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeAdmin {
    fn start(responses: Vec<(u16, String)>) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake admin API");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for (status, body) in responses {
                let Ok((stream, _)) = listener.accept() else { return };
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut parts = request_line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            content_length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut request_body = vec![0; content_length];
                let _ = reader.read_exact(&mut request_body);
                recorded.lock().unwrap().push(Recorded { method, path, body: String::from_utf8_lossy(&request_body).into_owned() });
                let reason = match status {
                    200 => "OK",
                    201 => "Created",
                    204 => "No Content",
                    400 => "Bad Request",
                    404 => "Not Found",
                    409 => "Conflict",
                    502 => "Bad Gateway",
                    _ => "Whatever",
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeAdmin { url, requests }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        requests[0].clone()
    }
}

struct Output {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `berth vch ARGS` with a clean environment for berth's variables.
fn berth_vch(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command.arg("vch").args(args).stdin(Stdio::null());
    for name in ["BERTH_SERVER", "BERTH_TARGET", "BERTH_USER", "BERTH_PASSWORD"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("run berth");
    Output {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn vch_info(name: &str, docker_host: &str) -> Value {
    json!({
        "name": name,
        "target": "https://vc.example/sdk",
        "user": "administrator@vsphere.local",
        "volume_stores": ["datastore1/volumes:default"],
        "container_networks": ["pg1:net1"],
        "memory_mib": 4096,
        "cpu_mhz": 0,
        "containers_max": 50,
        "version": "0.1.0",
        "docker_host": docker_host,
        "container_count": 3,
        "running_count": 1,
        "drift_count": 0,
        "created": "2025-01-01T00:00:00Z"
    })
}

fn vch_info_with_tls(name: &str, docker_host: &str, docker_tls: &str) -> Value {
    let mut info = vch_info(name, docker_host);
    info["docker_tls"] = json!(docker_tls);
    info
}

/// TLS files as an administrator makes them: a self-signed certificate for
/// 127.0.0.1 with its key (it serves as the client CA too), and a second key
/// that belongs to no certificate.
struct TlsFiles {
    _directory: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    other_key: PathBuf,
}

impl TlsFiles {
    fn make() -> TlsFiles {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let dir = directory.path();
        std::fs::write(dir.join("req.cnf"), "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n[dn]\nCN = 127.0.0.1\n\
             [ext]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, keyCertSign\nsubjectAltName = IP:127.0.0.1\n").unwrap();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|error| panic!("these tests need the openssl command line tool: {error}"));
            assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        for key in ["key.pem", "other-key.pem"] {
            openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key]);
        }
        openssl(&["req", "-x509", "-config", "req.cnf", "-key", "key.pem", "-days", "2", "-out", "cert.pem"]);
        TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem"), other_key: dir.join("other-key.pem"), _directory: directory }
    }

    fn dir(&self) -> &Path {
        self.cert.parent().unwrap()
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// `create` with the options every create needs, then `extra`.
fn create_with(admin: &FakeAdmin, extra: &[&str]) -> Output {
    let mut args = vec!["create", "--server", &admin.url, "--target", "vc.example", "--user", "u", "--password", "p"];
    args.extend_from_slice(extra);
    berth_vch(&args, &[])
}

/// An address nothing listens on: a port the system handed out, then released.
fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[test]
fn create_sends_the_options_as_json_and_prints_docker_host() {
    let admin = FakeAdmin::start(vec![(201, vch_info("vch1", "tcp://127.0.0.1:23750").to_string())]);
    let output = berth_vch(
        &[
            "create",
            "--server",
            &admin.url,
            "--target",
            "https://vc.example/sdk",
            "--user",
            "administrator@vsphere.local",
            "--password",
            "s3cret",
            "--thumbprint",
            "AB:CD:EF",
            "--name",
            "vch1",
            "--compute-resource",
            "cluster1",
            "--image-store",
            "datastore1",
            "--volume-store",
            "datastore1/volumes:default",
            "--volume-store",
            "datastore2:backup",
            "--bridge-network",
            "bridge-pg",
            "--public-network",
            "VM Network",
            "--container-network",
            "pg1:net1",
            "--container-network",
            "pg2",
            "--memory",
            "4096",
            "--cpu",
            "2000",
            "--containers",
            "50",
            "--docker-listen",
            "127.0.0.1:0",
            "--no-tls",
        ],
        &[],
    );
    assert!(output.success, "{}", output.stderr);
    let request = admin.only_request();
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/api/vchs"));
    assert_eq!(
        request.json(),
        json!({
            "name": "vch1",
            "target": "https://vc.example/sdk",
            "user": "administrator@vsphere.local",
            "password": "s3cret",
            "thumbprint": "AB:CD:EF",
            "compute_resource": "cluster1",
            "image_store": "datastore1",
            "volume_stores": ["datastore1/volumes:default", "datastore2:backup"],
            "bridge_network": "bridge-pg",
            "public_network": "VM Network",
            "container_networks": ["pg1:net1", "pg2"],
            "memory_mib": 4096,
            "cpu_mhz": 2000,
            "containers": 50,
            "docker_listen": "127.0.0.1:0"
        }),
        "absent options (client and management networks) are left out"
    );
    assert!(output.stdout.contains("export DOCKER_HOST=tcp://127.0.0.1:23750\n"), "{}", output.stdout);
    assert!(output.stdout.contains("docker -H tcp://127.0.0.1:23750 info"), "{}", output.stdout);
    assert!(output.stdout.contains("VCH name: vch1"), "{}", output.stdout);
    assert!(output.stdout.contains("VCH version: 0.1.0"), "{}", output.stdout);
    assert!(!output.stdout.contains("DOCKER_TLS") && !output.stdout.contains("--tls"), "plain HTTP wants no TLS hints: {}", output.stdout);
}

#[test]
fn create_takes_its_defaults_and_credentials_from_the_environment_and_target() {
    let admin = FakeAdmin::start(vec![(201, vch_info("virtual-container-host", "tcp://127.0.0.1:2375").to_string())]);
    let output = berth_vch(
        &["create"],
        &[("BERTH_SERVER", &admin.url), ("BERTH_TARGET", "https://root:p%40ss@vc.example/sdk"), ("BERTH_PASSWORD", "from-env")],
    );
    assert!(output.success, "{}", output.stderr);
    let body = admin.only_request().json();
    assert_eq!(body["name"], "virtual-container-host");
    // The target is logged by the server; its credentials must not be.
    assert_eq!(body["target"], "https://vc.example/sdk");
    assert_eq!(body["user"], "root");
    assert_eq!(body["password"], "from-env", "BERTH_PASSWORD wins over the password in the target");
    assert_eq!(body["volume_stores"], json!([]));
    assert!(body.get("thumbprint").is_none(), "{body}");
}

#[test]
fn create_prints_the_servers_refusal_and_fails() {
    let admin = FakeAdmin::start(vec![(400, json!({"message": "datastore \"nope\" not found"}).to_string())]);
    let output = berth_vch(
        &["create", "--server", &admin.url, "--target", "vc.example", "--user", "u", "--password", "p", "--image-store", "nope"],
        &[],
    );
    assert!(!output.success);
    assert_eq!(output.code, Some(1));
    assert!(output.stderr.contains("Error: datastore \"nope\" not found (HTTP 400 Bad Request)"), "{}", output.stderr);
    assert!(!output.stdout.contains("DOCKER_HOST"), "{}", output.stdout);
    assert!(!output.stderr.contains("panicked"), "{}", output.stderr);
}

#[test]
fn create_sends_the_tls_files_as_pem_and_prints_the_tlsverify_hints() {
    let files = TlsFiles::make();
    let second_ca = files.dir().join("second-ca.pem");
    std::fs::write(&second_ca, read(&files.cert).trim_end()).unwrap();
    let admin = FakeAdmin::start(vec![(201, vch_info_with_tls("vch1", "tcp://192.168.1.10:2376", "tlsverify").to_string())]);
    let output = create_with(
        &admin,
        &[
            "--name",
            "vch1",
            "--docker-listen",
            "192.168.1.10:2376",
            "--tls-server-cert",
            path(&files.cert),
            "--tls-server-key",
            path(&files.key),
            "--tls-ca",
            path(&files.cert),
            "--tls-ca",
            path(&second_ca),
        ],
    );
    assert!(output.success, "{}", output.stderr);
    let body = admin.only_request().json();
    // PEM texts, not paths: the server may run on another machine.
    assert_eq!(body["tls_server_cert_pem"], read(&files.cert));
    assert_eq!(body["tls_server_key_pem"], read(&files.key));
    assert_eq!(
        body["tls_ca_pem"],
        format!("{}{}", read(&files.cert), read(&files.cert).trim_end()),
        "the CA files one after the other, a newline between them"
    );
    assert_eq!(body["docker_listen"], "192.168.1.10:2376");
    for expected in [
        "export DOCKER_HOST=tcp://192.168.1.10:2376\n",
        "export DOCKER_TLS_VERIFY=1\n",
        "DOCKER_CERT_PATH",
        "docker -H tcp://192.168.1.10:2376 --tlsverify --tlscacert ca.pem --tlscert cert.pem --tlskey key.pem info\n",
        "Completed successfully",
    ] {
        assert!(output.stdout.contains(expected), "{expected}: {}", output.stdout);
    }
    assert!(!output.stdout.contains("docker -H tcp://192.168.1.10:2376 info"), "no plain-HTTP hint: {}", output.stdout);
}

#[test]
fn create_with_no_tlsverify_sends_no_ca_and_prints_the_tls_hints() {
    let files = TlsFiles::make();
    let admin = FakeAdmin::start(vec![(201, vch_info_with_tls("vch1", "tcp://127.0.0.1:2376", "tls").to_string())]);
    let output = create_with(&admin, &["--tls-server-cert", path(&files.cert), "--tls-server-key", path(&files.key), "--no-tlsverify"]);
    assert!(output.success, "{}", output.stderr);
    let body = admin.only_request().json();
    assert_eq!(body["tls_server_cert_pem"], read(&files.cert));
    assert_eq!(body["tls_server_key_pem"], read(&files.key));
    assert!(body.get("tls_ca_pem").is_none(), "{body}");
    for expected in ["export DOCKER_TLS=1\n", "docker -H tcp://127.0.0.1:2376 --tls info\n"] {
        assert!(output.stdout.contains(expected), "{expected}: {}", output.stdout);
    }
    assert!(!output.stdout.contains("DOCKER_TLS_VERIFY"), "{}", output.stdout);
}

#[test]
fn create_wants_both_or_neither_of_the_server_certificate_and_key() {
    let files = TlsFiles::make();
    let admin = FakeAdmin::start(vec![(201, "{}".to_string())]);
    let cert_only = create_with(&admin, &["--tls-server-cert", path(&files.cert)]);
    assert!(!cert_only.success);
    assert!(cert_only.stderr.contains("Error: --tls-server-cert needs --tls-server-key: give both or neither"), "{}", cert_only.stderr);
    let key_only = create_with(&admin, &["--tls-server-key", path(&files.key), "--tls-ca", path(&files.cert)]);
    assert!(!key_only.success);
    assert!(key_only.stderr.contains("Error: --tls-server-key needs --tls-server-cert: give both or neither"), "{}", key_only.stderr);
    assert!(admin.requests().is_empty(), "refused before any request: {:?}", admin.requests());
}

#[test]
fn create_refuses_conflicting_or_unsupported_tls_options() {
    let files = TlsFiles::make();
    let (cert, key) = (path(&files.cert), path(&files.key));
    let admin = FakeAdmin::start(vec![(201, "{}".to_string())]);
    let generation = "berth does not generate certificates yet: pass --tls-server-cert and --tls-server-key";
    for (extra, expected) in [
        (
            &["--no-tls", "--tls-server-cert", cert, "--tls-server-key", key][..],
            "Error: --no-tls serves plain HTTP; it cannot go with --tls-server-cert, --tls-server-key".to_string(),
        ),
        (&["--no-tls", "--no-tlsverify"], "Error: --no-tls serves plain HTTP; it cannot go with --no-tlsverify".to_string()),
        (
            &["--tls-server-cert", cert, "--tls-server-key", key, "--tls-ca", cert, "--no-tlsverify"],
            "Error: --no-tlsverify lets clients in without a certificate; it cannot go with --tls-ca, which requires one".to_string(),
        ),
        (&["--tls-cname", "vch.example"], format!("Error: --tls-cname: {generation}")),
        (&["--tls-cname", "vch.example", "--tls-server-cert", cert, "--tls-server-key", key], format!("Error: --tls-cname: {generation}")),
        (&["--tls-ca", cert], format!("Error: --tls-ca needs TLS, and {generation}")),
        (&["--no-tlsverify"], format!("Error: --no-tlsverify needs TLS, and {generation}")),
    ] {
        let output = create_with(&admin, extra);
        assert!(!output.success, "{extra:?}");
        assert!(output.stderr.contains(&expected), "{extra:?}: want {expected:?}, got {}", output.stderr);
    }
    assert!(admin.requests().is_empty(), "refused before any request: {:?}", admin.requests());
}

#[test]
fn create_checks_the_tls_files_before_calling_the_server() {
    let files = TlsFiles::make();
    let (cert, key) = (path(&files.cert), path(&files.key));
    let garbage = files.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let binary = files.dir().join("binary.der");
    std::fs::write(&binary, [0x30u8, 0x82, 0xff, 0xfe, 0x00]).unwrap();
    let missing = files.dir().join("missing.pem");
    let admin = FakeAdmin::start(vec![(201, "{}".to_string())]);
    for (extra, expected) in [
        (vec!["--tls-server-cert", cert, "--tls-server-key", path(&files.other_key)], "the key does not match the certificate".to_string()),
        (vec!["--tls-server-cert", path(&garbage), "--tls-server-key", key], "the server certificate PEM holds no certificate".to_string()),
        (vec!["--tls-server-cert", key, "--tls-server-key", cert], "holds no certificate but a private key".to_string()),
        (
            vec!["--tls-server-cert", cert, "--tls-server-key", key, "--tls-ca", path(&garbage)],
            "the client CA PEM holds no certificate".to_string(),
        ),
        (vec!["--tls-server-cert", path(&missing), "--tls-server-key", key], format!("Error: --tls-server-cert {}: ", path(&missing))),
        (vec!["--tls-server-cert", cert, "--tls-server-key", path(&binary)], "not a PEM text file".to_string()),
    ] {
        let output = create_with(&admin, &extra);
        assert!(!output.success, "{extra:?}");
        assert!(output.stderr.contains(&expected), "{extra:?}: want {expected:?}, got {}", output.stderr);
        assert!(!output.stderr.contains("panicked"), "{extra:?}: {}", output.stderr);
    }
    assert!(admin.requests().is_empty(), "refused before any request: {:?}", admin.requests());
}

#[test]
fn create_requires_a_password() {
    let admin = FakeAdmin::start(vec![(201, "{}".to_string())]);
    let output = berth_vch(&["create", "--server", &admin.url, "--target", "vc.example", "--user", "u"], &[]);
    assert!(!output.success);
    assert!(output.stderr.contains("--password or BERTH_PASSWORD is required"), "{}", output.stderr);
    assert!(admin.requests().is_empty());
}

#[test]
fn delete_sends_force_only_when_asked() {
    let admin = FakeAdmin::start(vec![(204, String::new()), (204, String::new())]);
    let forced = berth_vch(&["delete", "--server", &admin.url, "--name", "vch1", "--force"], &[]);
    assert!(forced.success, "{}", forced.stderr);
    let polite = berth_vch(&["delete", "--server", &admin.url, "--name", "my vch"], &[]);
    assert!(polite.success, "{}", polite.stderr);
    let requests = admin.requests();
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("DELETE", "/api/vchs/vch1?force=true"));
    assert_eq!((requests[1].method.as_str(), requests[1].path.as_str()), ("DELETE", "/api/vchs/my%20vch"));
    assert!(forced.stdout.contains("VCH \"vch1\" deleted"), "{}", forced.stdout);
}

#[test]
fn delete_of_a_vch_with_containers_shows_the_conflict() {
    let admin = FakeAdmin::start(vec![(409, json!({"message": "VCH vch1 still holds 3 containers; use --force"}).to_string())]);
    let output = berth_vch(&["delete", "--server", &admin.url, "--name", "vch1"], &[]);
    assert!(!output.success);
    assert!(output.stderr.contains("Error: VCH vch1 still holds 3 containers; use --force (HTTP 409 Conflict)"), "{}", output.stderr);
}

#[test]
fn configure_sends_only_the_given_fields() {
    let admin = FakeAdmin::start(vec![(200, vch_info("vch1", "tcp://127.0.0.1:2375").to_string())]);
    let output = berth_vch(
        &[
            "configure",
            "--server",
            &admin.url,
            "--name",
            "vch1",
            "--memory",
            "2048",
            "--container-network",
            "pg1:a",
            "--container-network",
            "pg2:b",
        ],
        // Exported for create; configure must not turn it into a credential change.
        &[("BERTH_PASSWORD", "stale"), ("BERTH_USER", "someone")],
    );
    assert!(output.success, "{}", output.stderr);
    let request = admin.only_request();
    assert_eq!((request.method.as_str(), request.path.as_str()), ("PUT", "/api/vchs/vch1"));
    assert_eq!(request.json(), json!({"memory_mib": 2048, "container_networks": ["pg1:a", "pg2:b"]}));
    assert!(output.stdout.contains("VCH \"vch1\" configured"), "{}", output.stdout);
}

#[test]
fn configure_without_changes_is_refused_locally() {
    let admin = FakeAdmin::start(vec![(200, "{}".to_string())]);
    let output = berth_vch(&["configure", "--server", &admin.url, "--name", "vch1"], &[]);
    assert!(!output.success);
    assert!(output.stderr.contains("nothing to configure"), "{}", output.stderr);
    assert!(admin.requests().is_empty());
}

#[test]
fn upgrade_posts_and_prints_the_new_version() {
    let admin = FakeAdmin::start(vec![(200, vch_info("vch1", "tcp://127.0.0.1:2375").to_string())]);
    let output = berth_vch(&["upgrade", "--server", &admin.url, "--name", "vch1"], &[]);
    assert!(output.success, "{}", output.stderr);
    let request = admin.only_request();
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/api/vchs/vch1/upgrade"));
    assert!(output.stdout.contains("VCH \"vch1\" upgraded to version 0.1.0"), "{}", output.stdout);
}

#[test]
fn ls_uses_berth_server_and_prints_a_table_or_json() {
    let list = json!([vch_info("vch1", "tcp://127.0.0.1:2375"), vch_info("vch-two", "tcp://127.0.0.1:2376")]).to_string();
    let admin = FakeAdmin::start(vec![(200, list.clone()), (200, list)]);
    let output = berth_vch(&["ls"], &[("BERTH_SERVER", &admin.url)]);
    assert!(output.success, "{}", output.stderr);
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", output.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "TARGET", "VERSION", "CONTAINERS", "DOCKER_HOST"]);
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row, ["vch-two", "https://vc.example/sdk", "0.1.0", "3", "tcp://127.0.0.1:2376"]);
    let json_output = berth_vch(&["ls", "--format", "json"], &[("BERTH_SERVER", &admin.url)]);
    assert!(json_output.success, "{}", json_output.stderr);
    let parsed: Value = serde_json::from_str(&json_output.stdout).expect("ls --format json prints JSON");
    assert_eq!(parsed[1]["name"], "vch-two");
    let requests = admin.requests();
    assert!(requests.iter().all(|request| request.method == "GET" && request.path == "/api/vchs"), "{requests:?}");
}

#[test]
fn inspect_prints_key_value_lines_and_docker_host() {
    let info = vch_info("vch1", "tcp://127.0.0.1:2375").to_string();
    let admin = FakeAdmin::start(vec![(200, info.clone()), (200, info)]);
    let output = berth_vch(&["inspect", "--server", &admin.url, "--name", "vch1"], &[]);
    assert!(output.success, "{}", output.stderr);
    assert_eq!(admin.requests()[0].path, "/api/vchs/vch1");
    for expected in
        ["name:", "target:", "https://vc.example/sdk", "4096 MiB", "3 (1 running) of at most 50", "DOCKER_HOST=tcp://127.0.0.1:2375"]
    {
        assert!(output.stdout.contains(expected), "{expected}: {}", output.stdout);
    }
    assert!(output.stdout.contains("docker api:") && output.stdout.contains("plain HTTP"), "{}", output.stdout);
    let json_output = berth_vch(&["inspect", "--server", &admin.url, "--name", "vch1", "--format", "json"], &[]);
    let parsed: Value = serde_json::from_str(&json_output.stdout).expect("inspect --format json prints JSON");
    assert_eq!(parsed["docker_host"], "tcp://127.0.0.1:2375");
}

#[test]
fn inspect_shows_the_docker_apis_tls_and_how_to_connect() {
    let admin = FakeAdmin::start(vec![
        (200, vch_info_with_tls("vch1", "tcp://10.0.0.5:2376", "tlsverify").to_string()),
        (200, vch_info_with_tls("vch2", "tcp://10.0.0.6:2376", "tls").to_string()),
    ]);
    let verify = berth_vch(&["inspect", "--server", &admin.url, "--name", "vch1"], &[]);
    assert!(verify.success, "{}", verify.stderr);
    for expected in [
        "TLS, client certificates required (tlsverify)",
        "\nDOCKER_HOST=tcp://10.0.0.5:2376\n",
        "\nDOCKER_TLS_VERIFY=1\n",
        "docker -H tcp://10.0.0.5:2376 --tlsverify --tlscacert ca.pem --tlscert cert.pem --tlskey key.pem info",
    ] {
        assert!(verify.stdout.contains(expected), "{expected}: {}", verify.stdout);
    }
    let tls = berth_vch(&["inspect", "--server", &admin.url, "--name", "vch2"], &[]);
    assert!(tls.success, "{}", tls.stderr);
    for expected in ["TLS, no client certificates (tls)", "\nDOCKER_TLS=1\n", "docker -H tcp://10.0.0.6:2376 --tls info"] {
        assert!(tls.stdout.contains(expected), "{expected}: {}", tls.stdout);
    }
}

#[test]
fn an_unreachable_server_is_named_with_a_hint() {
    let url = unreachable_url();
    let output = berth_vch(&["ls", "--server", &url], &[]);
    assert!(!output.success);
    assert!(output.stderr.contains(&format!("cannot reach berth's admin API at {url}")), "{}", output.stderr);
    assert!(output.stderr.contains("(is `berth serve` running? set --server or BERTH_SERVER)"), "{}", output.stderr);
    let from_env = berth_vch(&["inspect", "--name", "vch1"], &[("BERTH_SERVER", &url)]);
    assert!(from_env.stderr.contains(&format!("cannot reach berth's admin API at {url}")), "{}", from_env.stderr);
}

#[test]
fn answers_that_are_not_the_expected_json_fail_cleanly() {
    let admin = FakeAdmin::start(vec![(502, "<html>bad gateway</html>".to_string()), (200, "not json".to_string())]);
    let gateway = berth_vch(&["ls", "--server", &admin.url], &[]);
    assert!(!gateway.success);
    assert!(gateway.stderr.contains("Error: <html>bad gateway</html> (HTTP 502 Bad Gateway)"), "{}", gateway.stderr);
    let garbage = berth_vch(&["inspect", "--server", &admin.url, "--name", "vch1"], &[]);
    assert!(!garbage.success);
    assert!(garbage.stderr.contains("answered /api/vchs/vch1 with something unexpected"), "{}", garbage.stderr);
    for output in [gateway, garbage] {
        assert!(!output.stderr.contains("panicked"), "{}", output.stderr);
    }
}

#[test]
fn bad_input_is_refused_without_a_panic() {
    let url = unreachable_url();
    for args in [
        &["create", "--server", &url, "--target", "vc", "--memory", "lots"][..],
        &["ls", "--server", &url, "--timeout", "forever"],
        &["ls", "--server", "ftp://example"],
        &["ls", "--server", &url, "--timeout", "0s"],
        &["ls", "--server", &url, "--format", "yaml"],
        &["inspect", "--server", &url],
    ] {
        let output = berth_vch(args, &[]);
        assert!(!output.success, "{args:?}");
        assert!(!output.stderr.contains("panicked"), "{args:?}: {}", output.stderr);
        assert!(!output.stderr.contains("cannot reach"), "{args:?} is refused before any request: {}", output.stderr);
    }
}
