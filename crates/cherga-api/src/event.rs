//! Task events on the wire: `GET /v1/events` sends each as a CloudEvents 1.0
//! JSON object (structured mode), so tooling that reads CloudEvents reads
//! cherga's stream as it is.

use crate::Timestamp;
use cherga_core::{Change, TaskId, TaskState, Transition};
use serde::{Deserialize, Serialize};

/// The prefix of every event `type`: `dev.cherga.task.acked` and so on.
pub const TYPE_PREFIX: &str = "dev.cherga.task.";

/// One task transition, as a CloudEvent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// The event's position in the log; the SSE `id`, and what `Last-Event-ID`
    /// resumes after.
    pub id: String,
    /// `/v1/queues/{queue}`: the queue of the task.
    pub source: String,
    /// `dev.cherga.task.` and the change: `enqueued`, `promoted`, `leased`,
    /// `acked`, `nacked`, `expired`, `cancelled`, `retried`, `purged`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The task's id.
    pub subject: String,
    /// When the change happened.
    pub time: Timestamp,
    /// Always `application/json`.
    pub datacontenttype: String,
    pub data: EventData,
}

/// What changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventData {
    pub task_id: String,
    pub queue: String,
    pub kind: String,
    /// The change, as in the event's type: `acked`, `nacked`...
    pub change: String,
    /// The state before; absent for a task just enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The state after; absent for a task purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The task's attempts (times leased) after the change.
    pub attempt: u32,
    /// Present (`true`) on a `retried` event whose retry replaced the task's
    /// payload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_edited: bool,
}

impl CloudEvent {
    /// The CloudEvent of the event numbered `id`.
    pub fn new(id: u64, transition: &Transition) -> Self {
        let change = transition.change.as_str();
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: id.to_string(),
            source: format!("/v1/queues/{}", transition.queue),
            event_type: format!("{TYPE_PREFIX}{change}"),
            subject: transition.task_id.to_string(),
            time: Timestamp(transition.at),
            datacontenttype: "application/json".to_owned(),
            data: EventData {
                task_id: transition.task_id.to_string(),
                queue: transition.queue.clone(),
                kind: transition.kind.clone(),
                change: change.to_owned(),
                from: transition.from.map(|s| s.as_str().to_owned()),
                to: transition.to.map(|s| s.as_str().to_owned()),
                attempt: transition.attempt,
                payload_edited: transition.payload_edited,
            },
        }
    }

    /// The transition this event describes, read back (as a client would), if
    /// its fields are cherga's.
    pub fn transition(&self) -> Option<Transition> {
        let state = |s: &Option<String>| match s {
            None => Some(None),
            Some(text) => TaskState::parse(text).map(Some),
        };
        Some(Transition {
            task_id: TaskId::parse(&self.data.task_id)?,
            queue: self.data.queue.clone(),
            kind: self.data.kind.clone(),
            change: Change::parse(&self.data.change)?,
            from: state(&self.data.from)?,
            to: state(&self.data.to)?,
            attempt: self.data.attempt,
            at: self.time.0,
            due: None,
            payload_edited: self.data.payload_edited,
        })
    }
}

/// The query of `GET /v1/events`: which events to send, and from where.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct EventsQuery {
    /// Only events of queues matching this pattern (`*` for any run of
    /// characters, as in token scopes).
    pub queue: Option<String>,
    /// Only events of tasks of this kind.
    pub kind: Option<String>,
    /// Only events that moved a task into this state.
    pub state: Option<String>,
    /// Only events of this change (`acked`, `dead`... the end of the type).
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", param(rename = "type"))]
    pub event_type: Option<String>,
    /// Only events of this task.
    pub task: Option<String>,
    /// Start after this event id (as `Last-Event-ID` does; the header wins).
    /// `0` starts from the oldest event kept; without either, the stream
    /// starts with the next event.
    pub after: Option<String>,
    /// With `Accept: application/json`: most events in the page (1 to 1000,
    /// default 100).
    pub limit: Option<usize>,
}

/// A page of events, the answer to `GET /v1/events` with `Accept:
/// application/json` (for scripts, and for catching up without a stream).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventList {
    pub events: Vec<CloudEvent>,
    /// Where the next page starts: pass it as `after`. Past every event this page
    /// looked at, including those the filters or the token's scopes left out.
    pub next: String,
    /// The id of the last event that can be read now.
    pub head: String,
    /// Events up to this id were deleted by retention.
    pub purged_through: String,
    /// Events of transactions still running are held back and come later.
    pub pending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_a_cloudevent_and_reads_back() {
        let transition = Transition {
            task_id: TaskId::new(1_764_304_500_123, 42),
            queue: "payments".into(),
            kind: "charge_card".into(),
            change: Change::Acked,
            from: Some(TaskState::Running),
            to: Some(TaskState::Succeeded),
            attempt: 2,
            at: 1_764_304_500_123,
            due: None,
            payload_edited: false,
        };
        let event = CloudEvent::new(77, &transition);
        let json = serde_json::to_value(&event).expect("serialises");
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], "77");
        assert_eq!(json["type"], "dev.cherga.task.acked");
        assert_eq!(json["source"], "/v1/queues/payments");
        assert_eq!(json["subject"], transition.task_id.to_string());
        assert_eq!(json["time"], "2025-11-28T04:35:00.123Z");
        assert_eq!(json["data"]["from"], "running");
        assert_eq!(json["data"]["to"], "succeeded");
        assert_eq!(json["data"].get("payload_edited"), None, "only on an edit");
        let back: CloudEvent = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.transition(), Some(transition.clone()));

        let edited = Transition {
            change: Change::Retried,
            from: Some(TaskState::Dead),
            to: Some(TaskState::Ready),
            payload_edited: true,
            ..transition
        };
        let json = serde_json::to_value(CloudEvent::new(78, &edited)).expect("serialises");
        assert_eq!(json["data"]["payload_edited"], true);
        let back: CloudEvent = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.transition(), Some(edited));
    }
}
