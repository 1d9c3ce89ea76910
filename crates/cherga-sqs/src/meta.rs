//! What SQS keeps about a queue that cherga's queue settings have no place for:
//! the default delay, the dead-letter target, content-based deduplication, the
//! FIFO flag's creation, tags, and which queues were deleted. Kept in this
//! node's memory (docs/sqs.md says so): a restart forgets them, while
//! everything cherga's settings carry (visibility timeout, maxReceiveCount)
//! stays with the queue.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// The SQS-only attributes of one queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct QueueMeta {
    pub delay_seconds: u32,
    pub wait_seconds: u32,
    pub max_message_size: u32,
    pub retention_seconds: u32,
    /// `RedrivePolicy` as given (JSON text) and its target queue's name.
    pub redrive: Option<(String, String)>,
    pub content_dedup: bool,
    pub created_at: i64,
    pub modified_at: i64,
    pub tags: BTreeMap<String, String>,
}

impl QueueMeta {
    pub fn new(now: i64) -> Self {
        Self {
            delay_seconds: 0,
            wait_seconds: 0,
            max_message_size: 262_144,
            retention_seconds: 345_600,
            redrive: None,
            content_dedup: false,
            created_at: now,
            modified_at: now,
            tags: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Meta {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, QueueMeta>,
    /// Queues deleted through the endpoint: absent to it until created again.
    deleted: HashSet<String>,
    /// Per source queue, the last dead task moved to its dead-letter queue.
    moved_up_to: HashMap<String, cherga_core::TaskId>,
}

impl Meta {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The queue's attributes (the defaults for a queue this node has not seen).
    pub fn get(&self, queue: &str, now: i64) -> QueueMeta {
        self.lock().queues.get(queue).cloned().unwrap_or_else(|| QueueMeta::new(now))
    }

    pub fn update(&self, queue: &str, now: i64, f: impl FnOnce(&mut QueueMeta)) {
        let mut inner = self.lock();
        let meta = inner.queues.entry(queue.to_owned()).or_insert_with(|| QueueMeta::new(now));
        f(meta);
        meta.modified_at = now;
    }

    pub fn is_deleted(&self, queue: &str) -> bool {
        self.lock().deleted.contains(queue)
    }

    pub fn set_deleted(&self, queue: &str, deleted: bool) {
        let mut inner = self.lock();
        if deleted {
            inner.deleted.insert(queue.to_owned());
            inner.queues.remove(queue);
            inner.moved_up_to.remove(queue);
        } else {
            inner.deleted.remove(queue);
        }
    }

    /// Queues whose dead letters go to `target`.
    pub fn sources_of(&self, target: &str) -> Vec<String> {
        let inner = self.lock();
        let mut sources: Vec<String> = inner
            .queues
            .iter()
            .filter(|(_, m)| m.redrive.as_ref().is_some_and(|(_, t)| t == target))
            .map(|(q, _)| q.clone())
            .collect();
        sources.sort();
        sources
    }

    pub fn moved_up_to(&self, source: &str) -> Option<cherga_core::TaskId> {
        self.lock().moved_up_to.get(source).copied()
    }

    pub fn set_moved_up_to(&self, source: &str, id: cherga_core::TaskId) {
        self.lock().moved_up_to.insert(source.to_owned(), id);
    }
}

/// Tags as the JSON protocol writes them.
pub(crate) fn tags_value(tags: &BTreeMap<String, String>) -> Value {
    Value::Object(tags.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
}
