//! Queue attributes (to cherga's settings and back), message bodies and
//! attributes (to a task's payload and back), and the MD5 digests SQS answers
//! carry.

use crate::meta::QueueMeta;
use crate::protocol::SqsError;
use cherga_core::{QueueSettings, QueueSettingsPatch};
use md5::{Digest as _, Md5};
use serde_json::{Map, Value};

/// `max_attempts` of a queue without a redrive policy: the most cherga allows
/// (SQS itself has no limit).
pub(crate) const UNLIMITED_RECEIVES: u32 = 10_000;
/// How long a FIFO queue remembers a deduplication id, as SQS does.
pub(crate) const FIFO_DEDUP_WINDOW_MS: i64 = 5 * 60 * 1000;
/// The longest visibility timeout SQS allows: 12 hours, cherga's longest lease.
pub(crate) const MAX_VISIBILITY_S: i64 = 43_200;

/// The settings every queue made through the endpoint starts with: a message
/// whose visibility runs out is visible again at once (no backoff), and is
/// received any number of times until a redrive policy says otherwise.
pub(crate) fn base_patch(fifo: bool) -> QueueSettingsPatch {
    QueueSettingsPatch {
        max_attempts: Some(UNLIMITED_RECEIVES),
        backoff_initial_ms: Some(0),
        backoff_max_ms: Some(0),
        backoff_multiplier: Some(1.0),
        backoff_jitter: Some(0.0),
        dedup_window_ms: fifo.then_some(FIFO_DEDUP_WINDOW_MS),
        ..QueueSettingsPatch::default()
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn seconds(name: &str, value: &str, range: std::ops::RangeInclusive<i64>) -> Result<i64, SqsError> {
    value.trim().parse::<i64>().ok().filter(|v| range.contains(v)).ok_or_else(|| {
        SqsError::attribute_value(format!(
            "Invalid value for the parameter {name}: {value:?} is not an integer from {} to {}.",
            range.start(),
            range.end()
        ))
    })
}

fn boolean(name: &str, value: &str) -> Result<bool, SqsError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(SqsError::attribute_value(format!("Invalid value for the parameter {name}: {value:?}."))),
    }
}

/// The queue name an SQS queue ARN names.
pub(crate) fn arn_queue(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    let ok = parts.next() == Some("arn") && parts.nth(1) == Some("sqs");
    let name = arn.rsplit(':').next()?;
    (ok && arn.split(':').count() == 6 && !name.is_empty()).then_some(name)
}

pub(crate) fn queue_arn(region: &str, queue: &str) -> String {
    format!("arn:aws:sqs:{region}:{}:{queue}", crate::ACCOUNT)
}

/// Reads attributes given to CreateQueue or SetQueueAttributes into a settings
/// patch and changes to the queue's SQS-only attributes.
///
/// # Errors
/// `InvalidAttributeName` / `InvalidAttributeValue` naming the attribute.
pub(crate) fn read_queue_attributes(
    attributes: &Map<String, Value>,
    fifo: bool,
    creating: bool,
    patch: &mut QueueSettingsPatch,
    meta: &mut QueueMeta,
) -> Result<(), SqsError> {
    for (name, value) in attributes {
        let value = text(value).ok_or_else(|| {
            SqsError::attribute_value(format!("The value of attribute {name} must be a string."))
        })?;
        match name.as_str() {
            "VisibilityTimeout" => {
                let s = seconds(name, &value, 0..=MAX_VISIBILITY_S)?;
                patch.lease_ms = Some((s * 1000).max(1));
            }
            "DelaySeconds" => meta.delay_seconds = seconds(name, &value, 0..=900)? as u32,
            "ReceiveMessageWaitTimeSeconds" => meta.wait_seconds = seconds(name, &value, 0..=20)? as u32,
            "MaximumMessageSize" => meta.max_message_size = seconds(name, &value, 1024..=1_048_576)? as u32,
            "MessageRetentionPeriod" => {
                meta.retention_seconds = seconds(name, &value, 60..=1_209_600)? as u32
            }
            "RedrivePolicy" => {
                if value.trim().is_empty() {
                    meta.redrive = None;
                    patch.max_attempts = Some(UNLIMITED_RECEIVES);
                    continue;
                }
                let policy: Value = serde_json::from_str(&value).map_err(|_| {
                    SqsError::attribute_value("Invalid value for the parameter RedrivePolicy: not JSON.")
                })?;
                let target = policy
                    .get("deadLetterTargetArn")
                    .and_then(Value::as_str)
                    .and_then(arn_queue)
                    .ok_or_else(|| {
                        SqsError::attribute_value("Value for parameter RedrivePolicy is invalid: deadLetterTargetArn must be a queue ARN.")
                    })?;
                let count = policy.get("maxReceiveCount").and_then(text).unwrap_or_default();
                let count =
                    seconds("RedrivePolicy.maxReceiveCount", &count, 1..=i64::from(UNLIMITED_RECEIVES - 1))?;
                if target.ends_with(".fifo") != fifo {
                    return Err(SqsError::attribute_value(
                        "Value for parameter RedrivePolicy is invalid: the dead-letter queue of a FIFO queue must be a FIFO queue, and of a standard queue a standard queue.",
                    ));
                }
                patch.max_attempts = Some(count as u32);
                meta.redrive = Some((value.clone(), target.to_owned()));
            }
            "FifoQueue" => {
                if !creating {
                    return Err(SqsError::attribute_name(name));
                }
                if boolean(name, &value)? != fifo {
                    return Err(SqsError::attribute_value(
                        "The name of a FIFO queue can only include alphanumeric characters, hyphens, or underscores, must end with .fifo suffix.",
                    ));
                }
            }
            "ContentBasedDeduplication" => {
                if !fifo {
                    return Err(SqsError::attribute_name(name));
                }
                meta.content_dedup = boolean(name, &value)?;
            }
            // Accepted and not acted on: cherga has no such thing (docs/sqs.md).
            "Policy"
            | "KmsMasterKeyId"
            | "KmsDataKeyReusePeriodSeconds"
            | "SqsManagedSseEnabled"
            | "RedriveAllowPolicy"
            | "DeduplicationScope"
            | "FifoThroughputLimit" => {}
            _ => return Err(SqsError::attribute_name(name)),
        }
    }
    Ok(())
}

