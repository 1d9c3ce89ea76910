//! Unit tests that need no server: answer decoding, URL building, handler errors,
//! backoff, and the worker's behaviour when cherga cannot be reached.

use std::time::Duration;

use cherga_api::{ErrorCode, ListQuery, TaskView};
use reqwest::Method;

use crate::client::{build_url, normalize_base_url};
use crate::error::decode_answer;
use crate::worker::{Backoff, join_error};
use crate::{Client, Error, HandlerError, Worker};

/// The error and its causes, as `anyhow` prints them with `{:#}`.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text = format!("{text}: {error}");
        cause = error.source();
    }
    text
}

#[track_caller]
fn check_decode_error(status: u16, body: &str, expected: &str, transient: bool) {
    let error = decode_answer::<serde_json::Value>(status, body.as_bytes()).unwrap_err();
    assert_eq!(with_causes(&error), expected, "status {status}, body {body:?}");
    assert_eq!(error.is_transient(), transient, "{error}");
    assert_eq!(error.status(), Some(status), "{error}");
}

#[test]
fn error_bodies_become_api_errors() {
    let body = r#"{"error":{"code":"lease_lost","message":"the lease of task 1 is not current"}}"#;
    let error = decode_answer::<TaskView>(409, body.as_bytes()).unwrap_err();
    assert!(error.is_lease_lost(), "{error:?}");
    assert!(error.is(ErrorCode::LeaseLost) && !error.is_invalid_state() && !error.is_not_found());
    assert_eq!(error.code(), Some("lease_lost"));
    check_decode_error(
        409,
        body,
        "cherga refused the request (409 lease_lost): the lease of task 1 is not current",
        false,
    );
    check_decode_error(
        503,
        r#"{"error":{"code":"unavailable","message":"busy"}}"#,
        "cherga refused the request (503 unavailable): busy",
        true,
    );
    let error =
        decode_answer::<TaskView>(404, br#"{"error":{"code":"task_not_found","message":"no"}}"#).unwrap_err();
    assert!(error.is_not_found());
    let error =
        decode_answer::<TaskView>(422, br#"{"error":{"code":"idempotency_key_reused","message":"no"}}"#)
            .unwrap_err();
    assert!(error.is_idempotency_key_reused());
}

#[test]
fn undecodable_answers_keep_the_status_and_the_start_of_the_body() {
    check_decode_error(
        502,
        "<html>Bad Gateway</html>",
        "cannot decode cherga's answer (status 502); the body starts with \"<html>Bad Gateway</html>\": expected value at line 1 column 1",
        true,
    );
    check_decode_error(
        400,
        "nope",
        "cannot decode cherga's answer (status 400); the body starts with \"nope\": expected ident at line 1 column 2",
        false,
    );
    // A 2xx body of the wrong shape is a decode error too.
    let error = decode_answer::<cherga_api::Health>(200, br#"{"state":"ok"}"#).unwrap_err();
    assert!(matches!(error, Error::Decode { status: 200, .. }), "{error:?}");
    let long = "x".repeat(10_000);
    match decode_answer::<serde_json::Value>(500, long.as_bytes()).unwrap_err() {
        Error::Decode { body, .. } => assert_eq!(body.len(), 512),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn successful_answers_decode() {
    let health: cherga_api::Health = decode_answer(200, br#"{"status":"ok"}"#).unwrap();
    assert_eq!(health.status, "ok");
}

#[test]
fn base_urls_are_checked_and_normalized() {
    let ok = [
        ("http://127.0.0.1:7700", "http://127.0.0.1:7700"),
        ("http://127.0.0.1:7700/", "http://127.0.0.1:7700"),
        ("https://queue.example/cherga//", "https://queue.example/cherga"),
    ];
    for (given, expected) in ok {
        assert_eq!(normalize_base_url(given).unwrap(), expected, "{given}");
    }
    for bad in ["localhost:7700", "127.0.0.1:7700", "ftp://host", "http://host/?a=1", "http://host/#x", ""] {
        let error = normalize_base_url(bad).unwrap_err();
        assert!(matches!(error, Error::BaseUrl { .. }), "{bad}: {error:?}");
        assert!(!error.is_transient());
    }
}

#[test]
fn path_segments_are_percent_encoded() {
    let base = "http://h:1";
    let cases: [(&[&str], &str); 5] = [
        (&["v1", "queues", "pay-ments_2.x", "tasks"], "http://h:1/v1/queues/pay-ments_2.x/tasks"),
        (&["v1", "tasks", "a b/c?d#e", "ack"], "http://h:1/v1/tasks/a%20b%2Fc%3Fd%23e/ack"),
        (&["v1", "queues", ".", "lease"], "http://h:1/v1/queues/%2E/lease"),
        (&["v1", "queues", "..", "lease"], "http://h:1/v1/queues/%2E%2E/lease"),
        (&["v1", "queues", "ü"], "http://h:1/v1/queues/%C3%BC"),
    ];
    for (segments, expected) in cases {
        assert_eq!(build_url(base, segments), expected);
    }
}

#[test]
fn requests_carry_the_path_and_query() {
    let client = Client::new("http://127.0.0.1:7700/prefix/").unwrap();
    assert_eq!(client.base_url(), "http://127.0.0.1:7700/prefix");
    let query = ListQuery { state: Some("dead".to_owned()), limit: Some(10), ..ListQuery::default() };
    let request = client.request(Method::GET, &["v1", "queues", "q", "tasks"]).query(&query).build().unwrap();
    assert_eq!(request.url().as_str(), "http://127.0.0.1:7700/prefix/v1/queues/q/tasks?state=dead&limit=10");
    let request = client
        .request(Method::GET, &["v1", "queues", "q", "tasks"])
        .query(&ListQuery::default())
        .build()
        .unwrap();
    assert_eq!(request.url().as_str(), "http://127.0.0.1:7700/prefix/v1/queues/q/tasks");
    assert_eq!(request.timeout(), Some(&crate::DEFAULT_TIMEOUT));
}

#[test]
fn any_displayable_error_becomes_a_handler_error() {
    fn fails() -> Result<(), HandlerError> {
        let _: u32 = "seven".parse()?;
        Ok(())
    }
    assert_eq!(fails().unwrap_err().message(), "invalid digit found in string");
    let error: HandlerError = "no such order".into();
    assert_eq!(error.message(), "no such order");
    let error = HandlerError::from(std::io::Error::other("disk on fire"));
    assert_eq!(error.message(), "disk on fire");
    let error = HandlerError::new("card declined").dead().retry_in(Duration::from_millis(1500));
    assert_eq!(
        format!("{error:?}"),
        r#"HandlerError { message: "card declined", retry_in: Some(1.5s), dead: true }"#
    );
}

#[tokio::test]
async fn panics_become_handler_errors() {
    let joined = tokio::spawn(async { panic!("order {} is cursed", 7) }).await.unwrap_err();
    assert_eq!(join_error(joined).message(), "panicked: order 7 is cursed");
    let joined = tokio::spawn(async { std::panic::panic_any(7_u8) }).await.unwrap_err();
    assert_eq!(join_error(joined).message(), "panicked: a panic payload that is not a string");
    let handle = tokio::spawn(std::future::pending::<()>());
    handle.abort();
    assert_eq!(join_error(handle.await.unwrap_err()).message(), "the handler was cancelled");
}

#[test]
fn backoff_doubles_to_a_ceiling_with_jitter() {
    let mut backoff = Backoff::new();
    let mut ceiling = Backoff::FIRST;
    for _ in 0..10 {
        let delay = backoff.next_delay();
        assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} outside the upper half of {ceiling:?}");
        ceiling = (ceiling * 2).min(Backoff::MAX);
    }
    assert_eq!(ceiling, Backoff::MAX);
    backoff.reset();
    assert!(backoff.next_delay() <= Backoff::FIRST);
}

/// A worker whose server cannot be reached keeps retrying and still stops when
/// told to.
#[tokio::test(start_paused = true)]
async fn worker_retries_an_unreachable_server_until_shutdown() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let worker = Worker::builder(client, "q").handler("k", |_task| async { Ok(()) }).build();
    let started = tokio::time::Instant::now();
    // Shutdown after 30 s of the test's paused clock, which tokio advances at once.
    worker.run(tokio::time::sleep(Duration::from_secs(30))).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(30));
}

/// A fake event stream: each connection's `Last-Event-ID` is recorded and
/// answered with the next body of `bodies`, after which the connection closes.
fn fake_event_server(bodies: Vec<String>) -> (String, std::sync::mpsc::Receiver<Option<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for body in bodies {
            let Ok((stream, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut last_event_id = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("last-event-id")
                {
                    last_event_id = Some(value.trim().to_owned());
                }
            }
            sender.send(last_event_id).unwrap();
            let mut stream = stream;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(format!("{head}{body}").as_bytes());
        }
    });
    (base, receiver)
}

fn cloud_event(id: u64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/v1/queues/q","type":"dev.cherga.task.enqueued","subject":"t{id}","time":"2026-12-07T10:00:00Z","datacontenttype":"application/json","data":{{"task_id":"t{id}","queue":"q","kind":"k","change":"enqueued","to":"ready","attempt":0}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_resumes_after_the_last_event_it_read() {
    use crate::StreamItem;
    let bodies = vec![
        format!(": hi\n\nid: 5\nevent: enqueued\ndata: {}\n\nid: 6\nevent: enq", cloud_event(5)),
        format!(
            "event: error\ndata: {{\"error\":{{\"code\":\"events_expired\",\"message\":\"gone\"}}}}\n\nid: 6\nevent: enqueued\ndata: {}\n\n",
            cloud_event(6)
        ),
    ];
    let (base, connections) = fake_event_server(bodies);
    let query = cherga_api::event::EventsQuery { after: Some("4".into()), ..Default::default() };
    let mut stream = Client::new(&base).unwrap().follow_events(query).await.unwrap();
    let subject = |item: StreamItem| match item {
        StreamItem::Event { event, json } => {
            assert!(json.contains(&event.subject), "{json}");
            event.subject
        }
        other => panic!("expected an event, got {other:?}"),
    };
    assert_eq!(subject(stream.next().await.unwrap()), "t5");
    // The cut came in the middle of event 6: the stream resumes after 5.
    match stream.next().await.unwrap() {
        StreamItem::Reconnecting { after, .. } => assert_eq!(after, "5"),
        other => panic!("expected a reconnection, got {other:?}"),
    }
    match stream.next().await.unwrap() {
        StreamItem::StreamError { code, message } => {
            assert_eq!((code.as_str(), message.as_str()), ("events_expired", "gone"))
        }
        other => panic!("expected the stream's error, got {other:?}"),
    }
    assert_eq!(subject(stream.next().await.unwrap()), "t6");
    assert_eq!(stream.after(), "6");
    let seen: Vec<Option<String>> = connections.try_iter().collect();
    assert_eq!(seen, [Some("4".to_owned()), Some("5".to_owned())]);
}
