//! The actions: each reads its parameters (in the JSON protocol's shape), calls
//! the store, hands the call's effects to the host, and answers in the JSON
//! protocol's shape.

use crate::attributes::{self as attrs, MAX_VISIBILITY_S};
use crate::meta::tags_value;
use crate::protocol::{Request, SqsError};
use crate::{Host, Sqs, receipt};
use cherga_auth::{Access, Scopes};
use cherga_core::{NewTask, QueueName, Refusal, Task, TaskState};
use cherga_store::{Ack, Claim, Enqueued, ListTasks, Nack, Store, StoreError, TaskFilter};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::time::Duration;

type Params = Map<String, Value>;
type Answer = Result<Map<String, Value>, SqsError>;

/// Most messages a receive returns and entries a batch holds.
const MAX_BATCH: usize = 10;
/// Longest long poll, in seconds.
const MAX_WAIT_S: i64 = 20;
/// Tasks a purge cancels per listing.
const PAGE: usize = 500;

fn store_error(error: StoreError) -> SqsError {
    match error {
        StoreError::NotFound => SqsError::no_queue(),
        StoreError::InvalidSettings(message) => SqsError::attribute_value(message),
        StoreError::Unavailable(_) | StoreError::StorageFull(_) | StoreError::Closed => {
            let error = &error as &dyn std::error::Error;
            tracing::warn!(error, "SQS endpoint: store unavailable");
            SqsError::unavailable()
        }
        StoreError::Refused(refusal) => SqsError::invalid(refusal.to_string()),
        StoreError::NotEmpty(n) => SqsError::invalid(format!("The queue still holds {n} messages.")),
        StoreError::KeyReused(_) | StoreError::Corrupt(_) => {
            let error = &error as &dyn std::error::Error;
            tracing::error!(error, "SQS endpoint: store call failed");
            SqsError::internal()
        }
    }
}

fn string<'a>(params: &'a Params, name: &str) -> Result<Option<&'a str>, SqsError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SqsError::invalid(format!("{name} must be a string."))),
    }
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, SqsError> {
    string(params, name)?.ok_or_else(|| SqsError::missing(name))
}

/// An integer parameter: a JSON number, or its text in the query protocol.
fn integer(
    params: &Params,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, SqsError> {
    let value = match params.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    match value {
        Some(v) if range.contains(&v) => Ok(Some(v)),
        _ => Err(SqsError::invalid(format!(
            "Value for parameter {name} is invalid. Reason: must be an integer from {} to {}.",
            range.start(),
            range.end()
        ))),
    }
}

fn strings(params: &Params, name: &str) -> Result<Vec<String>, SqsError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| SqsError::invalid(format!("{name} must be a list of strings.")))
            })
            .collect(),
        Some(_) => Err(SqsError::invalid(format!("{name} must be a list of strings."))),
    }
}

fn object<'a>(params: &'a Params, name: &str) -> Result<Option<&'a Params>, SqsError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(SqsError::invalid(format!("{name} must be a map."))),
    }
}

/// The queue named by a request: `QueueUrl`'s last path segment, or `QueueName`.
fn named_queue(params: &Params) -> Option<String> {
    if let Some(Value::String(url)) = params.get("QueueUrl") {
        return url.trim_end_matches('/').rsplit('/').next().map(str::to_owned);
    }
    params.get("QueueName").and_then(Value::as_str).map(str::to_owned)
}

/// Checks that the caller's scopes allow the action on its queue; `None`
/// (no authentication) allows everything.
///
/// # Errors
/// `AccessDenied`.
pub(crate) fn authorize(scopes: Option<&Scopes>, request: &Request) -> Result<(), SqsError> {
    let Some(scopes) = scopes else { return Ok(()) };
    let access = match request.action.as_str() {
        "SendMessage" | "SendMessageBatch" => Access::Produce,
        "ReceiveMessage"
        | "DeleteMessage"
        | "DeleteMessageBatch"
        | "ChangeMessageVisibility"
        | "ChangeMessageVisibilityBatch" => Access::Consume,
        "GetQueueUrl" | "GetQueueAttributes" | "ListQueueTags" => Access::Read,
        // Filtered by what the caller may read.
        "ListQueues" => return Ok(()),
        _ => Access::Admin,
    };
    let queue = named_queue(&request.params).unwrap_or_default();
    if scopes.allows(access, &queue) {
        Ok(())
    } else {
        Err(SqsError::auth(
            axum::http::StatusCode::FORBIDDEN,
            "AccessDenied",
            format!("The access key may not call {} on queue {queue:?}.", request.action),
        ))
    }
}

