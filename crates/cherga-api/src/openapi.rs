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

/// How an attempt ended, or `running` for the current one.
// A `String` in `AttemptView`, so that a client reads outcomes added later.
#[derive(utoipa::ToSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Read by the OpenAPI derive only.
pub enum AttemptOutcome {
    Running,
    Succeeded,
    Failed,
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    #[test]
    fn attempt_outcomes_are_those_of_the_core() {
        let schema = serde_json::to_value(AttemptOutcome::schema()).unwrap();
        let names: Vec<&str> =
            schema["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(names, cherga_core::AttemptOutcome::ALL.map(cherga_core::AttemptOutcome::as_str));
    }

    #[test]
    fn a_task_has_a_history_of_attempts() {
        let task = serde_json::to_value(crate::TaskView::schema()).unwrap();
        assert_eq!(task["properties"]["history"]["items"]["$ref"], "#/components/schemas/AttemptView");
        assert!(task["required"].as_array().unwrap().contains(&"history".into()), "{task:#}");
        let attempt = serde_json::to_value(crate::AttemptView::schema()).unwrap();
        assert_eq!(
            attempt["properties"]["outcome"]["$ref"], "#/components/schemas/AttemptOutcome",
            "{attempt:#}"
        );
        let mut names: Vec<&String> = attempt["properties"].as_object().unwrap().keys().collect();
        names.sort();
        assert_eq!(
            names,
            ["attempt", "error", "finished_at", "outcome", "payload_edit", "started_at", "worker"]
        );
    }
}
