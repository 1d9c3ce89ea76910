//! cherga over HTTP/1.1: one keep-alive connection per producer or consumer,
//! asking for short answers (`Prefer: return=minimal`),
//! driven by hyper's connection-level client (no pool, no URL parsing per request),
//! so the load generator spends as little CPU per request as it does for the
//! binary protocols of the peers.
//!
//! Durability: cherga answers 2xx to an enqueue, a lease and an ack only after
//! the SQLite commit holding it is fsynced (group commit across requests). A
//! worker between two tasks sends the acks of the last ones in its next lease
//! request (`acks`): one round trip and one commit for both.
//!
//! The same adapter drives the null endpoint (`cherga-bench null-server`), which
//! parses the same JSON and stores nothing: only enqueues make sense there.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;

use super::{Broker, Consumer, Producer};
use crate::payload::{self, Stamp};

/// Lease duration asked for: long enough that no task of a run is redelivered.
const LEASE_MS: u64 = 300_000;

#[derive(Clone, Debug)]
pub struct Cherga {
    /// `host:port`.
    addr: String,
    /// The null endpoint stores nothing and has no lease or ack routes.
    null: bool,
}

/// Names a file with a JSON Schema that every queue of the run gets as its
/// payload schema.
pub const PAYLOAD_SCHEMA_VAR: &str = "CHERGA_BENCH_PAYLOAD_SCHEMA";

impl Cherga {
    /// `url` is `http://host:port`.
    ///
    /// # Errors
    /// When `url` is not of that form.
    pub fn new(url: &str, null: bool) -> Result<Self> {
        let addr = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .with_context(|| format!("expected http://host:port, got {url}"))?;
        Ok(Self { addr: addr.to_owned(), null })
    }

    async fn connect(&self) -> Result<Http> {
        Http::connect(&self.addr).await
    }
}

impl Broker for Cherga {
    type Producer = ChergaProducer;
    type Consumer = ChergaConsumer;

    async fn create_queue(&self, queue: &str) -> Result<()> {
        if self.null {
            return Ok(());
        }
        // Queues are created on first use; an explicit PUT with the defaults makes
        // the creation happen outside the measured phase.
        let mut http = self.connect().await?;
        let (status, body) =
            http.send(Method::PUT, &format!("/v1/queues/{queue}"), Bytes::from_static(b"{}")).await?;
        expect(status, StatusCode::OK, &body)?;
        // The cost of payload schemas: every enqueue is then checked against
        // this one (`bench/schema-10.json` fits the benchmark's payloads).
        if let Some(path) = std::env::var_os(PAYLOAD_SCHEMA_VAR).filter(|path| !path.is_empty()) {
            let schema = std::fs::read_to_string(&path)
                .with_context(|| format!("{PAYLOAD_SCHEMA_VAR}: cannot read {}", path.display()))?;
            let request = format!("{{\"schema\": {schema}}}");
            let (status, body) =
                http.send(Method::PUT, &format!("/v1/queues/{queue}/schema"), Bytes::from(request)).await?;
            expect(status, StatusCode::OK, &body)?;
        }
        Ok(())
    }

    async fn producer(&self, queue: &str) -> Result<ChergaProducer> {
        Ok(ChergaProducer {
            http: self.connect().await?,
            single_path: format!("/v1/queues/{queue}/tasks"),
            batch_path: format!("/v1/queues/{queue}/tasks/batch"),
            body: Vec::new(),
        })
    }

    async fn consumer(&self, queue: &str, worker: usize, batch: usize) -> Result<ChergaConsumer> {
        if self.null {
            bail!("the null endpoint stores nothing and has no consumers");
        }
        Ok(ChergaConsumer {
            http: self.connect().await?,
            lease_path: format!("/v1/queues/{queue}/lease"),
            worker: format!("bench-{worker}"),
            batch,
            leased: Vec::new(),
        })
    }

    async fn delete_queue(&self, _queue: &str) -> Result<()> {
        // cherga has no queue deletion: finished tasks stay for the queue's
        // retention (7 days by default), as they would in production.
        Ok(())
    }
}

