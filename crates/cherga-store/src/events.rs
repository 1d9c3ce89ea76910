//! The event log: every task transition, numbered, kept for a retention window,
//! and read back in order by whoever follows it (`GET /v1/events`).
//!
//! Each store writes the events of a transaction **in that transaction**, as one
//! record of its own (an [`EventBatch`], encoded here once for every store), so
//! a rolled-back change has no event and an acknowledged change always has one.
//! An event's [`EventId`] is a position in the log: ids only grow, in the order
//! readers see events, and a reader that resumes after an id misses nothing that
//! was committed before or after it. Ids need not be consecutive.
//!
//! The record format, version 1: the version byte; the strings the events name
//! (queues and kinds), as a count and then length-prefixed UTF-8, so that a
//! batch of a thousand events of one queue names the queue once; the number of
//! events; then per event its change (its code, with [`PAYLOAD_EDITED`] added
//! for a retry that replaced the payload), from-state and to-state (a byte each, 255
//! for none), its attempt, its task id (16 bytes), its time as an offset from
//! the batch's first event, and the indexes of its queue and kind. Numbers are
//! LEB128 varints (offsets zig-zag encoded). About 25 bytes an event.

use cherga_core::{Change, Millis, TaskId, TaskState, Transition};

/// A position in the event log. Ids grow in the order events are read.
pub type EventId = u64;

/// One event: a transition and its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub transition: Transition,
}

/// A page of the log, as [`Store::read_events`](crate::Store::read_events) answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventPage {
    /// Events after the position asked for, in order.
    pub events: Vec<Event>,
    /// The id of the last event that can be read now (0 for an empty log): where
    /// a reader that wants only what happens from now on starts.
    pub head: EventId,
    /// Events with ids up to this one were dropped by retention (0 if none): a
    /// reader who asked for a position before it has missed some.
    pub purged_through: EventId,
    /// Events were committed that cannot be read yet (a transaction begun earlier
    /// is still running, and its events will come first): read again shortly.
    pub pending: bool,
}

/// The version byte of the record format.
const FORMAT: u8 = 1;
/// Encodes "no state" (a task created, or purged).
const NO_STATE: u8 = 255;
/// Added to the change's code of a retry that replaced the task's payload.
/// Records written before it existed never set it.
const PAYLOAD_EDITED: u8 = 0x80;

/// The events of one transaction, encoded as they are added.
#[derive(Debug, Default)]
pub struct EventBatch {
    strings: Vec<String>,
    body: Vec<u8>,
    count: u32,
    first_at: Millis,
}

impl EventBatch {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many events the batch holds.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// The time of the first event (0 when empty).
    pub fn first_at(&self) -> Millis {
        self.first_at
    }

    pub fn push(&mut self, transition: &Transition) {
        if self.count == 0 {
            self.first_at = transition.at;
        }
        let queue = self.string(&transition.queue);
        let kind = self.string(&transition.kind);
        let body = &mut self.body;
        body.push(transition.change.code() | if transition.payload_edited { PAYLOAD_EDITED } else { 0 });
        body.push(transition.from.map_or(NO_STATE, TaskState::code));
        body.push(transition.to.map_or(NO_STATE, TaskState::code));
        put_varint(body, u64::from(transition.attempt));
        body.extend_from_slice(transition.task_id.as_bytes());
        put_varint(body, zigzag(transition.at.wrapping_sub(self.first_at)));
        put_varint(body, queue);
        put_varint(body, kind);
        self.count += 1;
    }

    /// The index of `text` in the batch's strings, added if new. Batches name
    /// few distinct queues and kinds, so a scan beats hashing.
    fn string(&mut self, text: &str) -> u64 {
        let index = match self.strings.iter().position(|s| s == text) {
            Some(index) => index,
            None => {
                self.strings.push(text.to_owned());
                self.strings.len() - 1
            }
        };
        index as u64
    }

