//! Unit tests of the protocol mapping, receipt handles, digests and SigV4 (with
//! vectors of AWS's published Signature Version 4 test suite).

use crate::attributes::{self, md5_of_attributes};
use crate::protocol::nest;
use crate::sigv4::{self, AccessKeys, canonical_request, parse_amz_date, parse_authorization, signature};
use crate::{actions, receipt};
use cherga_core::TaskId;
use serde_json::{Value, json};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const AMZ_DATE: &str = "20150830T123600Z";

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn sigv4_get_vanilla() {
    let canonical = canonical_request(
        "GET",
        "/",
        "",
        &headers(&[("host", "example.amazonaws.com"), ("x-amz-date", AMZ_DATE)]),
        &["host", "x-amz-date"],
        &sigv4::sha256_hex(b""),
    );
    assert_eq!(
        canonical,
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sigv4::sha256_hex(canonical.as_bytes()),
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
    assert_eq!(
        signature(SECRET, AMZ_DATE, "20150830", "us-east-1", "service", &canonical),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}

#[test]
fn sigv4_query_parameters_are_sorted() {
    let canonical = canonical_request(
        "GET",
        "/",
        "Param2=value2&Param1=value1",
        &headers(&[("host", "example.amazonaws.com"), ("x-amz-date", AMZ_DATE)]),
        &["host", "x-amz-date"],
        &sigv4::sha256_hex(b""),
    );
    assert!(canonical.starts_with("GET\n/\nParam1=value1&Param2=value2\n"), "{canonical}");
    assert_eq!(
        signature(SECRET, AMZ_DATE, "20150830", "us-east-1", "service", &canonical),
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
    );
}

#[test]
fn sigv4_post_form_body() {
    let canonical = canonical_request(
        "POST",
        "/",
        "",
        &headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "example.amazonaws.com"),
            ("x-amz-date", AMZ_DATE),
        ]),
        &["content-type", "host", "x-amz-date"],
        &sigv4::sha256_hex(b"Param1=value1"),
    );
    assert_eq!(
        signature(SECRET, AMZ_DATE, "20150830", "us-east-1", "service", &canonical),
        "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
    );
}

#[test]
fn sigv4_header_values_are_trimmed_and_spaces_collapsed() {
    let canonical = canonical_request(
        "GET",
        "/",
        "",
        &headers(&[("host", "example.amazonaws.com"), ("my-header1", "  value1  has   spaces ")]),
        &["host", "my-header1"],
        "x",
    );
    assert!(canonical.contains("my-header1:value1 has spaces\n"), "{canonical}");
}

#[test]
fn sigv4_encoding_and_dates() {
    assert_eq!(sigv4::uri_encode("a b/c~d*é", false), "a%20b%2Fc~d%2A%C3%A9");
    assert_eq!(sigv4::uri_encode("/000000000000/q-1.fifo", true), "/000000000000/q-1.fifo");
    assert_eq!(sigv4::canonical_query("b=2&a=x%20y&a=1"), "a=1&a=x%20y&b=2");
    assert_eq!(parse_amz_date(AMZ_DATE), Some(1_440_938_160_000));
    assert_eq!(parse_amz_date("20150830T123600"), None);
    assert_eq!(parse_amz_date("20151330T123600Z"), None);
}

#[test]
fn authorization_headers_are_read_and_incomplete_ones_refused() {
    let auth = parse_authorization(
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
    )
    .unwrap();
    assert_eq!((auth.key_id, auth.date, auth.region, auth.service), ("AKID", "20150830", "us-east-1", "sqs"));
    assert_eq!(auth.signed_headers, ["host", "x-amz-date"]);
    assert_eq!(auth.signature, "abc");
    for bad in [
        "Bearer x",
        "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=abc",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/sqs, SignedHeaders=host, Signature=abc",
    ] {
        assert_eq!(parse_authorization(bad).unwrap_err().code, "IncompleteSignature", "{bad}");
    }
}

#[test]
fn key_files_are_read_strictly() {
    let keys = AccessKeys::parse(
        "# keys\nCHRGA1 0123456789abcdef0123 admin\n\nCHRGB2 0123456789abcdef0123 produce:jobs-* consume:x\n",
    );
    assert!(keys.is_ok());
    assert!(AccessKeys::parse("").is_err());
    assert!(AccessKeys::parse("CHRGA1 short admin").is_err());
    assert!(AccessKeys::parse("CHRGA1 0123456789abcdef0123").is_err());
    assert!(AccessKeys::parse("CHRG-1 0123456789abcdef0123 admin").is_err());
    assert!(AccessKeys::parse("K 0123456789abcdef0123 admin\nK 0123456789abcdef0123 admin").is_err());
    let line = AccessKeys::issue(&[7; 30], &["consume:jobs".to_owned()]);
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words.len(), 3);
    assert!(words[0].starts_with("CHRG") && words[0].len() == 20);
    assert!(AccessKeys::parse(&line).is_ok());
}

