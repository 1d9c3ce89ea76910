//! The client subcommands end to end: the real `cherga` binary run as a user
//! runs it, against a real server. `tail` follows the event stream (and resumes
//! after a cut connection), `lease`/`ack`/`nack` make a round trip, `import` is
//! idempotent and `export` reads back what it wrote, and every `--json` output
//! parses.
//!
//! These tests are about the command line, not the store, so they run on the
//! embedded store only.

use super::harness::{Backend, Proxy, Server};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a test waits for the CLI to do something.
const PATIENCE: Duration = Duration::from_secs(30);

/// `cherga ARGS` against the server at `base`; waits for it to finish.
async fn cherga(base: &str, args: &[&str]) -> Output {
    let mut command = command(base, args);
    tokio::task::spawn_blocking(move || command.output().expect("run cherga")).await.expect("joined")
}

fn command(base: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cherga"));
    command.args(args).env("CHERGA_URL", base).env_remove("CHERGA_TOKEN").env("NO_COLOR", "1");
    command
}

/// `cherga ARGS`, which must succeed; its stdout.
async fn ok(base: &str, args: &[&str]) -> String {
    let output = cherga(base, args).await;
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "cherga {args:?} failed ({}):\n{stderr}\n{stdout}", output.status);
    stdout
}

/// `cherga ARGS --json`, which must succeed and print one JSON document.
async fn json_of(base: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let stdout = ok(base, &args).await;
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cherga {args:?} printed no JSON ({e}): {stdout}"))
}

fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

/// A running `cherga tail`, its output read line by line as it comes.
struct Tail {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line so far, for failure messages.
    stderr_seen: Vec<String>,
}

