//! `GET /v1/events`: the event log as server-sent events, one per task
//! transition, each a CloudEvent; resumable with `Last-Event-ID`.
//!
//! A stream is a task of its own that reads the log from the store page by page
//! (`Store::read_events`) and hands frames to the connection through a bounded
//! channel. It waits for new events on the server's event signal (raised by
//! `App::apply` for changes made here, and by the store for other nodes'), with
//! a slow poll as a safety net, and a quick one while the store says events are
//! pending behind a running transaction.
//!
//! **Invariant:** a stream never holds more than [`BUFFER`] frames for its
//! reader: a reader that takes none for [`SLOW_READER`] is cut off (the
//! connection ends; it may resume with `Last-Event-ID`). **Invariant:** a caller
//! sees only events of queues its token may read.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::QueryArgs;
use crate::routes::{state_filter, task_id};
use crate::{App, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as Frame, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cherga_api::ErrorCode;
use cherga_api::event::{CloudEvent, EventList, EventsQuery, TYPE_PREFIX};
use cherga_auth::{Access, QueuePattern};
use cherga_core::{Change, TaskId, TaskState, Transition};
use cherga_store::{Event, EventId, Store, StoreError};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events read from the store at a time.
const PAGE: usize = 512;
/// Frames a stream may hold for a reader that has not taken them.
const BUFFER: usize = 1024;
/// A reader that takes no frame for this long while frames wait is cut off.
const SLOW_READER: Duration = Duration::from_secs(10);
/// A comment this often keeps idle streams open through proxies.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// The longest a stream waits for a signal before reading the log again anyway.
const POLL: Duration = Duration::from_secs(1);
/// How soon to read again while events are pending behind a running transaction.
const PENDING_POLL: Duration = Duration::from_millis(20);

/// Which events a stream sends.
struct Filter {
    queue: Option<QueuePattern>,
    kind: Option<String>,
    state: Option<TaskState>,
    change: Option<Change>,
    task: Option<TaskId>,
}

impl Filter {
    fn parse(query: &EventsQuery) -> Result<Self, ApiError> {
        let queue = match query.queue.as_deref() {
            None | Some("") => None,
            Some(text) => Some(QueuePattern::parse(text).ok_or_else(|| {
                ApiError::invalid(format!("queue {text:?} is not a queue pattern ([A-Za-z0-9_.-] and *)"))
            })?),
        };
        let state = state_filter(query.state.as_deref())?;
        let change = match query.event_type.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let name = text.strip_prefix(TYPE_PREFIX).unwrap_or(text);
                Some(Change::parse(name).ok_or_else(|| {
                    let all: Vec<&str> = Change::ALL.iter().map(|c| c.as_str()).collect();
                    ApiError::invalid(format!("type must be one of {}; got {text:?}", all.join(", ")))
                })?)
            }
        };
        let task = match query.task.as_deref() {
            None | Some("") => None,
            Some(text) => Some(task_id(text)?),
        };
        let kind = query.kind.clone().filter(|k| !k.is_empty());
        Ok(Self { queue, kind, state, change, task })
    }

    fn accepts(&self, t: &Transition) -> bool {
        self.queue.as_ref().is_none_or(|p| p.matches(&t.queue))
            && self.kind.as_ref().is_none_or(|k| *k == t.kind)
            && self.state.is_none_or(|s| t.to == Some(s))
            && self.change.is_none_or(|c| c == t.change)
            && self.task.is_none_or(|id| id == t.task_id)
    }
}

/// Parses an event id given by a client.
fn event_id(text: &str, what: &str) -> Result<EventId, ApiError> {
    text.trim().parse().map_err(|_| ApiError::invalid(format!("{what} {text:?} is not an event id")))
}

/// The task events, as server-sent events (CloudEvents 1.0 in `data`). Needs
/// `produce`, `consume` or `read` on a queue to see its events; the stream
/// sends only what the token may read.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")),
    responses((status = 200, description = "a `text/event-stream` (the default): each event's `id` is its \
        position, `event` its change, `data` a CloudEvent; an `event: error` says when events were lost to \
        retention, and the stream goes on from the oldest kept. With `Accept: application/json`, one page \
        of events (`after` defaults to 0 then).",
        content((CloudEvent = "text/event-stream"), (EventList = "application/json")))))]
