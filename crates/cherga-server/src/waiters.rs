//! Long-poll waiters: one `Notify` per queue that has (or had) a waiting lease.
//! Anything that may make a task leasable wakes that queue's waiters, who then try
//! to claim; a waiter that finds nothing waits again until its deadline.
//!
//! A change that makes `n` tasks leasable (an enqueue of `n` ready tasks, an ack
//! that frees one slot) wakes at most `n` waiters, not all of them: each woken
//! lease is a claim on the store's writer, and waking every worker for each task
//! made most claims come back empty (the steady-state benchmark's 4 workers: four
//! claims per task). A woken lease that returns without waiting again hands its
//! wake-up on to the next waiter (tokio's `Notified` does so when dropped), so no
//! leasable task is left with a waiter asleep. Changes whose effect is not counted
//! (timers, settings, another node's work) wake every waiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Waiters {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    /// The notifier of `queue`, created on first use.
    pub fn of(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.queues.lock().expect("waiters lock");
        if let Some(n) = queues.get(queue) {
            return n.clone();
        }
        let notify = Arc::new(Notify::new());
        queues.insert(queue.to_owned(), notify.clone());
        notify
    }

    fn get(&self, queue: &str) -> Option<Arc<Notify>> {
        self.queues.lock().expect("waiters lock").get(queue).cloned()
    }

    /// Wakes every lease waiting on `queue`.
    pub fn wake(&self, queue: &str) {
        if let Some(notify) = self.get(queue) {
            notify.notify_waiters();
        }
    }

    /// Wakes up to `n` leases waiting on `queue`, for `n` tasks that became
    /// leasable. With fewer waiters, the next lease to wait finds one wake-up
    /// stored and claims once more at once.
    pub fn wake_some(&self, queue: &str, n: usize) {
        if let Some(notify) = self.get(queue) {
            for _ in 0..n {
                notify.notify_one();
            }
        }
    }
}
