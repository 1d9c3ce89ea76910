//! The limits and periods every store keeps alike, in one place so that the
//! embedded and PostgreSQL stores cannot drift apart.

use cherga_core::Millis;

/// Most timer transitions (promotions, expiries) and purged rows a store handles
/// in one tick; the rest wait for the next tick, so that no tick takes long.
pub const TICK_LIMIT: usize = 10_000;

/// Purges (finished tasks past retention, expired keys and tokens, old events)
/// run at most this often.
pub const PURGE_EVERY_MS: Millis = 1_000;

/// How long the event log keeps events unless told otherwise: a day.
pub const DEFAULT_EVENT_RETENTION_MS: Millis = 24 * 3_600_000;
