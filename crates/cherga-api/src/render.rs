//! Task answers written straight to JSON bytes.
//!
//! The bytes are exactly those `serde_json` writes for the [`TaskView`]s (and the
//! [`LeaseResponse`], [`TaskList`] and [`BatchResponse`]) of the same tasks — the
//! tests compare them on random tasks — so the wire format and the OpenAPI
//! document are those of the wire types. What is saved: copying every string of a
//! task into a view, validating its stored payload and result again, escaping the
//! keys, and escaping ids, times, states and numbers, which never need it. Writing
//! the tasks of a lease answer this way was about half of a request thread's
//! instructions (callgrind, `docs/storage.md`).
//!
//! Payloads and results are written as stored: the store keeps only the JSON text
//! that was validated and minified on the way in.
//!
//! [`TaskView`]: crate::TaskView
//! [`LeaseResponse`]: crate::LeaseResponse
//! [`TaskList`]: crate::TaskList
//! [`BatchResponse`]: crate::BatchResponse

use crate::{Timestamp, WireError};
use cherga_core::{AttemptRef, Lease, Task, TaskId, TaskState};

/// Which view of a task to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// [`crate::TaskView::from_task`]: the public view, without the lease token.
    Public,
    /// [`crate::TaskView::leased`]: for the worker that just leased the task.
    Leased,
    /// [`crate::LeasedBrief`]: the short form of [`View::Leased`].
    LeasedBrief,
}

/// Appends the JSON of `task` as `view` shows it.
pub fn task(out: &mut Vec<u8>, task: &Task, view: View) {
    if view == View::LeasedBrief {
        return leased_brief(out, task);
    }
    let running_lease = task.lease.as_ref().filter(|_| task.state == TaskState::Running);
    out.extend_from_slice(b"{\"id\":");
    id(out, task.id);
    out.extend_from_slice(b",\"queue\":");
    string(out, &task.queue);
    out.extend_from_slice(b",\"kind\":");
    string(out, &task.kind);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(task.payload.as_bytes());
    out.extend_from_slice(b",\"priority\":");
    integer(out, task.priority);
    out.extend_from_slice(b",\"run_at\":");
    time(out, task.run_at);
    out.extend_from_slice(b",\"idempotency_key\":");
    optional_string(out, task.idempotency_key.as_deref());
    out.extend_from_slice(b",\"group\":");
    optional_string(out, task.group.as_deref());
    out.extend_from_slice(b",\"max_attempts\":");
    integer(out, task.max_attempts);
    out.extend_from_slice(b",\"attempts\":");
    integer(out, task.attempts);
    out.extend_from_slice(b",\"state\":\"");
    out.extend_from_slice(task.state.as_str().as_bytes());
    out.extend_from_slice(b"\",\"result\":");
    match &task.result {
        Some(result) => out.extend_from_slice(result.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"last_error\":");
    optional_string(out, task.last_error.as_deref());
    out.extend_from_slice(b",\"created_at\":");
    time(out, task.created_at);
    out.extend_from_slice(b",\"updated_at\":");
    time(out, task.updated_at);
    out.extend_from_slice(b",\"finished_at\":");
    optional_time(out, task.finished_at);
    out.extend_from_slice(b",\"history\":[");
    for (i, entry) in task.attempt_history().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        attempt(out, entry);
    }
    out.push(b']');
    if let Some(lease) = running_lease {
        out.extend_from_slice(b",\"lease_expires_at\":");
        time(out, lease.expires_at);
        if let Some(worker) = &lease.worker {
            out.extend_from_slice(b",\"worker\":");
            string(out, worker);
        }
    }
    if view == View::Leased
        && let Some(lease) = &task.lease
    {
        out.extend_from_slice(b",\"lease\":");
        lease_object(out, lease);
    }
    out.push(b'}');
}

/// A [`crate::AttemptView`].
fn attempt(out: &mut Vec<u8>, entry: AttemptRef<'_>) {
    out.extend_from_slice(b"{\"attempt\":");
    integer(out, entry.attempt);
    out.extend_from_slice(b",\"worker\":");
    optional_string(out, entry.worker);
    out.extend_from_slice(b",\"started_at\":");
    time(out, entry.started_at);
    out.extend_from_slice(b",\"finished_at\":");
    optional_time(out, entry.finished_at);
    out.extend_from_slice(b",\"outcome\":\"");
    out.extend_from_slice(entry.outcome.as_str().as_bytes());
    out.extend_from_slice(b"\",\"error\":");
    optional_string(out, entry.error);
    if let Some(edit) = entry.payload_edit {
        out.extend_from_slice(b",\"payload_edit\":{\"at\":");
        time(out, edit.at);
        out.extend_from_slice(b",\"by\":");
        optional_string(out, edit.by.as_deref());
        out.push(b'}');
    }
    out.push(b'}');
}

