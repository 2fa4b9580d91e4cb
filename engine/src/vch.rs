//! Which VCH an event belongs to: for the NATS subjects of the relay and the
//! `vch` filter of the portal's event stream (one rule, used by both).
//!
//! A container belongs to the VCH named in its `ContainerCreated`, the first
//! event of its stream; a VCH stream to itself. Images, volumes and networks
//! are not per-VCH yet: they belong to [`DEFAULT_VCH`] until they are.
//! The resolver keeps a bounded cache and reads a container's first event
//! from the log on a miss, so it needs no state of its own across restarts.

use berth_core::log::EventLog;
use berth_core::{DomainEvent, ReadError, RecordedEvent, StreamKind, StreamVersion};
use std::collections::HashMap;

/// The VCH of objects that are not per-VCH yet (images, volumes, networks).
pub const DEFAULT_VCH: &str = "default";
/// The most containers whose VCH the cache remembers; past it the cache starts over.
pub const VCH_CACHE_ENTRY_COUNT_MAX: usize = 65_536;

#[derive(Debug, Default)]
pub struct VchResolver {
    container_vchs: HashMap<String, String>,
}

impl VchResolver {
    /// The VCH of `event`; reads the container's first event when it is not cached.
    pub fn vch_of(&mut self, log: &dyn EventLog, event: &RecordedEvent) -> Result<String, ReadError> {
        match event.stream.kind {
            StreamKind::Vch => Ok(event.stream.key.clone()),
            StreamKind::Image | StreamKind::Volume | StreamKind::Network => Ok(DEFAULT_VCH.to_string()),
            StreamKind::Container => {
                if let DomainEvent::ContainerCreated { vch, .. } = &event.event {
                    self.remember(&event.stream.key, vch);
                    return Ok(vch.clone());
                }
                if matches!(event.event, DomainEvent::ContainerRemoved) {
                    // The container's last event: forget it, so the cache tracks live containers.
                    if let Some(vch) = self.container_vchs.remove(&event.stream.key) {
                        return Ok(vch);
                    }
                } else if let Some(vch) = self.container_vchs.get(&event.stream.key) {
                    return Ok(vch.clone());
                }
                let first = log.read_stream(&event.stream, StreamVersion(0), 1)?;
                let vch = match first.first().map(|recorded| &recorded.event) {
                    Some(DomainEvent::ContainerCreated { vch, .. }) => vch.clone(),
                    // A container stream always starts with ContainerCreated; if it
                    // does not, the event still gets a subject rather than being lost.
                    _ => DEFAULT_VCH.to_string(),
                };
                if !matches!(event.event, DomainEvent::ContainerRemoved) {
                    self.remember(&event.stream.key, &vch);
                }
                Ok(vch)
            }
        }
    }

    fn remember(&mut self, container: &str, vch: &str) {
        if self.container_vchs.len() >= VCH_CACHE_ENTRY_COUNT_MAX {
            self.container_vchs.clear();
        }
        self.container_vchs.insert(container.to_string(), vch.to_string());
    }
}
