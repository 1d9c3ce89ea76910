//! The null endpoint: cherga's HTTP stack (axum on tokio, the same versions)
//! answering the enqueue routes with the same JSON parsing and a task-shaped
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

fn task_json(queue: &str, request: &EnqueueRequest, n: usize) -> Value {
    // The shape of a TaskView, so the answer costs what cherga's costs to write.
    json!({
        "id": format!("0190f2a8-0000-7000-8000-{n:012x}"),
        "queue": queue,
        "kind": request.kind,
        "payload": request.payload,
        "priority": request.priority,
        "run_at": "2026-01-01T00:00:00.000Z",
        "max_attempts": 25,
        "attempts": 0,
        "state": "ready",
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
    })
}

async fn enqueue(Path(queue): Path<String>, Json(request): Json<EnqueueRequest>) -> impl IntoResponse {
    (StatusCode::CREATED, Json(task_json(&queue, &request, 0)))
}

async fn enqueue_batch(
    Path(queue): Path<String>,
    Json(request): Json<EnqueueBatchRequest>,
) -> impl IntoResponse {
    let results: Vec<Value> = request
        .tasks
        .iter()
        .enumerate()
        .map(|(i, task)| json!({"status": 201, "task": task_json(&queue, task, i)}))
        .collect();
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