impl Tail {
    /// Starts `cherga tail ARGS` and waits until it follows the stream.
    async fn start(base: &str, args: &[&str]) -> Self {
        let args: Vec<&str> = ["tail"].into_iter().chain(args.iter().copied()).collect();
        let mut child = command(base, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cherga tail");
        let stdout = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        let mut tail = Tail { child, stdout, stderr, stderr_seen: Vec::new() };
        tail.wait_stderr("following events after").await;
        tail
    }

    /// The next line of stdout, as JSON.
    async fn event(&mut self) -> Value {
        let Some(line) = receive(&self.stdout) else {
            panic!("tail printed no line in {PATIENCE:?}; stderr:\n{}", self.stderr_text())
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"))
    }

    /// Waits for a line of stderr containing `needle`.
    async fn wait_stderr(&mut self, needle: &str) {
        loop {
            let Some(line) = receive(&self.stderr) else {
                panic!("tail wrote no {needle:?} in {PATIENCE:?}; stderr:\n{}", self.stderr_text())
            };
            self.stderr_seen.push(line.clone());
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Everything written to stderr so far.
    fn stderr_text(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.join("\n")
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

fn receive(receiver: &mpsc::Receiver<String>) -> Option<String> {
    tokio::task::block_in_place(|| receiver.recv_timeout(PATIENCE).ok())
}

fn changes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| str_of(&e["type"], "type").trim_start_matches("dev.cherga.task.").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_an_enqueue_lease_and_ack_and_resumes_after_an_event() {
    let server = Server::start(&Backend::sqlite()).await;
    let base = server.base.clone();
    let mut tail = Tail::start(&base, &["--queue", "cli-*", "--json", "--count", "3"]).await;
    // Another queue's events are left out by the pattern.
    ok(&base, &["enqueue", "other", "--kind", "noise"]).await;
    let task = json_of(&base, &["enqueue", "cli-tail", "--kind", "send", "--payload", r#"{"to":"a"}"#]).await;
    let task_id = str_of(&task["id"], "id").to_owned();
    let leased = json_of(&base, &["lease", "--queue", "cli-tail", "--wait", "1s"]).await;
    ok(&base, &["ack", &task_id, "--lease", str_of(&leased["lease"]["token"], "token")]).await;

    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(tail.event().await);
    }
    assert_eq!(changes(&events), ["enqueued", "leased", "acked"], "{events:#?}");
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["subject"], task_id.as_str());
        assert_eq!(event["data"]["queue"], "cli-tail");
    }
    let status = tokio::task::block_in_place(|| tail.child.wait()).expect("tail exits after --count");
    assert!(status.success(), "{status}");

    // From after the first event: the other two, at once, in order.
    let first = str_of(&events[0]["id"], "event id");
    let stdout =
        ok(&base, &["tail", "--queue", "cli-tail", "--after", first, "--count", "2", "--json"]).await;
    assert_eq!(json_lines(&stdout), events[1..].to_vec());

    // The human form: one line per event, naming the change and the task.
    let stdout = ok(&base, &["tail", "--task", &task_id, "--after", "0", "--count", "3"]).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, change) in lines.iter().zip(["enqueued", "leased", "acked"]) {
        assert!(line.contains(change) && line.contains(&task_id), "{line}");
    }
    assert!(lines[2].contains("running→succeeded"), "{}", lines[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reconnects_after_a_cut_connection_and_misses_nothing() {
    let server = Server::start(&Backend::sqlite()).await;
    let base = server.base.clone();
    let proxy = Proxy::start(base.trim_start_matches("http://").to_owned()).await;
    let via_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let mut tail = Tail::start(&via_proxy, &["--queue", "cli-cut", "--type", "enqueued", "--json"]).await;
    for round in 0..3 {
        let before =
            json_of(&base, &["enqueue", "cli-cut", "--kind", "k", "--payload", &round.to_string()]).await;
        assert_eq!(tail.event().await["subject"], before["id"]);
        // The connection is cut, and a task is enqueued while it is down: its
        // event comes after the reconnection.
        tail.stderr_text();
        proxy.cut();
        tail.wait_stderr("reconnecting").await;
        let during = json_of(&base, &["enqueue", "cli-cut", "--kind", "k", "--payload", "\"cut\""]).await;
        proxy.restore();
        let event = tail.event().await;
        assert_eq!(event["subject"], during["id"], "{}", tail.stderr_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ack_and_nack_from_the_command_line() {
    let server = Server::start(&Backend::sqlite()).await;
    let base = server.base.clone();
    let first = json_of(&base, &["enqueue", "cli-script", "--kind", "job", "--payload", "1"]).await;
    let second = json_of(&base, &["enqueue", "cli-script", "--kind", "job", "--payload", "2"]).await;

    let leased =
        json_of(&base, &["lease", "--queue", "cli-script", "--lease", "30s", "--worker", "sh"]).await;
    assert_eq!(leased["id"], first["id"]);
    assert_eq!(leased["state"], "running");
    let (id, token) = (str_of(&leased["id"], "id"), str_of(&leased["lease"]["token"], "token"));
    let acked = json_of(&base, &["ack", id, "--lease", token, "--result", r#"{"ok":true}"#]).await;
    assert_eq!(acked["state"], "succeeded");
    assert_eq!(acked["result"], json!({"ok": true}));
    // The same ack again succeeds again; a wrong token is refused, naming why.
    ok(&base, &["ack", id, "--lease", token]).await;
    let refused = cherga(&base, &["ack", id, "--lease", "not-the-token"]).await;
    let (_, stderr) = texts(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lease"), "{stderr}");

    // Without --json, lease prints the task indented; it is JSON all the same.
    let text = ok(&base, &["lease", "--queue", "cli-script"]).await;
    let leased: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(leased["id"], second["id"]);
    let (id, token) = (str_of(&leased["id"], "id"), str_of(&leased["lease"]["token"], "token"));
    let nacked = json_of(&base, &["nack", id, "--lease", token, "--error", "boom", "--dead"]).await;
    assert_eq!((&nacked["state"], &nacked["last_error"]), (&json!("dead"), &json!("boom")));

    // Nothing left: exit status 2, and nothing on stdout.
    let empty = cherga(&base, &["lease", "--queue", "cli-script", "--wait", "0s", "--json"]).await;
    let (stdout, stderr) = texts(&empty);
    assert_eq!(empty.status.code(), Some(2), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("no task"), "{stderr}");
}

/// Writes `lines` to the file `name` in `dir`; its path.
fn write_file(dir: &tempfile::TempDir, name: &str, lines: &[String]) -> String {
    let path = dir.path().join(name);
    let mut file = std::fs::File::create(&path).expect("create");
    for line in lines {
        writeln!(file, "{line}").expect("write");
    }
    path.to_str().expect("utf-8 path").to_owned()
}

async fn counts(base: &str, queue: &str) -> Value {
    json_of(base, &["queue", "show", queue]).await["counts"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_twice_creates_each_task_once() {
    let server = Server::start(&Backend::sqlite()).await;
    let base = server.base.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    // 1,234 tasks with derived keys, a blank line, and a line alike another but
    // for its place in the file (both are created).
    let mut lines: Vec<String> = (0..1234)
        .map(|n| format!(r#"{{"kind":"mail","payload":{{"n":{n}}},"priority":{}}}"#, n % 3))
        .collect();
    lines.insert(600, String::new());
    lines.push(lines[0].clone());
    let file = write_file(&dir, "tasks.ndjson", &lines);
    let first = json_of(&base, &["import", &file, "--queue", "cli-import", "--batch", "500"]).await;
    assert_eq!(first, json!({"lines": 1235, "created": 1235, "existing": 0, "failed": 0}));
    let again = json_of(&base, &["import", &file, "--queue", "cli-import", "--batch", "100"]).await;
    assert_eq!(again, json!({"lines": 1235, "created": 0, "existing": 1235, "failed": 0}));
    assert_eq!(counts(&base, "cli-import").await["ready"], 1235);

    // Keys from a field of the payload: a file appended to and imported again
    // creates only the new lines; the human summary says so.
    let payloads: Vec<String> = (0..10).map(|n| format!(r#"{{"order":"o-{n}"}}"#)).collect();
    let file = write_file(&dir, "orders.ndjson", &payloads[..6]);
    let args = ["import", &file, "--queue", "cli-orders", "--kind", "charge", "--key-field", "order"];
    assert_eq!(json_of(&base, &args).await["created"], 6);
    write_file(&dir, "orders.ndjson", &payloads);
    let summary = ok(&base, &args).await;
    assert!(summary.contains("4 created, 6 already there"), "{summary}");
    assert_eq!(counts(&base, "cli-orders").await["ready"], 10);

    // A bad line is named and fails the run; the good ones are imported.
    let file = write_file(&dir, "bad.ndjson", &[r#"{"kind":"a"}"#.to_owned(), "[1]".to_owned()]);
    let output = cherga(&base, &["import", &file, "--queue", "cli-bad"]).await;
    let (stdout, stderr) = texts(&output);
    assert!(!output.status.success(), "{stdout}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(stdout.contains("1 created"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_round_trip() {
    let server = Server::start(&Backend::sqlite()).await;
    let base = server.base.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: Vec<String> = (0..1500)
        .map(|n| {
            format!(r#"{{"kind":"k{}","payload":{{"n":{n},"s":"é\u0001"}},"priority":{}}}"#, n % 4, n % 5)
        })
        .collect();
    let file = write_file(&dir, "in.ndjson", &lines);
    let output = cherga(&base, &["import", &file, "--queue", "cli-from"]).await;
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("1500 created"), "{stdout}");
    // Not on a terminal: plain progress lines on stderr, the last one at 100 %.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("import: 1500 lines") && last.ends_with("(100 %)"), "{stderr}");
    // Some tasks move on, so the export holds more than one state.
    for _ in 0..3 {
        let leased = json_of(&base, &["lease", "--queue", "cli-from"]).await;
        let (id, token) = (str_of(&leased["id"], "id"), str_of(&leased["lease"]["token"], "token"));
        ok(&base, &["ack", id, "--lease", token]).await;
    }

    let exported = dir.path().join("out.ndjson");
    let exported = exported.to_str().expect("utf-8 path");
    let summary = json_of(&base, &["export", "--queue", "cli-from", "--output", exported]).await;
    assert_eq!(summary["tasks"], 1500);
    let tasks = json_lines(&std::fs::read_to_string(exported).expect("read the export"));
    assert_eq!(tasks.len(), 1500);
    // To stdout, filtered by state.
    let succeeded = ok(&base, &["export", "--queue", "cli-from", "--state", "succeeded"]).await;
    assert_eq!(json_lines(&succeeded).len(), 3);

    let imported = json_of(&base, &["import", exported, "--queue", "cli-to"]).await;
    assert_eq!(imported["created"], 1500);
    let copied = json_lines(&ok(&base, &["export", "--queue", "cli-to"]).await);
    let essence = |tasks: &[Value]| {
        let mut out: Vec<String> =
            tasks.iter().map(|t| format!("{} {} {}", t["kind"], t["priority"], t["payload"])).collect();
        out.sort();
        out
    };
    assert_eq!(essence(&copied), essence(&tasks));
    assert!(copied.iter().all(|t| t["queue"] == "cli-to" && t["state"] == "ready"));
    // The copies carry the originals' keys, so importing the export again creates nothing.
    assert_eq!(json_of(&base, &["import", exported, "--queue", "cli-to"]).await["created"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_with_json() {
    let server = Server::start(&Backend::sqlite()).await;
    let base = server.base.clone();
    let task = json_of(&base, &["enqueue", "cli-json", "--kind", "k", "--key", "one"]).await;
    assert_eq!(task["state"], "ready");
    let got = json_of(&base, &["task", "get", str_of(&task["id"], "id")]).await;
    assert_eq!(got["id"], task["id"]);
    let queues = json_of(&base, &["queues"]).await;
    assert!(queues["queues"].as_array().expect("queues").iter().any(|q| q["name"] == "cli-json"));

    assert_eq!(json_of(&base, &["queue", "pause", "cli-json"]).await["settings"]["paused"], true);
    assert_eq!(json_of(&base, &["queue", "show", "cli-json"]).await["settings"]["paused"], true);
    assert_eq!(json_of(&base, &["queue", "resume", "cli-json"]).await["settings"]["paused"], false);
    let set = json_of(
        &base,
        &[
            "queue",
            "set",
            "cli-json",
            "--max-attempts",
            "7",
            "--lease",
            "45s",
            "--concurrency",
            "3",
            "--backoff-initial",
            "2s",
            "--backoff-multiplier",
            "3",
        ],
    )
    .await;
    let settings = &set["settings"];
    assert_eq!((&settings["max_attempts"], &settings["lease_ms"]), (&json!(7), &json!(45_000)));
    assert_eq!(settings["concurrency"], 3);
    assert_eq!(settings["backoff"]["initial_ms"], 2000);
    assert_eq!(settings["backoff"]["multiplier"], 3.0);
    // `none` removes the limit; the other settings stay.
    let set = json_of(&base, &["queue", "set", "cli-json", "--concurrency", "none"]).await;
    assert_eq!(
        (&set["settings"]["concurrency"], &set["settings"]["max_attempts"]),
        (&Value::Null, &json!(7))
    );

    // The text form names what it shows.
    let text = ok(&base, &["queue", "show", "cli-json"]).await;
    assert!(text.contains("max_attempts    7") && text.contains("no limit"), "{text}");
    // Nothing to set is refused before asking the server; a refused setting names the problem.
    let nothing = texts(&cherga(&base, &["queue", "set", "cli-json"]).await).1;
    assert!(nothing.contains("nothing to set"), "{nothing}");
    let refused = cherga(&base, &["queue", "set", "cli-json", "--backoff-jitter", "2"]).await;
    assert!(!refused.status.success() && texts(&refused).1.contains("jitter"), "{:?}", texts(&refused));
}
