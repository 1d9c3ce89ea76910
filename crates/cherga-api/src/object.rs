//! Objects on the wire. serde reads a struct from a JSON object and also from
//! an array of its fields in order; the API promises objects only, so nested
//! request structs are read through [`MapOnly`], which refuses the array form.
//! (The top-level body is checked by the server before parsing.)

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use std::marker::PhantomData;

/// A deserializer that reads structs from maps only.
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

struct ObjectSeed<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ObjectSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(MapOnly(d))
    }
}

/// For `Vec<T>` fields whose items are objects.
pub(crate) fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct Items<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(item) = seq.next_element_seed(ObjectSeed(PhantomData))? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Items(PhantomData))
}

/// For `Option<T>` fields holding an object or `null`.
pub(crate) fn optional<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    struct Maybe<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Maybe<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Option<T>, D2::Error> {
            T::deserialize(MapOnly(d)).map(Some)
        }
    }
    d.deserialize_option(Maybe(PhantomData))
}

#[cfg(test)]
mod tests {
    use crate::{BatchAckRequest, EnqueueBatchRequest, QueueSettingsBody};

    #[test]
    fn nested_structs_are_read_from_objects_only() {
        assert!(serde_json::from_str::<EnqueueBatchRequest>(r#"{"tasks": [{"kind": "k"}]}"#).is_ok());
        assert!(serde_json::from_str::<EnqueueBatchRequest>(r#"{"tasks": [["k"]]}"#).is_err());
        assert!(serde_json::from_str::<BatchAckRequest>(r#"{"acks": [{"id": "i", "lease": "l"}]}"#).is_ok());
        assert!(serde_json::from_str::<BatchAckRequest>(r#"{"acks": [["i", "l"]]}"#).is_err());
        let body: QueueSettingsBody = serde_json::from_str(r#"{"backoff": {"jitter": 0}}"#).unwrap();
        assert_eq!(body.backoff.unwrap().jitter, Some(0.0));
        assert!(serde_json::from_str::<QueueSettingsBody>(r#"{"backoff": null}"#).unwrap().backoff.is_none());
        assert!(serde_json::from_str::<QueueSettingsBody>(r#"{"backoff": [null, null]}"#).is_err());
        // The payload inside an item is still any JSON, read raw.
        let batch: EnqueueBatchRequest =
            serde_json::from_str(r#"{"tasks": [{"kind": "k", "payload": [1, {"a": 2}]}]}"#).unwrap();
        assert_eq!(batch.tasks[0].payload.as_ref().unwrap().get(), r#"[1, {"a": 2}]"#);
    }
}