pub(crate) async fn run<H: Host>(
    sqs: &Sqs<H>,
    request: &Request,
    scopes: Option<&Scopes>,
    base: &str,
) -> Answer {
    let p = &request.params;
    match request.action.as_str() {
        "CreateQueue" => create_queue(sqs, p, base).await,
        "GetQueueUrl" => get_queue_url(sqs, p, base).await,
        "ListQueues" => list_queues(sqs, p, scopes, base).await,
        "DeleteQueue" => delete_queue(sqs, p).await,
        "GetQueueAttributes" => get_queue_attributes(sqs, p).await,
        "SetQueueAttributes" => set_queue_attributes(sqs, p).await,
        "PurgeQueue" => purge_queue(sqs, p).await.map(|()| Map::new()),
        "SendMessage" => send_message(sqs, p).await,
        "SendMessageBatch" => send_message_batch(sqs, p).await,
        "ReceiveMessage" => receive_message(sqs, p).await,
        "DeleteMessage" => delete_message(sqs, p).await,
        "DeleteMessageBatch" => delete_message_batch(sqs, p).await,
        "ChangeMessageVisibility" => change_visibility(sqs, p).await,
        "ChangeMessageVisibilityBatch" => change_visibility_batch(sqs, p).await,
        "TagQueue" | "UntagQueue" | "ListQueueTags" => tags(sqs, &request.action, p).await,
        other => Err(SqsError::invalid_action(other)),
    }
}

fn queue_url(base: &str, queue: &str) -> String {
    format!("{base}/{}/{queue}", crate::ACCOUNT)
}

