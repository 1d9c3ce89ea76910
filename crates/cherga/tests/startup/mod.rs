//! Start-up of the real binary: what `cherga serve` refuses, and what it leaves
//! behind when it does, read from its exit status and its stderr.

use std::io::{BufRead, BufReader, Read};
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
