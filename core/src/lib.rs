//! berth-core: the domain of berth, with no I/O and no async runtime.
//!
//! Everything that changes state is a [`Command`] decided against the current
//! [`DomainModel`]; a decision is a list of [`DomainEvent`]s for one stream, or a
//! typed [`Rejection`]. The model is a pure fold of recorded events
//! ([`DomainModel::apply`]), so any state can be rebuilt from the log. Time and
//! identifiers come in through the command and its [`Context`], never from the
//! clock or a random source, so a simulation seed replays any run.
//!
//! The ports that adapters implement ([`log::EventLog`], [`Clock`], [`Entropy`])
//! live here too, so that adapters depend on the core and never the other way.

pub mod commands;
pub mod events;
pub mod ids;
pub mod infrastructure;
pub mod log;
pub mod model;
pub mod ports;
pub mod rejection;

pub use commands::{Command, CommandEnvelope, Context};
pub use events::{DomainEvent, RecordedEvent, EVENT_SCHEMA_VERSION};
pub use ids::{CommandId, EventId, Position, StreamId, StreamKind, StreamVersion};
pub use log::ReadError;
pub use model::{Decision, DomainModel};
pub use ports::{Clock, Entropy};
pub use rejection::Rejection;
