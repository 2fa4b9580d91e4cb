//! The one error type every public operation of the local runtime returns.

use std::path::PathBuf;

/// Why a runtime operation failed, worded for the person reading the API error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the local runtime needs root privileges (running as uid {uid})")]
    NotRoot { uid: u32 },
    #[error("cannot create Linux namespaces on this host: {message}")]
    NamespacesUnavailable { message: String },
    #[error("{tool} is not installed (looked in {searched}); the local runtime needs it")]
    ToolMissing { tool: &'static str, searched: String },
    #[error("the container root filesystem {} does not exist or is not a directory", path.display())]
    RootfsMissing { path: PathBuf },
    #[error("the bind mount source {} does not exist", path.display())]
    MountSourceMissing { path: PathBuf },
    #[error("no such container in the local runtime: {id}")]
    ContainerNotFound { id: String },
    #[error("container {id} already exists in the local runtime")]
    ContainerExists { id: String },
    #[error("container {id} is already running")]
    AlreadyRunning { id: String },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    #[error("container {id} is paused")]
    Paused { id: String },
    #[error("no such network in the local runtime: {id} (ensure_network it first)")]
    NetworkNotFound { id: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("runc {action} failed: {message}")]
    Runc { action: String, message: String },
    #[error("{action} failed: {message}")]
    Command { action: String, message: String },
    #[error("the shim of container {id} failed: {message}")]
    Shim { id: String, message: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{context}: {message}")]
    Corrupt { context: String, message: String },
}

impl RuntimeError {
    /// Wraps an I/O error with what was being done, so messages name the file or action.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Invalid { what, reason: reason.into() }
    }
}
