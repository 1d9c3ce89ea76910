//! Integers on the wire. JSON has one number type, so `2.0` is the same integer
//! as `2` (RFC 8259; JSON Schema agrees); some encoders write whole numbers that
//! way. Integer fields of requests therefore take either spelling, through
//! `#[serde(deserialize_with = ...)]` with the functions here, and refuse
//! fractions and values out of the field's range.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Largest float magnitude that still spells one integer exactly.
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = i128;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() <= EXACT {
            Ok(v as i128)
        } else {
            Err(E::invalid_type(de::Unexpected::Float(v), &self))
        }
    }
}

/// An integer of type `T`, written as an integer or a whole float.
pub(crate) struct Whole<T>(pub T);

impl<'de, T: TryFrom<i128>> Deserialize<'de> for Whole<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = d.deserialize_any(WholeVisitor)?;
        T::try_from(value).map(Whole).map_err(|_| de::Error::custom(format!("integer {value} out of range")))
    }
}

/// For fields with a default: `null` is the default, as if the field were left out.
pub(crate) fn or_default<'de, D: Deserializer<'de>, T: TryFrom<i128> + Default>(d: D) -> Result<T, D::Error> {
    optional(d).map(Option::unwrap_or_default)
}

/// For `Option` fields: `null` is `None`.
pub(crate) fn optional<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<Whole<T>>::deserialize(d).map(|o| o.map(|w| w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T: TryFrom<i128>>(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str::<Whole<T>>(json).map(|w| w.0)
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        assert_eq!(read::<i64>("2").unwrap(), 2);
        assert_eq!(read::<i64>("2.0").unwrap(), 2);
        assert_eq!(read::<i64>("-7e2").unwrap(), -700);
        assert!(read::<i64>("2.5").is_err());
        assert!(read::<u32>("-1").is_err());
        assert!(read::<u32>("4294967296").is_err());
        assert_eq!(read::<u32>("4294967295").unwrap(), u32::MAX);
        assert!(read::<i64>("1e300").is_err());
        assert!(read::<i64>("\"2\"").is_err());
        assert_eq!(read::<u64>("18446744073709551615").unwrap(), u64::MAX);
    }
}
