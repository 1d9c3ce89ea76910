//! A small bounded pool of PostgreSQL connections.
//!
//! A [`Semaphore`] bounds how many connections exist at once; idle connections
//! wait in a list and are handed out newest first. Each connection caches its
//! prepared statements and knows its backend pid, which the pool records so the
//! LISTEN connection can tell this node's own notifications from other nodes'.
//!
//! Invariants:
//! - a connection goes back to the idle list only when it is outside any
//!   transaction and has not failed; one dropped in the middle of a transaction
//!   (a cancelled request, a timeout, an error) is closed instead, which makes the
//!   server roll the transaction back;
//! - a connection the server closed (`pg_terminate_backend`, a restart) is never
//!   handed out again: it is noticed at checkout or on its first failed statement,
//!   and a fresh one is opened in its place.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

/// Backend pids of this node's pooled connections.
pub type OwnPids = Arc<Mutex<HashSet<i32>>>;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] tokio_postgres::Error),
    #[error("no PostgreSQL connection free within {0:?}; all {1} are busy")]
    Exhausted(Duration, usize),
    #[error("the store is closed")]
    Closed,
}

pub struct Pool {
    config: Config,
    size: usize,
    permits: Semaphore,
    /// Idle connections; the lock is never held across an await.
    idle: Mutex<Vec<Conn>>,
    pids: OwnPids,
    checkout_timeout: Duration,
}

impl Pool {
    pub fn new(config: Config, size: usize, checkout_timeout: Duration) -> Self {
        Self {
            config,
            size,
            permits: Semaphore::new(size),
            idle: Mutex::new(Vec::new()),
            pids: Arc::default(),
            checkout_timeout,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn own_pids(&self) -> OwnPids {
        self.pids.clone()
    }

    /// Connections checked out now, and the most there may be.
    pub fn in_use(&self) -> (usize, usize) {
        (self.size.saturating_sub(self.permits.available_permits()), self.size)
    }

    /// A connection, waiting at most the checkout timeout for a free one.
    ///
    /// # Errors
    /// [`PoolError::Exhausted`] when none frees up in time, [`PoolError::Connect`]
    /// when a new connection cannot be opened, [`PoolError::Closed`] after close.
    pub async fn get(&self) -> Result<PooledConn<'_>, PoolError> {
        let permit = tokio::time::timeout(self.checkout_timeout, self.permits.acquire())
            .await
            .map_err(|_| PoolError::Exhausted(self.checkout_timeout, self.size))?
            .map_err(|_| PoolError::Closed)?;
        let reused = loop {
            let candidate = self.idle.lock().expect("pool lock").pop();
            match candidate {
                Some(conn) if conn.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match reused {
            Some(conn) => conn,
            None => self.connect().await.map_err(PoolError::Connect)?,
        };
        Ok(PooledConn { conn: Some(conn), pool: self, _permit: permit })
    }

    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection ended");
            }
        });
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        self.pids.lock().expect("pids lock").insert(pid);
        Ok(Conn {
            client,
            pid,
            statements: HashMap::new(),
            in_tx: false,
            begin_pending: false,
            failed: false,
            pids: self.pids.clone(),
        })
    }

    /// Closes the idle connections and refuses later checkouts.
    pub fn close(&self) {
        self.permits.close();
        self.idle.lock().expect("pool lock").clear();
    }
}

/// One connection with its statement cache.
pub struct Conn {
    client: Client,
    pid: i32,
    statements: HashMap<&'static str, Statement>,
    /// A transaction is open: the connection must not go back to the pool as is.
    in_tx: bool,
    /// `BEGIN` is owed: it goes out with the next statements, in one round trip.
    begin_pending: bool,
    /// A statement failed: the connection may be broken or its transaction aborted.
    failed: bool,
    pids: OwnPids,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.pids.lock().expect("pids lock").remove(&self.pid);
    }
}

/// Parameters of one statement.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One statement of a pipeline: SQL and its parameters.
pub type Step<'a> = (&'static str, Params<'a>);

/// Why a pipeline that ended with `COMMIT` failed.
#[derive(Debug)]
pub enum CommitError {
    /// The server refused a statement before `COMMIT`: the transaction was rolled
    /// back and nothing took effect.
    Statement(tokio_postgres::Error),
    /// `COMMIT` failed or the connection was lost after it was sent: the outcome
    /// is unknown.
    Commit(tokio_postgres::Error),
}

/// Polls every future, first to last on each wake-up, until all are done. The
/// driver sends a request when its future is first polled, so the requests leave
/// in order, back to back: one round trip for the lot.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

