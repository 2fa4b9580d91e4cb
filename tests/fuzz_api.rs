//! Random bodies and paths thrown at the create, exec, network and volume
//! endpoints of a running berth: every answer is a Docker-style error or a
//! success (never a 5xx, a hang or a dropped connection), and afterwards the
//! server still answers and its log still verifies.

mod support;

use support::{http_request, Server};

/// A small deterministic generator (xorshift64*), seeded per run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn text(&mut self) -> String {
        let length = (self.next() % 24) as usize;
        (0..length).map(|_| self.pick(&["a", "Z", "0", "-", "_", ".", "/", ":", "%", "é", "\"", "{", "}", "[", " ", "\\n"])).collect()
    }
}

fn value(random: &mut Random, depth: u32) -> String {
    match random.next() % if depth > 2 { 5 } else { 7 } {
        0 => "null".into(),
        1 => (random.next() % 100_000).to_string(),
        2 => format!("{:?}", random.text()),
        3 => random.pick(&["true", "false", "-1", "1e999", "\"\""]).into(),
        4 => format!("{:?}", random.pick(&["busybox", "bridge", "none", "host", "/data", "80/tcp", "KILL"])),
        5 => format!("[{}]", (0..random.next() % 3).map(|_| value(random, depth + 1)).collect::<Vec<_>>().join(",")),
        _ => {
            let keys = [
                "Image",
                "Cmd",
                "Entrypoint",
                "Env",
                "HostConfig",
                "Name",
                "Driver",
                "Labels",
                "IPAM",
                "Config",
                "Subnet",
                "Binds",
                "PortBindings",
                "NetworkMode",
                "Memory",
                "AttachStdin",
                "Tty",
                "Container",
                "EndpointConfig",
                "Internal",
                "Volumes",
                "ExposedPorts",
            ];
            let fields: Vec<String> =
                (0..random.next() % 5).map(|_| format!("{:?}:{}", random.pick(&keys), value(random, depth + 1))).collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

#[test]
fn random_requests_never_break_the_server() {
    let server = Server::start();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("fuzz seed {seed} (set BERTH_FUZZ_SEED to replay)");
    let seed = std::env::var("BERTH_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
    let mut random = Random(seed);
    let paths = [
        "/v1.47/containers/create",
        "/v1.47/containers/create?name=",
        "/v1.47/containers/x/exec",
        "/v1.47/exec/x/start",
        "/v1.47/networks/create",
        "/v1.47/networks/bridge/connect",
        "/v1.47/networks/x/disconnect",
        "/v1.47/volumes/create",
        "/v1.47/containers/x/update",
        "/v1.47/containers/x/kill?signal=",
        "/v1.47/containers/json?filters=",
    ];
    for round in 0..400 {
        let path =
            format!("{}{}", random.pick(&paths), random.text().replace(' ', "%20").replace('\n', "").replace('"', "%22").replace('\\', ""));
        let path = if path.contains("/x/") {
            path.replace("/x/", &format!("/{}/", random.pick(&["x", "bridge", "nope", "%2e%2e", "0"])))
        } else {
            path
        };
        let method = if path.contains("json?") { "GET" } else { "POST" };
        let body = value(&mut random, 0);
        let (status, _, response) = http_request(&server.docker_address, method, &path, Some(&body));
        assert!(status != 0, "round {round} (seed {seed}): no answer to {method} {path} {body}");
        assert!(status < 500, "round {round} (seed {seed}): {status} for {method} {path} {body}: {response}");
        if status >= 400 {
            let parsed: serde_json::Value =
                serde_json::from_str(&response).unwrap_or_else(|_| panic!("round {round}: error body is not JSON: {response}"));
            assert!(parsed["message"].is_string(), "round {round}: {response}");
        }
    }
    assert_eq!(server.get("/_ping").0, 200);
    drop(server);
}
