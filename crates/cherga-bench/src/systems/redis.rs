//! Redis streams (`redis` crate, tokio).
//!
//! Durability: a dedicated redis-server started by bench/peers/redis.sh with
//! `appendonly yes` and `appendfsync always`: every write command is in the AOF
//! and fsynced before Redis replies. An enqueue is `XADD`; a batch of 100 is 100
//! `XADD`s pipelined in one round trip (Redis fsyncs once per event-loop pass,
//! its form of group commit).
//!
//! Consumers are one consumer group; a lease is `XREADGROUP ... COUNT batch BLOCK
//! wait STREAMS key >` (the entries enter the group's pending list, which is also
//! a logged write), an ack is one `XACK` of the lease's ids; a worker between two
//! tasks pipelines the `XACK` of the last ones with a non-blocking `XREADGROUP`
//! for the next (one round trip, one fsync). Acked entries stay in
//! the stream until the stream is deleted after the run, as finished tasks stay in
//! cherga.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::{Broker, Consumer, Producer};
use crate::payload::{self, Stamp};

const GROUP: &str = "workers";
const FIELD: &str = "task";

#[derive(Clone, Debug)]
pub struct Redis {
    client: redis::Client,
}

impl Redis {
    /// # Errors
    /// When `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self> {
        Ok(Self { client: redis::Client::open(url)? })
    }

    async fn connection(&self) -> Result<MultiplexedConnection> {
        // The default response timeout (0.5 s) is shorter than a loaded fsync can
        // take, and a blocked XREADGROUP waits longer still.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(120)));
        Ok(self.client.get_multiplexed_async_connection_with_config(&config).await?)
    }
}

impl Broker for Redis {
    type Producer = RedisProducer;
    type Consumer = RedisConsumer;

    async fn create_queue(&self, queue: &str) -> Result<()> {
        let mut connection = self.connection().await?;
        let _: () = redis::cmd("DEL").arg(queue).query_async(&mut connection).await?;
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(queue)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await
            .context("XGROUP CREATE")?;
        Ok(())
    }

    async fn producer(&self, queue: &str) -> Result<RedisProducer> {
        Ok(RedisProducer { connection: self.connection().await?, key: queue.to_owned() })
    }

    async fn consumer(&self, queue: &str, worker: usize, batch: usize) -> Result<RedisConsumer> {
        Ok(RedisConsumer {
            connection: self.connection().await?,
            key: queue.to_owned(),
            name: format!("bench-{worker}"),
            batch,
            last_ids: Vec::new(),
        })
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let mut connection = self.connection().await?;
        let _: () = redis::cmd("DEL").arg(queue).query_async(&mut connection).await?;
        Ok(())
    }
}

pub struct RedisProducer {
    connection: MultiplexedConnection,
    key: String,
}

impl Producer for RedisProducer {
    async fn enqueue(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        if let [one] = payloads {
            let _: Value = redis::cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg(FIELD)
                .arg(one)
                .query_async(&mut self.connection)
                .await?;
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for p in payloads {
            pipe.cmd("XADD").arg(&self.key).arg("*").arg(FIELD).arg(p);
        }
        let ids: Vec<Value> = pipe.query_async(&mut self.connection).await?;
        if ids.len() != payloads.len() {
            bail!("pipelined {} XADDs, got {} replies", payloads.len(), ids.len());
        }
        Ok(())
    }
}

pub struct RedisConsumer {
    connection: MultiplexedConnection,
    key: String,
    name: String,
    batch: usize,
    /// Entry ids of the last lease.
    last_ids: Vec<Vec<u8>>,
}

impl RedisConsumer {
    /// `XREADGROUP` for up to the batch size of new entries, blocking up to
    /// `wait` (not at all when zero).
    fn read(&self, wait: Duration) -> redis::Cmd {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(&self.name).arg("COUNT").arg(self.batch);
        if !wait.is_zero() {
            read.arg("BLOCK").arg(wait.as_millis().max(1) as u64);
        }
        read.arg("STREAMS").arg(&self.key).arg(">");
        read
    }

    fn xack(&self) -> redis::Cmd {
        let mut xack = redis::cmd("XACK");
        xack.arg(&self.key).arg(GROUP).arg(&self.last_ids);
        xack
    }

    fn check_acked(&mut self, acked: u64) -> Result<()> {
        if acked != self.last_ids.len() as u64 {
            bail!("XACK acknowledged {acked} of {} entries", self.last_ids.len());
        }
        self.last_ids.clear();
        Ok(())
    }

    fn take(&mut self, reply: Value, out: &mut Vec<Stamp>) -> Result<()> {
        for (id, fields) in entries(reply)? {
            let task =
                field_value(fields, FIELD.as_bytes()).context("a stream entry without a task field")?;
            out.push(payload::parse(&task).context("a foreign entry in the stream")?);
            self.last_ids.push(id);
        }
        Ok(())
    }
}

impl Consumer for RedisConsumer {
    async fn lease(&mut self, wait: Duration, out: &mut Vec<Stamp>) -> Result<()> {
        self.last_ids.clear();
        let reply: Value = self.read(wait).query_async(&mut self.connection).await?;
        self.take(reply, out)
    }

    async fn ack_and_lease(&mut self, out: &mut Vec<Stamp>) -> Result<()> {
        if self.last_ids.is_empty() {
            return self.lease(Duration::ZERO, out).await;
        }
        // One round trip; with appendfsync always, Redis writes and fsyncs both
        // commands' effects before it sends either reply.
        let (acked, reply): (u64, Value) = redis::pipe()
            .add_command(self.xack())
            .add_command(self.read(Duration::ZERO))
            .query_async(&mut self.connection)
            .await?;
        self.check_acked(acked)?;
        self.take(reply, out)
    }

    async fn ack(&mut self) -> Result<()> {
        if self.last_ids.is_empty() {
            return Ok(());
        }
        let acked: u64 = self.xack().query_async(&mut self.connection).await?;
        self.check_acked(acked)
    }
}

/// The (id, fields) pairs of an `XREADGROUP` reply for one stream:
/// `[[key, [[id, [field, value, ...]], ...]]]`, or nil when the wait ran out.
fn entries(reply: Value) -> Result<Vec<(Vec<u8>, Vec<Value>)>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => bail!("unexpected XREADGROUP reply: {other:?}"),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut key_and_entries) = stream else { bail!("unexpected XREADGROUP stream") };
        let Some(Value::Array(list)) = key_and_entries.pop() else { bail!("unexpected XREADGROUP entries") };
        for entry in list {
            let Value::Array(mut id_and_fields) = entry else { bail!("unexpected stream entry") };
            let (Some(Value::Array(fields)), Some(id)) = (id_and_fields.pop(), id_and_fields.pop()) else {
                bail!("unexpected stream entry shape");
            };
            out.push((bytes_of(id)?, fields));
        }
    }
    Ok(out)
}

fn bytes_of(value: Value) -> Result<Vec<u8>> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => bail!("expected a string, got {other:?}"),
    }
}

fn field_value(fields: Vec<Value>, name: &[u8]) -> Option<Vec<u8>> {
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if matches!(&k, Value::BulkString(b) if b == name) {
            return bytes_of(v).ok();
        }
    }
    None
}
