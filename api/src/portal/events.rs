//! `GET /api/events`: every committed event as server-sent events.
//!
//! Each event is `id: <position>` and `data: <the recorded event as JSON>`, in
//! log order, past events first. Query parameters:
//! - `vch`, `kind` (vch, container, image, volume, network), `id` (the
//!   stream key: a container id, a volume name...): keep only matching events;
//! - `since=POSITION`: start after that position (default 0: the whole log);
//!   a `Last-Event-ID` header (what `EventSource` sends when it reconnects)
//!   takes precedence, so a resumed stream continues with no gap;
//! - `follow=false`: end the stream once it has reached the head the log had
//!   when the request came, instead of waiting for new commits;
//! - `views=true`: after each event, an `event: view` with the view of the
//!   object it changed as it was right after that event (`null` once the
//!   object is gone), folded by the production projection from position 0.
//!
//! Heartbeats are comment lines (`:heartbeat`) after every quiet interval,
//! so proxies keep the connection and clients notice a dead one. A slow
//! client only reads further behind: the stream pulls from the log, nothing
//! is buffered for it. Bad filters or positions get a 400 with the reason.

use super::PortalState;
use crate::docker::ApiError;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::ids::STREAM_KEY_LENGTH_BYTES_MAX;
use berth_core::log::EventLog;
use berth_core::{Position, ReadError, RecordedEvent, StreamKind};
use berth_engine::vch::VchResolver;
use berth_projections::DockerViews;
use futures_util::stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// Events read from the log per step.
const READ_BATCH_EVENT_COUNT_MAX: usize = 512;
/// The longest `vch` filter accepted, in bytes.
const VCH_NAME_LENGTH_BYTES_MAX: usize = 256;

/// Which events a client asked for, and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub vch: Option<String>,
    pub kind: Option<StreamKind>,
    pub id: Option<String>,
    pub after: Position,
    pub follow: bool,
    pub views: bool,
}

fn parse_position(text: &str, source: &str, head: Position) -> Result<Position, String> {
    let position: u64 =
        text.trim().parse().map_err(|_| format!("{source} {text:?} is not a log position (a whole number of 0 or more)"))?;
    if position > head.0 {
        return Err(format!("{source} {position} is beyond the log's head, position {head}"));
    }
    Ok(Position(position))
}

/// Parses the query and the `Last-Event-ID` header; `Err` is the 400's reason.
pub fn parse_filter(query: &[(String, String)], last_event_id: Option<&str>, head: Position) -> Result<EventFilter, String> {
    let mut filter = EventFilter { vch: None, kind: None, id: None, after: Position(0), follow: true, views: false };
    for (name, value) in query {
        match name.as_str() {
            "vch" => {
                if value.is_empty() || value.len() > VCH_NAME_LENGTH_BYTES_MAX {
                    return Err(format!("vch must be 1 to {VCH_NAME_LENGTH_BYTES_MAX} bytes long"));
                }
                filter.vch = Some(value.clone());
            }
            "kind" => {
                let kind = StreamKind::parse(value).ok_or_else(|| {
                    let kinds: Vec<&str> = StreamKind::ALL.iter().map(|kind| kind.as_str()).collect();
                    format!("unknown kind {value:?}: use one of {}", kinds.join(", "))
                })?;
                filter.kind = Some(kind);
            }
            "id" => {
                if value.is_empty() || value.len() > STREAM_KEY_LENGTH_BYTES_MAX {
                    return Err(format!("id must be 1 to {STREAM_KEY_LENGTH_BYTES_MAX} bytes long"));
                }
                filter.id = Some(value.clone());
            }
            "since" => filter.after = parse_position(value, "since", head)?,
            "follow" => {
                filter.follow = match value.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => return Err(format!("follow must be true or false, not {other:?}")),
                }
            }
            "views" => {
                filter.views = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => return Err(format!("views must be true or false, not {other:?}")),
                }
            }
            other => return Err(format!("unknown query parameter {other:?}: use vch, kind, id, since, follow or views")),
        }
    }
    if let Some(last_event_id) = last_event_id {
        filter.after = parse_position(last_event_id, "Last-Event-ID", head)?;
    }
    Ok(filter)
}

