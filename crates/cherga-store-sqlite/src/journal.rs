//! The journal: changes to tasks that are durable but not yet in their rows.
//!
//! Each writer batch that changed a task without writing its row appends one row
//! to the `journal` table, in the same transaction as everything else the batch
//! did, holding that batch's records in order. A record is one of:
//!
//! - [`Record::Created`]: a new task, whole (it has no row yet);
//! - [`Record::Leased`]: the lease fields of a task after a lease or an extension
//!   (the rest of the task is as its earlier records, or its row, say);
//! - [`Record::Settled`]: the task's row now holds its whole state; its earlier
//!   records are void.
//!
//! At start-up the journal is replayed in order over the rows, which gives every
//! task's state as of the last commit. The writer deletes journal rows from the
//! oldest on as soon as no task depends on them (see `engine/memory.rs`).
//!
//! Task rows keep the whole task in their `body` in the same encoding as a
//! `Created` record ([`encode_task`]), beside copies of the fields SQL needs.
//!
//! The encoding is cherga's own and private to this store: a format byte, then
//! records, each a tag byte and its fields; integers little-endian, strings as a
//! `u32` length and UTF-8 bytes, options as a `0`/`1` byte before the value.
//! Decoding checks every length and tag and fails with a message, never a panic.
//!
//! A task's attempt history (its finished attempts; the running one is its
//! lease) follows its lease fields: a count, then each entry as a flags byte and
//! the fields the flags say are there (`put_history`). The entry of the lease
//! the task still holds (the attempt an ack or nack just ended) names its
//! attempt, worker and start by a flag instead of repeating the lease's: an
//! acked task of one attempt costs 13 bytes of history, besides the lease's
//! start. An entry marked by a payload edit (a dead task retried with a new
//! payload) carries the edit's time and subject after its error; entries
//! without the flag, all those written before edits existed, read as unedited.
//! Rows of format 1, written before tasks had a history, are still read:
//! their tasks have no history of the attempts made before, and a lease of
//! theirs started, as far as this build knows, at the task's `updated_at`.

use cherga_core::{
    Attempt, AttemptOutcome, History, Lease, LeaseToken, Millis, PayloadEdit, Task, TaskId, TaskState,
};

/// The first byte of every journal row and task body this build writes. A
/// byte other than it and [`FORMAT_1`] is a format this build does not know.
const FORMAT: u8 = 2;
/// The format before attempt histories: no history after the lease fields, no
/// `leased_at` in a lease. Read, never written.
const FORMAT_1: u8 = 1;

/// The flags byte of a history entry: the outcome's code in the low two bits,
/// then these.
const ENTRY_OUTCOME: u8 = 0b11;
/// The entry's attempt, worker and start are those of the task's (last) lease
/// and are not repeated.
const ENTRY_OF_LEASE: u8 = 1 << 2;
const ENTRY_WORKER: u8 = 1 << 3;
const ENTRY_ERROR: u8 = 1 << 4;
/// The payload was edited after the attempt: its time and subject follow.
const ENTRY_EDITED: u8 = 1 << 5;

const CREATED: u8 = 1;
const LEASED: u8 = 2;
const SETTLED: u8 = 3;

/// One change, as replayed.
#[derive(Debug, PartialEq)]
pub enum Record {
    Created(Box<Task>),
    Leased(LeaseFields),
    Settled(u64),
}

/// What [`Task::lease`] and [`Task::extend`] change, for the task with sequence
/// number `seq`.
#[derive(Debug, PartialEq)]
pub struct LeaseFields {
    pub seq: u64,
    pub attempts: u32,
    pub state: TaskState,
    pub lease: Option<Lease>,
    pub updated_at: Millis,
}

impl LeaseFields {
    /// Applies these fields to `task`, which must be the task they were taken from
    /// (as its earlier records or its row left it). A lease adds nothing to the
    /// history: its attempt is the lease until it ends.
    pub fn apply(self, task: &mut Task) {
        task.attempts = self.attempts;
        task.state = self.state;
        task.lease = self.lease;
        task.updated_at = self.updated_at;
    }
}

/// The most room a new batch is given ahead; larger ones grow as they must.
const BATCH_ROOM: usize = 1 << 20;

/// The records of one batch, encoded as they are added.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
}

impl Batch {
    /// The encoded row (format byte first) and an empty batch in its place, with
    /// room for as many bytes as this one had (up to [`BATCH_ROOM`]): batches
    /// under steady load are alike, and one that starts empty grows by doubling,
    /// copying its records each time.
    pub fn take(&mut self) -> Vec<u8> {
        let room = self.bytes.len().min(BATCH_ROOM);
        std::mem::replace(&mut self.bytes, Vec::with_capacity(room))
    }

    fn begin(&mut self, tag: u8) {
        if self.bytes.is_empty() {
            self.bytes.push(FORMAT);
        }
        self.bytes.push(tag);
    }

