//! NATS JetStream (`async-nats`).
//!
//! Durability: a file-storage stream with work-queue retention on a server whose
//! config sets `jetstream { sync_interval: always }` (bench/peers/nats.sh), so
//! the server fsyncs before it sends the publish ack; enqueues await that ack. A
//! batch of 100 is 100 publishes pipelined, then 100 acks awaited.
//!
//! Consumers share one durable pull consumer with explicit acks. A lease is an
//! explicit pull request, like the lease of every other system here: a `no_wait`
//! fetch of up to the batch size, and when nothing is there, a pull of one
//! message that waits up to the lease's wait. (A continuous pull stream would
//! prefetch like RabbitMQ, but with a batch size of one it stalled until its pull
//! request expired now and then under load, which a benchmark cannot tell from
//! a slow server.) Acks use `double_ack`, which waits for the server to confirm
//! the ack, sent concurrently for a batch (JetStream has no multi-ack for a
//! shared explicit consumer).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::future::try_join_all;

use super::{Broker, Consumer, Producer};
use crate::payload::{self, Stamp};

/// The one durable consumer of every bench stream.
const CONSUMER: &str = "workers";

#[derive(Clone, Debug)]
pub struct Nats {
    /// `host:port`.
    addr: String,
}

impl Nats {
    pub fn new(url: &str) -> Self {
        Self { addr: url.trim_start_matches("nats://").to_owned() }
    }

    async fn context(&self) -> Result<jetstream::Context> {
        let client = async_nats::connect(self.addr.as_str())
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        Ok(jetstream::new(client))
    }
}

fn stream_name(queue: &str) -> String {
    queue.to_ascii_uppercase()
}

fn subject(queue: &str) -> String {
    format!("bench.{queue}")
}

impl Broker for Nats {
    type Producer = NatsProducer;
    type Consumer = NatsConsumer;

    async fn create_queue(&self, queue: &str) -> Result<()> {
        let js = self.context().await?;
        let stream = js
            .create_stream(stream::Config {
                name: stream_name(queue),
                subjects: vec![subject(queue)],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating stream {}", stream_name(queue)))?;
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(300),
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .context("creating the pull consumer")?;
        Ok(())
    }

    async fn producer(&self, queue: &str) -> Result<NatsProducer> {
        Ok(NatsProducer { js: self.context().await?, subject: subject(queue) })
    }

    async fn consumer(&self, queue: &str, _worker: usize, batch: usize) -> Result<NatsConsumer> {
        let js = self.context().await?;
        let stream = js.get_stream(stream_name(queue)).await?;
        let consumer: consumer::PullConsumer = stream.get_consumer(CONSUMER).await.map_err(|e| anyhow!(e))?;
        Ok(NatsConsumer { consumer, batch, last: Vec::new() })
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let js = self.context().await?;
        js.delete_stream(stream_name(queue)).await?;
        Ok(())
    }
}

pub struct NatsProducer {
    js: jetstream::Context,
    subject: String,
}

impl Producer for NatsProducer {
    async fn enqueue(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        let mut acks = Vec::with_capacity(payloads.len());
        for p in payloads {
            acks.push(self.js.publish(self.subject.clone(), bytes::Bytes::copy_from_slice(p)).await?);
        }
        // All are in flight already; the server acks them in order.
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

pub struct NatsConsumer {
    consumer: consumer::PullConsumer,
    batch: usize,
    /// The messages of the last lease, kept to ack them.
    last: Vec<jetstream::Message>,
}

impl Consumer for NatsConsumer {
    async fn lease(&mut self, wait: Duration, out: &mut Vec<Stamp>) -> Result<()> {
        self.last.clear();
        let ready = self.consumer.fetch().max_messages(self.batch).messages().await?;
        collect(ready, &mut self.last).await?;
        if self.last.is_empty() && !wait.is_zero() {
            // Nothing ready: wait for one, as a long poll does.
            let first = self.consumer.batch().max_messages(1).expires(wait).messages().await?;
            collect(first, &mut self.last).await?;
        }
        for m in &self.last {
            out.push(payload::parse(&m.message.payload).context("a foreign message in the stream")?);
        }
        Ok(())
    }

    async fn ack(&mut self) -> Result<()> {
        try_join_all(self.last.iter().map(|m| m.double_ack())).await.map_err(|e| anyhow!(e))?;
        self.last.clear();
        Ok(())
    }
}

/// Reads a pull request's messages until the server ends it.
async fn collect(mut batch: consumer::pull::Batch, into: &mut Vec<jetstream::Message>) -> Result<()> {
    use futures_util::StreamExt;
    while let Some(message) = batch.next().await {
        into.push(message.map_err(|e| anyhow!(e))?);
    }
    Ok(())
}