impl Conn {
    async fn statement(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await.inspect_err(|_| self.failed = true)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Sends `steps` (after an owed `BEGIN`, and before `COMMIT` when `commit`) in
    /// one round trip, and returns each statement's outcome in order.
    async fn pipeline(
        &mut self,
        steps: &[Step<'_>],
        commit: bool,
    ) -> Result<Vec<Result<Vec<Row>, tokio_postgres::Error>>, tokio_postgres::Error> {
        let begin = self.begin_pending;
        let mut statements: Vec<(Statement, Params<'_>)> = Vec::with_capacity(steps.len() + 2);
        if begin {
            statements.push((self.statement("BEGIN").await?, &[]));
        }
        for (sql, params) in steps {
            statements.push((self.statement(sql).await?, params));
        }
        if commit {
            statements.push((self.statement("COMMIT").await?, &[]));
        }
        self.begin_pending = false;
        let client = &self.client;
        let mut outcomes =
            join_all(statements.iter().map(|(statement, params)| client.query(statement, params)).collect())
                .await;
        if begin {
            // An error of BEGIN is reported as the first statement's.
            let begun = outcomes.remove(0);
            if let (Err(error), Some(first)) = (begun, outcomes.first_mut()) {
                *first = Err(error);
            }
        }
        Ok(outcomes)
    }

    /// Runs a statement (prepared once per connection) and returns its rows.
    ///
    /// # Errors
    /// The driver's error; the connection is then not reused.
    pub async fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let mut rows = self.run(&[(sql, params)]).await?;
        Ok(rows.pop().expect("one statement, one result"))
    }

    /// Runs statements in one round trip, in order, and returns their rows.
    ///
    /// # Errors
    /// The first statement's error; the connection is then not reused.
    pub async fn run(&mut self, steps: &[Step<'_>]) -> Result<Vec<Vec<Row>>, tokio_postgres::Error> {
        let outcomes = self.pipeline(steps, false).await.inspect_err(|_| self.failed = true)?;
        outcomes.into_iter().collect::<Result<Vec<_>, _>>().inspect_err(|_| self.failed = true)
    }

    /// Starts a transaction. `BEGIN` goes out with the next statements.
    pub fn begin(&mut self) {
        self.in_tx = true;
        self.begin_pending = true;
    }

    /// Runs the last statements of the transaction and `COMMIT` in one round trip.
    /// Only after this returns `Ok` is the transaction's work durable.
    ///
    /// # Errors
    /// [`CommitError::Statement`] when the server refused a statement (nothing took
    /// effect), [`CommitError::Commit`] when the outcome is unknown.
    pub async fn commit_with(&mut self, steps: &[Step<'_>]) -> Result<Vec<Vec<Row>>, CommitError> {
        let commit_index = steps.len();
        let outcomes = match self.pipeline(steps, true).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                // Preparing failed: nothing was sent.
                self.failed = true;
                return Err(CommitError::Statement(error));
            }
        };
        let mut rows = Vec::with_capacity(outcomes.len());
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(found) => rows.push(found),
                Err(error) => {
                    self.failed = true;
                    // A refusal by the server before COMMIT aborted the transaction,
                    // and the COMMIT after it became a ROLLBACK. Anything else (a
                    // lost connection, an error of COMMIT itself) leaves the outcome
                    // unknown.
                    let refused_before_commit = index < commit_index && error.as_db_error().is_some();
                    return Err(if refused_before_commit {
                        CommitError::Statement(error)
                    } else {
                        CommitError::Commit(error)
                    });
                }
            }
        }
        rows.pop();
        self.in_tx = false;
        Ok(rows)
    }

    /// Commits the open transaction.
    ///
    /// # Errors
    /// As [`Conn::commit_with`].
    pub async fn commit(&mut self) -> Result<(), CommitError> {
        self.commit_with(&[]).await.map(|_| ())
    }

    /// Runs statements without parameters through the simple protocol, outside
    /// any pipeline.
    ///
    /// # Errors
    /// The driver's error; the connection is then not reused.
    pub async fn batch(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await.inspect_err(|_| self.failed = true)
    }

    /// Rolls back the open transaction, if any; on failure the connection is dropped.
    pub async fn rollback(&mut self) {
        if self.in_tx && self.begin_pending {
            // Nothing was sent yet.
            self.in_tx = false;
            self.begin_pending = false;
        } else if self.in_tx && !self.failed && self.batch("ROLLBACK").await.is_ok() {
            self.in_tx = false;
        }
    }
}

/// A checked-out connection; it returns to the pool when dropped, if reusable.
pub struct PooledConn<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl PooledConn<'_> {
    /// Makes sure this connection is closed rather than reused.
    pub fn discard(&mut self) {
        self.conn = None;
    }
}

impl std::ops::Deref for PooledConn<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl std::ops::DerefMut for PooledConn<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let reusable = !conn.in_tx && !conn.failed && !conn.client.is_closed();
            if reusable && !self.pool.permits.is_closed() {
                self.pool.idle.lock().expect("pool lock").push(conn);
            }
        }
    }
}
