//! Timestamps on the wire: RFC 3339 UTC with milliseconds out; RFC 3339 UTC or
//! integer milliseconds since the Unix epoch in.

use cherga_core::Millis;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub Millis);

impl Timestamp {
    pub fn to_rfc3339(self) -> String {
        let at = UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64);
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
                i64::try_from(v).map(Timestamp).map_err(|_| E::custom("time out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                if v < 0 { Err(E::custom("time before 1970")) } else { Ok(Timestamp(v)) }
            }
        }
        d.deserialize_any(V)
    }
}
