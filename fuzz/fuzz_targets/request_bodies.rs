//! Every JSON request body of the v1 API, parsed as the server parses it and then
//! carried as far as the server carries it without a store: validated into core
//! values, turned into a task, and written back as the API would answer. Nothing
//! here may panic, and what is accepted must serialize.

#![no_main]

use cherga_api::auth::RevokeRequest;
use cherga_api::{
    AckRequest, BatchAckRequest, EnqueueBatchRequest, EnqueueRequest, ExtendRequest, LeaseRequest, Limits,
    NackRequest, QueueSettingsBody, TaskView,
};
use cherga_core::{QueueSettings, Task};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_payload_bytes: 1 << 16 };
const NOW: i64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 10 {
        0 => enqueue(body),
        1 => {
            if let Ok(batch) = serde_json::from_slice::<EnqueueBatchRequest>(body) {
                for item in batch.tasks {
                    accept(item, None);
                }
            }
        }
        2 => {
            let _ = serde_json::from_slice::<LeaseRequest>(body)
                .map(|r| cherga_api::check_worker(r.worker.as_deref()));
        }
        3 => {
            if let Ok(ack) = serde_json::from_slice::<AckRequest>(body) {
                if let Some(result) = ack.result {
                    check_minify(result.get());
                }
            }
        }
        4 => drop(serde_json::from_slice::<NackRequest>(body)),
        5 => drop(serde_json::from_slice::<ExtendRequest>(body)),
        6 => drop(serde_json::from_slice::<BatchAckRequest>(body)),
        7 => {
            if let Ok(settings) = serde_json::from_slice::<QueueSettingsBody>(body) {
                let _ = QueueSettings::defaults().with(&settings.to_patch());
            }
        }
        8 => {
            if let Ok(revoke) = serde_json::from_slice::<RevokeRequest>(body) {
                if let Some(at) = revoke.expires_at {
                    let _ = at.to_rfc3339();
                }
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(body) {
                check_minify(text);
            }
        }
    }
});

fn enqueue(body: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<EnqueueRequest>(body) {
        let header = request.idempotency_key.clone();
        accept(request, header.as_deref());
    }
}

/// Validates like the enqueue handler, then builds and shows the task.
fn accept(request: EnqueueRequest, header_key: Option<&str>) {
    let Ok(new) = request.into_new_task(header_key, NOW, &LIMITS) else { return };
    assert!(new.payload.len() <= LIMITS.max_payload_bytes);
    assert!(serde_json::from_str::<serde_json::Value>(&new.payload).is_ok(), "stored payload is not JSON");
    let task = Task::create("q", new, &QueueSettings::defaults(), 1, NOW);
    let view = TaskView::from_task(&task);
    serde_json::to_string(&view).expect("an accepted task serializes");
}

/// `minify` keeps valid JSON valid and equal.
fn check_minify(text: &str) {
    if let Ok(before) = serde_json::from_str::<serde_json::Value>(text) {
        let after = cherga_api::minify(text);
        let reparsed: serde_json::Value = serde_json::from_str(&after).expect("minified JSON parses");
        assert_eq!(before, reparsed, "minify changed the value of {text:?}");
    }
}
