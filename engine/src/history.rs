//! History: the Docker views as they were at a past point of the log, and the
//! audit trail of who did what to which object, and when.
//!
//! Both are plain reads of the log in position order, in large batches; they
//! never write and need no checkpoint, so they can run beside a live berth.

use berth_core::log::EventLog;
use berth_core::{DomainEvent, Position, ReadError, RecordedEvent, StreamId, StreamKind};
use berth_projections::DockerViews;
use std::collections::HashMap;

/// Events read per batch: large enough that the per-read cost vanishes,
/// small enough to keep one batch in the CPU caches' neighbourhood.
pub const REPLAY_BATCH_EVENT_COUNT_MAX: usize = 8_192;
/// The most entries one audit returns when the filter does not say.
pub const AUDIT_ENTRY_COUNT_DEFAULT: usize = 10_000;

/// The point of the log to replay up to, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every event up to and including this position.
    Position(u64),
    /// Every event recorded at or before this time: the longest prefix of the
    /// log whose events were all recorded by then. The log is in decision
    /// order, so a clock that stepped back cannot make a later decision
    /// appear before an earlier one.
    TimeMs(u64),
}

/// Calls `visit` with each batch of events up to `until`, in position order.
fn read_until(log: &dyn EventLog, until: Until, mut visit: impl FnMut(&[RecordedEvent])) -> Result<(), ReadError> {
    let mut after = Position(0);
    let position_max = match until {
        Until::Position(position) => position,
        Until::TimeMs(_) => u64::MAX,
    };
    while after.0 < position_max {
        let remaining = usize::try_from(position_max - after.0).unwrap_or(usize::MAX);
        let batch = log.read_all(after, REPLAY_BATCH_EVENT_COUNT_MAX.min(remaining))?;
        let Some(last) = batch.last() else { return Ok(()) };
        after = last.position;
        let in_range = batch
            .iter()
            .position(|event| event.position.0 > position_max || matches!(until, Until::TimeMs(time_ms) if event.recorded_at_ms > time_ms))
            .unwrap_or(batch.len());
        visit(&batch[..in_range]);
        if in_range < batch.len() {
            return Ok(());
        }
    }
    Ok(())
}

/// Folds one batch into the views, skipping the container-stream events of
/// containers that the same batch later removes: the removal erases
/// everything they did to the container's view, and a created container's
/// spec is the most expensive thing to copy. Events of other streams (a
/// network's endpoints) are always applied, and so is the removal itself, so
/// the result equals folding every event.
fn fold_batch(views: &mut DockerViews, batch: &[RecordedEvent]) {
    let mut removed_at: HashMap<&str, Position> = HashMap::new();
    for event in batch {
        if event.stream.kind == StreamKind::Container && matches!(event.event, DomainEvent::ContainerRemoved) {
            removed_at.insert(event.stream.key.as_str(), event.position);
        }
    }
    for event in batch {
        let erased_later = event.stream.kind == StreamKind::Container
            && removed_at.get(event.stream.key.as_str()).is_some_and(|removed| event.position < *removed);
        if !erased_later {
            views.apply(event);
        }
    }
}

/// Rebuilds the Docker views as they were at `until`.
pub fn replay_until(log: &dyn EventLog, until: Until) -> Result<DockerViews, ReadError> {
    let mut views = DockerViews::default();
    read_until(log, until, |batch| fold_batch(&mut views, batch))?;
    Ok(views)
}

/// Which events an audit returns; every field left `None` matches all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub stream_kind: Option<StreamKind>,
    /// The start of the stream key (a container id prefix, a VCH name...).
    pub stream_key_prefix: Option<String>,
    /// An event type name, as [`DomainEvent::type_name`] gives it.
    pub event_type: Option<String>,
    /// Recorded at or after this time.
    pub since_ms: Option<u64>,
    /// Recorded at or before this time.
    pub until_ms: Option<u64>,
    /// The most entries returned (the first ones in log order).
    pub entry_count_max: usize,
}

impl Default for AuditFilter {
    fn default() -> AuditFilter {
        AuditFilter {
            actor: None,
            stream_kind: None,
            stream_key_prefix: None,
            event_type: None,
            since_ms: None,
            until_ms: None,
            entry_count_max: AUDIT_ENTRY_COUNT_DEFAULT,
        }
    }
}

