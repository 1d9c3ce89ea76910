//! The benchmark task: a JSON object of exactly [`PAYLOAD_BYTES`] bytes that
//! carries a unique sequence number and the time it was meant to be enqueued.
//!
//! **Invariant:** every payload is valid, minified JSON of exactly
//! [`PAYLOAD_BYTES`] bytes, and two payloads with different sequence numbers
//! differ (the filler is derived from the sequence number), so S4 really sends
//! two million distinct tasks.
//!
//! Consumers never deserialize the payload into a tree: [`parse`] scans for the
//! two numbers, which keeps the load generator's CPU out of the comparison.

use std::sync::OnceLock;
use std::time::Instant;

/// Size of every task payload.
pub const PAYLOAD_BYTES: usize = 200;

/// What a consumer learns from a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Unique per task within one run: `0..n_tasks`.
    pub seq: u64,
    /// When the task was meant to be enqueued, in nanoseconds since [`anchor`].
    pub at_ns: u64,
}

/// The process-wide origin of [`Stamp::at_ns`]. Producers and consumers live in
/// the same process, so one monotonic clock serves both ends.
pub fn anchor() -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    *ANCHOR.get_or_init(Instant::now)
}

/// Nanoseconds from [`anchor`] to `instant` (0 if `instant` is earlier).
pub fn ns_since_anchor(instant: Instant) -> u64 {
    instant.saturating_duration_since(anchor()).as_nanos() as u64
}

/// Writes the payload of task `seq`, meant to be enqueued at `at_ns`, into `out`
/// (cleared first).
pub fn make(seq: u64, at_ns: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    write!(out, "{{\"seq\":{seq},\"at\":{at_ns},\"v\":\"").expect("writing to a Vec cannot fail");
    let filler = PAYLOAD_BYTES.saturating_sub(out.len() + 2);
    // A cheap generator seeded by the sequence number: distinct, printable, and
    // not trivially compressible.
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for _ in 0..filler {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(b'a' + (state % 26) as u8);
    }
    out.extend_from_slice(b"\"}");
}

/// The stamp inside a payload made by [`make`], or `None` when the bytes are not
/// one of ours. Tolerates whitespace a broker might add after the colons.
pub fn parse(bytes: &[u8]) -> Option<Stamp> {
    Some(Stamp { seq: number_after(bytes, b"\"seq\":")?, at_ns: number_after(bytes, b"\"at\":")? })
}

fn number_after(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let start = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    let mut digits = bytes[start..].iter().skip_while(|b| b.is_ascii_whitespace()).peekable();
    digits.peek().filter(|b| b.is_ascii_digit())?;
    let mut value: u64 = 0;
    for b in digits.take_while(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}
