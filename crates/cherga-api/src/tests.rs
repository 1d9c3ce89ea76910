use super::*;

const LIMITS: Limits = Limits { max_payload_bytes: 64 };

fn request(json: &str) -> EnqueueRequest {
    serde_json::from_str(json).expect("valid request")
}

#[test]
fn minify_keeps_strings_and_order() {
    assert_eq!(minify(r#"{ "b" : [1, 2 ],"a": "x  y\" }" }"#), r#"{"b":[1,2],"a":"x  y\" }"}"#);
    assert_eq!(minify("\n 12.50e3 "), "12.50e3");
    assert_eq!(minify("{ \"ü\" :\t\"日本 語\\\\\" ,\r\n\"é\":[ ] }"), "{\"ü\":\"日本 語\\\\\",\"é\":[]}");
}

#[test]
fn minify_undoes_pretty_printing() {
    let value = serde_json::json!({
        "order": {"id": 7, "lines": [{"sku": "a b", "qty": 2}, {"sku": "ц\"\\", "qty": -1.5e3}]},
        "note": "  spaced\ttab\nnewline  ",
        "empty": {}, "none": null, "flags": [true, false]
    });
    let pretty = serde_json::to_string_pretty(&value).unwrap();
    assert_eq!(minify(&pretty), serde_json::to_string(&value).unwrap());
    // Only valid JSON reaches it, but a cut-off string must not panic.
    assert_eq!(minify("[ \"a b\\"), "[\"a b\\");
    assert_eq!(minify("[ \"a b"), "[\"a b");
}

#[test]
fn enqueue_request_becomes_a_new_task() {
    let t =
        request(r#"{"kind":"charge","payload":{ "order": 7 },"priority":3,"group":"o-7","max_attempts":4}"#)
            .into_new_task(None, 1000, &LIMITS)
            .unwrap();
    assert_eq!(t.payload, r#"{"order":7}"#);
    assert_eq!((t.priority, t.group.as_deref(), t.max_attempts, t.run_at), (3, Some("o-7"), Some(4), None));
    let t = request(r#"{"kind":"k","delay_ms":500}"#).into_new_task(Some("key"), 1000, &LIMITS).unwrap();
    assert_eq!(
        (t.run_at, t.idempotency_key.as_deref(), t.payload.as_str()),
        (Some(1500), Some("key"), "null")
    );
    let t = request(r#"{"kind":"k","run_at":"2026-01-02T03:04:05.006Z"}"#)
        .into_new_task(None, 0, &LIMITS)
        .unwrap();
    assert_eq!(t.run_at, Some(1_767_323_045_006));
}

#[test]
fn enqueue_request_refusals_name_the_problem() {
    let cases = [
        (r#"{"kind":""}"#, None, "kind must be"),
        (r#"{"kind":"k","delay_ms":-1}"#, None, "delay_ms"),
        (r#"{"kind":"k","delay_ms":1,"run_at":5}"#, None, "not both"),
        (r#"{"kind":"k","idempotency_key":"a"}"#, Some("b"), "differs"),
        (r#"{"kind":"k","max_attempts":0}"#, None, "max_attempts"),
        (
            r#"{"kind":"k","payload":"0123456789012345678901234567890123456789012345678901234567890123"}"#,
            None,
            "limit is 64",
        ),
    ];
    for (json, header, needle) in cases {
        let err = request(json).into_new_task(header, 0, &LIMITS).unwrap_err();
        assert!(err.message.contains(needle), "{json}: {err}");
    }
}

#[test]
fn unknown_fields_and_wrong_types_are_refused() {
    assert!(serde_json::from_str::<EnqueueRequest>(r#"{"kind":"k","colour":1}"#).is_err());
    assert!(serde_json::from_str::<EnqueueRequest>(r#"{"kind":1}"#).is_err());
    assert!(serde_json::from_str::<EnqueueRequest>(r#"{"kind":"k","run_at":"yesterday"}"#).is_err());
}

#[test]
fn retry_request_tells_a_null_payload_from_none() {
    let new_payload = |json: &str| {
        let request: RetryRequest = serde_json::from_str(json).expect("valid request");
        request.into_new_payload(Some("ops".into()), &LIMITS)
    };
    assert_eq!(new_payload("{}"), Ok(None), "no payload: a plain retry");
    let null = new_payload(r#"{"payload": null}"#).unwrap().expect("null is a payload");
    assert_eq!((null.payload.as_str(), null.by.as_deref()), ("null", Some("ops")));
    let pretty = new_payload("{\"payload\": { \"a\" : [1, 2] }}").unwrap().expect("a payload");
    assert_eq!(pretty.payload, r#"{"a":[1,2]}"#, "minified as an enqueue's");
    let large = format!(r#"{{"payload": "{}"}}"#, "x".repeat(63));
    let refused = new_payload(&large).unwrap_err();
    assert_eq!(refused.code, ErrorCode::PayloadTooLarge.as_str(), "{refused:?}");
    assert!(serde_json::from_str::<RetryRequest>(r#"{"payload": 1, "kind": "k"}"#).is_err());
}

#[test]
fn queue_settings_body_tells_null_from_absent() {
    let body: QueueSettingsBody = serde_json::from_str(r#"{"concurrency":null}"#).unwrap();
    assert_eq!(body.to_patch().concurrency, Some(None));
    let body: QueueSettingsBody =
        serde_json::from_str(r#"{"concurrency":4,"backoff":{"jitter":0}}"#).unwrap();
    assert_eq!(body.to_patch().concurrency, Some(Some(4)));
    assert_eq!(body.to_patch().backoff_jitter, Some(0.0));
    let body: QueueSettingsBody = serde_json::from_str("{}").unwrap();
    assert_eq!(body.to_patch().concurrency, None);
}

#[test]
fn timestamps_round_trip() {
    let t = Timestamp(1_767_323_045_006);
    assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05.006Z");
    assert_eq!(Timestamp::parse(&t.to_rfc3339()), Ok(t));
}

/// RFC 3339 (and the OpenAPI `date-time` format) has a leap second only as
/// 23:59:60 and no `.` without digits; the parser underneath takes both.
#[test]
fn timestamps_are_rfc_3339_to_the_letter() {
    for good in [
        "2026-01-02T03:04:05Z",
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.5Z",
        "2026-01-02T03:04:05.1+00:00",
    ] {
        assert!(Timestamp::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "2026-01-02T22:04:60Z",
        "2026-01-02T23:58:60.1Z",
        "2026-01-02T03:04:05.Z",
        "2026-01-02T03:04:05.+00:00",
    ] {
        assert!(Timestamp::parse(bad).is_err(), "{bad}");
    }
}
