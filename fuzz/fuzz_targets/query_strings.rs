//! What a URL carries: the `GET /v1/queues/{queue}/tasks` query string, queue
//! names, task ids, states and times, parsed as the server parses them.

#![no_main]

use cherga_api::{ListQuery, Timestamp};
use cherga_core::{QueueName, TaskId, TaskState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(uri) = format!("/v1/queues/q/tasks?{text}").parse::<axum::http::Uri>() {
        if let Ok(query) = axum::extract::Query::<ListQuery>::try_from_uri(&uri) {
            if let Some(after) = &query.after {
                let _ = TaskId::parse(after);
            }
            if let Some(state) = &query.state {
                let _ = TaskState::parse(state);
            }
        }
    }
    if let Some(id) = TaskId::parse(text) {
        assert_eq!(TaskId::parse(&id.to_string()), Some(id), "task ids round-trip");
    }
    if let Ok(name) = QueueName::new(text) {
        assert_eq!(name.as_str(), text);
    }
    if let Ok(at) = Timestamp::parse(text) {
        let written = at.to_rfc3339();
        assert_eq!(Timestamp::parse(&written), Ok(at), "times round-trip: {text:?} -> {written}");
    }
    let _ = cherga_auth::QueuePattern::parse(text).map(|p| p.matches("payments.eu-1"));
    let _ = cherga_auth::Scopes::parse(text.split(' '));
});