/// Counts and settings a queue attribute answer is made of.
pub(crate) struct QueueView<'a> {
    pub name: &'a str,
    pub region: &'a str,
    pub settings: &'a QueueSettings,
    pub ready: u64,
    pub running: u64,
    pub scheduled: u64,
    pub meta: &'a QueueMeta,
}

pub(crate) const QUEUE_ATTRIBUTES: &[&str] = &[
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "VisibilityTimeout",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
    "RedrivePolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "SqsManagedSseEnabled",
];

/// The attributes `names` asks for (`All` for every one).
///
/// # Errors
/// `InvalidAttributeName` for a name SQS does not have.
pub(crate) fn queue_attributes(
    view: &QueueView<'_>,
    names: &[String],
) -> Result<Map<String, Value>, SqsError> {
    let fifo = view.name.ends_with(".fifo");
    let all = names.iter().any(|n| n == "All");
    let mut out = Map::new();
    for &name in QUEUE_ATTRIBUTES {
        if !all && !names.iter().any(|n| n == name) {
            continue;
        }
        let value = match name {
            "ApproximateNumberOfMessages" => view.ready.to_string(),
            "ApproximateNumberOfMessagesNotVisible" => view.running.to_string(),
            "ApproximateNumberOfMessagesDelayed" => view.scheduled.to_string(),
            "VisibilityTimeout" => (view.settings.lease_ms / 1000).to_string(),
            "DelaySeconds" => view.meta.delay_seconds.to_string(),
            "ReceiveMessageWaitTimeSeconds" => view.meta.wait_seconds.to_string(),
            "MaximumMessageSize" => view.meta.max_message_size.to_string(),
            "MessageRetentionPeriod" => view.meta.retention_seconds.to_string(),
            "CreatedTimestamp" => (view.meta.created_at / 1000).to_string(),
            "LastModifiedTimestamp" => (view.meta.modified_at / 1000).to_string(),
            "QueueArn" => queue_arn(view.region, view.name),
            "RedrivePolicy" => match &view.meta.redrive {
                Some((_, target)) => serde_json::json!({
                    "deadLetterTargetArn": queue_arn(view.region, target),
                    "maxReceiveCount": view.settings.max_attempts,
                })
                .to_string(),
                None => continue,
            },
            "FifoQueue" if fifo => "true".into(),
            "ContentBasedDeduplication" if fifo => view.meta.content_dedup.to_string(),
            "SqsManagedSseEnabled" => "false".into(),
            _ => continue,
        };
        out.insert(name.to_owned(), Value::String(value));
    }
    if let Some(unknown) =
        names.iter().find(|n| *n != "All" && !QUEUE_ATTRIBUTES.contains(&n.as_str()) && !is_accepted_only(n))
    {
        return Err(SqsError::attribute_name(unknown));
    }
    Ok(out)
}

fn is_accepted_only(name: &str) -> bool {
    matches!(
        name,
        "Policy"
            | "KmsMasterKeyId"
            | "KmsDataKeyReusePeriodSeconds"
            | "RedriveAllowPolicy"
            | "DeduplicationScope"
            | "FifoThroughputLimit"
    )
}