    pub fn created(&mut self, task: &Task) {
        self.begin(CREATED);
        put_task(&mut self.bytes, task);
    }

    pub fn leased(&mut self, task: &Task) {
        self.begin(LEASED);
        self.bytes.extend_from_slice(&task.id.seq().to_le_bytes());
        put_lease_fields(&mut self.bytes, task);
    }

    pub fn settled(&mut self, seq: u64) {
        self.begin(SETTLED);
        self.bytes.extend_from_slice(&seq.to_le_bytes());
    }
}

/// A whole task, as a task row's `body` holds it: its format byte, then the
/// fields as a `Created` record has them.
pub fn encode_task(out: &mut Vec<u8>, task: &Task) {
    out.push(FORMAT);
    put_task(out, task);
}

/// The task a row's `body` holds.
///
/// # Errors
/// A message naming what is wrong when the bytes are not a body this build wrote.
pub fn decode_task(bytes: &[u8]) -> Result<Task, String> {
    let mut r = Reader { bytes, at: 0, format: FORMAT };
    match r.u8()? {
        format @ (FORMAT | FORMAT_1) => r.format = format,
        other => return Err(format!("unknown task body format {other}")),
    }
    let task = r.task()?;
    if r.at != bytes.len() {
        return Err(format!("task body has {} bytes after its end", bytes.len() - r.at));
    }
    Ok(task)
}

fn put_task(b: &mut Vec<u8>, task: &Task) {
    b.extend_from_slice(task.id.as_bytes());
    put_str(b, &task.queue);
    put_str(b, &task.kind);
    put_str(b, &task.payload);
    b.extend_from_slice(&task.priority.to_le_bytes());
    b.extend_from_slice(&task.run_at.to_le_bytes());
    put_opt_str(b, task.idempotency_key.as_deref());
    put_opt_str(b, task.group.as_deref());
    b.extend_from_slice(&task.max_attempts.to_le_bytes());
    put_opt_str(b, task.result.as_deref());
    put_opt_str(b, task.last_error.as_deref());
    b.extend_from_slice(&task.created_at.to_le_bytes());
    match task.finished_at {
        Some(at) => {
            b.push(1);
            b.extend_from_slice(&at.to_le_bytes());
        }
        None => b.push(0),
    }
    put_lease_fields(b, task);
    put_history(b, task);
}

/// The history of `task`, written after its lease fields, which its last entry
/// may refer to.
fn put_history(b: &mut Vec<u8>, task: &Task) {
    let entries = task.history.entries();
    let count = u32::try_from(entries.len()).expect("a history is bounded");
    b.extend_from_slice(&count.to_le_bytes());
    for entry in entries {
        let of_lease = task.lease.as_ref().is_some_and(|lease| {
            entry.attempt == task.attempts
                && entry.started_at == lease.leased_at
                && entry.worker == lease.worker
        });
        let mut flags = entry.outcome.code();
        if of_lease {
            flags |= ENTRY_OF_LEASE;
        } else if entry.worker.is_some() {
            flags |= ENTRY_WORKER;
        }
        if entry.error.is_some() {
            flags |= ENTRY_ERROR;
        }
        if entry.payload_edit.is_some() {
            flags |= ENTRY_EDITED;
        }
        b.push(flags);
        if !of_lease {
            b.extend_from_slice(&entry.attempt.to_le_bytes());
            b.extend_from_slice(&entry.started_at.to_le_bytes());
            if let Some(worker) = &entry.worker {
                put_str(b, worker);
            }
        }
        b.extend_from_slice(&entry.finished_at.to_le_bytes());
        if let Some(error) = &entry.error {
            put_str(b, error);
        }
        if let Some(edit) = &entry.payload_edit {
            b.extend_from_slice(&edit.at.to_le_bytes());
            put_opt_str(b, edit.by.as_deref());
        }
    }
}

/// The fields [`LeaseFields`] carries, without the sequence number.
fn put_lease_fields(b: &mut Vec<u8>, task: &Task) {
    b.extend_from_slice(&task.attempts.to_le_bytes());
    b.push(task.state.code());
    match &task.lease {
        Some(lease) => {
            b.push(1);
            put_str(b, lease.token.as_str());
            b.extend_from_slice(&lease.expires_at.to_le_bytes());
            b.extend_from_slice(&lease.leased_at.to_le_bytes());
            put_opt_str(b, lease.worker.as_deref());
        }
        None => b.push(0),
    }
    b.extend_from_slice(&task.updated_at.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).expect("strings in tasks are far below 4 GiB");
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_opt_str(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            b.push(1);
            put_str(b, s);
        }
        None => b.push(0),
    }
}