/// A [`crate::LeaseView`]: the token and the expiry.
fn lease_object(out: &mut Vec<u8>, lease: &Lease) {
    out.extend_from_slice(b"{\"token\":");
    string(out, lease.token.as_str());
    out.extend_from_slice(b",\"expires_at\":");
    time(out, lease.expires_at);
    out.push(b'}');
}

/// A [`crate::LeasedBrief`]; a task without a lease (never in a lease answer) is
/// written with the fields it has and `"lease":null`.
fn leased_brief(out: &mut Vec<u8>, task: &Task) {
    out.extend_from_slice(b"{\"id\":");
    id(out, task.id);
    out.extend_from_slice(b",\"kind\":");
    string(out, &task.kind);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(task.payload.as_bytes());
    out.extend_from_slice(b",\"attempts\":");
    integer(out, task.attempts);
    out.extend_from_slice(b",\"max_attempts\":");
    integer(out, task.max_attempts);
    out.extend_from_slice(b",\"lease\":");
    match &task.lease {
        Some(lease) => lease_object(out, lease),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// `{"tasks":[...]}`: a [`crate::LeaseResponse`], or with `next` a [`crate::TaskList`].
pub fn tasks<'a>(
    tasks: impl IntoIterator<Item = &'a Task>,
    view: View,
    next: Option<Option<&str>>,
) -> Vec<u8> {
    let mut out = tasks_opened(tasks, view);
    if let Some(next) = next {
        out.extend_from_slice(b",\"next\":");
        optional_string(&mut out, next);
    }
    out.push(b'}');
    out
}

/// `{"tasks":[...],"acks":[...]}`: the [`crate::LeaseResponse`] of a lease that
/// carried acknowledgements.
pub fn lease_with_acks<'a, 'b>(
    tasks: impl IntoIterator<Item = &'a Task>,
    view: View,
    acks: impl IntoIterator<Item = Item<'b>>,
) -> Vec<u8> {
    let mut out = tasks_opened(tasks, view);
    out.extend_from_slice(b",\"acks\":");
    items(&mut out, acks);
    out.push(b'}');
    out
}

/// `{"tasks":[...]`, the object left open.
fn tasks_opened<'a>(tasks: impl IntoIterator<Item = &'a Task>, view: View) -> Vec<u8> {
    let tasks = tasks.into_iter();
    let mut out = Vec::with_capacity(32 + tasks.size_hint().0 * 640);
    out.extend_from_slice(b"{\"tasks\":[");
    for (i, one) in tasks.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        task(&mut out, one, view);
    }
    out.push(b']');
    out
}

/// One item of a [`crate::BatchResponse`], as [`crate::BatchItem`] has it.
pub enum Item<'a> {
    /// A short answer: the task's id only.
    Id(u16, &'a Task),
    Task(u16, &'a Task),
    Error(u16, WireError),
}

/// `{"results":[...]}`.
pub fn batch<'a>(results: impl IntoIterator<Item = Item<'a>>) -> Vec<u8> {
    let results = results.into_iter();
    let mut out = Vec::with_capacity(16 + results.size_hint().0 * 64);
    out.extend_from_slice(b"{\"results\":");
    items(&mut out, results);
    out.push(b'}');
    out
}

/// `[...]` of [`crate::BatchItem`]s.
fn items<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = Item<'a>>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"status\":");
        match item {
            Item::Id(status, one) => {
                integer(out, status);
                out.extend_from_slice(b",\"id\":");
                id(out, one.id);
            }
            Item::Task(status, one) => {
                integer(out, status);
                out.extend_from_slice(b",\"task\":");
                task(out, one, View::Public);
            }
            Item::Error(status, error) => {
                integer(out, status);
                out.extend_from_slice(b",\"error\":");
                serde_json::to_writer(&mut *out, &error).expect("writing to a Vec cannot fail");
            }
        }
        out.push(b'}');
    }
    out.push(b']');
}

fn id(out: &mut Vec<u8>, id: TaskId) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(
        uuid::Uuid::from_bytes(*id.as_bytes()).hyphenated().encode_lower(&mut text).as_bytes(),
    );
    out.push(b'"');
}

fn time(out: &mut Vec<u8>, at: cherga_core::Millis) {
    out.push(b'"');
    Timestamp(at).write_rfc3339(out);
    out.push(b'"');
}

fn optional_time(out: &mut Vec<u8>, at: Option<cherga_core::Millis>) {
    match at {
        Some(at) => time(out, at),
        None => out.extend_from_slice(b"null"),
    }
}

fn integer(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: copied as it is when nothing in it needs escaping, else escaped
/// by `serde_json`, so that both ways give its bytes.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
    }
}

#[cfg(test)]
mod tests;
