//! Payload contracts: the JSON Schemas (draft 2020-12) a queue's payloads must
//! satisfy, compiled, and the check of a payload against them. The store keeps
//! the schemas' versions (`cherga_store::schemas`); this module knows JSON
//! Schema and nothing of HTTP or SQL.
//!
//! A queue's contract is its queue-wide schema plus one per kind: a task is
//! checked against its kind's schema if there is one, else the queue-wide one,
//! else not at all.
//!
//! **Invariant:** a contract is checked only after the store said which version
//! is current ([`Contracts::of`] asks it on every call), so a node never checks a
//! payload against a version older than one answered before the check began, on
//! any node. A compiled contract is reused while the version stays the same.

use cherga_api::Violation;
use cherga_core::QueueName;
use cherga_store::{SchemaVersion, Store, StoreError, schemas};
use jsonschema::Validator;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most violations reported for one payload; the check stops looking after them.
pub const MAX_VIOLATIONS: usize = 32;

/// Compiles `schema` as a draft 2020-12 schema, first checking it against the
/// meta-schema. References to other documents cannot be resolved (the crate is
/// built without retrieval): a schema that needs one is refused here.
///
/// # Errors
/// Why `schema` is not a valid schema, for people.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::draft202012::options().build(schema).map_err(|error| {
        let at = error.instance_path().as_str();
        if at.is_empty() { error.to_string() } else { format!("{error} (at {at})") }
    })
}

/// Each way `payload` breaks `validator`, at most [`MAX_VIOLATIONS`], in the
/// order the validator finds them; empty when it satisfies it.
pub fn violations(validator: &Validator, payload: &Value) -> Vec<Violation> {
    if validator.is_valid(payload) {
        return Vec::new();
    }
    validator
        .iter_errors(payload)
        .take(MAX_VIOLATIONS)
        .map(|error| Violation {
            pointer: error.instance_path().as_str().to_owned(),
            keyword: error.kind().keyword().to_owned(),
            schema_pointer: error.schema_path().as_str().to_owned(),
            message: error.to_string(),
        })
        .collect()
}

/// A queue's schemas in force at one version, compiled.
pub struct Contract {
    version: u64,
    queue_wide: Option<Validator>,
    by_kind: HashMap<String, Validator>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("version", &self.version)
            .field("queue_wide", &self.queue_wide.is_some())
            .field("kinds", &self.by_kind.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Contract {
    /// The contract after `history` (a queue's versions, oldest first).
    ///
    /// # Errors
    /// A stored schema that does not compile (it did when it was stored), naming
    /// its version.
    pub fn compile(history: &[SchemaVersion]) -> Result<Contract, String> {
        let mut contract = Contract {
            version: history.last().map_or(0, |v| v.version),
            queue_wide: None,
            by_kind: HashMap::new(),
        };
        for current in schemas::current(history) {
            let text = current.schema.as_deref().unwrap_or("true");
            let schema: Value = serde_json::from_str(text)
                .map_err(|e| format!("schema version {} is not JSON: {e}", current.version))?;
            let validator = compile(&schema)
                .map_err(|e| format!("schema version {} does not compile: {e}", current.version))?;
            match &current.kind {
                None => contract.queue_wide = Some(validator),
                Some(kind) => {
                    contract.by_kind.insert(kind.clone(), validator);
                }
            }
        }
        Ok(contract)
    }

    /// The version of the queue's schemas this contract is.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Checks the payload (JSON text) of a task of `kind`.
    ///
    /// # Errors
    /// Each way the payload breaks the schema that applies to `kind`.
    pub fn check(&self, kind: &str, payload: &str) -> Result<(), Vec<Violation>> {
        let Some(validator) = self.by_kind.get(kind).or(self.queue_wide.as_ref()) else {
            return Ok(());
        };
        let payload: Value = match serde_json::from_str(payload) {
            Ok(value) => value,
            // The API hands over payloads it parsed; this is not expected.
            Err(e) => {
                return Err(vec![Violation {
                    pointer: String::new(),
                    keyword: "type".to_owned(),
                    schema_pointer: String::new(),
                    message: format!("the payload is not JSON: {e}"),
                }]);
            }
        };
        let found = violations(validator, &payload);
        if found.is_empty() { Ok(()) } else { Err(found) }
    }
}

/// The compiled contract of each queue that had a schema when last asked,
/// shared by the server's handlers.
#[derive(Default)]
pub struct Contracts {
    cache: Mutex<HashMap<String, Arc<Contract>>>,
}

impl Contracts {
    /// The contract of `queue` as of its current version (`None` when the queue
    /// has never had a schema): asks the store for the version, and for the
    /// history only when the cached contract is of another version.
    ///
    /// # Errors
    /// The store's; [`StoreError::Corrupt`] when a stored schema does not compile.
    pub async fn of<S: Store>(
        &self,
        store: &S,
        queue: &QueueName,
    ) -> Result<Option<Arc<Contract>>, StoreError> {
        let version = store.payload_schema_version(queue).await?;
        if version == 0 {
            return Ok(None);
        }
        if let Some(cached) = self.cached(queue.as_str())
            && cached.version >= version
        {
            return Ok(Some(cached));
        }
        let history = store.payload_schemas(queue.clone()).await?;
        let contract = Arc::new(Contract::compile(&history).map_err(StoreError::Corrupt)?);
        let mut cache = self.cache.lock().expect("contracts lock");
        let entry = cache.entry(queue.as_str().to_owned()).or_insert_with(|| contract.clone());
        // Concurrent refreshes may finish out of order; the newest stays.
        if entry.version < contract.version {
            *entry = contract.clone();
        }
        Ok(Some(contract))
    }

    fn cached(&self, queue: &str) -> Option<Arc<Contract>> {
        self.cache.lock().expect("contracts lock").get(queue).cloned()
    }
}

#[cfg(test)]
mod tests;
