//! vcsim, govmomi's vSphere simulator, as a child process: what berth's
//! vSphere tests and `berth bench vsphere` run against.
//!
//! The binary is `$BERTH_VCSIM`, or what `scripts/vcsim.sh` builds from
//! Debian's govmomi sources and prints. Started with `-listen 127.0.0.1:0`, it
//! prints one line `VCSIM_URL=... VCSIM_USER=... VCSIM_PASSWORD=...
//! VCSIM_THUMBPRINT=...` and serves until its standard input closes; then it
//! removes its datastores' temporary directories and exits. [`Simulator`]
//! closes that input on drop (and kills vcsim if it lingers), so a simulator
//! never outlives its owner nor leaves files behind.

use crate::client::ConnectOptions;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long vcsim may take to print its URL.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long vcsim may take to clean up and exit once its standard input closes.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("building vcsim with {script}: {reason}")]
    Build { script: String, reason: String },
    #[error("starting vcsim ({binary}): {reason}")]
    Start { binary: String, reason: String },
}

/// A running vcsim; stopped on drop.
pub struct Simulator {
    /// The SOAP endpoint, e.g. `http://127.0.0.1:PORT/sdk` (`https://` with `-tls`).
    pub url: String,
    pub user: String,
    pub password: String,
    /// The SHA-1 thumbprint (`AA:BB:...`) of its certificate with `-tls`; empty otherwise.
    pub thumbprint: String,
    process: Child,
}

impl Simulator {
    /// `$BERTH_VCSIM`, or the binary `scripts/vcsim.sh` (under `project_root`) builds.
    pub fn binary(project_root: &Path) -> Result<PathBuf, SimulatorError> {
        if let Ok(path) = std::env::var("BERTH_VCSIM") {
            return Ok(PathBuf::from(path));
        }
        let script = project_root.join("scripts/vcsim.sh");
        let failed = |reason: String| SimulatorError::Build { script: script.display().to_string(), reason };
        let output = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().map_err(|error| failed(error.to_string()))?;
        if !output.status.success() {
            return Err(failed(format!("it exited with {}", output.status)));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
    }

    /// Starts `binary` on a free port of 127.0.0.1 with extra flags
    /// (`-username U -password P`, `-tls`, `-clusters N`, `-hosts N`).
    pub fn start(binary: &Path, args: &[&str]) -> Result<Simulator, SimulatorError> {
        let failed = |reason: String| SimulatorError::Start { binary: binary.display().to_string(), reason };
        let mut process = Command::new(binary)
            .args(["-listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| failed(error.to_string()))?;
        let Some(stdout) = process.stdout.take() else {
            let _ = process.kill();
            return Err(failed("no standard output".to_string()));
        };
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        // From here on, dropping the simulator stops the process.
        let mut simulator =
            Simulator { url: String::new(), user: String::new(), password: String::new(), thumbprint: String::new(), process };
        let line = receiver.recv_timeout(START_TIMEOUT).map_err(|_| failed(format!("it printed no URL within {START_TIMEOUT:?}")))?;
        let fields: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|field| field.split_once('=')).collect();
        let field = |name: &str| fields.get(name).copied().unwrap_or_default().to_string();
        simulator.url = field("VCSIM_URL");
        simulator.user = field("VCSIM_USER");
        simulator.password = field("VCSIM_PASSWORD");
        simulator.thumbprint = field("VCSIM_THUMBPRINT");
        if !simulator.url.starts_with("http") {
            return Err(failed(format!("it printed {line:?}")));
        }
        Ok(simulator)
    }

    /// `host:port` of the endpoint.
    pub fn address(&self) -> String {
        let rest = self.url.split_once("://").map(|(_, rest)| rest).unwrap_or(&self.url);
        rest.split('/').next().unwrap_or_default().to_string()
    }

    /// Options for a [`crate::VimClient`]: its credentials, its thumbprint
    /// when it serves https, and a 30 s task timeout.
    pub fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new(&self.url, &self.user, &self.password);
        if !self.thumbprint.is_empty() {
            options.thumbprint = Some(self.thumbprint.clone());
        }
        options.task_timeout = Duration::from_secs(30);
        options
    }

    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        drop(self.process.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.process.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