impl EventFilter {
    fn needs_vch(&self) -> bool {
        self.vch.is_some()
    }

    fn admits(&self, event: &RecordedEvent, vch: Option<&str>) -> bool {
        self.kind.is_none_or(|kind| event.stream.kind == kind)
            && self.id.as_ref().is_none_or(|id| &event.stream.key == id)
            && self.vch.as_deref().is_none_or(|wanted| vch == Some(wanted))
    }
}

/// The state of one client's stream between two steps.
struct Cursor {
    log: Arc<dyn EventLog>,
    head: watch::Receiver<Position>,
    filter: EventFilter,
    /// The head when the request came; a `follow=false` stream ends there.
    end: Position,
    after: Position,
    ready: VecDeque<Event>,
    resolver: Option<VchResolver>,
    /// The views as of `after`, when the client asked for view changes.
    views: Option<DockerViews>,
    _slot: OwnedSemaphorePermit,
}

/// The view of the object an event changed, as JSON (`null` once it is gone).
fn view_change(views: &DockerViews, event: &RecordedEvent) -> serde_json::Value {
    let key = &event.stream.key;
    let view = match event.stream.kind {
        StreamKind::Vch => serde_json::to_value(views.vchs.get(key)),
        StreamKind::Container => serde_json::to_value(views.containers.get(key)),
        StreamKind::Image => serde_json::to_value(views.images.get(key)),
        StreamKind::Volume => serde_json::to_value(views.volumes.get(key)),
        StreamKind::Network => serde_json::to_value(views.networks.get(key)),
    };
    serde_json::json!({
        "position": event.position.0,
        "kind": event.stream.kind.as_str(),
        "id": key,
        "view": view.unwrap_or(serde_json::Value::Null),
    })
}

/// Reads the next batch after `after` and keeps the events the filter admits,
/// each with its view change when `views` is kept.
fn read_matching(
    log: &dyn EventLog,
    filter: &EventFilter,
    resolver: &mut VchResolver,
    views: &mut Option<DockerViews>,
    after: Position,
) -> Result<(Position, Vec<(RecordedEvent, Option<serde_json::Value>)>), ReadError> {
    if let Some(views) = views.as_mut() {
        // Catch the views up to the resume point first (only on the first read).
        while views.position < after {
            let batch = log.read_all(views.position, READ_BATCH_EVENT_COUNT_MAX)?;
            if batch.is_empty() {
                break;
            }
            for event in batch.iter().filter(|e| e.position <= after) {
                views.apply(event);
            }
            if batch.last().map(|e| e.position >= after).unwrap_or(true) {
                break;
            }
        }
    }
    let batch = log.read_all(after, READ_BATCH_EVENT_COUNT_MAX)?;
    let last = batch.last().map(|event| event.position).unwrap_or(after);
    let mut matching = Vec::new();
    for event in batch {
        if let Some(views) = views.as_mut() {
            views.apply(&event);
        }
        let vch = if filter.needs_vch() { Some(resolver.vch_of(log, &event)?) } else { None };
        if filter.admits(&event, vch.as_deref()) {
            let change = views.as_ref().map(|views| view_change(views, &event));
            matching.push((event, change));
        }
    }
    Ok((last, matching))
}

fn sse_event(recorded: &RecordedEvent) -> Event {
    let data = serde_json::to_string(recorded).unwrap_or_else(|error| format!("{{\"error\":\"cannot encode event: {error}\"}}"));
    Event::default().id(recorded.position.0.to_string()).data(data)
}

