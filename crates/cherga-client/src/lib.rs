//! The Rust client of cherga and its worker runtime.
//!
//! - [`Client`]: one typed async method per endpoint of the v1 HTTP API, taking
//!   and returning the wire types of [`cherga_api`] (re-exported as [`api`]).
//! - [`Worker`]: leases the tasks of a queue, runs a handler per task kind with a
//!   concurrency limit, renews leases while handlers run, acks or nacks the
//!   outcome, and shuts down gracefully.
//! - [`EventStream`]: follows the event stream (`GET /v1/events`), resuming
//!   with `Last-Event-ID` when the connection drops.
//! - [`testing`]: helpers for tests of code that enqueues or handles tasks.
//!
//! **Invariant:** this crate speaks only the HTTP contract; it shares no code with
//! the server beyond the wire types.
//!
//! ```no_run
//! use cherga_client::{Client, Worker, api::EnqueueRequest};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new("http://127.0.0.1:7700")?;
//! let request = EnqueueRequest::new("charge", &serde_json::json!({"order": 7}))?;
//! let enqueued = client.enqueue("payments", &request, Some("order-7")).await?;
//! println!("task {} (replayed: {})", enqueued.task.id, enqueued.replayed);
//!
//! let worker = Worker::builder(client, "payments")
//!     .concurrency(8)
//!     .handler("charge", |task| async move {
//!         let order: serde_json::Value = task.payload_as()?;
//!         Ok(serde_json::json!({"charged": order["order"]}))
//!     })
//!     .build();
//! worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod events;
mod sse;
pub mod testing;
mod worker;

pub use cherga_api as api;
pub use client::{Client, DEFAULT_TIMEOUT, Enqueued};
pub use error::Error;
pub use events::{EventStream, StreamItem};
pub use sse::{SseEvent, SseParser};
pub use worker::{DEFAULT_LEASE, DEFAULT_WAIT, HandlerError, Worker, WorkerBuilder};

#[cfg(test)]
mod tests;