pub(crate) async fn stream<S: Store>(
    State(app): State<Arc<App<S>>>,
    caller: Caller,
    headers: HeaderMap,
    QueryArgs(query): QueryArgs<EventsQuery>,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(&query)?;
    let resume = match headers.get("last-event-id") {
        Some(value) => {
            let text =
                value.to_str().map_err(|_| ApiError::invalid("Last-Event-ID must be visible ASCII"))?;
            Some(event_id(text, "Last-Event-ID")?)
        }
        None => match query.after.as_deref() {
            None | Some("") => None,
            Some(text) => Some(event_id(text, "after")?),
        },
    };
    if wants_json(&headers) {
        return page(&app, &caller, &filter, resume.unwrap_or(0), query.limit)
            .await
            .map(IntoResponse::into_response);
    }
    // The first read answers whether there is a log at all, and where "now" is.
    let first = app.store.read_events(resume.unwrap_or(0), 1).await.map_err(events_error)?;
    let start = resume.unwrap_or(first.head);
    let (sender, receiver) = mpsc::channel::<Frame>(BUFFER);
    tokio::spawn(follow(app, caller, filter, start, resume.is_some(), sender));
    let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (Ok::<_, Infallible>(frame), receiver))
    });
    let mut response = Sse::new(frames).keep_alive(KeepAlive::new().interval(HEARTBEAT)).into_response();
    // Proxies such as nginx buffer responses unless told not to.
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    Ok(response)
}

/// Whether the client asked for a JSON page rather than a stream.
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers.get_all(axum::http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
    let mut json = false;
    for value in accept {
        for item in value.split(',') {
            let media = item.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case("text/event-stream") {
                return false;
            }
            json |= media.eq_ignore_ascii_case("application/json");
        }
    }
    json
}

/// Most events a JSON page holds, and its default.
const MAX_JSON_PAGE: usize = 1000;
const JSON_PAGE: usize = 100;

/// One JSON page of events after `after`: reads the log until the page is full
/// or the log's readable end, leaving out what the filters or the scopes do not
/// let through (`next` is past those too).
async fn page<S: Store>(
    app: &App<S>,
    caller: &Caller,
    filter: &Filter,
    after: EventId,
    limit: Option<usize>,
) -> Result<Json<EventList>, ApiError> {
    let limit = limit.unwrap_or(JSON_PAGE);
    if !(1..=MAX_JSON_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_JSON_PAGE}")));
    }
    let mut list = EventList {
        events: Vec::new(),
        next: after.to_string(),
        head: String::new(),
        purged_through: String::new(),
        pending: false,
    };
    let mut next = after;
    // A bounded number of reads: a page of a narrow filter may look far.
    for _ in 0..16 {
        let read = app.store.read_events(next, PAGE).await.map_err(events_error)?;
        list.head = read.head.to_string();
        list.purged_through = read.purged_through.to_string();
        list.pending = read.pending;
        let empty = read.events.is_empty();
        for Event { id, transition } in read.events {
            if list.events.len() == limit {
                break;
            }
            next = id;
            if filter.accepts(&transition) && caller.allows(Access::Read, &transition.queue) {
                list.events.push(CloudEvent::new(id, &transition));
            }
        }
        if empty || list.events.len() == limit {
            break;
        }
    }
    list.next = next.to_string();
    Ok(Json(list))
}

fn events_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Unavailable(source) if source.to_string().contains("event log is off") => {
            ApiError::new(ErrorCode::RouteNotFound, "this server keeps no event log (--event-retention off)")
        }
        other => ApiError::from_queue_error(other),
    }
}