/// Whether `name` is an SQS queue name: 1 to 80 of `[A-Za-z0-9_-]`, `.fifo` at
/// the end of a FIFO queue's.
fn valid_sqs_name(name: &str) -> bool {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    !stem.is_empty()
        && name.len() <= 80
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The queue a request names, which must exist (and not have been deleted
/// through the endpoint).
async fn existing_queue<H: Host>(
    sqs: &Sqs<H>,
    params: &Params,
) -> Result<(QueueName, cherga_store::QueueInfo), SqsError> {
    if params.get("QueueUrl").is_none() {
        return Err(SqsError::missing("QueueUrl"));
    }
    let name = named_queue(params).unwrap_or_default();
    let queue = QueueName::new(&name).map_err(|_| SqsError::no_queue())?;
    if sqs.meta.is_deleted(queue.as_str()) {
        return Err(SqsError::no_queue());
    }
    let info = sqs.store().get_queue(queue.clone()).await.map_err(store_error)?;
    Ok((queue, info))
}

async fn create_queue<H: Host>(sqs: &Sqs<H>, p: &Params, base: &str) -> Answer {
    let name = required(p, "QueueName")?;
    if !valid_sqs_name(name) {
        return Err(SqsError::invalid(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length (a FIFO queue's name ends in .fifo).",
        ));
    }
    let queue = QueueName::new(name).map_err(|e| SqsError::invalid(e.to_string()))?;
    let fifo = name.ends_with(".fifo");
    let now = sqs.host.now_ms();
    let existed = !sqs.meta.is_deleted(name) && sqs.store().get_queue(queue.clone()).await.is_ok();
    let mut meta = if existed { sqs.meta.get(name, now) } else { crate::meta::QueueMeta::new(now) };
    let mut patch =
        if existed { cherga_core::QueueSettingsPatch::default() } else { attrs::base_patch(fifo) };
    let attributes = object(p, "Attributes")?.cloned().unwrap_or_default();
    attrs::read_queue_attributes(&attributes, fifo, true, &mut patch, &mut meta)?;
    if let Some(tags) = object(p, "tags")? {
        for (k, v) in tags {
            meta.tags.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    sqs.change(sqs.store().put_queue(queue, patch, now)).await.map_err(store_error)?;
    sqs.meta.set_deleted(name, false);
    sqs.meta.update(name, now, |m| *m = QueueMeta { modified_at: now, ..meta });
    Ok(answer([("QueueUrl", Value::String(queue_url(base, name)))]))
}

use crate::meta::QueueMeta;

fn answer<const N: usize>(members: [(&str, Value); N]) -> Map<String, Value> {
    members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

async fn get_queue_url<H: Host>(sqs: &Sqs<H>, p: &Params, base: &str) -> Answer {
    let name = required(p, "QueueName")?;
    let queue = QueueName::new(name).map_err(|_| SqsError::no_queue())?;
    if sqs.meta.is_deleted(name) {
        return Err(SqsError::no_queue());
    }
    sqs.store().get_queue(queue).await.map_err(store_error)?;
    Ok(answer([("QueueUrl", Value::String(queue_url(base, name)))]))
}

async fn list_queues<H: Host>(sqs: &Sqs<H>, p: &Params, scopes: Option<&Scopes>, base: &str) -> Answer {
    let prefix = string(p, "QueueNamePrefix")?.unwrap_or_default();
    let max = integer(p, "MaxResults", 1..=1000)?;
    let after = string(p, "NextToken")?;
    let mut names: Vec<String> = sqs
        .store()
        .list_queues()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|q| q.name)
        .filter(|n| n.starts_with(prefix) && !sqs.meta.is_deleted(n))
        .filter(|n| scopes.is_none_or(|s| s.allows(Access::Read, n)))
        .filter(|n| after.is_none_or(|a| n.as_str() > a))
        .collect();
    names.sort();
    let mut out = Map::new();
    let limit = max.map_or(1000, |m| m as usize);
    if names.len() > limit {
        names.truncate(limit);
        if max.is_some() {
            out.insert("NextToken".into(), Value::String(names[limit - 1].clone()));
        }
    }
    if !names.is_empty() {
        out.insert("QueueUrls".into(), names.iter().map(|n| Value::String(queue_url(base, n))).collect());
    }
    Ok(out)
}

async fn delete_queue<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    let (queue, _) = existing_queue(sqs, p).await?;
    purge(sqs, &queue).await?;
    sqs.meta.set_deleted(queue.as_str(), true);
    Ok(Map::new())
}

async fn get_queue_attributes<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    let (queue, _) = existing_queue(sqs, p).await?;
    redrive_into(sqs, &queue).await?;
    let info = sqs.store().get_queue(queue.clone()).await.map_err(store_error)?;
    let names = strings(p, "AttributeNames")?;
    let meta = sqs.meta.get(queue.as_str(), sqs.host.now_ms());
    let view = attrs::QueueView {
        name: queue.as_str(),
        region: &sqs.config.region,
        settings: &info.settings,
        ready: info.count(TaskState::Ready),
        running: info.count(TaskState::Running),
        scheduled: info.count(TaskState::Scheduled),
        meta: &meta,
    };
    let attributes = attrs::queue_attributes(&view, &names)?;
    let mut out = Map::new();
    if !attributes.is_empty() {
        out.insert("Attributes".into(), Value::Object(attributes));
    }
    Ok(out)
}

async fn set_queue_attributes<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    let (queue, _) = existing_queue(sqs, p).await?;
    let now = sqs.host.now_ms();
    let mut meta = sqs.meta.get(queue.as_str(), now);
    let mut patch = cherga_core::QueueSettingsPatch::default();
    let attributes = object(p, "Attributes")?.ok_or_else(|| SqsError::missing("Attributes"))?;
    attrs::read_queue_attributes(
        attributes,
        queue.as_str().ends_with(".fifo"),
        false,
        &mut patch,
        &mut meta,
    )?;
    sqs.change(sqs.store().put_queue(queue.clone(), patch, now)).await.map_err(store_error)?;
    sqs.meta.update(queue.as_str(), now, |m| *m = meta);
    Ok(Map::new())
}

async fn purge_queue<H: Host>(sqs: &Sqs<H>, p: &Params) -> Result<(), SqsError> {
    let (queue, _) = existing_queue(sqs, p).await?;
    purge(sqs, &queue).await
}

/// Cancels every waiting message (ready or delayed) of the queue. Messages in
/// flight stay theirs: their receipt handles still delete them.
async fn purge<H: Host>(sqs: &Sqs<H>, queue: &QueueName) -> Result<(), SqsError> {
    for state in [TaskState::Ready, TaskState::Scheduled] {
        let mut after = None;
        loop {
            let list = ListTasks {
                queue: queue.clone(),
                filter: TaskFilter::in_state(state),
                key: None,
                after,
                limit: PAGE,
            };
            let page = match sqs.store().list_tasks(list).await {
                Ok(page) => page,
                Err(StoreError::NotFound) => return Ok(()),
                Err(e) => return Err(store_error(e)),
            };
            for task in &page {
                match sqs.change(sqs.store().cancel(task.id, sqs.host.now_ms())).await {
                    // Leased or finished since it was listed: not waiting any more.
                    Ok(_) | Err(StoreError::Refused(_) | StoreError::NotFound) => {}
                    Err(e) => return Err(store_error(e)),
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.id),
                _ => break,
            }
        }
    }
    Ok(())
}

/// Moves the dead letters of every queue whose redrive policy names `target`
/// into it: each dead task once (its id is the copy's idempotency key), in the
/// order they died... as listed, enqueue order.
async fn redrive_into<H: Host>(sqs: &Sqs<H>, target: &QueueName) -> Result<(), SqsError> {
    for source in sqs.meta.sources_of(target.as_str()) {
        let Ok(source_queue) = QueueName::new(&source) else { continue };
        loop {
            let after = sqs.meta.moved_up_to(&source);
            let list = ListTasks {
                queue: source_queue.clone(),
                filter: TaskFilter::in_state(TaskState::Dead),
                key: None,
                after,
                limit: 100,
            };
            let page = match sqs.store().list_tasks(list).await {
                Ok(page) => page,
                Err(StoreError::NotFound) => break,
                Err(e) => return Err(store_error(e)),
            };
            let Some(last) = page.last().map(|t| t.id) else { break };
            let copies = page
                .iter()
                .map(|t| NewTask {
                    kind: t.kind.clone(),
                    payload: t.payload.clone(),
                    priority: t.priority,
                    run_at: None,
                    idempotency_key: Some(format!("redrive:{}", t.id)),
                    group: t.group.clone(),
                    max_attempts: None,
                })
                .collect();
            sqs.change(sqs.store().enqueue(target.clone(), copies, sqs.host.now_ms()))
                .await
                .map_err(store_error)?;
            sqs.meta.set_moved_up_to(&source, last);
            if page.len() < 100 {
                break;
            }
        }
    }
    Ok(())
}

/// A message to send, checked.
struct Outgoing {
    task: NewTask,
    md5_body: String,
    md5_attributes: Option<String>,
}

fn outgoing(queue: &QueueName, meta: &QueueMeta, entry: &Params, now: i64) -> Result<Outgoing, SqsError> {
    let body = required(entry, "MessageBody")?;
    if body.is_empty() {
        return Err(SqsError::invalid("The request must contain the parameter MessageBody."));
    }
    if !attrs::valid_body(body) {
        return Err(SqsError::invalid("Invalid characters found in the message body."));
    }
    let attributes = object(entry, "MessageAttributes")?.cloned().unwrap_or_default();
    let size = body.len() + attrs::check_message_attributes(&attributes)?;
    if size > meta.max_message_size as usize {
        return Err(SqsError::invalid(format!(
            "One or more parameters are invalid. Reason: Message must be shorter than {} bytes.",
            meta.max_message_size
        )));
    }
    let fifo = queue.as_str().ends_with(".fifo");
    let delay = integer(entry, "DelaySeconds", 0..=900)?;
    let group = string(entry, "MessageGroupId")?;
    let dedup = string(entry, "MessageDeduplicationId")?;
    let (group, key) = if fifo {
        if delay.is_some_and(|d| d > 0) {
            return Err(SqsError::invalid(
                "Value for parameter DelaySeconds is invalid. Reason: The request include parameter that is not valid for this queue type.",
            ));
        }
        let group = group.ok_or_else(|| SqsError::missing("MessageGroupId"))?;
        let key = match dedup {
            Some(id) => id.to_owned(),
            None if meta.content_dedup => attrs::hex(&Sha256::digest(body.as_bytes())),
            None => {
                return Err(SqsError::invalid(
                    "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                ));
            }
        };
        for (name, value) in [("MessageGroupId", group), ("MessageDeduplicationId", key.as_str())] {
            if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(SqsError::invalid(format!("Value {value:?} for parameter {name} is invalid.")));
            }
        }
        (Some(group.to_owned()), Some(key))
    } else {
        if dedup.is_some() {
            return Err(SqsError::invalid(
                "The request include parameter MessageDeduplicationId that is not valid for this queue type",
            ));
        }
        (None, None)
    };
    let delay_s = delay.unwrap_or(i64::from(meta.delay_seconds));
    Ok(Outgoing {
        task: NewTask {
            kind: "sqs".into(),
            payload: attrs::payload(body, &attributes),
            priority: 0,
            run_at: (delay_s > 0).then(|| now + delay_s * 1000),
            idempotency_key: key,
            group,
            max_attempts: None,
        },
        md5_body: attrs::md5_hex(body.as_bytes()),
        md5_attributes: attrs::md5_of_attributes(&attributes),
    })
}

/// The answer members of one sent message.
fn sent(message_id: &str, out: &Outgoing, fifo_seq: Option<u64>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("MessageId".into(), Value::String(message_id.to_owned()));
    m.insert("MD5OfMessageBody".into(), Value::String(out.md5_body.clone()));
    if let Some(md5) = &out.md5_attributes {
        m.insert("MD5OfMessageAttributes".into(), Value::String(md5.clone()));
    }
    if let Some(seq) = fifo_seq {
        m.insert("SequenceNumber".into(), Value::String(format!("{seq:020}")));
    }
    m
}

/// The message id an enqueue answered: a replayed or reused deduplication id
/// answers the message first sent with it, as SQS does.
fn enqueued_id(result: Result<Enqueued, StoreError>) -> Result<(String, u64), SqsError> {
    match result {
        Ok(enqueued) => Ok((enqueued.task().id.to_string(), enqueued.task().id.seq())),
        Err(StoreError::KeyReused(id)) => Ok((id.to_string(), id.seq())),
        Err(e) => Err(store_error(e)),
    }
}

async fn send_message<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    let (queue, _) = existing_queue(sqs, p).await?;
    let now = sqs.host.now_ms();
    let meta = sqs.meta.get(queue.as_str(), now);
    let out = outgoing(&queue, &meta, p, now)?;
    let fifo = queue.as_str().ends_with(".fifo");
    let mut results =
        sqs.change(sqs.store().enqueue(queue, vec![out.task.clone()], now)).await.map_err(store_error)?;
    let result = results.pop().ok_or_else(SqsError::internal)?;
    let (id, seq) = enqueued_id(result)?;
    Ok(sent(&id, &out, fifo.then_some(seq)))
}

/// Checks a batch's entries: 1 to 10, ids valid and distinct.
fn entries(p: &Params) -> Result<Vec<(String, &Params)>, SqsError> {
    let entries = match p.get("Entries") {
        None | Some(Value::Null) => return Err(SqsError::missing("Entries")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(SqsError::invalid("Entries must be a list.")),
    };
    if entries.is_empty() {
        return Err(SqsError::empty_batch());
    }
    if entries.len() > MAX_BATCH {
        return Err(SqsError::too_many_entries(entries.len()));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let entry = entry.as_object().ok_or_else(|| SqsError::invalid("Each entry must be an object."))?;
        let id = required(entry, "Id")?;
        let valid = !id.is_empty()
            && id.len() <= 80
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(SqsError::batch_entry_id(id));
        }
        if !seen.insert(id) {
            return Err(SqsError::ids_not_distinct(id));
        }
        out.push((id.to_owned(), entry));
    }
    Ok(out)
}

fn failed(id: &str, error: &SqsError) -> Value {
    json!({"Id": id, "SenderFault": error.sender, "Code": error.code, "Message": error.message})
}

fn batch_answer(successful: Vec<Value>, failed: Vec<Value>) -> Map<String, Value> {
    answer([("Successful", Value::Array(successful)), ("Failed", Value::Array(failed))])
}

async fn send_message_batch<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    let (queue, _) = existing_queue(sqs, p).await?;
    let entries = entries(p)?;
    let now = sqs.host.now_ms();
    let meta = sqs.meta.get(queue.as_str(), now);
    let fifo = queue.as_str().ends_with(".fifo");
    let mut failures = Vec::new();
    let mut accepted = Vec::new();
    for (id, entry) in &entries {
        match outgoing(&queue, &meta, entry, now) {
            Ok(out) => accepted.push((id.clone(), out)),
            Err(error) => failures.push(failed(id, &error)),
        }
    }
    let mut successes = Vec::new();
    if !accepted.is_empty() {
        let tasks = accepted.iter().map(|(_, out)| out.task.clone()).collect();
        let results = sqs.change(sqs.store().enqueue(queue, tasks, now)).await.map_err(store_error)?;
        for ((id, out), result) in accepted.iter().zip(results) {
            match enqueued_id(result) {
                Ok((message_id, seq)) => {
                    let mut m = sent(&message_id, out, fifo.then_some(seq));
                    m.insert("Id".into(), Value::String(id.clone()));
                    successes.push(Value::Object(m));
                }
                Err(error) => failures.push(failed(id, &error)),
            }
        }
    }
    Ok(batch_answer(successes, failures))
}

const SYSTEM_ATTRIBUTES: &[&str] = &[
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
    "MessageDeduplicationId",
    "SequenceNumber",
];

/// A received task as an SQS message.
fn message(task: &Task, system: &[String], wanted: &[String]) -> Value {
    let (body, attributes) = attrs::message(&task.payload);
    let token = task.lease.as_ref().map(|l| l.token.as_str()).unwrap_or_default();
    let mut m = Map::new();
    m.insert("MessageId".into(), Value::String(task.id.to_string()));
    m.insert("ReceiptHandle".into(), Value::String(receipt::encode(task.id, token)));
    m.insert("MD5OfBody".into(), Value::String(attrs::md5_hex(body.as_bytes())));
    m.insert("Body".into(), Value::String(body));
    let all = system.iter().any(|n| n == "All");
    let mut sys = Map::new();
    for &name in SYSTEM_ATTRIBUTES {
        if !all && !system.iter().any(|n| n == name) {
            continue;
        }
        let value = match name {
            "SenderId" => crate::ACCOUNT.to_owned(),
            "SentTimestamp" => task.created_at.to_string(),
            "ApproximateReceiveCount" => task.attempts.to_string(),
            "ApproximateFirstReceiveTimestamp" => {
                let first = task.history.entries().first().filter(|a| a.attempt == 1).map(|a| a.started_at);
                match first
                    .or_else(|| task.lease.as_ref().filter(|_| task.attempts == 1).map(|l| l.leased_at))
                {
                    Some(at) => at.to_string(),
                    None => continue,
                }
            }
            "MessageGroupId" => match &task.group {
                Some(g) if task.queue.ends_with(".fifo") => g.clone(),
                _ => continue,
            },
            "MessageDeduplicationId" => match &task.idempotency_key {
                Some(k) if task.queue.ends_with(".fifo") => k.clone(),
                _ => continue,
            },
            "SequenceNumber" if task.queue.ends_with(".fifo") => format!("{:020}", task.id.seq()),
            _ => continue,
        };
        sys.insert(name.to_owned(), Value::String(value));
    }
    if !sys.is_empty() {
        m.insert("Attributes".into(), Value::Object(sys));
    }
    let selected = attrs::select_message_attributes(&attributes, wanted);
    if let Some(md5) = attrs::md5_of_attributes(&selected) {
        m.insert("MD5OfMessageAttributes".into(), Value::String(md5));
        m.insert("MessageAttributes".into(), Value::Object(selected));
    }
    Value::Object(m)
}

async fn receive_message<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    let (queue, _) = existing_queue(sqs, p).await?;
    let now = sqs.host.now_ms();
    let meta = sqs.meta.get(queue.as_str(), now);
    let max = integer(p, "MaxNumberOfMessages", 1..=MAX_BATCH as i64)?.unwrap_or(1) as usize;
    let visibility = integer(p, "VisibilityTimeout", 0..=MAX_VISIBILITY_S)?;
    let wait_s = integer(p, "WaitTimeSeconds", 0..=MAX_WAIT_S)?.unwrap_or(i64::from(meta.wait_seconds));
    let mut system = strings(p, "AttributeNames")?;
    system.extend(strings(p, "MessageSystemAttributeNames")?);
    let wanted = strings(p, "MessageAttributeNames")?;
    let claim =
        Claim { queue: queue.clone(), max, lease_ms: visibility.map(|s| (s * 1000).max(1)), worker: None };
    // Within the server's request timeout, as its own long polls.
    let wait_ms = (wait_s as u64 * 1000).min(sqs.host.max_wait_ms());
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let notify = sqs.host.long_polls(queue.as_str());
    let mut shutting_down = sqs.host.shutting_down();
    let mut wait_slot = None;
    loop {
        // Registered before looking, so work that arrives in between wakes it.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        redrive_into(sqs, &queue).await?;
        let tasks =
            sqs.change(sqs.store().claim(claim.clone(), sqs.host.now_ms())).await.map_err(store_error)?;
        if !tasks.is_empty() || tokio::time::Instant::now() >= deadline || *shutting_down.borrow() {
            let mut out = Map::new();
            if !tasks.is_empty() {
                out.insert("Messages".into(), tasks.iter().map(|t| message(t, &system, &wanted)).collect());
            }
            return Ok(out);
        }
        if wait_slot.is_none() {
            match sqs.waits.clone().try_acquire_owned() {
                Ok(slot) => wait_slot = Some(slot),
                // Too many long polls: answer empty now, as a short poll.
                Err(_) => return Ok(Map::new()),
            }
            tracing::debug!(queue = %queue, wait_s, "SQS long poll waiting");
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = shutting_down.wait_for(|&s| s) => {}
        }
    }
}