    /// The encoded record; the batch is empty again afterwards.
    pub fn take(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.body.len() + 16 + self.strings.iter().map(|s| s.len() + 2).sum::<usize>(),
        );
        out.push(FORMAT);
        put_varint(&mut out, self.strings.len() as u64);
        for s in &self.strings {
            put_varint(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        put_varint(&mut out, u64::from(self.count));
        out.extend_from_slice(&self.body);
        self.clear();
        out
    }

    pub fn clear(&mut self) {
        self.strings.clear();
        self.body.clear();
        self.count = 0;
        self.first_at = 0;
    }
}

/// The transitions of a record written by [`EventBatch::take`], in order, whose
/// first event happened at `first_at`. Transitions read back have no `due`.
///
/// # Errors
/// A description of what is malformed.
pub fn decode(record: &[u8], first_at: Millis) -> Result<Vec<Transition>, String> {
    let mut r = Reader { bytes: record, at: 0 };
    let format = r.byte()?;
    if format != FORMAT {
        return Err(format!("unknown event record format {format}"));
    }
    let n_strings = r.varint()? as usize;
    let mut strings = Vec::with_capacity(n_strings.min(1024));
    for _ in 0..n_strings {
        let len = r.varint()? as usize;
        let text = std::str::from_utf8(r.take(len)?).map_err(|e| format!("event string: {e}"))?;
        strings.push(text);
    }
    let count = r.varint()? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let string = |index: u64| {
        strings.get(index as usize).map(|s| (*s).to_owned()).ok_or("event string index out of range")
    };
    for _ in 0..count {
        let code = r.byte()?;
        let change = Change::from_code(code & !PAYLOAD_EDITED).ok_or("unknown event change")?;
        let state = |code: u8| match code {
            NO_STATE => Ok(None),
            code => TaskState::from_code(code).map(Some).ok_or("unknown event state"),
        };
        let from = state(r.byte()?)?;
        let to = state(r.byte()?)?;
        let attempt = u32::try_from(r.varint()?).map_err(|_| "event attempt out of range")?;
        let id: [u8; 16] = r.take(16)?.try_into().map_err(|_| "event task id")?;
        let at = first_at.wrapping_add(unzigzag(r.varint()?));
        let queue = string(r.varint()?)?;
        let kind = string(r.varint()?)?;
        out.push(Transition {
            task_id: TaskId::from_bytes(id),
            queue,
            kind,
            change,
            from,
            to,
            attempt,
            at,
            due: None,
            payload_edited: code & PAYLOAD_EDITED != 0,
        });
    }
    if r.at != record.len() {
        return Err("trailing bytes after the events".into());
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end =
            self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or("event record cut short")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("event varint too long".into())
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(
        n: u64,
        queue: &str,
        kind: &str,
        change: Change,
        from: Option<TaskState>,
        to: Option<TaskState>,
        at: Millis,
    ) -> Transition {
        Transition {
            task_id: TaskId::new(1_700_000_000_000 + n as i64, n),
            queue: queue.into(),
            kind: kind.into(),
            change,
            from,
            to,
            attempt: n as u32 * 1000,
            at,
            due: None,
            payload_edited: false,
        }
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        use TaskState::*;
        let written = vec![
            transition(1, "payments", "charge", Change::Enqueued, None, Some(Ready), 1_700_000_000_500),
            transition(
                2,
                "payments",
                "refund",
                Change::Leased,
                Some(Ready),
                Some(Running),
                1_700_000_000_400,
            ),
            transition(3, "emails", "charge", Change::Purged, Some(Dead), None, 1_700_000_999_999),
            Transition {
                payload_edited: true,
                ..transition(
                    4,
                    "emails",
                    "charge",
                    Change::Retried,
                    Some(Dead),
                    Some(Ready),
                    1_700_000_999_999,
                )
            },
            transition(
                u64::from(u32::MAX) / 1000,
                "é",
                "",
                Change::Expired,
                Some(Running),
                Some(Scheduled),
                i64::MAX,
            ),
        ];
        let mut batch = EventBatch::default();
        for t in &written {
            batch.push(t);
        }
        assert_eq!((batch.len(), batch.first_at()), (5, 1_700_000_000_500));
        let record = batch.take();
        assert!(batch.is_empty(), "take empties the batch");
        assert_eq!(decode(&record, 1_700_000_000_500).expect("decodes"), written);
        // Five events of two queues and three kinds: the strings are written once.
        assert!(record.len() < 5 * 30 + 40, "{} bytes", record.len());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let mut batch = EventBatch::default();
        batch.push(&transition(
            1,
            "q",
            "k",
            Change::Acked,
            Some(TaskState::Running),
            Some(TaskState::Succeeded),
            5,
        ));
        let record = batch.take();
        for cut in 0..record.len() {
            assert!(decode(&record[..cut], 5).is_err(), "cut at {cut}");
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(decode(&longer, 5).is_err());
        let mut other = record;
        other[0] = 9;
        assert!(decode(&other, 5).is_err());
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