/// Follows the log from after `after`, sending what `filter` and the caller's
/// scopes let through, until the reader leaves, is too slow, or the server stops.
async fn follow<S: Store>(
    app: Arc<App<S>>,
    caller: Caller,
    filter: Filter,
    mut after: EventId,
    resumed: bool,
    sender: mpsc::Sender<Frame>,
) {
    let mut signal = app.events_signal.subscribe();
    let mut shutting_down = app.shutting_down.clone();
    let mut check_gap = resumed;
    loop {
        if *shutting_down.borrow() || sender.is_closed() || !caller.still_valid(now_ms()) {
            return;
        }
        // Marked seen before reading, so a signal during the read is not lost.
        signal.borrow_and_update();
        let page = match app.store.read_events(after, PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "reading the event log failed; ending an event stream");
                let frame = Frame::default().event("error").data(stream_error(
                    "unavailable",
                    "reading the event log failed; reconnect with Last-Event-ID",
                ));
                let _ = sender.try_send(frame);
                return;
            }
        };
        if check_gap && after < page.purged_through {
            let message = format!(
                "events after {after} up to {} were deleted by retention before this stream read them; \
                 going on from the oldest event kept",
                page.purged_through
            );
            let frame = Frame::default().event("error").data(stream_error("events_expired", &message));
            if !send(&sender, frame).await {
                return;
            }
            after = page.purged_through;
            continue;
        }
        check_gap = false;
        let empty = page.events.is_empty();
        for Event { id, transition } in page.events {
            after = id;
            if !filter.accepts(&transition) || !caller.allows(Access::Read, &transition.queue) {
                continue;
            }
            let json = serde_json::to_string(&CloudEvent::new(id, &transition)).unwrap_or_default();
            let frame = Frame::default().id(id.to_string()).event(transition.change.as_str()).data(json);
            if !send(&sender, frame).await {
                return;
            }
        }
        if !empty {
            continue;
        }
        let wait = if page.pending { PENDING_POLL } else { POLL };
        tokio::select! {
            _ = signal.changed() => {}
            () = tokio::time::sleep(wait) => {}
            () = sender.closed() => return,
            _ = shutting_down.wait_for(|&s| s) => return,
        }
    }
}

/// Hands a frame to the reader; `false` when the reader left or was too slow.
async fn send(sender: &mpsc::Sender<Frame>, frame: Frame) -> bool {
    match sender.send_timeout(frame, SLOW_READER).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            tracing::info!("an event stream's reader fell behind; cutting it off");
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    }
}

fn stream_error(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(queue: &str, kind: &str, change: Change, to: Option<TaskState>) -> Transition {
        Transition {
            task_id: TaskId::new(1, 7),
            queue: queue.into(),
            kind: kind.into(),
            change,
            from: None,
            to,
            attempt: 1,
            at: 1,
            due: None,
            payload_edited: false,
        }
    }

    fn filter(query: EventsQuery) -> Filter {
        Filter::parse(&query).expect("valid filter")
    }

    #[test]
    fn filters_by_queue_pattern_kind_state_type_and_task() {
        let acked = transition("billing.eu", "charge", Change::Acked, Some(TaskState::Succeeded));
        let q = |s: &str| Some(s.to_owned());
        assert!(filter(EventsQuery::default()).accepts(&acked));
        assert!(filter(EventsQuery { queue: q("billing.*"), ..Default::default() }).accepts(&acked));
        assert!(!filter(EventsQuery { queue: q("emails"), ..Default::default() }).accepts(&acked));
        assert!(filter(EventsQuery { kind: q("charge"), ..Default::default() }).accepts(&acked));
        assert!(!filter(EventsQuery { kind: q("refund"), ..Default::default() }).accepts(&acked));
        assert!(filter(EventsQuery { state: q("succeeded"), ..Default::default() }).accepts(&acked));
        assert!(!filter(EventsQuery { state: q("dead"), ..Default::default() }).accepts(&acked));
        assert!(
            filter(EventsQuery { event_type: q("dev.cherga.task.acked"), ..Default::default() })
                .accepts(&acked)
        );
        assert!(filter(EventsQuery { event_type: q("acked"), ..Default::default() }).accepts(&acked));
        assert!(!filter(EventsQuery { event_type: q("leased"), ..Default::default() }).accepts(&acked));
        let id = TaskId::new(1, 7).to_string();
        assert!(filter(EventsQuery { task: Some(id), ..Default::default() }).accepts(&acked));
    }

    #[test]
    fn a_bad_filter_is_a_clear_error() {
        for query in [
            EventsQuery { queue: Some("a b".into()), ..Default::default() },
            EventsQuery { state: Some("done".into()), ..Default::default() },
            EventsQuery { event_type: Some("dev.cherga.task.exploded".into()), ..Default::default() },
            EventsQuery { task: Some("42".into()), ..Default::default() },
        ] {
            let error = Filter::parse(&query).err().expect("refused");
            assert_eq!(error.code.status(), 400, "{}", error.message);
        }
    }
}
