//! Calls into runc for one state directory (`runc --root <state_dir>/runc ...`).

use crate::error::RuntimeError;
use crate::tools;
use serde::Deserialize;
use std::path::PathBuf;

/// Errors reading runc's JSON answers.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("runc {action} printed unexpected output: {message}")]
    BadOutput { action: &'static str, message: String },
}

impl From<RuncError> for RuntimeError {
    fn from(error: RuncError) -> Self {
        let RuncError::BadOutput { action, message } = error;
        RuntimeError::Runc { action: action.to_string(), message }
    }
}

/// runc for one root directory.
#[derive(Debug, Clone)]
pub struct Runc {
    pub program: PathBuf,
    pub root: PathBuf,
}

/// The parts of `runc state` the runtime uses.
#[derive(Debug, Clone, Deserialize)]
pub struct RuncState {
    pub status: String,
}

impl Runc {
    /// Base arguments every call shares.
    pub fn base_args(&self) -> Vec<String> {
        vec!["--root".to_string(), self.root.display().to_string()]
    }

    /// Runs `runc <action> <args>` and returns stdout, or a Runc error with runc's message.
    pub fn call(&self, action: &str, args: &[&str]) -> Result<String, RuntimeError> {
        let root = self.root.display().to_string();
        let mut all: Vec<&str> = vec!["--root", &root, action];
        all.extend_from_slice(args);
        let output = tools::run(&self.program, &all)?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        Err(RuntimeError::Runc { action: action.to_string(), message: clean_runc_message(&tools::failure_message(&output)) })
    }

    /// `runc state`; `Ok(None)` when runc does not know the container.
    pub fn state(&self, id: &str) -> Result<Option<RuncState>, RuntimeError> {
        if !self.root.join(id).exists() {
            return Ok(None);
        }
        match self.call("state", &[id]) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|error| RuncError::BadOutput { action: "state", message: error.to_string() }.into()),
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `runc kill <id> <signal>`.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.call("kill", &[id, &signal.to_string()]).map(drop)
    }

    /// `runc delete --force`, ignoring "does not exist".
    pub fn delete_force(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        match self.call("delete", &["--force", id]) {
            Ok(_) => Ok(()),
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// `runc ps --format json`: the host pids of the container's processes.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>, RuntimeError> {
        let text = self.call("ps", &["--format", "json", id])?;
        let pids: Option<Vec<i32>> =
            serde_json::from_str(&text).map_err(|error| RuncError::BadOutput { action: "ps", message: error.to_string() })?;
        Ok(pids.unwrap_or_default())
    }

    /// `runc events --stats`: one JSON object of cgroup statistics.
    pub fn stats(&self, id: &str) -> Result<serde_json::Value, RuntimeError> {
        let text = self.call("events", &["--stats", id])?;
        serde_json::from_str(&text).map_err(|error| RuncError::BadOutput { action: "events --stats", message: error.to_string() }.into())
    }
}

/// runc prints `time="..." level=error msg="..."`; the msg is what people need.
pub fn clean_runc_message(text: &str) -> String {
    let messages: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let start = line.find("msg=\"")? + 5;
            let rest = &line[start..];
            let end = rest.rfind('"').unwrap_or(rest.len());
            Some(rest[..end].replace("\\\"", "\""))
        })
        .collect();
    if messages.is_empty() {
        text.trim().to_string()
    } else {
        messages.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_messages_are_unwrapped() {
        let text = "time=\"2024-01-01T00:00:00Z\" level=error msg=\"container \\\"x\\\" does not exist\"";
        assert_eq!(clean_runc_message(text), "container \"x\" does not exist");
        assert_eq!(clean_runc_message(" plain failure \n"), "plain failure");
    }
}