impl AuditFilter {
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.actor.as_ref().is_none_or(|actor| &event.actor == actor)
            && self.stream_kind.is_none_or(|kind| event.stream.kind == kind)
            && self.stream_key_prefix.as_ref().is_none_or(|prefix| event.stream.key.starts_with(prefix.as_str()))
            && self.event_type.as_ref().is_none_or(|name| event.event.type_name() == name)
            && self.since_ms.is_none_or(|since_ms| event.recorded_at_ms >= since_ms)
            && self.until_ms.is_none_or(|until_ms| event.recorded_at_ms <= until_ms)
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub position: Position,
    pub time_ms: u64,
    pub actor: String,
    pub stream: StreamId,
    pub event_type: &'static str,
    /// What happened, in words.
    pub summary: String,
}

/// Who did what to which object and when, in log order.
pub fn audit(log: &dyn EventLog, filter: &AuditFilter) -> Result<Vec<AuditEntry>, ReadError> {
    let mut entries = Vec::new();
    let mut after = Position(0);
    while entries.len() < filter.entry_count_max {
        let batch = log.read_all(after, REPLAY_BATCH_EVENT_COUNT_MAX)?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        for event in batch.iter().filter(|event| filter.matches(event)) {
            if entries.len() >= filter.entry_count_max {
                break;
            }
            entries.push(AuditEntry {
                position: event.position,
                time_ms: event.recorded_at_ms,
                actor: event.actor.clone(),
                stream: event.stream.clone(),
                event_type: event.event.type_name(),
                summary: summarize(&event.stream, &event.event),
            });
        }
    }
    Ok(entries)
}

/// One sentence per event, naming the object and the facts that matter.
pub fn summarize(stream: &StreamId, event: &DomainEvent) -> String {
    let key = &stream.key;
    match event {
        DomainEvent::VchCreated { name, spec } => format!("created VCH {name} on {}", spec.target),
        DomainEvent::VchConfigured { spec } => format!("configured VCH {key} (target {}, at most {} containers)", spec.target, spec.container_count_max),
        DomainEvent::VchDeleted => format!("deleted VCH {key}"),
        DomainEvent::VchUpgraded { from_version, to_version } => {
            format!("upgraded VCH {key} from {} to {to_version}", from_version.as_deref().unwrap_or("an unversioned release"))
        }
        DomainEvent::DriftObserved { description } => format!("observed drift of {} {key}: {description}", stream.kind.as_str()),
        DomainEvent::ReconcileFailed { action, error, attempts } => {
            format!("{action} failed {attempts} times, retrying slowly: {error}")
        }
        DomainEvent::ContainerCreated { name, vch, image_id, .. } => format!("created container {name} ({key}) in VCH {vch} from image {image_id}"),
        DomainEvent::ContainerStarted { .. } => format!("started container {key}"),
        DomainEvent::ContainerStopRequested { timeout_s } => match timeout_s {
            Some(timeout_s) => format!("asked container {key} to stop within {timeout_s} s"),
            None => format!("asked container {key} to stop"),
        },
        DomainEvent::ContainerKilled { signal } => format!("killed container {key} with {signal}"),
        DomainEvent::ContainerExited { exit_code, .. } => format!("container {key} exited with code {exit_code}"),
        DomainEvent::ContainerPaused => format!("paused container {key}"),
        DomainEvent::ContainerUnpaused => format!("unpaused container {key}"),
        DomainEvent::ContainerRenamed { old_name, new_name } => format!("renamed container {key} from {old_name} to {new_name}"),
        DomainEvent::ContainerUpdated { memory_bytes, nano_cpus, cpu_shares, restart_policy } => format!(
            "updated container {key}: memory {memory_bytes} bytes, {nano_cpus} nano-CPUs, {cpu_shares} CPU shares, restart policy {restart_policy:?}"
        ),
        DomainEvent::ContainerRemoved => format!("removed container {key}"),
        DomainEvent::ImageRegistered { reference_tags, size_bytes, .. } => {
            format!("registered image {key} ({size_bytes} bytes) tagged [{}]", reference_tags.join(", "))
        }
        DomainEvent::ImageTagged { reference } => format!("tagged image {key} as {reference}"),
        DomainEvent::ImageUntagged { reference } => format!("untagged {reference} from image {key}"),
        DomainEvent::ImageRemoved => format!("removed image {key}"),
        DomainEvent::VolumeCreated { name, driver, .. } => format!("created volume {name} ({driver})"),
        DomainEvent::VolumeRemoved => format!("removed volume {key}"),
        DomainEvent::NetworkCreated { name, driver, subnet, .. } => format!("created network {name} ({key}, {driver}, {subnet})"),
        DomainEvent::NetworkRemoved => format!("removed network {key}"),
        DomainEvent::NetworkContainerConnected { container_id, ipv4_address } => {
            format!("connected container {container_id} to network {key} at {ipv4_address}")
        }
        DomainEvent::NetworkContainerDisconnected { container_id } => format!("disconnected container {container_id} from network {key}"),
    }
}
