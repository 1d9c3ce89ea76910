//! Timestamps on the wire: RFC 3339 UTC with milliseconds out; RFC 3339 UTC or
//! integer milliseconds since the Unix epoch in.

use cherga_core::Millis;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        let at = UNIX_EPOCH + Duration::from_millis(self.0.clamp(0, MAX_MILLIS) as u64);
        humantime::format_rfc3339_millis(at).to_string()
    }

    /// # Errors
    /// When `text` is not an RFC 3339 UTC time.
    pub fn parse(text: &str) -> Result<Self, String> {
        let at = humantime::parse_rfc3339(text)
            .map_err(|e| format!("{text:?} is not an RFC 3339 UTC time such as 2026-01-02T03:04:05Z: {e}"))?;
        let ms = at.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| "time before 1970".to_owned())?;
        Ok(Self(ms.as_millis() as Millis))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
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

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .maximum(Some(MAX_MILLIS)),
            )
            .description(Some(
                "RFC 3339 UTC time (answers always use this form), or milliseconds since the Unix \
                 epoch (accepted in requests); between 1970 and the end of 9999",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}