/// One HTTP/1.1 keep-alive connection.
struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    async fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, host: addr.to_owned() })
    }

    async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("the HTTP connection closed")?;
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            // Short answers to enqueues and acks: the id and the status, as the
            // peers' acknowledgements carry, not the whole task echoed back.
            .header("prefer", cherga_api::PREFER_MINIMAL)
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn expect(status: StatusCode, wanted: StatusCode, body: &[u8]) -> Result<()> {
    if status != wanted {
        bail!(
            "answered {status} (wanted {wanted}): {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<ItemStatus>,
}

#[derive(Deserialize)]
struct ItemStatus {
    status: u16,
}

fn expect_all(body: &[u8], wanted: u16, n: usize) -> Result<()> {
    let answer: BatchAnswer = serde_json::from_slice(body).context("decoding a batch answer")?;
    if answer.results.len() != n {
        bail!("batch answered {} items for {n}", answer.results.len());
    }
    if let Some(bad) = answer.results.iter().find(|r| r.status != wanted) {
        bail!("a batch item answered {} (wanted {wanted})", bad.status);
    }
    Ok(())
}

pub struct ChergaProducer {
    http: Http,
    single_path: String,
    batch_path: String,
    /// Reused request body buffer.
    body: Vec<u8>,
}

fn push_task(body: &mut Vec<u8>, payload: &[u8]) {
    body.extend_from_slice(b"{\"kind\":\"bench\",\"payload\":");
    body.extend_from_slice(payload);
    body.push(b'}');
}

impl Producer for ChergaProducer {
    async fn enqueue(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        self.body.clear();
        if let [one] = payloads {
            push_task(&mut self.body, one);
            let body = Bytes::copy_from_slice(&self.body);
            let (status, answer) = self.http.send(Method::POST, &self.single_path, body).await?;
            return expect(status, StatusCode::CREATED, &answer);
        }
        self.body.extend_from_slice(b"{\"tasks\":[");
        for (i, p) in payloads.iter().enumerate() {
            if i > 0 {
                self.body.push(b',');
            }
            push_task(&mut self.body, p);
        }
        self.body.extend_from_slice(b"]}");
        let body = Bytes::copy_from_slice(&self.body);
        let (status, answer) = self.http.send(Method::POST, &self.batch_path, body).await?;
        expect(status, StatusCode::OK, &answer)?;
        expect_all(&answer, 201, payloads.len())
    }
}

pub struct ChergaConsumer {
    http: Http,
    lease_path: String,
    worker: String,
    batch: usize,
    /// (task id, lease token) of the last lease.
    leased: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct LeaseAnswer<'a> {
    #[serde(borrow)]
    tasks: Vec<LeasedTask<'a>>,
    acks: Option<Vec<ItemStatus>>,
}

#[derive(Deserialize)]
struct LeasedTask<'a> {
    id: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    lease: LeaseToken,
}

#[derive(Deserialize)]
struct LeaseToken {
    token: String,
}

impl ChergaConsumer {
    /// `{"id":..,"lease":..}` of each task of the last lease, comma-separated.
    fn push_acks(&self, body: &mut String) {
        for (i, (id, token)) in self.leased.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(r#"{{"id":"{id}","lease":"{token}"}}"#));
        }
    }

    /// Leases; with `with_acks`, the request carries the acks of the last lease's
    /// tasks, and every one must answer 200.
    async fn lease_with(&mut self, wait: Duration, with_acks: bool, out: &mut Vec<Stamp>) -> Result<()> {
        let wait_ms = wait.as_millis().min(u128::from(cherga_api::MAX_WAIT_MS));
        let mut body = format!(
            r#"{{"max":{},"wait_ms":{wait_ms},"lease_ms":{LEASE_MS},"worker":"{}""#,
            self.batch, self.worker
        );
        if with_acks {
            body.push_str(r#","acks":["#);
            self.push_acks(&mut body);
            body.push(']');
        }
        body.push('}');
        let n_acks = self.leased.len();
        self.leased.clear();
        let (status, answer) = self.http.send(Method::POST, &self.lease_path, Bytes::from(body)).await?;
        expect(status, StatusCode::OK, &answer)?;
        let leased: LeaseAnswer<'_> = serde_json::from_slice(&answer).context("decoding a lease answer")?;
        if with_acks {
            let results = leased.acks.context("a lease with acks answered no acks")?;
            if results.len() != n_acks {
                bail!("a lease answered {} acks for {n_acks}", results.len());
            }
            if let Some(bad) = results.iter().find(|r| r.status != 200) {
                bail!("an ack in a lease answered {}", bad.status);
            }
        }
        for task in leased.tasks {
            let stamp = payload::parse(task.payload.get().as_bytes())
                .with_context(|| format!("task {} has a foreign payload", task.id))?;
            out.push(stamp);
            self.leased.push((task.id, task.lease.token));
        }
        Ok(())
    }
}

impl Consumer for ChergaConsumer {
    async fn lease(&mut self, wait: Duration, out: &mut Vec<Stamp>) -> Result<()> {
        self.lease_with(wait, false, out).await
    }

    async fn ack_and_lease(&mut self, out: &mut Vec<Stamp>) -> Result<()> {
        let with_acks = !self.leased.is_empty();
        self.lease_with(Duration::ZERO, with_acks, out).await
    }

    async fn ack(&mut self) -> Result<()> {
        match self.leased.as_slice() {
            [] => Ok(()),
            [(id, token)] if self.batch == 1 => {
                let body = Bytes::from(format!(r#"{{"lease":"{token}"}}"#));
                let (status, answer) =
                    self.http.send(Method::POST, &format!("/v1/tasks/{id}/ack"), body).await?;
                expect(status, StatusCode::OK, &answer)?;
                self.leased.clear();
                Ok(())
            }
            leased => {
                let n = leased.len();
                let mut body = String::with_capacity(32 + n * 96);
                body.push_str(r#"{"acks":["#);
                self.push_acks(&mut body);
                body.push_str("]}");
                let (status, answer) =
                    self.http.send(Method::POST, "/v1/tasks/ack", Bytes::from(body)).await?;
                expect(status, StatusCode::OK, &answer)?;
                expect_all(&answer, 200, n)?;
                self.leased.clear();
                Ok(())
            }
        }
    }
}
