//! Long-poll waiters: one `Notify` per queue that has (or had) a waiting lease.
//! Anything that may make a task leasable wakes that queue's waiters, who then try
//! to claim; a waiter that finds nothing waits again until its deadline.

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

    /// Wakes every lease waiting on `queue`.
    pub fn wake(&self, queue: &str) {
        let notify = self.queues.lock().expect("waiters lock").get(queue).cloned();
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}
