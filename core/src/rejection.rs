//! Typed domain rejections: why a command was refused. The API maps each to
//! its client's conventions (an HTTP status and Docker's message style); the
//! core only says what went wrong.

use crate::ids::StreamVersion;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{kind} name {name:?} is invalid: {reason}")]
    InvalidName { kind: &'static str, name: String, reason: &'static str },
    #[error("{kind} name {name:?} is already in use by {by}")]
    NameInUse { kind: &'static str, name: String, by: String },
    #[error("{kind} id {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("no such {kind}: {id}")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id} is {state}: cannot {action}")]
    WrongState { kind: &'static str, id: String, state: String, action: &'static str },
    #[error("{kind} {id} is in use by {by}")]
    InUse { kind: &'static str, id: String, by: String },
    #[error("wrong expected version for {stream}: expected {expected:?}, the stream is at {actual:?}")]
    WrongExpectedVersion { stream: String, expected: StreamVersion, actual: StreamVersion },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("limit reached: {0}")]
    LimitReached(String),
    #[error("{0}")]
    Forbidden(String),
}

impl Rejection {
    /// A short machine-readable name, for logs and the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidName { .. } => "invalid_name",
            Rejection::NameInUse { .. } => "name_in_use",
            Rejection::AlreadyExists { .. } => "already_exists",
            Rejection::NotFound { .. } => "not_found",
            Rejection::WrongState { .. } => "wrong_state",
            Rejection::InUse { .. } => "in_use",
            Rejection::WrongExpectedVersion { .. } => "wrong_expected_version",
            Rejection::InvalidArgument(_) => "invalid_argument",
            Rejection::LimitReached(_) => "limit_reached",
            Rejection::Forbidden(_) => "forbidden",
        }
    }
}