fn handle(p: &Params) -> Result<(cherga_core::TaskId, String), SqsError> {
    let handle = required(p, "ReceiptHandle")?;
    receipt::decode(handle).ok_or_else(|| {
        SqsError::receipt_handle(format!(
            "The input receipt handle \"{handle}\" is not a valid receipt handle."
        ))
    })
}

fn stale() -> SqsError {
    SqsError::receipt_handle(
        "The receipt handle is stale: the message's visibility timeout ran out and it is visible again or held by another receive.",
    )
}

fn delete_error(error: StoreError) -> SqsError {
    match error {
        StoreError::Refused(Refusal::LeaseLost) => stale(),
        StoreError::Refused(_) | StoreError::NotFound => stale(),
        other => store_error(other),
    }
}

async fn delete_message<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    existing_queue(sqs, p).await?;
    let (task_id, token) = handle(p)?;
    let mut results = sqs
        .change(sqs.store().complete(vec![Ack { task_id, token, result: None }], sqs.host.now_ms()))
        .await
        .map_err(store_error)?;
    results.pop().ok_or_else(SqsError::internal)?.map_err(delete_error)?;
    Ok(Map::new())
}

async fn delete_message_batch<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    existing_queue(sqs, p).await?;
    let entries = entries(p)?;
    let mut failures = Vec::new();
    let mut acks = Vec::new();
    let mut ids = Vec::new();
    for (id, entry) in &entries {
        match handle(entry) {
            Ok((task_id, token)) => {
                acks.push(Ack { task_id, token, result: None });
                ids.push(id.clone());
            }
            Err(error) => failures.push(failed(id, &error)),
        }
    }
    let mut successes = Vec::new();
    if !acks.is_empty() {
        let results = sqs.change(sqs.store().complete(acks, sqs.host.now_ms())).await.map_err(store_error)?;
        for (id, result) in ids.into_iter().zip(results) {
            match result {
                Ok(_) => successes.push(json!({"Id": id})),
                Err(error) => failures.push(failed(&id, &delete_error(error))),
            }
        }
    }
    Ok(batch_answer(successes, failures))
}

