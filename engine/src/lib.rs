//! berth-engine: the application layer between the API and the log.
//!
//! The [`CommandBus`] decides commands against the domain model and submits
//! their events to the [`EventLog`](berth_core::log::EventLog); the
//! [`ProjectionRunner`] follows the log into the Docker views; and
//! [`ViewHandle::wait_for`] gives the API read-your-writes. Nothing here knows
//! HTTP or RocksDB.

pub mod bus;
pub mod history;
pub mod reconciler;
pub mod runner;
pub mod vch;

pub use bus::{CommandBus, CommandError, CommandOutcome};
pub use history::{audit, replay_until, AuditEntry, AuditFilter, Until};
pub use reconciler::{plan, Action, DesiredState, ObservedState, Reconciler, ServedVchs, TickReport};
pub use runner::{ProjectionRunner, ViewHandle};
