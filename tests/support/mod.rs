//! Shared helpers for the black-box tests: start `berth serve` on free
//! ports with its own data directory, and stop it on drop.

#![allow(dead_code)]

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
}

impl Server {
    pub fn start() -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut server = Server::start_in(temp.path(), &[]);
        server._temp = Some(temp);
        server
    }

    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Server {
        let mut child = Command::new(berth_binary())
            .args(["serve", "--docker-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
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
        Server { child, docker_address: docker_address.unwrap(), data_dir: data_dir.to_path_buf(), _temp: None, stdout_lines: receiver }
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

impl Drop for Server {
    fn drop(&mut self) {
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
