//! RabbitMQ over AMQP 0-9-1 (`lapin`).
//!
//! Durability: a durable *quorum* queue (Raft log, fsynced before it confirms),
//! persistent messages (delivery mode 2), publisher confirms awaited before an
//! enqueue counts as done, manual acks. A batch of 100 is 100 publishes pipelined
//! on the channel, then 100 confirms awaited.
//!
//! Consumers use `basic.qos` prefetch = batch size and `basic.consume` (sent with
//! the first lease); a "lease" is whatever deliveries are buffered (at least one), and the ack of a batch is
//! one `basic.ack` with `multiple`. AMQP 0-9-1 has no reply to `basic.ack`, so
//! unlike every other system here the consumer cannot wait for its ack to be
//! durable: this favours RabbitMQ in the drain scenarios.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::future::try_join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{Broker, Consumer, Producer, take_buffered};
use crate::payload::{self, Stamp};

#[derive(Clone, Debug)]
pub struct RabbitMq {
    url: String,
}

impl RabbitMq {
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned() }
    }

    async fn channel(&self) -> Result<(Connection, Channel)> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        let channel = connection.create_channel().await?;
        Ok((connection, channel))
    }
}

impl Broker for RabbitMq {
    type Producer = RabbitProducer;
    type Consumer = RabbitConsumer;

    async fn create_queue(&self, queue: &str) -> Result<()> {
        let (connection, channel) = self.channel().await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                arguments,
            )
            .await
            .with_context(|| format!("declaring quorum queue {queue}"))?;
        connection.close(200, "done".into()).await?;
        Ok(())
    }

    async fn producer(&self, queue: &str) -> Result<RabbitProducer> {
        let (connection, channel) = self.channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(RabbitProducer {
            _connection: connection,
            channel,
            queue: queue.to_owned(),
            properties: BasicProperties::default().with_delivery_mode(2),
        })
    }

    async fn consumer(&self, queue: &str, worker: usize, batch: usize) -> Result<RabbitConsumer> {
        let (connection, channel) = self.channel().await?;
        let prefetch = u16::try_from(batch).context("batch too large for a prefetch count")?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        Ok(RabbitConsumer {
            _connection: connection,
            channel,
            queue: queue.to_owned(),
            tag: format!("bench-{worker}"),
            deliveries: None,
            batch,
            last_tags: Vec::new(),
        })
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let (connection, channel) = self.channel().await?;
        channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
        connection.close(200, "done".into()).await?;
        Ok(())
    }
}

pub struct RabbitProducer {
    _connection: Connection,
    channel: Channel,
    queue: String,
    properties: BasicProperties,
}

impl Producer for RabbitProducer {
    async fn enqueue(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        let mut confirms = Vec::with_capacity(payloads.len());
        for p in payloads {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    p,
                    self.properties.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirmation in try_join_all(confirms).await? {
            if !confirmation.is_ack() {
                bail!("RabbitMQ refused a message: {confirmation:?}");
            }
        }
        Ok(())
    }
}

pub struct RabbitConsumer {
    _connection: Connection,
    channel: Channel,
    queue: String,
    tag: String,
    /// Started by the first lease, not when the connection opens: the broker
    /// pushes a prefetch window at once, which must not happen before the clock
    /// of a drain starts.
    deliveries: Option<lapin::Consumer>,
    batch: usize,
    /// Delivery tags of the last lease.
    last_tags: Vec<u64>,
}

impl Consumer for RabbitConsumer {
    async fn lease(&mut self, wait: Duration, out: &mut Vec<Stamp>) -> Result<()> {
        self.last_tags.clear();
        let deliveries = match &mut self.deliveries {
            Some(deliveries) => deliveries,
            None => self.deliveries.insert(
                self.channel
                    .basic_consume(
                        self.queue.as_str().into(),
                        self.tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?,
            ),
        };
        for delivery in take_buffered(deliveries, self.batch, wait).await? {
            out.push(payload::parse(&delivery.data).context("a foreign message in the queue")?);
            self.last_tags.push(delivery.delivery_tag);
        }
        Ok(())
    }

    async fn ack(&mut self) -> Result<()> {
        // Deliveries on one channel arrive in tag order; one multiple-ack of the
        // highest tag acknowledges the whole lease.
        if let Some(&last) = self.last_tags.iter().max() {
            let multiple = self.last_tags.len() > 1;
            self.channel.basic_ack(last, BasicAckOptions { multiple }).await?;
        }
        Ok(())
    }
}
