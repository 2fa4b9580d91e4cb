//! berth-nats: berth's log, copied to NATS JetStream and read back.
//!
//! The [`relay`] follows the local log from its checkpoint and publishes every
//! committed event to a JetStream stream, once and in log order; the
//! [`follower`] reads that stream in another process and appends it to a
//! local replica of the log, from which the usual projection runner builds
//! the Docker views. The log stays the source of truth: NATS carries copies.
//!
//! *Invariant*: the stream holds a gap-free run of log positions in log order,
//! each exactly once. The relay enforces it with `Nats-Expected-Last-Sequence`
//! on every publish (so nothing lands out of place, whatever the dedup window)
//! and `Nats-Msg-Id` = the event id (so a replay inside the window is
//! answered as a duplicate instead of an error).

pub mod bench;
pub mod connection;
pub mod follower;
pub mod inspect;
pub mod relay;
pub mod stream;
pub mod subject;
pub use berth_engine::vch;

pub use follower::{Follower, FollowerConfig, FollowerError, FollowerStatus};
pub use relay::{Relay, RelayConfig, RelayError, RelayState, RelayStatus};
pub use stream::{Retention, StreamError, StreamSettings};
