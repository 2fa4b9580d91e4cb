//! berth-projections: read models folded from the event log.
//!
//! A projection is a pure fold: `apply(&mut self, &RecordedEvent)` in position
//! order. Folding events one at a time gives exactly what a rebuild from
//! position 0 gives, so a projection can be checkpointed, thrown away and
//! rebuilt at any time. Projections know nothing of HTTP or of the log's
//! storage; the API converts them to wire types.

pub mod docker;

pub use docker::{ContainerView, DockerViews, ImageView, NetworkView, VchView, VolumeView};
