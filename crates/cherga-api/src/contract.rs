//! Wire types of payload schemas: `PUT`, `GET` and `DELETE
//! /v1/queues/{queue}/schema`, and the violations a `payload_invalid` error lists.

use crate::{Timestamp, WireError};
use serde::{Deserialize, Serialize};

/// `PUT /v1/queues/{queue}/schema` body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutSchemaRequest {
    /// A JSON Schema (draft 2020-12): an object or a boolean. References to
    /// other documents are not fetched (only the standard meta-schemas resolve).
    #[cfg_attr(feature = "openapi", schema(schema_with = json_schema))]
    pub schema: serde_json::Value,
    /// The task kind it applies to; left out: every kind without a schema of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub kind: Option<String>,
}

impl PutSchemaRequest {
    /// # Errors
    /// A [`WireError`] when `kind` is not a valid name.
    pub fn check(&self) -> Result<(), WireError> {
        check_kind(self.kind.as_deref())
    }
}

/// A JSON Schema in the OpenAPI document: an object or a boolean (`true`
/// accepts every payload, `false` none).
#[cfg(feature = "openapi")]
fn json_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::Object, Type::Boolean])).build()
}

/// [`json_schema`] or `null`.
#[cfg(feature = "openapi")]
fn json_schema_or_null() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::Object, Type::Boolean, Type::Null])).build()
}

/// `DELETE /v1/queues/{queue}/schema` query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct SchemaQuery {
    /// The kind whose schema is removed; left out: the queue-wide schema.
    #[cfg_attr(feature = "openapi", param(min_length = 1, max_length = 256))]
    pub kind: Option<String>,
}

/// # Errors
/// A [`WireError`] when `kind` is given and not 1 to 256 characters long.
pub fn check_kind(kind: Option<&str>) -> Result<(), WireError> {
    match kind {
        Some(kind) => crate::check_name("kind", kind),
        None => Ok(()),
    }
}

/// One version of a queue's payload schemas.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaVersionView {
    /// 1 for the queue's first change, then one more each change.
    pub version: u64,
    /// The kind it applies to; `null`: the queue-wide schema.
    pub kind: Option<String>,
    /// The schema; `null` when this version removed the schema of `kind`.
    #[cfg_attr(feature = "openapi", schema(schema_with = json_schema_or_null))]
    pub schema: Option<serde_json::Value>,
    /// The subject of the token that made the change (`null` without auth).
    pub subject: Option<String>,
    pub created_at: Timestamp,
}

/// `GET /v1/queues/{queue}/schema`: the schemas in force and every version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemasView {
    pub queue: String,
    /// The latest version (0: the queue never had a schema).
    pub version: u64,
    /// The schemas enqueues are checked against now: the queue-wide one first
    /// (if any), then one per kind, by kind.
    pub current: Vec<SchemaVersionView>,
    /// Every version, oldest first.
    pub history: Vec<SchemaVersionView>,
}

/// One way a payload breaks its schema (in a `payload_invalid` error).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Violation {
    /// The JSON pointer (RFC 6901) of the failing value in the payload; `""`
    /// is the whole payload.
    pub pointer: String,
    /// The schema keyword that failed (`type`, `required`, `minimum`…).
    pub keyword: String,
    /// The JSON pointer of that keyword in the schema.
    pub schema_pointer: String,
    pub message: String,
}
