//! Schemas that exist for the OpenAPI document only (feature `openapi`).

use crate::Timestamp;

/// An item of `POST /v1/queues/{queue}/tasks/batch`: the fields of an enqueue,
/// with their JSON types but without their ranges, because a batch checks each
/// item on its own and answers an item out of range with an error in its place
/// (see `EnqueueRequest` for the ranges).
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Read by the OpenAPI derive only.
pub struct BatchItemRequest {
    kind: String,
    #[schema(value_type = Option<Value>)]
    payload: Option<()>,
    priority: Option<i32>,
    run_at: Option<Timestamp>,
    delay_ms: Option<i64>,
    idempotency_key: Option<String>,
    group: Option<String>,
    /// What a `u32` holds; 1 to 10000 is checked per item.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    max_attempts: Option<u32>,
}
