//! Tasks and the transitions between their states.
//!
//! Every transition is a pure function of the task, its arguments and `now`. A
//! transition either changes the task and says so, or refuses with a [`Refusal`] and
//! leaves the task exactly as it was.

use crate::Millis;
use crate::history::{Attempt, AttemptOutcome, AttemptRef, History, PayloadEdit};
use crate::queue::QueueSettings;
use std::fmt;

/// A task id: a UUIDv7 whose time is the enqueue time and whose last 62 bits carry
/// the store's sequence number, so ids sort in enqueue order and a store can find a
/// row by id without a second index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(uuid::Uuid);

const SEQ_BITS: u32 = 62;
const SEQ_MASK: u128 = (1 << SEQ_BITS) - 1;

impl TaskId {
    /// Builds the id of the task with sequence number `seq`, enqueued at `created_at`.
    /// The 12 bits UUIDv7 leaves to the implementation (`rand_a`) stay zero: they
    /// sit above the sequence number, and anything else there would make ids of one
    /// millisecond sort out of enqueue order.
    pub fn new(created_at: Millis, seq: u64) -> Self {
        let ts = (created_at.max(0) as u128) & ((1 << 48) - 1);
        let value = (ts << 80) | (0x7 << 76) | (0b10 << 62) | (u128::from(seq) & SEQ_MASK);
        Self(uuid::Uuid::from_u128(value))
    }

    /// When the task was enqueued (the id's UUIDv7 time).
    pub fn created_at(&self) -> Millis {
        (self.0.as_u128() >> 80) as Millis
    }

    /// The store sequence number carried by this id.
    pub fn seq(&self) -> u64 {
        (self.0.as_u128() & SEQ_MASK) as u64
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// Parses the hyphenated text form. Returns `None` for anything that is not a
    /// UUIDv7 made by [`TaskId::new`].
    pub fn parse(text: &str) -> Option<Self> {
        // Only the hyphenated form (the uuid crate also takes simple, braced and
        // URN forms), so that one id has one spelling.
        if text.len() != 36 {
            return None;
        }
        let uuid = uuid::Uuid::try_parse(text).ok()?;
        let value = uuid.as_u128();
        let is_ours = (value >> 76) & 0xf == 0x7 && (value >> 62) & 0b11 == 0b10;
        is_ours.then_some(Self(uuid))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// The state of a task. Tasks move `scheduled → ready → running → succeeded | dead`,
/// and `scheduled | ready → cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    /// Waiting for `run_at` (a delayed task, or a retry in backoff). The timer moves
    /// it to `ready` when `run_at` passes. A crash leaves it scheduled; the timer
    /// promotes it after restart.
    Scheduled,
    /// May be leased now. Leasing moves it to `running`.
    Ready,
    /// Leased to a worker until the lease expires. The worker moves it on with ack
    /// or nack; the timer moves it back to `scheduled` (or `dead`) when the lease
    /// expires. A crash leaves it running and the lease stays valid until it expires.
    Running,
    /// Acknowledged, with its result. Final; purged after the queue's retention.
    Succeeded,
    /// Out of attempts, or nacked as dead. Final until retried by hand.
    Dead,
    /// Cancelled before it ran. Final.
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Scheduled,
        TaskState::Ready,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Dead,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Ready => "ready",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Finished tasks are never leased again (unless a dead one is retried by hand).
    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled)
    }

    /// A small stable number for storage.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fencing token of one delivery. New on every lease; only the token of the
/// current lease may ack, nack or extend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A token for delivery number `attempt`, made unguessable by `random`.
    pub fn new(attempt: u32, random: u64) -> Self {
        // Not `format!`, which was a twentieth of the writer's work per lease.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut token = String::with_capacity(27);
        token.push_str(itoa::Buffer::new().format(attempt));
        token.push('.');
        token.extend((0..16).rev().map(|i| char::from(HEX[(random >> (i * 4)) as usize & 0xf])));
        Self(token)
    }

    pub fn from_string(token: String) -> Self {
        Self(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The lease a running task is under. It holds until `expires_at`, exclusive: an
/// ack, nack or extend at or after that time is refused, even while the task is
/// still `running` because no timer has expired it yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub token: LeaseToken,
    pub expires_at: Millis,
    pub worker: Option<String>,
    /// When the lease was made: the start of its attempt.
    pub leased_at: Millis,
}

/// A task to enqueue, as the producer describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub kind: String,
    /// The payload as JSON text; the core does not look inside.
    pub payload: String,
    pub priority: i32,
    /// When it may first run; `None` means now.
    pub run_at: Option<Millis>,
    pub idempotency_key: Option<String>,
    pub group: Option<String>,
    /// `None` takes the queue's setting.
    pub max_attempts: Option<u32>,
}

/// A payload that replaces a dead task's as it is retried, and who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPayload {
    /// JSON text; the core does not look inside.
    pub payload: String,
    /// The subject of the token of the request; `None` with auth off or a
    /// token without a subject.
    pub by: Option<String>,
}