/// A message as a task's payload: `{"body": …, "attributes": {…}}` (the
/// attributes only when there are some), so v1 clients read it as JSON.
pub(crate) fn payload(body: &str, attributes: &Map<String, Value>) -> String {
    let mut payload = Map::new();
    payload.insert("body".into(), Value::String(body.to_owned()));
    if !attributes.is_empty() {
        payload.insert("attributes".into(), Value::Object(attributes.clone()));
    }
    Value::Object(payload).to_string()
}

/// The body and message attributes of a task's payload. A task enqueued through
/// the v1 API (any other payload) is a message whose body is its payload's JSON.
pub(crate) fn message(payload: &str) -> (String, Map<String, Value>) {
    if let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(payload)
        && let Some(Value::String(body)) = map.get("body")
        && map.keys().all(|k| k == "body" || k == "attributes")
    {
        let body = body.clone();
        let attributes = match map.remove("attributes") {
            Some(Value::Object(a)) => a,
            _ => Map::new(),
        };
        return (body, attributes);
    }
    (payload.to_owned(), Map::new())
}

/// Checks message attributes as SQS does: at most 10, names and types valid,
/// each with the value its type needs. Answers their size in bytes.
///
/// # Errors
/// `InvalidParameterValue` naming the attribute.
pub(crate) fn check_message_attributes(attributes: &Map<String, Value>) -> Result<usize, SqsError> {
    if attributes.len() > 10 {
        return Err(SqsError::invalid("Number of message attributes cannot exceed 10."));
    }
    let mut size = 0;
    for (name, value) in attributes {
        let valid_name = !name.is_empty()
            && name.len() <= 256
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && !name.to_ascii_lowercase().starts_with("aws.")
            && !name.to_ascii_lowercase().starts_with("amazon.");
        if !valid_name {
            return Err(SqsError::invalid(format!("Message attribute name {name:?} is invalid.")));
        }
        let Value::Object(fields) = value else {
            return Err(SqsError::invalid(format!("Message attribute {name} must be an object.")));
        };
        let data_type = fields.get("DataType").and_then(Value::as_str).unwrap_or_default();
        let base = data_type.split('.').next().unwrap_or_default();
        let (field, ok) = match base {
            "String" | "Number" => ("StringValue", fields.get("StringValue").is_some_and(Value::is_string)),
            "Binary" => ("BinaryValue", fields.get("BinaryValue").is_some_and(Value::is_string)),
            _ => {
                return Err(SqsError::invalid(format!(
                    "The type of message attribute {name} is invalid: {data_type:?} is not String, Number or Binary."
                )));
            }
        };
        if !ok {
            return Err(SqsError::invalid(format!("Message attribute {name} must have a {field}.")));
        }
        size += name.len() + data_type.len() + fields.get(field).and_then(Value::as_str).map_or(0, str::len);
    }
    Ok(size)
}

/// The attributes of `attributes` that `names` asks for: `All` or `.*` for all,
/// `prefix.*` for those under a prefix, or exact names.
pub(crate) fn select_message_attributes(
    attributes: &Map<String, Value>,
    names: &[String],
) -> Map<String, Value> {
    attributes
        .iter()
        .filter(|(name, _)| {
            names.iter().any(|n| {
                n == "All"
                    || n == ".*"
                    || *n == **name
                    || n.strip_suffix(".*").is_some_and(|p| name.starts_with(&format!("{p}.")))
            })
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The MD5 of message attributes as SQS computes it: attributes by name, each
/// its name, type, a transport byte (1 text, 2 binary) and value, every string
/// preceded by its length as four big-endian bytes.
pub(crate) fn md5_of_attributes(attributes: &Map<String, Value>) -> Option<String> {
    use base64::Engine as _;
    if attributes.is_empty() {
        return None;
    }
    let mut names: Vec<&String> = attributes.keys().collect();
    names.sort();
    let mut bytes = Vec::new();
    let put = |bytes: &mut Vec<u8>, part: &[u8]| {
        bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
        bytes.extend_from_slice(part);
    };
    for name in names {
        let fields = attributes[name].as_object()?;
        let data_type = fields.get("DataType").and_then(Value::as_str).unwrap_or_default();
        put(&mut bytes, name.as_bytes());
        put(&mut bytes, data_type.as_bytes());
        if let Some(text) = fields.get("StringValue").and_then(Value::as_str) {
            bytes.push(1);
            put(&mut bytes, text.as_bytes());
        } else if let Some(binary) = fields.get("BinaryValue").and_then(Value::as_str) {
            bytes.push(2);
            let decoded = base64::engine::general_purpose::STANDARD.decode(binary).unwrap_or_default();
            put(&mut bytes, &decoded);
        }
    }
    Some(md5_hex(&bytes))
}

/// Whether every character of a message body is one SQS accepts (XML's).
pub(crate) fn valid_body(body: &str) -> bool {
    body.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
    })
}
