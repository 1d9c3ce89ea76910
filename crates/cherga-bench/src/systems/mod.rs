//! The systems under test behind one small interface, so that every scenario
//! drives every system with the same code: a [`Broker`] makes fresh queues and
//! opens connections; a [`Producer`] (one connection) enqueues a batch and returns
//! once the broker has acknowledged it durably; a [`Consumer`] (one connection)
//! takes up to its batch size of tasks and acknowledges them.
//!
//! **Invariant:** every producer and consumer owns exactly one connection to its
//! server, opened before a measured phase starts, and no connection is shared
//! between concurrent clients.
//!
//! Each adapter's module doc says how it meets the durability bar: an enqueue and
//! an ack are answered only after fsync, where the protocol lets a client know.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;

use crate::payload::Stamp;

pub mod cherga;
pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;

/// A system under test.
pub trait Broker: Send + Sync + 'static {
    type Producer: Producer;
    type Consumer: Consumer;

    /// Creates a fresh, empty queue named `queue` (a-z, 0-9 and `_` only).
    fn create_queue(&self, queue: &str) -> impl Future<Output = Result<()>> + Send;

    /// Opens one producer connection for `queue`.
    fn producer(&self, queue: &str) -> impl Future<Output = Result<Self::Producer>> + Send;

    /// Opens one consumer connection for `queue` that takes up to `batch` tasks at
    /// a time. `worker` numbers the consumers of one run from 0.
    fn consumer(
        &self,
        queue: &str,
        worker: usize,
        batch: usize,
    ) -> impl Future<Output = Result<Self::Consumer>> + Send;

    /// Deletes `queue` and everything in it.
    fn delete_queue(&self, queue: &str) -> impl Future<Output = Result<()>> + Send;
}

pub trait Producer: Send + 'static {
    /// Enqueues `payloads` — one request for one payload, one batch request (or
    /// one pipelined burst, where the protocol has no batch) for several — and
    /// returns once each was acknowledged by the broker.
    fn enqueue(&mut self, payloads: &[Vec<u8>]) -> impl Future<Output = Result<()>> + Send;
}

pub trait Consumer: Send + 'static {
    /// Takes up to the consumer's batch size of tasks, waiting up to `wait` for the
    /// first, and appends their stamps to `out`. Taking nothing is not an error.
    fn lease(&mut self, wait: Duration, out: &mut Vec<Stamp>) -> impl Future<Output = Result<()>> + Send;

    /// Acknowledges every task taken by the last lease.
    fn ack(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// What a worker does between two tasks: acknowledges every task taken by the
    /// last lease, then takes up to the batch size of tasks that are ready now,
    /// without waiting. When it returns the acknowledgements are durable. An
    /// adapter whose system can do both in one round trip and one durable commit
    /// does so (cherga: acks in the lease request; Redis: `XACK` and `XREADGROUP`
    /// pipelined); the others ack, then lease.
    fn ack_and_lease(&mut self, out: &mut Vec<Stamp>) -> impl Future<Output = Result<()>> + Send {
        async move {
            self.ack().await?;
            self.lease(Duration::ZERO, out).await
        }
    }
}

/// Takes up to `max` items from a stream of pushed deliveries: waits up to `wait`
/// for the first, then takes whatever else is already buffered without waiting.
/// This is how a batch is "leased" from a broker that pushes (RabbitMQ with a
/// prefetch window).
pub(crate) async fn take_buffered<S, T, E>(stream: &mut S, max: usize, wait: Duration) -> Result<Vec<T>>
where
    S: futures_util::Stream<Item = Result<T, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures_util::{FutureExt, StreamExt};
    let mut items = Vec::new();
    match tokio::time::timeout(wait, stream.next()).await {
        Err(_elapsed) => return Ok(items),
        Ok(None) => anyhow::bail!("the delivery stream ended"),
        Ok(Some(item)) => items.push(item?),
    }
    while items.len() < max {
        match stream.next().now_or_never() {
            Some(Some(item)) => items.push(item?),
            Some(None) => anyhow::bail!("the delivery stream ended"),
            None => break,
        }
    }
    Ok(items)
}