/// A stable 64-bit fingerprint (FNV-1a) of what a producer asked for, used to tell a
/// retried enqueue from a different request under the same idempotency key. `run_at`
/// is left out because a retry with `delay_ms` computes a new one.
pub fn fingerprint(task: &NewTask) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator that cannot be confused with field content lengths.
        hash ^= bytes.len() as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    feed(task.kind.as_bytes());
    feed(task.payload.as_bytes());
    feed(&task.priority.to_le_bytes());
    feed(task.group.as_deref().unwrap_or("\u{0}none").as_bytes());
    feed(&task.max_attempts.map_or(-1, i64::from).to_le_bytes());
    hash
}

/// What an enqueue under an idempotency key that a task already holds (within the
/// key's window) comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyResolution {
    /// The same request again: answered with the task that holds the key, as it is now.
    Replay,
    /// Another request under the same key: refused, naming the task that holds it.
    Reused,
}

/// Resolves an enqueue of `new` under an idempotency key taken by a request whose
/// [`fingerprint`] was `held_print`. Every store answers a held key through this
/// function, so that they agree on what counts as the same request.
pub fn resolve_key(held_print: u64, new: &NewTask) -> KeyResolution {
    if held_print == fingerprint(new) { KeyResolution::Replay } else { KeyResolution::Reused }
}

/// A task as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub priority: i32,
    pub run_at: Millis,
    pub idempotency_key: Option<String>,
    pub group: Option<String>,
    pub max_attempts: u32,
    /// How many times the task has been leased. Never decreases.
    pub attempts: u32,
    pub state: TaskState,
    /// JSON text given with the ack.
    pub result: Option<String>,
    pub last_error: Option<String>,
    /// The current lease while running. After an ack or a nack the token of the
    /// lease that ended it is kept, so the same ack or nack sent again is answered
    /// as it was the first time; an expiry clears it.
    pub lease: Option<Lease>,
    /// The finished attempts, bounded; the running one is the lease
    /// ([`Task::attempt_history`] shows both).
    pub history: History,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

/// The `last_error` of an expired lease, and the error of its attempt.
pub const EXPIRED_ERROR: &str = "lease expired";

/// Why a transition was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token is not that of the task's current lease, or that lease has
    /// reached its `expires_at`.
    #[error("the lease token is not the task's current lease; it expired or another worker holds the task")]
    LeaseLost,
    /// The task is not in a state this operation applies to.
    #[error("task is {state}; {operation} needs it to be {needed}")]
    InvalidState { state: TaskState, operation: &'static str, needed: &'static str },
}

/// What an ack did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The task moved to its new state now.
    Applied,
    /// The same request was already applied; nothing changed.
    Replayed,
}