#[test]
fn query_parameters_take_the_json_shape() {
    let pairs: Vec<(String, String)> = [
        ("QueueName", "q"),
        ("Attribute.1.Name", "VisibilityTimeout"),
        ("Attribute.1.Value", "45"),
        ("Attribute.2.Name", "DelaySeconds"),
        ("Attribute.2.Value", "3"),
        ("AttributeName.2", "B"),
        ("AttributeName.1", "A"),
        ("MessageAttribute.1.Name", "colour"),
        ("MessageAttribute.1.Value.DataType", "String"),
        ("MessageAttribute.1.Value.StringValue", "blue"),
        ("Tag.1.Key", "team"),
        ("Tag.1.Value", "billing"),
        ("SendMessageBatchRequestEntry.2.Id", "b"),
        ("SendMessageBatchRequestEntry.1.Id", "a"),
        ("SendMessageBatchRequestEntry.1.MessageBody", "one"),
        ("SendMessageBatchRequestEntry.1.MessageAttribute.1.Name", "n"),
        ("SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType", "Number"),
        ("SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue", "1"),
        ("SendMessageBatchRequestEntry.2.MessageBody", "two"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let nested = Value::Object(nest(&pairs));
    assert_eq!(
        nested,
        json!({
            "QueueName": "q",
            "Attributes": {"VisibilityTimeout": "45", "DelaySeconds": "3"},
            "AttributeNames": ["A", "B"],
            "MessageAttributes": {"colour": {"DataType": "String", "StringValue": "blue"}},
            "tags": {"team": "billing"},
            "Entries": [
                {"Id": "a", "MessageBody": "one", "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "1"}}},
                {"Id": "b", "MessageBody": "two"},
            ],
        })
    );
}

#[test]
fn receipt_handles_carry_the_task_and_the_token() {
    let id = TaskId::new(1_700_000_000_000, 42);
    let handle = receipt::encode(id, "3.0123abcd");
    assert_eq!(receipt::decode(&handle), Some((id, "3.0123abcd".to_owned())));
    assert_eq!(receipt::decode("not a handle"), None);
    assert_eq!(receipt::decode(&receipt::encode(id, "")), None);
}

#[test]
fn message_payloads_round_trip_and_v1_payloads_are_bodies() {
    let attributes = json!({"k": {"DataType": "String", "StringValue": "v"}});
    let payload = attributes::payload("hi \"there\"", attributes.as_object().unwrap());
    let (body, read) = attributes::message(&payload);
    assert_eq!(body, "hi \"there\"");
    assert_eq!(Value::Object(read), attributes);
    assert_eq!(attributes::message(r#"{"order":7}"#).0, r#"{"order":7}"#);
    assert_eq!(attributes::message(r#"{"body":"x","other":1}"#).0, r#"{"body":"x","other":1}"#);
}

#[test]
fn digests_are_the_ones_sqs_answers() {
    // The MD5 of a body, hex.
    assert_eq!(attributes::md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
    // SQS's digest of message attributes: name, type, transport byte, value,
    // each length-prefixed, attributes by name.
    let attrs = json!({"b": {"DataType": "Binary", "BinaryValue": "AAE="}, "a": {"DataType": "String", "StringValue": "x"}});
    let mut bytes = Vec::new();
    for part in [&b"a"[..], b"String"] {
        bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
        bytes.extend_from_slice(part);
    }
    bytes.push(1);
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.push(b'x');
    for part in [&b"b"[..], b"Binary"] {
        bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
        bytes.extend_from_slice(part);
    }
    bytes.push(2);
    bytes.extend_from_slice(&2u32.to_be_bytes());
    bytes.extend_from_slice(&[0, 1]);
    assert_eq!(md5_of_attributes(attrs.as_object().unwrap()), Some(attributes::md5_hex(&bytes)));
    assert_eq!(md5_of_attributes(&serde_json::Map::new()), None);
}

#[test]
fn bodies_and_attribute_names_are_checked() {
    assert!(attributes::valid_body("tab\tnewline\n☃ 𝄞"));
    assert!(!attributes::valid_body("nul\u{0}"));
    assert!(!attributes::valid_body("\u{FFFF}"));
    let ok = json!({"a.b": {"DataType": "Number.int", "StringValue": "1"}});
    assert!(attributes::check_message_attributes(ok.as_object().unwrap()).is_ok());
    for bad in [
        json!({"AWS.x": {"DataType": "String", "StringValue": "1"}}),
        json!({"a..b": {"DataType": "String", "StringValue": "1"}}),
        json!({"a": {"DataType": "Strange", "StringValue": "1"}}),
        json!({"a": {"DataType": "Binary", "StringValue": "1"}}),
    ] {
        assert_eq!(
            attributes::check_message_attributes(bad.as_object().unwrap()).unwrap_err().code,
            "InvalidParameterValue"
        );
    }
    let all = json!({"a.x": {}, "a.y": {}, "b": {}});
    let names = |wanted: &[&str]| {
        let wanted: Vec<String> = wanted.iter().map(|s| (*s).to_owned()).collect();
        attributes::select_message_attributes(all.as_object().unwrap(), &wanted)
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&["All"]), ["a.x", "a.y", "b"]);
    assert_eq!(names(&["a.*"]), ["a.x", "a.y"]);
    assert_eq!(names(&["b"]), ["b"]);
    assert!(names(&[]).is_empty());
}

#[test]
fn queue_attributes_map_onto_settings() {
    let mut patch = attributes::base_patch(false);
    let mut meta = crate::meta::QueueMeta::new(0);
    let given = json!({
        "VisibilityTimeout": "45",
        "DelaySeconds": "5",
        "RedrivePolicy": "{\"deadLetterTargetArn\":\"arn:aws:sqs:us-east-1:000000000000:dead\",\"maxReceiveCount\":3}",
    });
    attributes::read_queue_attributes(given.as_object().unwrap(), false, true, &mut patch, &mut meta)
        .unwrap();
    assert_eq!(patch.lease_ms, Some(45_000));
    assert_eq!(patch.max_attempts, Some(3));
    assert_eq!(patch.backoff_initial_ms, Some(0));
    assert_eq!(meta.delay_seconds, 5);
    assert_eq!(meta.redrive.as_ref().map(|r| r.1.as_str()), Some("dead"));
    for (bad, code) in [
        (json!({"VisibilityTimeout": "43201"}), "InvalidAttributeValue"),
        (json!({"Nonsense": "1"}), "InvalidAttributeName"),
        (json!({"FifoQueue": "true"}), "InvalidAttributeValue"),
        (json!({"ContentBasedDeduplication": "true"}), "InvalidAttributeName"),
        (
            json!({"RedrivePolicy": "{\"deadLetterTargetArn\":\"nope\",\"maxReceiveCount\":3}"}),
            "InvalidAttributeValue",
        ),
    ] {
        let error =
            attributes::read_queue_attributes(bad.as_object().unwrap(), false, true, &mut patch, &mut meta)
                .unwrap_err();
        assert_eq!(error.code, code, "{bad}");
    }
}

#[test]
fn actions_need_the_scopes_of_their_queue() {
    use crate::protocol::{Request, Wire};
    let request = |action: &str| Request {
        wire: Wire::Json,
        action: action.to_owned(),
        params: json!({"QueueUrl": "http://h/000000000000/jobs-1"}).as_object().unwrap().clone(),
    };
    let producer = cherga_auth::Scopes::parse(["produce:jobs-*"]);
    assert!(actions::authorize(Some(&producer), &request("SendMessage")).is_ok());
    assert!(actions::authorize(Some(&producer), &request("GetQueueAttributes")).is_ok());
    assert_eq!(
        actions::authorize(Some(&producer), &request("ReceiveMessage")).unwrap_err().code,
        "AccessDenied"
    );
    assert_eq!(actions::authorize(Some(&producer), &request("PurgeQueue")).unwrap_err().code, "AccessDenied");
    assert!(actions::authorize(None, &request("PurgeQueue")).is_ok());
}

#[test]
fn without_keys_only_loopback_requests_from_outside_browsers_pass() {
    use axum::http::{HeaderMap, HeaderValue, header};
    let request = |host: &str, origin: Option<&str>| {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        crate::loopback_request(&headers)
    };
    for host in ["127.0.0.1:9324", "localhost:9324", "[::1]:9324", "LOCALHOST", "127.0.0.2"] {
        assert!(request(host, None).is_ok(), "{host}");
    }
    for host in ["evil.example:9324", "10.0.0.1:9324", "localhost.evil.example"] {
        assert_eq!(request(host, None).unwrap_err().code, "AccessDenied", "{host}");
    }
    assert_eq!(request("127.0.0.1:9324", Some("https://evil.example")).unwrap_err().code, "AccessDenied");
}
