//! The null endpoint: cherga's HTTP stack (axum on tokio, the same versions)
//! answering the enqueue routes with the same JSON parsing and the same short
//! answer, but storing nothing. The distance between it and cherga is the cost of
//! storage; the distance between it and the hardware is the cost of HTTP.

use anyhow::{Context, Result};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use cherga_api::{EnqueueBatchRequest, EnqueueRequest};
use serde_json::{Value, json};

/// The short answer cherga gives the benchmark (`Prefer: return=minimal`): the
/// task's id and state, so the answer costs what cherga's costs to write.
fn task_brief(n: usize) -> Value {
    json!({"id": task_id(n), "state": "ready"})
}

/// A task id of the right shape.
fn task_id(n: usize) -> String {
    format!("0190f2a8-0000-7000-8000-{n:012x}")
}

async fn enqueue(Path(_queue): Path<String>, Json(_request): Json<EnqueueRequest>) -> impl IntoResponse {
    (StatusCode::CREATED, Json(task_brief(0)))
}

async fn enqueue_batch(
    Path(_queue): Path<String>,
    Json(request): Json<EnqueueBatchRequest>,
) -> impl IntoResponse {
    let results: Vec<Value> =
        (0..request.tasks.len()).map(|i| json!({"status": 201, "id": task_id(i)})).collect();
    Json(json!({ "results": results }))
}

/// Serves until the process is killed.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(addr: &str) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/queues/{queue}/tasks", post(enqueue))
        .route("/v1/queues/{queue}/tasks/batch", post(enqueue_batch));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