impl Task {
    /// A new task as enqueued at `now` with sequence number `seq`.
    pub fn create(queue: &str, new: NewTask, settings: &QueueSettings, seq: u64, now: Millis) -> Task {
        let run_at = new.run_at.unwrap_or(now);
        Task {
            id: TaskId::new(now, seq),
            queue: queue.to_owned(),
            kind: new.kind,
            payload: new.payload,
            priority: new.priority,
            run_at,
            idempotency_key: new.idempotency_key,
            group: new.group,
            max_attempts: new.max_attempts.unwrap_or(settings.max_attempts),
            attempts: 0,
            state: if run_at > now { TaskState::Scheduled } else { TaskState::Ready },
            result: None,
            last_error: None,
            lease: None,
            history: History::default(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    /// Whether `token` names a lease that still holds at `now`. A lease ends at its
    /// `expires_at`, whether or not a timer has run [`Task::expire`] since: which
    /// side of the expiry a request falls on is decided by its `now` alone, so
    /// every store answers it alike however late its timers run.
    fn current_lease(&self, token: &LeaseToken, now: Millis) -> Result<(), Refusal> {
        match &self.lease {
            Some(lease)
                if self.state == TaskState::Running && lease.token == *token && now < lease.expires_at =>
            {
                Ok(())
            }
            _ => Err(Refusal::LeaseLost),
        }
    }

    /// `scheduled → ready` once `run_at` has passed. Returns whether it moved.
    pub fn promote(&mut self, now: Millis) -> bool {
        if self.state == TaskState::Scheduled && self.run_at <= now {
            self.state = TaskState::Ready;
            self.updated_at = now;
            true
        } else {
            false
        }
    }

    /// `ready → running` under a new lease.
    ///
    /// # Errors
    /// [`Refusal::InvalidState`] unless the task is ready.
    pub fn lease(
        &mut self,
        token_random: u64,
        lease_ms: i64,
        worker: Option<String>,
        now: Millis,
    ) -> Result<(), Refusal> {
        if self.state != TaskState::Ready {
            return Err(self.invalid("lease", "ready"));
        }
        self.attempts = self.attempts.saturating_add(1);
        self.state = TaskState::Running;
        self.lease = Some(Lease {
            token: LeaseToken::new(self.attempts, token_random),
            expires_at: now.saturating_add(lease_ms),
            worker,
            leased_at: now,
        });
        self.updated_at = now;
        Ok(())
    }

    /// `running → succeeded` with the worker's result. The same ack sent again is
    /// [`AckOutcome::Replayed`] and changes nothing, however late.
    ///
    /// # Errors
    /// [`Refusal::LeaseLost`] when `token` is not the current lease, or `now` is at
    /// or past its `expires_at`.
    pub fn ack(
        &mut self,
        token: &LeaseToken,
        result: Option<String>,
        now: Millis,
    ) -> Result<AckOutcome, Refusal> {
        if self.state == TaskState::Succeeded && self.lease.as_ref().is_some_and(|l| l.token == *token) {
            return Ok(AckOutcome::Replayed);
        }
        self.current_lease(token, now)?;
        self.end_attempt(AttemptOutcome::Succeeded, now, None);
        self.state = TaskState::Succeeded;
        self.result = result;
        self.finish(now);
        Ok(AckOutcome::Applied)
    }

    /// `running → scheduled` (with backoff, or after `retry_in_ms`) or `→ dead` when
    /// `dead` is asked for or the attempts are used up. The same nack sent again is
    /// [`AckOutcome::Replayed`], however late.
    ///
    /// # Errors
    /// [`Refusal::LeaseLost`] when `token` is not the current lease, or `now` is at
    /// or past its `expires_at`.
    #[allow(clippy::too_many_arguments)]
    pub fn nack(
        &mut self,
        token: &LeaseToken,
        error: Option<String>,
        retry_in_ms: Option<i64>,
        dead: bool,
        settings: &QueueSettings,
        random: f64,
        now: Millis,
    ) -> Result<AckOutcome, Refusal> {
        // A kept token on a task that is neither running nor succeeded means this
        // lease ended with a nack (an expiry or a retry clears the token, a new
        // lease replaces it). The task may have moved on since — promoted to ready,
        // cancelled — and the replay still changes nothing.
        let ended_by_this_token = self.lease.as_ref().is_some_and(|l| l.token == *token);
        if ended_by_this_token && !matches!(self.state, TaskState::Running | TaskState::Succeeded) {
            return Ok(AckOutcome::Replayed);
        }
        self.current_lease(token, now)?;
        self.end_attempt(AttemptOutcome::Failed, now, error.clone());
        self.last_error = error;
        self.fail(dead, retry_in_ms, settings, random, now);
        Ok(AckOutcome::Applied)
    }

    /// Moves a running task on after a failed attempt.
    fn fail(
        &mut self,
        dead: bool,
        retry_in_ms: Option<i64>,
        settings: &QueueSettings,
        random: f64,
        now: Millis,
    ) {
        if dead || self.attempts >= self.max_attempts {
            self.state = TaskState::Dead;
            self.finish(now);
        } else {
            let delay = retry_in_ms.unwrap_or_else(|| settings.backoff.delay(self.attempts, random));
            self.state = TaskState::Scheduled;
            self.run_at = now.saturating_add(delay.max(0));
            self.updated_at = now;
        }
    }

    /// Sends a running task whose lease has expired back to `scheduled` with backoff,
    /// or to `dead` when its attempts are used up. Returns whether it moved.
    pub fn expire(&mut self, settings: &QueueSettings, random: f64, now: Millis) -> bool {
        let expires_at = match &self.lease {
            Some(lease) if self.state == TaskState::Running && lease.expires_at <= now => lease.expires_at,
            _ => return false,
        };
        // The attempt ended when its lease ran out, not when a timer noticed.
        self.end_attempt(AttemptOutcome::Expired, expires_at, Some(EXPIRED_ERROR.to_owned()));
        self.lease = None;
        self.last_error = Some(EXPIRED_ERROR.to_owned());
        self.fail(false, None, settings, random, now);
        true
    }

    /// Moves the lease's expiry to `now + lease_ms` (a heartbeat).
    ///
    /// # Errors
    /// [`Refusal::LeaseLost`] when `token` is not the current lease, or `now` is at
    /// or past its `expires_at`: an expired lease is not brought back.
    pub fn extend(&mut self, token: &LeaseToken, lease_ms: i64, now: Millis) -> Result<Millis, Refusal> {
        self.current_lease(token, now)?;
        let lease = self.lease.as_mut().expect("checked by current_lease");
        lease.expires_at = now.saturating_add(lease_ms);
        self.updated_at = now;
        Ok(lease.expires_at)
    }

    /// `scheduled | ready → cancelled`. Cancelling a cancelled task is
    /// [`AckOutcome::Replayed`].
    ///
    /// # Errors
    /// [`Refusal::InvalidState`] when the task is running or finished otherwise.
    pub fn cancel(&mut self, now: Millis) -> Result<AckOutcome, Refusal> {
        match self.state {
            TaskState::Cancelled => Ok(AckOutcome::Replayed),
            TaskState::Scheduled | TaskState::Ready => {
                self.state = TaskState::Cancelled;
                self.finish(now);
                Ok(AckOutcome::Applied)
            }
            _ => Err(self.invalid("cancel", "scheduled or ready")),
        }
    }

    /// `dead → ready`, with `extra_attempts` more attempts (attempts never go back),
    /// and with `new_payload` in place of the payload when given: the entry of
    /// the attempt that ended dead records the edit (who, when).
    ///
    /// # Errors
    /// [`Refusal::InvalidState`] unless the task is dead.
    pub fn retry(
        &mut self,
        extra_attempts: u32,
        new_payload: Option<NewPayload>,
        now: Millis,
    ) -> Result<(), Refusal> {
        if self.state != TaskState::Dead {
            return Err(self.invalid("retry", "dead"));
        }
        if let Some(NewPayload { payload, by }) = new_payload {
            self.payload = payload;
            let edit = PayloadEdit { at: now, by };
            if !self.history.mark_edited(self.attempts, edit.clone()) {
                // A task stored before histories were kept has no entry of the
                // attempt that ended dead: one is made of what the task knows
                // (when it started is not known; it is put where it ended), so
                // that the edit is recorded all the same.
                let ended = self.finished_at.unwrap_or(self.updated_at);
                let expired = self.last_error.as_deref() == Some(EXPIRED_ERROR);
                self.history.push(Attempt {
                    attempt: self.attempts,
                    worker: None,
                    started_at: ended,
                    finished_at: ended,
                    outcome: if expired { AttemptOutcome::Expired } else { AttemptOutcome::Failed },
                    error: self.last_error.clone(),
                    payload_edit: Some(Box::new(edit)),
                });
            }
        }
        self.state = TaskState::Ready;
        self.max_attempts = self.attempts.saturating_add(extra_attempts.max(1));
        self.run_at = now;
        self.lease = None;
        self.finished_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// The attempt history as the API shows it: the finished attempts, then,
    /// while the task runs, the attempt of its lease. At most
    /// [`History::MAX_ENTRIES`]: with a running attempt, a full history leaves
    /// out its oldest entry but the first, as ending the attempt will.
    pub fn attempt_history(&self) -> impl Iterator<Item = AttemptRef<'_>> {
        let running =
            self.lease.as_ref().filter(|_| self.state == TaskState::Running).map(|lease| AttemptRef {
                attempt: self.attempts,
                worker: lease.worker.as_deref(),
                started_at: lease.leased_at,
                finished_at: None,
                outcome: AttemptOutcome::Running,
                error: None,
                payload_edit: None,
            });
        let entries = self.history.entries();
        let skip = usize::from(running.is_some() && entries.len() >= History::MAX_ENTRIES);
        entries.iter().take(1).chain(entries.iter().skip(1 + skip)).map(Attempt::to_ref).chain(running)
    }

    /// Adds the attempt of the current lease, which the task holds, to the
    /// history as ended at `at`.
    fn end_attempt(&mut self, outcome: AttemptOutcome, at: Millis, error: Option<String>) {
        let Some(lease) = &self.lease else { return };
        self.history.push(Attempt {
            attempt: self.attempts,
            worker: lease.worker.clone(),
            started_at: lease.leased_at,
            finished_at: at,
            outcome,
            error,
            payload_edit: None,
        });
    }

    fn finish(&mut self, now: Millis) {
        self.finished_at = Some(now);
        self.updated_at = now;
    }

    fn invalid(&self, operation: &'static str, needed: &'static str) -> Refusal {
        Refusal::InvalidState { state: self.state, operation, needed }
    }
}

#[cfg(test)]
mod tests;
