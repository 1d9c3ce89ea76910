//! Timestamps on the wire: RFC 3339 UTC with milliseconds out; RFC 3339 UTC or
//! integer milliseconds since the Unix epoch in.

use cherga_core::Millis;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub Millis);

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z. Times on the
/// wire are refused beyond it, so every stored time can be written back.
pub const MAX_MILLIS: Millis = 253_402_300_800_000 - 1;

impl Timestamp {
    /// The time as RFC 3339 UTC with milliseconds. Times outside 1970..=9999 (which
    /// the API refuses on the way in) are written as the nearest end of that range
    /// rather than failing.
    pub fn to_rfc3339(self) -> String {
        let mut out = Vec::with_capacity(RFC3339_LEN);
        self.write_rfc3339(&mut out);
        String::from_utf8(out).expect("digits and ASCII punctuation")
    }

    /// Appends [`Timestamp::to_rfc3339`] to `out`: `2026-11-28T04:35:00.123Z`, the
    /// form `humantime::format_rfc3339_millis` writes (a test compares them), in a
    /// tenth of its time — every task in an answer carries three to five times.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rfc3339_bytes());
    }

    fn rfc3339_bytes(self) -> [u8; RFC3339_LEN] {
        let ms = self.0.clamp(0, MAX_MILLIS);
        let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
        let (year, month, day) = civil_from_days(days);
        let (secs, millis) = (ms_of_day / 1000, ms_of_day % 1000);
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: i64| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, secs / 3600);
        put(14, 2, secs / 60 % 60);
        put(17, 2, secs % 60);
        put(20, 3, millis);
        buf
    }

    /// # Errors
    /// When `text` is not an RFC 3339 UTC time.
    pub fn parse(text: &str) -> Result<Self, String> {
        // humantime takes a leap second at any minute and a `.` without digits;
        // RFC 3339 (and the OpenAPI document's `date-time`) does not.
        let b = text.as_bytes();
        if b.get(17..19) == Some(b"60") && b.get(11..16) != Some(b"23:59") {
            return Err(format!("{text:?}: a leap second is 23:59:60 (UTC), at no other minute"));
        }
        if b.get(19) == Some(&b'.') && !b.get(20).is_some_and(u8::is_ascii_digit) {
            return Err(format!("{text:?}: the fraction of a second needs a digit after the '.'"));
        }
        let at = humantime::parse_rfc3339(text)
            .map_err(|e| format!("{text:?} is not an RFC 3339 UTC time such as 2026-01-02T03:04:05Z: {e}"))?;
        let ms = at.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| "time before 1970".to_owned())?;
        Ok(Self(ms.as_millis() as Millis))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.rfc3339_bytes()).expect("digits and ASCII punctuation"))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 UTC time or milliseconds since the Unix epoch")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                match i64::try_from(v) {
                    Ok(ms) if ms <= MAX_MILLIS => Ok(Timestamp(ms)),
                    _ => Err(E::custom("time after the year 9999")),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                // JSON has one number type: 1700000000000.0 is the same millisecond.
                if v.is_finite() && v.fract() == 0.0 && (0.0..=MAX_MILLIS as f64).contains(&v) {
                    Ok(Timestamp(v as Millis))
                } else {
                    Err(E::custom("a time must be whole milliseconds between 1970 and the year 9999"))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                match v {
                    ..0 => Err(E::custom("time before 1970")),
                    0..=MAX_MILLIS => Ok(Timestamp(v)),
                    _ => Err(E::custom("time after the year 9999")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The length of [`Timestamp::to_rfc3339`].
pub const RFC3339_LEN: usize = 24;

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, <https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The RFC 3339 times [`Timestamp::parse`] accepts, as a regular expression for
/// the OpenAPI document: UTC only (`Z` or `+00:00`), `T` between date and time,
/// years 1970 to 9999, real dates (February 29 in leap years only), a leap
/// second only as 23:59:60, any number of fraction digits (at least one after a
/// `.`). A test holds it to the parser.
pub const RFC3339_PATTERN: &str = concat!(
    "^(",
    // Any year: days 1-28 of every month, 29-30 of all but February, 31 of the long months.
    "(19[7-9][0-9]|[2-9][0-9]{3})-",
    "((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)",
    // February 29 of a leap year: divisible by 4, and by 400 at a century.
    "|(19([79][26]|8[048])|[2-9][0-9]([02468][48]|[2468]0|[13579][26])|([2468][048]|[3579][26])00)-02-29",
    ")T(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]|23:59:60)(\\.[0-9]+)?(Z|\\+00:00)$",
);

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                    .pattern(Some(RFC3339_PATTERN))
                    .description(Some(
                        "An RFC 3339 time in UTC (`Z`, or `+00:00` in requests), from 1970 to 9999, such as \
                         2026-11-28T04:35:00.123Z; answers always write it this way, with milliseconds",
                    )),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .maximum(Some(MAX_MILLIS))
                    .description(Some(
                        "Milliseconds since the Unix epoch, up to the end of 9999 (requests only)",
                    )),
            )
            .description(Some(
                "A time between 1970 and the end of 9999, in UTC: RFC 3339 (answers always use this \
                 form), or milliseconds since the Unix epoch (accepted in requests)",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}
