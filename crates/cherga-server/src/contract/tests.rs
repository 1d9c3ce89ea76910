use super::{Contract, compile, violations};
use cherga_core::Millis;
use cherga_store::SchemaVersion;
use serde_json::json;

fn version(version: u64, kind: Option<&str>, schema: Option<serde_json::Value>) -> SchemaVersion {
    SchemaVersion {
        queue: "q".to_owned(),
        version,
        kind: kind.map(str::to_owned),
        schema: schema.map(|s| s.to_string()),
        subject: None,
        created_at: 1_700_000_000_000 as Millis,
    }
}

/// `(pointer, keyword)` of each violation, sorted (the validator's order is its own).
fn check(contract: &Contract, kind: &str, payload: serde_json::Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = match contract.check(kind, &payload.to_string()) {
        Ok(()) => Vec::new(),
        Err(violations) => {
            assert!(!violations.is_empty(), "an error lists at least one violation");
            violations.into_iter().map(|v| (v.pointer, v.keyword)).collect()
        }
    };
    found.sort();
    found
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(p, k)| ((*p).to_owned(), (*k).to_owned())).collect()
}

/// A typical object schema: nested properties, arrays, enums, bounds.
fn order_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["id", "amount", "currency"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "amount": {"type": "integer", "minimum": 1},
            "currency": {"enum": ["EUR", "UAH", "USD"]},
            "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
            "customer": {"type": "object", "properties": {"email": {"type": "string", "pattern": "@"}}}
        },
        "additionalProperties": false
    })
}

#[test]
fn every_violation_names_its_pointer_and_keyword() {
    let contract = Contract::compile(&[version(1, None, Some(order_schema()))]).unwrap();
    assert_eq!(check(&contract, "any", json!({"id": "o-1", "amount": 5, "currency": "EUR"})), []);
    assert_eq!(
        check(
            &contract,
            "any",
            json!({
                "id": "",
                "amount": 0,
                "currency": "GBP",
                "lines": [{"sku": "a"}, {"qty": 1}],
                "customer": {"email": "nobody"},
                "extra": true
            })
        ),
        pairs(&[
            ("", "additionalProperties"),
            ("/amount", "minimum"),
            ("/currency", "enum"),
            ("/customer/email", "pattern"),
            ("/id", "minLength"),
            ("/lines/1", "required"),
        ])
    );
    assert_eq!(
        check(&contract, "any", json!({"amount": "5"})),
        pairs(&[("", "required"), ("", "required"), ("/amount", "type")]),
        "one violation per missing property"
    );
    assert_eq!(check(&contract, "any", json!(null)), pairs(&[("", "type")]), "a missing payload is null");
}

#[test]
fn pointers_escape_slashes_and_tildes() {
    let schema = json!({"properties": {"a/b": {"type": "string"}, "c~d": {"type": "string"}}});
    let contract = Contract::compile(&[version(1, None, Some(schema))]).unwrap();
    assert_eq!(
        check(&contract, "k", json!({"a/b": 1, "c~d": 2})),
        pairs(&[("/a~1b", "type"), ("/c~0d", "type")])
    );
}

#[test]
fn a_kinds_schema_applies_to_its_kind_and_the_queue_wide_one_to_the_rest() {
    let history = [
        version(1, None, Some(json!({"type": "object"}))),
        version(2, Some("email"), Some(json!({"type": "object", "required": ["to"]}))),
    ];
    let contract = Contract::compile(&history).unwrap();
    assert_eq!(contract.version(), 2);
    assert_eq!(check(&contract, "email", json!({})), pairs(&[("", "required")]));
    assert_eq!(check(&contract, "email", json!({"to": "a@b"})), []);
    assert_eq!(check(&contract, "sms", json!({})), [], "the queue-wide schema only asks for an object");
    assert_eq!(check(&contract, "sms", json!([1])), pairs(&[("", "type")]));
}

#[test]
fn removed_schemas_no_longer_apply() {
    let history = [
        version(1, None, Some(json!({"type": "object"}))),
        version(2, Some("email"), Some(json!({"required": ["to"]}))),
        version(3, None, None),
    ];
    let contract = Contract::compile(&history).unwrap();
    assert_eq!(contract.version(), 3);
    assert_eq!(check(&contract, "sms", json!(42)), [], "no queue-wide schema any more");
    assert_eq!(check(&contract, "email", json!({})), pairs(&[("", "required")]), "the kind's stays");
    let all_removed = Contract::compile(&[history[1].clone(), version(4, Some("email"), None)]).unwrap();
    assert_eq!(check(&all_removed, "email", json!({})), []);
}

#[test]
fn invalid_schemas_are_refused_with_the_reason() {
    for (schema, says) in [
        (json!({"type": "nothing"}), "nothing"),
        (json!({"minimum": "five"}), "five"),
        (json!({"required": "id"}), "id"),
        (json!(42), "42"),
        (json!({"pattern": "(unclosed"}), "unclosed"),
    ] {
        let error = compile(&schema).expect_err(&schema.to_string());
        assert!(error.contains(says), "{schema}: {error}");
    }
    let remote = json!({"$ref": "https://example.com/schema.json"});
    assert!(compile(&remote).is_err(), "no document is fetched over the network");
    assert!(compile(&json!(true)).is_ok());
    assert!(compile(&json!({"$defs": {"id": {"type": "string"}}, "$ref": "#/$defs/id"})).is_ok());
}

#[test]
fn violations_are_bounded() {
    let validator = compile(&json!({"items": {"type": "string"}})).unwrap();
    let found = violations(&validator, &json!(vec![1; 100]));
    assert_eq!(found.len(), super::MAX_VIOLATIONS);
    assert_eq!(found[0].pointer, "/0");
    assert_eq!(found[0].schema_pointer, "/items/type");
}