/// The next SSE event of a cursor, or `None` when the stream is over.
async fn next_event(mut cursor: Cursor) -> Option<(Result<Event, Infallible>, Cursor)> {
    loop {
        if let Some(sse) = cursor.ready.pop_front() {
            return Some((Ok(sse), cursor));
        }
        if !cursor.filter.follow && cursor.after >= cursor.end {
            return None;
        }
        cursor.head.mark_unchanged();
        if cursor.log.head() <= cursor.after {
            // Caught up: sleep until the next commit (heartbeats keep flowing meanwhile).
            if cursor.head.changed().await.is_err() {
                return None;
            }
            continue;
        }
        let log = cursor.log.clone();
        let filter = cursor.filter.clone();
        let after = cursor.after;
        let mut resolver = cursor.resolver.take().unwrap_or_default();
        let mut views = cursor.views.take();
        let read = tokio::task::spawn_blocking(move || {
            let result = read_matching(log.as_ref(), &filter, &mut resolver, &mut views, after);
            (resolver, views, result)
        })
        .await;
        let Ok((resolver, views, result)) = read else { return None };
        cursor.resolver = Some(resolver);
        cursor.views = views;
        match result {
            Ok((last, matching)) => {
                cursor.after = last;
                for (event, change) in matching {
                    cursor.ready.push_back(sse_event(&event));
                    if let Some(change) = change {
                        // The view follows its event at once, under the same id.
                        cursor.ready.push_back(Event::default().id(event.position.0.to_string()).event("view").data(change.to_string()));
                    }
                }
            }
            Err(error) => {
                // The client sees the failure as a comment line, then the stream ends
                // and `EventSource` reconnects from its Last-Event-ID.
                tracing::warn!(%error, "an event stream cannot read the log");
                let event = Event::default().comment(format!("error: {error}"));
                cursor.filter.follow = false;
                cursor.end = Position(0);
                return Some((Ok(event), cursor));
            }
        }
    }
}

pub async fn stream_events(State(state): State<PortalState>, Query(query): Query<Vec<(String, String)>>, headers: HeaderMap) -> Response {
    let head = state.log.head();
    let last_event_id = match headers.get("last-event-id").map(|value| value.to_str()) {
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => return ApiError::bad_request("Last-Event-ID is not text").into_response(),
        None => None,
    };
    let filter = match parse_filter(&query, last_event_id, head) {
        Ok(filter) => filter,
        Err(reason) => return ApiError::bad_request(reason).into_response(),
    };
    let Ok(slot) = state.event_stream_slots.clone().try_acquire_owned() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many event streams are open; try again later").into_response();
    };
    let filter_views = filter.views;
    let cursor = Cursor {
        log: state.log.clone(),
        head: state.head.clone(),
        after: filter.after,
        filter,
        end: head,
        ready: VecDeque::new(),
        resolver: None,
        views: if filter_views { Some(DockerViews::default()) } else { None },
        _slot: slot,
    };
    Sse::new(stream::unfold(cursor, next_event))
        .keep_alive(KeepAlive::new().interval(state.heartbeat_interval).text("heartbeat"))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn filters_and_positions_are_parsed() {
        let filter =
            parse_filter(&query(&[("vch", "default"), ("kind", "volume"), ("id", "v1"), ("since", "3")]), None, Position(10)).unwrap();
        assert_eq!(filter.vch.as_deref(), Some("default"));
        assert_eq!(filter.kind, Some(StreamKind::Volume));
        assert_eq!(filter.id.as_deref(), Some("v1"));
        assert_eq!(filter.after, Position(3));
        assert!(filter.follow);
    }

    #[test]
    fn last_event_id_wins_over_since() {
        let filter = parse_filter(&query(&[("since", "3")]), Some("7"), Position(10)).unwrap();
        assert_eq!(filter.after, Position(7));
    }

    #[test]
    fn bad_filters_and_positions_are_refused_with_a_reason() {
        let head = Position(10);
        assert!(parse_filter(&query(&[("kind", "pod")]), None, head).unwrap_err().contains("unknown kind \"pod\""));
        assert!(parse_filter(&query(&[("since", "11")]), None, head).unwrap_err().contains("beyond the log's head"));
        assert!(parse_filter(&query(&[("since", "-1")]), None, head).unwrap_err().contains("not a log position"));
        assert!(parse_filter(&[], Some("x"), head).unwrap_err().contains("Last-Event-ID"));
        assert!(parse_filter(&query(&[("colour", "red")]), None, head).unwrap_err().contains("unknown query parameter"));
        assert!(parse_filter(&query(&[("vch", "")]), None, head).is_err());
        assert!(parse_filter(&query(&[("follow", "maybe")]), None, head).is_err());
    }
}