/// Changes the visibility of a message in flight: a new lease end `seconds`
/// from now, or at once visible again (as a failed attempt) for 0.
async fn change_one<H: Host>(sqs: &Sqs<H>, entry: &Params) -> Result<(), SqsError> {
    let (task_id, token) = handle(entry)?;
    let seconds = integer(entry, "VisibilityTimeout", 0..=MAX_VISIBILITY_S)?
        .ok_or_else(|| SqsError::missing("VisibilityTimeout"))?;
    let now = sqs.host.now_ms();
    let result = if seconds == 0 {
        let nack = Nack {
            task_id,
            token,
            error: Some("visibility timeout set to 0".into()),
            retry_in_ms: Some(0),
            dead: false,
        };
        sqs.change(sqs.store().fail(nack, now)).await
    } else {
        sqs.change(sqs.store().extend_lease(task_id, token, seconds * 1000, now)).await
    };
    match result {
        Ok(_) => Ok(()),
        Err(StoreError::Refused(_) | StoreError::NotFound) => {
            Err(SqsError::not_inflight("The message referred to is not in flight under this receipt handle."))
        }
        Err(e) => Err(store_error(e)),
    }
}

async fn change_visibility<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    existing_queue(sqs, p).await?;
    change_one(sqs, p).await?;
    Ok(Map::new())
}

