//! Start-up of the real binary: what `cherga serve` refuses, and what it leaves
//! behind when it does, read from its exit status and its stderr.

use super::harness::http;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// `cherga serve` on a free port with `args`, its output piped.
fn serve(args: &[&str]) -> Command {
    serve_at("127.0.0.1:0", args)
}

/// `cherga serve --addr addr` with `args`, its output piped.
fn serve_at(addr: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cherga"));
    command
        .args(["serve", "--addr", addr, "--log", "warn"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `command`, which must fail to start, and returns its stderr. A server
/// that starts after all is killed and the test fails, so a regression cannot
/// hang the test.
fn fails_to_start(mut command: Command) -> String {
    let mut child = command.spawn().expect("start cherga");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read stdout");
    if line.starts_with("listening on") {
        let _ = child.kill();
        let (_, stderr) = exit_of(child);
        panic!("the server started ({}) where it must refuse to; stderr:\n{stderr}", line.trim());
    }
    let (status, stderr) = exit_of(child);
    assert!(!status.success(), "exit status {status:?}; stderr:\n{stderr}");
    stderr
}

/// Waits for `child` to exit: its status and its stderr.
fn exit_of(mut child: Child) -> (ExitStatus, String) {
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    (child.wait().expect("exit status"), stderr)
}

/// A server started by a test, killed when dropped.
struct Running {
    child: Child,
    base: String,
}

impl Running {
    /// Starts `command` (a `serve`), its stderr passed through, and waits for its
    /// "listening on" line.
    fn start(mut command: Command) -> Self {
        let mut child = command.stderr(Stdio::inherit()).spawn().expect("start cherga");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read stdout");
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let status = child.wait();
            panic!("cherga did not start: first line {line:?}, exit {status:?}");
        };
        Self { base: base.to_owned(), child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: a clean stop. Its exit status.
    fn stop(mut self) -> ExitStatus {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM failed");
        self.child.wait().expect("exit status")
    }

    /// SIGKILL: no chance to close anything.
    fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = http().post(format!("{}{path}", self.base)).json(&body).send().await.expect(path);
        (response.status().as_u16(), response.json().await.expect("a JSON answer"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = http().get(format!("{}{path}", self.base)).send().await.expect(path);
        (response.status().as_u16(), response.json().await.expect("a JSON answer"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` (a `serve`), waits for its "listening on" line, stops it and
/// returns what it wrote to stderr until then.
fn stderr_of_start(mut command: Command) -> String {
    let mut child = command.spawn().expect("start cherga");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read stdout");
    // Whatever it logged before this line is in the pipe already.
    let _ = child.kill();
    let (_, stderr) = exit_of(child);
    assert!(line.starts_with("listening on"), "cherga did not start: {line:?}; stderr:\n{stderr}");
    stderr
}

#[track_caller]
fn assert_said_once(stderr: &str, text: &str) {
    assert_eq!(stderr.matches(text).count(), 1, "{text:?} should appear once in:\n{stderr}");
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// An error with an operating-system cause names that cause once, not once per
/// error in the chain that carries it.
#[test]
fn a_start_up_failure_names_its_os_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write a file");

    let stderr = fails_to_start(serve(&["--data-dir", path_arg(&file.join("data"))]));
    assert!(stderr.contains("opening the store"), "{stderr}");
    assert_said_once(&stderr, "Not a directory (os error 20)");

    let missing = dir.path().join("missing-keys.json");
    let stderr = fails_to_start(serve(&["--auth-keys", path_arg(&missing)]));
    assert!(stderr.contains("cannot read the key file"), "{stderr}");
    assert_said_once(&stderr, "No such file or directory (os error 2)");
}

/// A port already in use stops `serve` before it opens, or creates, its store.
#[test]
fn a_port_in_use_leaves_no_data_directory_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let addr = held.local_addr().expect("its address").to_string();
    let data_dir = dir.path().join("new");

    let stderr = fails_to_start(serve_at(&addr, &["--data-dir", path_arg(&data_dir)]));
    assert!(stderr.contains(&format!("binding {addr}")), "{stderr}");
    assert_said_once(&stderr, "Address already in use");
    assert!(
        !data_dir.exists(),
        "{} was created by a server that could not bind; stderr:\n{stderr}",
        data_dir.display()
    );
}

/// A second server on a data directory in use refuses to start and names the
/// first one's pid (two would give out the same sequence numbers and overwrite
/// each other's rows). Once the first is killed with `kill -9`, a new server
/// starts on the directory, and every enqueue and ack the first acknowledged is
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_data_directory_in_use_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let data_arg = path_arg(&data_dir).to_owned();
    let first = Running::start(serve(&["--data-dir", &data_arg]));
    let mut enqueued = Vec::new();
    for i in 0..20 {
        let (status, task) = first.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": i})).await;
        assert_eq!(status, 201, "{task}");
        enqueued.push(task["id"].as_str().expect("an id").to_owned());
    }
    let (status, leased) = first.post("/v1/queues/q/lease", json!({"max": 5, "lease_ms": 60000})).await;
    assert_eq!(status, 200, "{leased}");
    let mut acked = Vec::new();
    for task in leased["tasks"].as_array().expect("tasks") {
        let id = task["id"].as_str().expect("an id");
        let (status, body) =
            first.post(&format!("/v1/tasks/{id}/ack"), json!({"lease": task["lease"]["token"]})).await;
        assert_eq!(status, 200, "{body}");
        acked.push(id.to_owned());
    }
    assert_eq!(acked.len(), 5);

    let second = serve(&["--data-dir", &data_arg]);
    let stderr = tokio::task::spawn_blocking(move || fails_to_start(second)).await.expect("second server");
    let expected = format!(
        "the data directory {} is in use by another cherga (pid {})",
        data_dir.display(),
        first.pid()
    );
    assert_said_once(&stderr, &expected);

    first.kill9();
    let third = Running::start(serve(&["--data-dir", &data_arg]));
    for id in &enqueued {
        let (status, task) = third.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status, 200, "task {id}, enqueued before the kill: {task}");
        let state = if acked.contains(id) { "succeeded" } else { "ready" };
        assert_eq!(task["state"], state, "task {id}: {task}");
    }
    let (_, queue) = third.get("/v1/queues/q").await;
    assert_eq!(queue["counts"]["ready"], 15, "{queue}");
    assert_eq!(queue["counts"]["succeeded"], 5, "{queue}");
}

/// The mode bits of `path`.
fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o7777
}

/// Under umask 000 the data directory is still `0700` and every file in it
/// `0600`: tasks hold what producers put in them, and other users of the
/// machine must not read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    // The umask of the child only: the test process keeps its own.
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"umask 000; exec "$0" "$@""#, env!("CARGO_BIN_EXE_cherga")])
        .args(["serve", "--addr", "127.0.0.1:0", "--log", "warn", "--data-dir", path_arg(&data_dir)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let server = Running::start(command);
    for i in 0..50 {
        let (status, body) = server.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": i})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, leased) = server.post("/v1/queues/q/lease", json!({"max": 10})).await;
    for task in leased["tasks"].as_array().expect("tasks") {
        let path = format!("/v1/tasks/{}/ack", task["id"].as_str().expect("an id"));
        let (status, body) = server.post(&path, json!({"lease": task["lease"]["token"]})).await;
        assert_eq!(status, 200, "{body}");
    }

    assert_eq!(mode_of(&data_dir), 0o700, "the data directory's mode, {:04o}", mode_of(&data_dir));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data_dir).expect("list the data directory") {
        let path = entry.expect("an entry").path();
        files.push((path.file_name().expect("a name").to_string_lossy().into_owned(), mode_of(&path)));
    }
    files.sort();
    let loose: Vec<String> = files
        .iter()
        .filter(|(_, mode)| *mode != 0o600)
        .map(|(name, mode)| format!("{name} {mode:04o}"))
        .collect();
    assert!(loose.is_empty(), "files not 0600: {loose:?} (all: {files:?})");
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    for name in ["cherga.db", "cherga.db-wal", "cherga.db-shm", "cherga.db.lock"] {
        assert!(names.contains(&name), "{name} is among the files checked: {names:?}");
    }
}

/// A key file with private keys that other users can read, or one they can
/// change, gets one warning at start; a private one, or public keys readable
/// by all, none.
#[test]
fn a_key_file_open_to_other_users_is_warned_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let signing = dir.path().join("signing.json");
    let status = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["keygen", "--kid", "k1", "--out", path_arg(&signing)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cherga keygen");
    assert!(status.success());
    let public = dir.path().join("verify.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["keygen", "--public-of", path_arg(&signing)])
        .output()
        .expect("cherga keygen --public-of");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&public, &out.stdout).expect("write the public key file");

    let start = |keys: &Path, mode: u32| {
        std::fs::set_permissions(keys, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let data_dir = dir.path().join(format!("data-{mode:o}"));
        stderr_of_start(serve(&["--auth-keys", path_arg(keys), "--data-dir", path_arg(&data_dir)]))
    };
    let warning = "make it readable by cherga's user only (chmod 600)";
    let stderr = start(&signing, 0o600);
    assert!(!stderr.contains(warning), "a private key file: {stderr}");
    let stderr = start(&signing, 0o640);
    assert_said_once(&stderr, warning);
    assert!(stderr.contains("can read its private keys"), "{stderr}");
    let stderr = start(&public, 0o644);
    assert!(!stderr.contains(warning), "public keys may be read by all: {stderr}");
    let stderr = start(&public, 0o662);
    assert_said_once(&stderr, warning);
    assert!(stderr.contains("can change it"), "{stderr}");
}

/// `cherga config check FILE` with an environment variable and a flag: each
/// setting comes from the flag, else the environment, else the file, else the
/// built-in default, and the check says which.
#[test]
fn config_check_shows_flags_over_environment_over_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cherga.toml");
    std::fs::write(
        &file,
        "max-connections = 10\nmax-header-bytes = 2048\nmax-waiting-leases = 7\ninsecure = true\n\
         store = \"postgres://cherga:secret@db/cherga\"\n",
    )
    .expect("write the file");
    let out = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["config", "check", path_arg(&file), "--max-connections", "30"])
        .env("CHERGA_MAX_CONNECTIONS", "20")
        .env("CHERGA_MAX_HEADER_BYTES", "4096")
        .env_remove("CHERGA_MAX_WAITING_LEASES")
        .env_remove("CHERGA_MAX_JSON_DEPTH")
        .output()
        .expect("cherga config check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "max-connections = \"30\"  # flag",
        "max-header-bytes = \"4096\"  # environment",
        "max-waiting-leases = \"7\"  # file",
        "insecure = true  # file",
        "max-json-depth = \"64\"  # default",
        "store = \"postgres://cherga:***@db/cherga\"  # file",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains("secret"), "{stdout}");
}

/// A file that is not valid is refused by `config check` and by `serve`, with
/// the file and the setting named, and `serve` opens nothing.
#[test]
fn a_bad_config_file_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let file = dir.path().join("cherga.toml");
    for (text, needle) in [
        ("max-conections = 10\n", "`max-conections` is not a setting"),
        ("max-connections = \"many\"\n", "max-connections: invalid value 'many'"),
        ("max-body-bytes = 10\nmax-payload-bytes = 20\n", "--max-payload-bytes must not exceed"),
    ] {
        std::fs::write(&file, format!("data-dir = {:?}\n{text}", path_arg(&data_dir))).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_cherga"))
            .args(["config", "check", path_arg(&file)])
            .output()
            .expect("cherga config check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{text:?}: {stderr}");
        assert!(stderr.contains(path_arg(&file)), "{stderr}");
        let stderr = fails_to_start(serve(&["--config", path_arg(&file)]));
        assert!(stderr.contains(needle), "{text:?}: {stderr}");
        assert!(!data_dir.exists(), "a refused start made {}", data_dir.display());
    }
}

/// `serve --config FILE` runs with the file's settings: here its data directory
/// and payload limit.
#[tokio::test]
async fn serve_runs_with_the_settings_of_its_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("from-the-file");
    let file = dir.path().join("cherga.toml");
    std::fs::write(&file, format!("data-dir = {:?}\nmax-payload-bytes = 1024\n", path_arg(&data_dir)))
        .expect("write the file");
    let server = Running::start(serve(&["--config", path_arg(&file)]));
    assert!(data_dir.is_dir(), "the store is in the file's data-dir");
    let small = json!({"kind": "k", "payload": "x".repeat(900)});
    let (status, body) = server.post("/v1/queues/q/tasks", small).await;
    assert_eq!(status, 201, "{body}");
    let large = json!({"kind": "k", "payload": "x".repeat(1100)});
    let (status, body) = server.post("/v1/queues/q/tasks", large).await;
    assert_eq!(status, 413, "{body}");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (the test skips, and the skip is recorded) when this process may
    /// not mount one (it needs root; CI runs as root and refuses skips).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            cherga_store::testkit::skip("cannot mount a tmpfs here (it needs root)");
            return None;
        }
        Some(Self { dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The embedded store starts, serves and restarts on a disk with 3 MB free:
/// without room for its prepared WAL it starts without one, and says so.
#[tokio::test]
async fn the_embedded_store_starts_on_a_nearly_full_disk() {
    let Some(fs) = SmallFs::mount("8m") else { return };
    std::fs::write(fs.dir.path().join("filler"), vec![1u8; 5 << 20]).expect("fill the disk");
    let data_dir = fs.dir.path().join("data");
    let stderr = stderr_of_start(serve(&["--data-dir", path_arg(&data_dir)]));
    assert!(stderr.contains("no room to prepare the WAL"), "{stderr}");
    let server = Running::start(serve(&["--data-dir", path_arg(&data_dir)]));
    let (status, body) = server.post("/v1/queues/q/tasks", json!({"kind": "k"})).await;
    assert_eq!(status, 201, "{body}");
}

/// Fills the file system of `dir` with the file `dir/name`, written a MiB at a
/// time and then a page at a time until nothing more fits.
fn fill(dir: &Path, name: &str) -> std::fs::File {
    use std::io::Write as _;
    let mut file = std::fs::File::create(dir.join(name)).expect("create the filler");
    for chunk in [1 << 20, 4096] {
        let bytes = vec![1u8; chunk];
        loop {
            match file.write_all(&bytes) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling the disk: {error}"),
            }
        }
    }
    file
}

/// Enqueues `payload` into `q` until the server refuses: the ids it stored and
/// the refusal. Panics if none comes within `limit` enqueues.
async fn enqueue_until_refused(server: &Running, payload: &str, limit: usize) -> (Vec<String>, u16, Value) {
    let mut stored = Vec::new();
    for _ in 0..limit {
        let (status, body) =
            server.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": payload})).await;
        if status != 201 {
            return (stored, status, body);
        }
        stored.push(body["id"].as_str().expect("an id").to_owned());
    }
    panic!("{limit} enqueues of {} bytes were all stored on a full disk", payload.len());
}

#[track_caller]
fn assert_insufficient_storage(status: u16, body: &Value) {
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(message.contains("disk is full") && message.contains("free space"), "{message}");
}

/// A full disk under the embedded store: enqueues are refused with 507
/// `insufficient_storage` and nothing of them is stored, a small one too, for
/// as long as the disk stays full; reads answer; leases and acks of tasks
/// already stored go on (in the room of the reserve the store gives back);
/// once space is freed the same server takes enqueues again, without a
/// restart; and after a clean stop and a start every acknowledged enqueue and
/// ack is there.
#[tokio::test]
async fn a_full_disk_refuses_writes_with_507_and_the_server_recovers_when_space_is_freed() {
    let Some(fs) = SmallFs::mount("64m") else { return };
    let data_dir = fs.dir.path().join("data");
    let server = Running::start(serve(&["--data-dir", path_arg(&data_dir)]));
    // Tasks stored before the disk fills: two leased, to be acked later.
    let mut stored = Vec::new();
    for n in 0..4 {
        let (status, body) = server.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": n})).await;
        assert_eq!(status, 201, "{body}");
        stored.push(body["id"].as_str().expect("an id").to_owned());
    }
    let (status, body) = server.post("/v1/queues/q/lease", json!({"max": 2, "lease_ms": 600_000})).await;
    assert_eq!(status, 200, "{body}");
    let leased: Vec<(String, String)> = body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_owned(), t["lease"]["token"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(leased.len(), 2, "{body}");

    let filler = fill(fs.dir.path(), "filler");
    // The WAL was prepared to its working size at start, so commits first go
    // into room it already holds; 64 KiB payloads fill it within a few hundred.
    let payload = "x".repeat(64 << 10);
    let (filled, status, body) = enqueue_until_refused(&server, &payload, 2000).await;
    assert_insufficient_storage(status, &body);
    stored.extend(filled);
    // Refused for as long as the disk is full, a small task too.
    let (status, body) = server.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": 1})).await;
    assert_insufficient_storage(status, &body);

    // Reads answer from what is stored.
    let (status, body) = server.get(&format!("/v1/tasks/{}", stored[3])).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("ready")), "{body}");
    let (status, body) = server.get("/v1/queues/q").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    // Leases and acks go on, in the room of the reserve the store gave back.
    let (status, body) = server.post("/v1/queues/q/lease", json!({"max": 1, "lease_ms": 600_000})).await;
    assert_eq!(status, 200, "{body}");
    let more = &body["tasks"][0];
    let (id, lease) = &leased[0];
    let (status, body) = server.post(&format!("/v1/tasks/{id}/ack"), json!({"lease": lease})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("succeeded")), "{body}");
    let (status, body) = server
        .post(
            &format!("/v1/tasks/{}/ack", more["id"].as_str().unwrap()),
            json!({"lease": more["lease"]["token"]}),
        )
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("succeeded")), "{body}");
    let mut acked = vec![id.clone(), more["id"].as_str().unwrap().to_owned()];
    // Still refused: the disk has not been given room back.
    let (status, body) = server.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": 2})).await;
    assert_insufficient_storage(status, &body);

    // Space freed: the same server stores again at once.
    drop(filler);
    std::fs::remove_file(fs.dir.path().join("filler")).expect("remove the filler");
    let (status, body) = server.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": "after"})).await;
    assert_eq!(status, 201, "{body}");
    stored.push(body["id"].as_str().expect("an id").to_owned());
    let (id, lease) = &leased[1];
    let (status, body) = server.post(&format!("/v1/tasks/{id}/ack"), json!({"lease": lease})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("succeeded")), "{body}");
    acked.push(id.clone());

    let status = server.stop();
    assert!(status.success(), "a clean stop after the disk was full: {status:?}");
    let server = Running::start(serve(&["--data-dir", path_arg(&data_dir)]));
    for id in &stored {
        let (status, body) = server.get(&format!("/v1/tasks/{id}")).await;
        let state = if acked.contains(id) { "succeeded" } else { "ready" };
        assert_eq!((status, body["state"].as_str()), (200, Some(state)), "task {id}: {body}");
    }
    let (status, body) = server.get("/v1/queues/q").await;
    assert_eq!(status, 200, "{body}");
    eprintln!("{} tasks stored before the disk was full; queue after restart: {body}", stored.len());
}

/// A clean stop with the disk full, and a start while not a byte is free: the
/// start either succeeds or is refused saying how much space it needs, and
/// with that much freed it starts; either way every acknowledged task is there.
#[tokio::test]
async fn the_embedded_store_stops_on_a_full_disk_and_says_how_much_room_a_start_needs() {
    let Some(fs) = SmallFs::mount("64m") else { return };
    let data_dir = fs.dir.path().join("data");
    let server = Running::start(serve(&["--data-dir", path_arg(&data_dir)]));
    let _filler = fill(fs.dir.path(), "filler");
    let payload = "x".repeat(64 << 10);
    let (stored, status, body) = enqueue_until_refused(&server, &payload, 2000).await;
    assert_insufficient_storage(status, &body);
    let status = server.stop();
    assert!(status.success(), "a clean stop on a full disk: {status:?}");
    // The store gave its reserve back when the disk filled: fill that too.
    let filler = fill(fs.dir.path(), "filler-2");

    let started = serve(&["--data-dir", path_arg(&data_dir)]).spawn().expect("start cherga");
    let mut line = String::new();
    let mut child = started;
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read stdout");
    let server = if let Some(base) = line.trim().strip_prefix("listening on ") {
        // It started on the full disk.
        eprintln!("started again on the full disk");
        Running { base: base.to_owned(), child }
    } else {
        let (status, stderr) = exit_of(child);
        assert!(!status.success(), "{stderr}");
        let needed = needed_mib(&stderr);
        eprintln!("a start on the full disk was refused, needing {needed} MiB");
        let len = filler.metadata().expect("filler").len();
        filler.set_len(len.saturating_sub((needed * f64::from(1 << 20)).ceil() as u64)).expect("free space");
        Running::start(serve(&["--data-dir", path_arg(&data_dir)]))
    };
    for id in &stored {
        let (status, body) = server.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!((status, body["state"].as_str()), (200, Some("ready")), "task {id}: {body}");
    }
    let status = server.stop();
    assert!(status.success(), "a clean stop: {status:?}");

    // A new store on a disk without a byte free cannot even write its first
    // page: refused, saying how much room it needs, and that much is enough.
    let _filler = fill(fs.dir.path(), "filler-3");
    let new_dir = fs.dir.path().join("new");
    let stderr = fails_to_start(serve(&["--data-dir", path_arg(&new_dir)]));
    let needed = needed_mib(&stderr);
    eprintln!("a new store on a full disk was refused, needing {needed} MiB");
    let freed = (needed * f64::from(1 << 20)).ceil() as u64;
    let first =
        std::fs::OpenOptions::new().write(true).open(fs.dir.path().join("filler")).expect("the filler");
    let len = first.metadata().expect("filler").len();
    first.set_len(len.checked_sub(freed).expect("the filler holds that much")).expect("free space");
    let server = Running::start(serve(&["--data-dir", path_arg(&new_dir)]));
    let (status, body) = server.post("/v1/queues/q/tasks", json!({"kind": "k"})).await;
    assert_eq!(status, 201, "{body}");
    assert!(server.stop().success());
}

/// The MiB a refused start says it needs: "… to open the store (0.0 MiB free):
/// free at least 4.1 MiB there and start again".
fn needed_mib(stderr: &str) -> f64 {
    assert!(stderr.contains("to open the store"), "{stderr}");
    stderr
        .split("free at least ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no amount of space in:\n{stderr}"))
}