/// Decodes one journal row.
///
/// # Errors
/// A message naming what is wrong when the bytes are not a row this build wrote.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let mut r = Reader { bytes, at: 0, format: FORMAT };
    match r.u8()? {
        format @ (FORMAT | FORMAT_1) => r.format = format,
        other => return Err(format!("unknown journal format {other}")),
    }
    let mut records = Vec::new();
    while r.at < bytes.len() {
        let record = match r.u8()? {
            CREATED => Record::Created(Box::new(r.task()?)),
            LEASED => {
                let seq = r.u64()?;
                Record::Leased(r.lease_fields(seq)?)
            }
            SETTLED => Record::Settled(r.u64()?),
            other => return Err(format!("unknown journal record tag {other} at byte {}", r.at - 1)),
        };
        records.push(record);
    }
    Ok(records)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The format byte the bytes began with.
    format: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            format!("journal row ends at byte {} inside a field of {n} bytes", self.bytes.len())
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("journal flag byte is {other} at byte {}", self.at - 1)),
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("journal string before byte {} is not UTF-8", self.at))
    }

    fn opt_string(&mut self) -> Result<Option<String>, String> {
        if self.flag()? { self.string().map(Some) } else { Ok(None) }
    }

    fn task(&mut self) -> Result<Task, String> {
        let id = TaskId::from_bytes(self.array()?);
        let queue = self.string()?;
        let kind = self.string()?;
        let payload = self.string()?;
        let priority = i32::from_le_bytes(self.array()?);
        let run_at = self.i64()?;
        let idempotency_key = self.opt_string()?;
        let group = self.opt_string()?;
        let max_attempts = self.u32()?;
        let result = self.opt_string()?;
        let last_error = self.opt_string()?;
        let created_at = self.i64()?;
        let finished_at = if self.flag()? { Some(self.i64()?) } else { None };
        let fields = self.lease_fields(id.seq())?;
        let history = match self.format {
            FORMAT_1 => History::default(),
            _ => self.history(fields.attempts, fields.lease.as_ref())?,
        };
        let mut task = Task {
            id,
            queue,
            kind,
            payload,
            priority,
            run_at,
            idempotency_key,
            group,
            max_attempts,
            attempts: 0,
            state: TaskState::Ready,
            result,
            last_error,
            lease: None,
            history,
            created_at,
            updated_at: 0,
            finished_at,
        };
        fields.apply(&mut task);
        Ok(task)
    }

    /// A history written by `put_history` for a task with `attempts` and `lease`.
    fn history(&mut self, attempts: u32, lease: Option<&Lease>) -> Result<History, String> {
        let count = self.u32()? as usize;
        // A corrupt count must not reserve memory for itself.
        let mut entries = Vec::with_capacity(count.min(History::MAX_ENTRIES));
        for _ in 0..count {
            let flags = self.u8()?;
            if flags & !(ENTRY_OUTCOME | ENTRY_OF_LEASE | ENTRY_WORKER | ENTRY_ERROR | ENTRY_EDITED) != 0 {
                return Err(format!("history entry flags {flags:#04x} at byte {}", self.at - 1));
            }
            let outcome =
                AttemptOutcome::from_code(flags & ENTRY_OUTCOME).expect("every two-bit code is one");
            let (attempt, started_at, worker) = if flags & ENTRY_OF_LEASE != 0 {
                let lease = lease.ok_or("a history entry of the lease of a task without one")?;
                (attempts, lease.leased_at, lease.worker.clone())
            } else {
                let attempt = self.u32()?;
                let started_at = self.i64()?;
                let worker = if flags & ENTRY_WORKER != 0 { Some(self.string()?) } else { None };
                (attempt, started_at, worker)
            };
            let finished_at = self.i64()?;
            let error = if flags & ENTRY_ERROR != 0 { Some(self.string()?) } else { None };
            let payload_edit = if flags & ENTRY_EDITED != 0 {
                let at = self.i64()?;
                Some(Box::new(PayloadEdit { at, by: self.opt_string()? }))
            } else {
                None
            };
            entries.push(Attempt { attempt, worker, started_at, finished_at, outcome, error, payload_edit });
        }
        History::from_entries(entries).map_err(|e| e.to_string())
    }

    fn lease_fields(&mut self, seq: u64) -> Result<LeaseFields, String> {
        let attempts = self.u32()?;
        let code = self.u8()?;
        let state =
            TaskState::from_code(code).ok_or_else(|| format!("unknown task state {code} in the journal"))?;
        let mut lease = if self.flag()? {
            let token = LeaseToken::from_string(self.string()?);
            let expires_at = self.i64()?;
            let leased_at = if self.format == FORMAT_1 { 0 } else { self.i64()? };
            let worker = self.opt_string()?;
            Some(Lease { token, expires_at, worker, leased_at })
        } else {
            None
        };
        let updated_at = self.i64()?;
        if let (FORMAT_1, Some(lease)) = (self.format, &mut lease) {
            // Not recorded: the task's last change is the closest known time.
            lease.leased_at = updated_at;
        }
        Ok(LeaseFields { seq, attempts, state, lease, updated_at })
    }
}

#[cfg(test)]
mod tests;
