//! Shared helpers for the black-box tests: start `berth serve` on free
//! ports with its own data directory, and stop it on drop.

#![allow(dead_code)]

pub mod soap_proxy;
pub mod vcsim;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn berth_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// A running `berth serve`, killed (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub docker_address: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub stdout_lines: mpsc::Receiver<String>,
    _slot: AddressSlot,
}

/// A claimed index 10..250 for a test server's subnets, held by a file that
/// names the owning process; slots of dead processes are reclaimed.
pub struct AddressSlot {
    pub index: u32,
    path: PathBuf,
}

impl AddressSlot {
    pub fn claim() -> AddressSlot {
        let dir = PathBuf::from("/tmp/berth-test-slots");
        std::fs::create_dir_all(&dir).expect("slot dir");
        let me = std::process::id();
        for _ in 0..3 {
            for index in 10..250u32 {
                let path = dir.join(format!("slot-{index}"));
                match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut file) => {
                        use std::io::Write;
                        let _ = write!(file, "{me}");
                        return AddressSlot { index, path };
                    }
                    Err(_) => {
                        let owner: Option<i32> = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
                        // SAFETY: kill with signal 0 only checks that the process exists.
                        let alive = owner.map(|pid| unsafe { libc::kill(pid, 0) } == 0).unwrap_or(true);
                        if !alive {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
            }
        }
        panic!("no free test address slot in /tmp/berth-test-slots");
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    pub fn start() -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut server = Server::start_in(temp.path(), &[]);
        server._temp = Some(temp);
        server
    }

    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Server {
        // Every server gets its own address space, so that parallel tests never
        // put two bridges on one subnet.
        let slot = AddressSlot::claim();
        let bip = format!("10.{}.0.1/24", slot.index);
        let pool = format!("base=10.{}.128.0/17,size=24", slot.index);
        let mut command = Command::new(berth_binary());
        command.args(["serve", "--docker-listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
        if !extra_args.contains(&"--bip") {
            command.args(["--bip", &bip, "--default-address-pool", &pool]);
        }
        // The portal's default port (8080) would collide between parallel tests.
        if !extra_args.contains(&"--portal-listen") {
            command.args(["--portal-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(extra_args)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting berth serve");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut docker_address = None;
        while docker_address.is_none() {
            let line = receiver.recv_timeout(Duration::from_secs(120)).expect("berth serve printed its address");
            if let Some(rest) = line.split("Docker API listening on tcp://").nth(1) {
                docker_address = Some(rest.split_whitespace().next().unwrap().to_string());
            }
        }
        Server {
            child,
            docker_address: docker_address.unwrap(),
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            stdout_lines: receiver,
            _slot: slot,
        }
    }

    pub fn docker_host(&self) -> String {
        format!("tcp://{}", self.docker_address)
    }

    /// A raw HTTP/1.1 GET; returns (status, headers, body).
    pub fn get(&self, path: &str) -> (u16, String, String) {
        http_request(&self.docker_address, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String, String) {
        http_request(&self.docker_address, "POST", path, Some(body))
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("waiting for berth")
    }
}

impl Server {
    /// Removes every container and user network through the API and waits
    /// until the runtime has destroyed them, so no shim outlives the test.
    pub fn remove_all(&self) {
        let (_, _, body) = self.get("/containers/json?all=1");
        if let Ok(serde_json::Value::Array(containers)) = serde_json::from_str::<serde_json::Value>(&body) {
            for container in containers {
                if let Some(id) = container["Id"].as_str() {
                    http_request(&self.docker_address, "DELETE", &format!("/containers/{id}?force=1&v=1"), None);
                }
            }
        }
        let (_, _, body) = self.get("/networks");
        if let Ok(serde_json::Value::Array(networks)) = serde_json::from_str::<serde_json::Value>(&body) {
            for network in networks {
                let name = network["Name"].as_str().unwrap_or_default();
                if !["bridge", "host", "none"].contains(&name) {
                    http_request(
                        &self.docker_address,
                        "DELETE",
                        &format!("/networks/{}", network["Id"].as_str().unwrap_or_default()),
                        None,
                    );
                }
            }
        }
        let containers_dir = self.data_dir.join("containers");
        for _ in 0..200 {
            let empty = std::fs::read_dir(&containers_dir).map(|mut d| d.next().is_none()).unwrap_or(true);
            if empty {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Deletes the bridges and firewall rules left on this slot's subnets.
fn clean_slot_network(index: u32) {
    let script = format!(
        "for dev in $(ip -o -4 addr show | awk '$4 ~ /^10\\.{index}\\./ {{print $2}}'); do \
           for table in nat filter; do iptables -w -t $table -S 2>/dev/null | grep -- \"$dev\" | sed 's/^-A /-D /' | \
             while read -r rule; do eval iptables -w -t $table $rule 2>/dev/null; done; done; \
           ip link del \"$dev\" 2>/dev/null; done; \
         for table in nat filter; do iptables -w -t $table -S 2>/dev/null | grep -- ' 10\\.{index}\\.' | sed 's/^-A /-D /' | \
         while read -r rule; do eval iptables -w -t $table $rule 2>/dev/null; done; done; true"
    );
    let _ = Command::new("sh").args(["-c", &script]).status();
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.remove_all();
        }
        self.stop_process();
        clean_slot_network(self._slot.index);
    }
}

impl Server {
    fn stop_process(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn http_request(address: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, head.to_string(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Waits for a line containing `needle` and returns the first word after it
/// (e.g. the portal's address after "portal listening on http://").
pub fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(remaining).unwrap_or_else(|_| panic!("no line with {needle:?} within {timeout:?}"));
        if let Some(rest) = line.split(needle).nth(1) {
            return rest.split_whitespace().next().unwrap_or("").to_string();
        }
    }
}
