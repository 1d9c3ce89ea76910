//! Payload schemas end to end: `PUT`/`GET`/`DELETE /v1/queues/{queue}/schema`
//! and every enqueue checked against the queue's current schema.

use super::harness::Server;
use serde_json::{Value, json};

/// A typical order schema: bounds, an enum, a pattern, nested objects and arrays.
pub fn order_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "amount", "currency"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "amount": {"type": "integer", "minimum": 1},
            "currency": {"enum": ["EUR", "UAH", "USD"]},
            "customer": {"type": "object", "properties": {"email": {"type": "string", "pattern": "@"}}},
            "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
        }
    })
}

/// `(pointer, keyword)` of each violation in an error, sorted.
fn violations(error: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = error["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("violations in {error}"))
        .iter()
        .map(|v| (v["pointer"].as_str().unwrap().to_owned(), v["keyword"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    found
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(p, k)| ((*p).to_owned(), (*k).to_owned())).collect()
}

async fn total(server: &Server, queue: &str) -> u64 {
    let (status, tasks) = server.get(&format!("/v1/queues/{queue}/tasks?limit=1000")).await;
    assert_eq!(status, 200, "{tasks}");
    tasks["tasks"].as_array().expect("tasks").len() as u64
}

pub async fn enqueues_are_checked_against_the_current_schema(server: Server) {
    // Stored before any schema: never checked again.
    let (status, early) = server.post("/v1/queues/orders/tasks", json!({"kind": "pay", "payload": 7})).await;
    assert_eq!(status, 201, "{early}");
    let (status, none) = server.get("/v1/queues/orders/schema").await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none, json!({"queue": "orders", "version": 0, "current": [], "history": []}));

    // Not a schema: refused with the reason, nothing recorded.
    for bad in [json!({"type": "nothing"}), json!({"minimum": "five"}), json!(17)] {
        let (status, body) = server.put("/v1/queues/orders/schema", json!({"schema": bad})).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "payload_invalid", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("not a valid JSON Schema"), "{body}");
    }
    let (status, body) = server
        .put("/v1/queues/orders/schema", json!({"schema": {"$ref": "https://example.com/s.json"}}))
        .await;
    assert_eq!(status, 422, "a remote reference is not fetched: {body}");
    assert_eq!(server.get("/v1/queues/orders/schema").await.1["version"], 0, "nothing recorded");

    let (status, set) = server.put("/v1/queues/orders/schema", json!({"schema": order_schema()})).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["version"], 1);
    assert_eq!(set["current"][0]["schema"], order_schema());
    assert_eq!(set["current"][0]["kind"], Value::Null);

    // A valid task is accepted; an invalid one refused with every pointer.
    let good = json!({"id": "o-1", "amount": 5, "currency": "EUR"});
    let (status, task) =
        server.post("/v1/queues/orders/tasks", json!({"kind": "pay", "payload": good})).await;
    assert_eq!(status, 201, "{task}");
    let bad =
        json!({"id": "", "amount": 0, "currency": "GBP", "customer": {"email": "x"}, "lines": [{"qty": 1}]});
    let (status, body) = server.post("/v1/queues/orders/tasks", json!({"kind": "pay", "payload": bad})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "payload_invalid");
    assert_eq!(
        violations(&body["error"]),
        pairs(&[
            ("/amount", "minimum"),
            ("/currency", "enum"),
            ("/customer/email", "pattern"),
            ("/id", "minLength"),
            ("/lines/0", "required"),
        ])
    );
    let (status, body) = server.post("/v1/queues/orders/tasks", json!({"kind": "pay"})).await;
    assert_eq!(status, 422, "no payload is null, which is not an object: {body}");
    assert_eq!(violations(&body["error"]), pairs(&[("", "type")]));
    assert_eq!(total(&server, "orders").await, 2, "nothing stored on refusal");

    // A batch: each item on its own, refused items keep their place.
    let (status, batch) = server
        .post(
            "/v1/queues/orders/tasks/batch",
            json!({"tasks": [
                {"kind": "pay", "payload": {"id": "o-2", "amount": 1, "currency": "UAH"}},
                {"kind": "pay", "payload": {"id": "o-3", "amount": "1", "currency": "UAH"}},
                {"kind": "", "payload": {}},
                {"kind": "pay", "payload": {"id": "o-4", "amount": 2, "currency": "USD"}},
                {"kind": "pay", "payload": {"amount": 2}}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let results = batch["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 422, 400, 201, 422], "{batch}");
    assert_eq!(results[1]["error"]["code"], "payload_invalid");
    assert_eq!(violations(&results[1]["error"]), pairs(&[("/amount", "type")]));
    assert_eq!(violations(&results[4]["error"]), pairs(&[("", "required"), ("", "required")]));
    assert_eq!(total(&server, "orders").await, 4);

    // A kind's own schema applies to that kind; the queue-wide one to the rest.
    let (status, set) = server
        .put(
            "/v1/queues/orders/schema",
            json!({"kind": "refund", "schema": {"type": "object", "required": ["reason"]}}),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["version"], 2);
    assert_eq!(set["current"].as_array().unwrap().len(), 2, "{set}");
    let (status, _) =
        server.post("/v1/queues/orders/tasks", json!({"kind": "refund", "payload": {"reason": "x"}})).await;
    assert_eq!(status, 201, "the refund schema does not ask for an amount");
    let (status, body) =
        server.post("/v1/queues/orders/tasks", json!({"kind": "refund", "payload": good})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(violations(&body["error"]), pairs(&[("", "required")]));
    let (status, _) = server.post("/v1/queues/orders/tasks", json!({"kind": "pay", "payload": good})).await;
    assert_eq!(status, 201);

    // Removing the queue-wide schema is a version; the kind's stays.
    let (status, after) = server.delete("/v1/queues/orders/schema").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["version"], 3);
    let (status, _) = server.post("/v1/queues/orders/tasks", json!({"kind": "pay", "payload": 1})).await;
    assert_eq!(status, 201, "no queue-wide schema any more");
    let (status, _) = server.post("/v1/queues/orders/tasks", json!({"kind": "refund", "payload": 1})).await;
    assert_eq!(status, 422, "the kind's schema still applies");
    let (status, again) = server.delete("/v1/queues/orders/schema").await;
    assert_eq!((status, &again["version"]), (200, &json!(3)), "removing what is not there records nothing");

    let (status, shown) = server.get("/v1/queues/orders/schema").await;
    assert_eq!(status, 200, "{shown}");
    let history: Vec<(u64, Value, bool)> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["kind"].clone(), v["schema"].is_null()))
        .collect();
    assert_eq!(
        history,
        [(1, Value::Null, false), (2, json!("refund"), false), (3, Value::Null, true)],
        "{shown}"
    );
    assert!(shown["history"][0]["created_at"].is_string(), "{shown}");
    assert_eq!(shown["history"][0]["subject"], Value::Null, "no token, no subject");
    assert_eq!(shown["current"].as_array().unwrap().len(), 1);
    assert_eq!(shown["current"][0]["kind"], "refund");

    // The task stored before any schema is still there, as it was.
    let (status, got) = server.get(&format!("/v1/tasks/{}", early["id"].as_str().unwrap())).await;
    assert_eq!((status, &got["payload"]), (200, &json!(7)));
}
