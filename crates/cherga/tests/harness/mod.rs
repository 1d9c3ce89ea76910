//! Starts the real `cherga` binary on a free port with a temporary data directory.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

pub struct Server {
    child: Option<Child>,
    pub base: String,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    client: reqwest::Client,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Server {
            child: None,
            base: String::new(),
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            client: http(),
        };
        server.restart().await;
        server
    }

    /// Starts the binary on the same data directory (after a kill or a stop).
    pub async fn restart(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cherga"))
            .args(["serve", "--addr", "127.0.0.1:0", "--log", "warn", "--data-dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cherga");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .expect("read the listening line");
        self.base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no chance to flush or close anything.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("reaped");
    }

    /// SIGTERM, then wait for the exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM failed");
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("exit status")
    }

    pub async fn request(&self, method: &str, path: &str, body: String) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, value)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.request("POST", path, body.to_owned()).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("PUT", path, body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, String::new()).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request("DELETE", path, String::new()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
