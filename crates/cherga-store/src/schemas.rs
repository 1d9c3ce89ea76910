//! Payload schemas as the store keeps them: each queue's history of versions,
//! one row per change. The store only keeps them; it neither parses nor applies
//! a schema (the server does, `cherga-server`'s `contract.rs`).
//!
//! **Invariant:** versions of a queue are numbered 1, 2, 3… in the order their
//! changes committed, without gaps or repeats, across every node sharing the
//! store; a version, once written, is never changed.

use cherga_core::Millis;

/// One change to a queue's payload schemas: a new schema for `kind` (or for
/// every kind without one of its own, when `kind` is `None`), or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaChange {
    /// The task kind the schema applies to; `None`: the queue-wide schema.
    pub kind: Option<String>,
    /// The schema as JSON text; `None` removes the schema of `kind`.
    pub schema: Option<String>,
    /// Who made the change (the token's subject), if known.
    pub subject: Option<String>,
}

/// A version of a queue's payload schemas: the change it recorded, numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersion {
    pub queue: String,
    /// 1 for the queue's first change, then one more each change.
    pub version: u64,
    pub kind: Option<String>,
    /// JSON text; `None` when this version removed the schema of `kind`.
    pub schema: Option<String>,
    pub subject: Option<String>,
    pub created_at: Millis,
}

/// The schemas in force after `history` (oldest first): for each kind (and the
/// queue-wide `None`), its latest version, unless that version removed it.
/// Ordered queue-wide first, then by kind.
pub fn current(history: &[SchemaVersion]) -> Vec<&SchemaVersion> {
    let mut latest: std::collections::BTreeMap<Option<&str>, &SchemaVersion> = Default::default();
    for version in history {
        latest.insert(version.kind.as_deref(), version);
    }
    latest.into_values().filter(|version| version.schema.is_some()).collect()
}