async fn change_visibility_batch<H: Host>(sqs: &Sqs<H>, p: &Params) -> Answer {
    existing_queue(sqs, p).await?;
    let mut successes = Vec::new();
    let mut failures = Vec::new();
    for (id, entry) in entries(p)? {
        match change_one(sqs, entry).await {
            Ok(()) => successes.push(json!({"Id": id})),
            Err(error) if error.status.is_client_error() => failures.push(failed(&id, &error)),
            Err(error) => return Err(error),
        }
    }
    Ok(batch_answer(successes, failures))
}

async fn tags<H: Host>(sqs: &Sqs<H>, action: &str, p: &Params) -> Answer {
    let (queue, _) = existing_queue(sqs, p).await?;
    let now = sqs.host.now_ms();
    match action {
        "TagQueue" => {
            let tags = object(p, "Tags")?.or(object(p, "tags")?).ok_or_else(|| SqsError::missing("Tags"))?;
            let tags: Vec<(String, String)> =
                tags.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect();
            sqs.meta.update(queue.as_str(), now, |m| m.tags.extend(tags));
            Ok(Map::new())
        }
        "UntagQueue" => {
            let keys = strings(p, "TagKeys")?;
            sqs.meta.update(queue.as_str(), now, |m| m.tags.retain(|k, _| !keys.contains(k)));
            Ok(Map::new())
        }
        _ => {
            let meta = sqs.meta.get(queue.as_str(), now);
            let mut out = Map::new();
            if !meta.tags.is_empty() {
                out.insert("Tags".into(), tags_value(&meta.tags));
            }
            Ok(out)
        }
    }
}
