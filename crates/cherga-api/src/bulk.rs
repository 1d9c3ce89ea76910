//! Wire types of the bulk actions: `POST /v1/queues/{queue}/tasks/retry`,
//! `/cancel` and `/purge`, and `DELETE /v1/queues/{queue}`.

use crate::{Timestamp, number};
use serde::{Deserialize, Serialize};

/// Most tasks one bulk request may change (`limit`).
pub const MAX_BULK_LIMIT: u64 = 10_000_000;

/// The filter of a bulk action: which tasks of the queue it applies to. Every
/// condition given must hold; `{}` takes every task in the action's states.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// Only tasks in these states; left out or empty: the action's own (retry:
    /// `dead`; cancel: `scheduled`, `ready`; purge: `succeeded`, `dead`,
    /// `cancelled`). A state the action does not apply to is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 6))]
    pub states: Vec<String>,
    /// Only tasks of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub kind: Option<String>,
    /// Only tasks of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub group: Option<String>,
    /// Only tasks enqueued at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_after: Option<Timestamp>,
    /// Only tasks enqueued before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_before: Option<Timestamp>,
    /// Most tasks to change (default: every match).
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10_000_000))]
    pub limit: Option<u64>,
}

/// What a bulk action did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkResponse {
    /// How many tasks it changed (each also an event).
    pub matched: u64,
}

/// `DELETE /v1/queues/{queue}` query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct DeleteQueueQuery {
    /// Delete the queue even while it holds unfinished tasks, purging them.
    pub force: Option<bool>,
}

/// What deleting a queue did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteQueueResponse {
    pub queue: String,
    /// How many tasks were purged with it (each also an event).
    pub purged: u64,
}
