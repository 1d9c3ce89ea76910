//! Helpers for the tests of code that uses cherga: run a worker's handlers over
//! what is ready right now, and read a queue's tasks without paging by hand.
//!
//! They talk to a real server; start one on port 0 with a temporary data directory
//! in the test.

use std::sync::Arc;

use cherga_api::{ListQuery, TaskView};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::worker::Reported;
use crate::{Client, Error, Worker};

/// What [`drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Tasks whose handler succeeded and that were acked.
    pub acked: usize,
    /// Tasks whose handler failed (or was missing, or panicked) and that were nacked.
    pub nacked: usize,
    /// Tasks whose outcome the server refused or never got.
    pub lost: usize,
}

/// Runs `worker`'s handlers over the queue's ready tasks until none is ready,
/// without waiting for scheduled ones, and reports every outcome as
/// [`Worker::run`] would. Tasks a handler makes ready again (a nack with a zero
/// retry delay, a new task) are run too, so a handler that always does so keeps
/// this going until the tasks are dead.
///
/// # Errors
/// When a lease request fails; the counts of what was done before are lost.
pub async fn drain(worker: &Worker) -> Result<Drained, Error> {
    let inner = &worker.inner;
    let mut drained = Drained::default();
    loop {
        let request = inner.lease_request(inner.concurrency, std::time::Duration::ZERO);
        let sent_at = Instant::now();
        let leased = inner.client.lease(&inner.queue, &request).await?;
        if leased.tasks.is_empty() {
            return Ok(drained);
        }
        let mut running = JoinSet::new();
        for task in leased.tasks {
            running.spawn(Arc::clone(inner).process(task, sent_at + inner.lease_duration()));
        }
        while let Some(joined) = running.join_next().await {
            let reported = match joined {
                // Only while `run` waits for a slot; sent at once then.
                Ok(Reported::Handed(handed)) => Arc::clone(inner).send_one(handed).await,
                Ok(reported) => reported,
                Err(_) => Reported::Lost,
            };
            match reported {
                Reported::Acked => drained.acked += 1,
                Reported::Nacked => drained.nacked += 1,
                Reported::Lost | Reported::Handed(_) => drained.lost += 1,
            }
        }
    }
}

/// Every task of `queue`, oldest first, optionally only those in `state` (such as
/// `"dead"`), following the cursor across pages.
///
/// # Errors
/// When a page cannot be fetched.
pub async fn all_tasks(client: &Client, queue: &str, state: Option<&str>) -> Result<Vec<TaskView>, Error> {
    let mut tasks = Vec::new();
    let mut query = ListQuery { state: state.map(str::to_owned), ..ListQuery::default() };
    loop {
        let page = client.list_tasks(queue, &query).await?;
        tasks.extend(page.tasks);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(tasks),
        }
    }
}
