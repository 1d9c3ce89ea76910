//! A plain PostgreSQL task table, leased with `FOR UPDATE SKIP LOCKED`
//! (`tokio-postgres`), the way queue libraries on Postgres do it.
//!
//! Durability: every statement runs in its own transaction with
//! `synchronous_commit = on` (set per session; bench/peers/postgres.sh checks the
//! server's `fsync = on`), so a commit returns after the WAL is flushed. A batch of
//! 100 is one `INSERT ... SELECT unnest($1)`: one transaction, one flush.
//!
//! Like cherga, a lease and an ack are each a durable state change: the lease is
//! `UPDATE ... SET state = running, leased_until = now() + 5 min WHERE id IN
//! (SELECT ... WHERE state = ready ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED)
//! RETURNING payload`, the ack `UPDATE ... SET state = done WHERE id = ANY($1)`.
//! A worker between two tasks acks, then leases, each in a transaction of its
//! own: one statement that did both (two data-modifying CTEs) met "deadlock
//! detected" with 8 workers. Finished rows stay, as finished tasks stay in cherga. Postgres has no long
//! poll without LISTEN/NOTIFY, so an empty lease polls again after 1 ms.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Statement};

use super::{Broker, Consumer, Producer};
use crate::payload::{self, Stamp};

/// How long an empty lease sleeps before it asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
pub struct Postgres {
    url: String,
}

impl Postgres {
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned() }
    }

    async fn client(&self) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute("SET synchronous_commit = on").await?;
        Ok(client)
    }
}

impl Broker for Postgres {
    type Producer = PgProducer;
    type Consumer = PgConsumer;

    async fn create_queue(&self, queue: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {queue};
                 CREATE TABLE {queue} (
                     id bigserial PRIMARY KEY,
                     state smallint NOT NULL DEFAULT 0,
                     leased_until timestamptz,
                     payload jsonb NOT NULL
                 );
                 CREATE INDEX {queue}_ready ON {queue} (id) WHERE state = 0;"
            ))
            .await
            .with_context(|| format!("creating table {queue}"))?;
        Ok(())
    }

    async fn producer(&self, queue: &str) -> Result<PgProducer> {
        let client = self.client().await?;
        let single =
            client.prepare(&format!("INSERT INTO {queue} (payload) VALUES ($1::text::jsonb)")).await?;
        let batch = client
            .prepare(&format!("INSERT INTO {queue} (payload) SELECT p::jsonb FROM unnest($1::text[]) AS p"))
            .await?;
        Ok(PgProducer { client, single, batch, texts: Vec::new() })
    }

    async fn consumer(&self, queue: &str, _worker: usize, batch: usize) -> Result<PgConsumer> {
        let client = self.client().await?;
        let lease = client
            .prepare(&format!(
                "UPDATE {queue} SET state = 1, leased_until = now() + interval '5 minutes'
                 WHERE id IN (SELECT id FROM {queue} WHERE state = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, payload::text"
            ))
            .await?;
        let ack =
            client.prepare(&format!("UPDATE {queue} SET state = 2 WHERE id = ANY($1) AND state = 1")).await?;
        Ok(PgConsumer { client, lease, ack, batch: batch as i64, last_ids: Vec::new() })
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.client().await?.batch_execute(&format!("DROP TABLE IF EXISTS {queue}")).await?;
        Ok(())
    }
}

pub struct PgProducer {
    client: Client,
    single: Statement,
    batch: Statement,
    texts: Vec<String>,
}

impl Producer for PgProducer {
    async fn enqueue(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        self.texts.clear();
        for p in payloads {
            self.texts.push(String::from_utf8(p.clone()).context("payloads are UTF-8")?);
        }
        let inserted = if let [one] = self.texts.as_slice() {
            self.client.execute(&self.single, &[one]).await?
        } else {
            self.client.execute(&self.batch, &[&self.texts]).await?
        };
        if inserted != payloads.len() as u64 {
            bail!("inserted {inserted} rows of {}", payloads.len());
        }
        Ok(())
    }
}

pub struct PgConsumer {
    client: Client,
    lease: Statement,
    ack: Statement,
    batch: i64,
    last_ids: Vec<i64>,
}

impl Consumer for PgConsumer {
    async fn lease(&mut self, wait: Duration, out: &mut Vec<Stamp>) -> Result<()> {
        self.last_ids.clear();
        let deadline = Instant::now() + wait;
        loop {
            let rows = self.client.query(&self.lease, &[&self.batch]).await?;
            for row in &rows {
                let text: &str = row.get(1);
                out.push(payload::parse(text.as_bytes()).context("a foreign row in the table")?);
                self.last_ids.push(row.get(0));
            }
            if !rows.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn ack(&mut self) -> Result<()> {
        if self.last_ids.is_empty() {
            return Ok(());
        }
        let acked = self.client.execute(&self.ack, &[&self.last_ids]).await?;
        if acked != self.last_ids.len() as u64 {
            bail!("acked {acked} rows of {}", self.last_ids.len());
        }
        self.last_ids.clear();
        Ok(())
    }
}
