//! The dashboard (`/ui`) in a real browser: headless Chromium driven over
//! WebDriver by chromedriver (Debian's `chromium` and `chromium-driver`), spoken
//! to with plain HTTP. Without them the tests skip and record the skip (with
//! `CHERGA_TEST_NO_SKIP` set, as in CI, they fail instead).
//!
//! With `CHERGA_UI_SCREENSHOTS=<dir>` the tests save a PNG of each page there
//! (`docs/ui/` holds the ones the README shows).

use super::harness::{Backend, Proxy, Server, http, wait_until};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest a page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// A headless Chromium behind its own chromedriver.
struct Browser {
    driver: Child,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

/// `name` if it is an executable file on the PATH (or a path to one).
fn executable(name: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .collect()
    };
    candidates.into_iter().find(|path| path.is_file())
}

impl Browser {
    /// Starts chromedriver and a browser session; `None` (the skip recorded)
    /// when either program is missing.
    async fn start() -> Option<Self> {
        let driver_name = std::env::var("CHERGA_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium_name = std::env::var("CHERGA_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let (Some(driver_path), Some(chromium)) = (executable(&driver_name), executable(&chromium_name))
        else {
            cherga_store::testkit::skip(&format!(
                "no {driver_name} or {chromium_name} (apt-get install chromium chromium-driver)"
            ));
            return None;
        };
        // A free port for chromedriver (it cannot be told to pick one and say).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let client = http();
        let base = format!("http://127.0.0.1:{port}");
        wait_until(PATIENCE, "chromedriver to answer", || {
            let client = client.clone();
            let url = format!("{base}/status");
            async move {
                match client.get(url).send().await {
                    Ok(response) => response.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1360,900", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let answer: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {answer}"))
            .to_owned();
        Some(Self { driver, session: format!("{base}/session/{id}"), client, _profile: profile })
    }

    /// A WebDriver command: its `value`, or the error it answered.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.client.get(&url),
            "DELETE" => self.client.delete(&url),
            _ => self.client.post(&url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request.send().await.unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let ok = response.status().is_success();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if ok { Ok(answer["value"].clone()) } else { Err(answer["value"].clone()) }
    }

    async fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body).await.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({"url": url}))).await;
    }

    async fn url(&self) -> String {
        self.must("GET", "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let found =
            self.must("POST", "/elements", Some(json!({"using": "css selector", "value": css}))).await;
        found.as_array().unwrap().iter().map(|e| e[ELEMENT].as_str().unwrap().to_owned()).collect()
    }

    /// Waits for an element matching `css`; its reference.
    async fn wait_for(&self, css: &str) -> String {
        let started = std::time::Instant::now();
        loop {
            if let Some(found) = self.find_all(css).await.into_iter().next() {
                return found;
            }
            assert!(started.elapsed() < PATIENCE, "waited {PATIENCE:?} for an element {css:?} on the page");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until an element matching `css` has `attribute` equal to `want`.
    async fn wait_attribute(&self, css: &str, attribute: &str, want: &str) {
        let mut last = String::new();
        let what = format!("{css:?} to have {attribute}={want:?}");
        let started = std::time::Instant::now();
        loop {
            if let Some(element) = self.find_all(css).await.into_iter().next() {
                last = self.attribute(&element, attribute).await.unwrap_or_default();
                if last == want {
                    return;
                }
            }
            assert!(started.elapsed() < PATIENCE, "waited {PATIENCE:?} for {what}; it is {last:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the first element matching `css` shows `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        let mut last = String::new();
        let started = std::time::Instant::now();
        loop {
            // The page may render the element anew between the find and the
            // read (a stale reference): then look again.
            if let Some(element) = self.find_all(css).await.into_iter().next()
                && let Ok(text) = self.command("GET", &format!("/element/{element}/text"), None).await
            {
                last = text.as_str().unwrap_or_default().to_owned();
                if last == want {
                    return;
                }
            }
            assert!(
                started.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {css:?} to show {want:?}; it shows {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn text(&self, element: &str) -> String {
        self.must("GET", &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn attribute(&self, element: &str, name: &str) -> Option<String> {
        let value = self.command("GET", &format!("/element/{element}/attribute/{name}"), None).await.ok()?;
        value.as_str().map(str::to_owned)
    }

    /// Clicks the first element matching `css`, once there; found again if the
    /// page rendered it anew in between (a stale reference).
    async fn click(&self, css: &str) {
        let started = std::time::Instant::now();
        loop {
            let element = self.wait_for(css).await;
            match self.command("POST", &format!("/element/{element}/click"), None).await {
                Ok(_) => return,
                Err(e) if e["error"] == "stale element reference" && started.elapsed() < PATIENCE => {}
                Err(e) => panic!("WebDriver click on {css:?}: {e}"),
            }
        }
    }

    /// Empties the text field matching `css`, once there.
    async fn clear(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.must("POST", &format!("/element/{element}/clear"), None).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        self.must("POST", &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    /// Whether `element` is still in the page (a reload would have replaced it).
    async fn still_attached(&self, element: &str) -> bool {
        self.command("GET", &format!("/element/{element}/name"), None).await.is_ok()
    }

    /// Saves the page as `<name>.png` in `CHERGA_UI_SCREENSHOTS`, when set.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("CHERGA_UI_SCREENSHOTS") else { return };
        let png = self.must("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), bytes).unwrap();
    }

    async fn quit(mut self) {
        let _ = self.command("DELETE", "", None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After `quit` this finds the driver gone; after a failed test it ends it
        // (and chromedriver its browser).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn id(task: &Value) -> String {
    task["id"].as_str().unwrap_or_else(|| panic!("no task id in {task}")).to_owned()
}

/// A task that fails until it is dead turns up in the dead letters; retry there
/// and it succeeds on the page without a reload. A payload with a script tag is
/// shown as text, and runs nothing.
/// A server with authentication on (one signing key), and a way to mint tokens
/// for it: `mint(subject, scopes)`. The directory holds the key file.
async fn server_with_auth() -> (tempfile::TempDir, Server, impl Fn(&str, &[&str]) -> String) {
    use cherga_api::auth::KeyFile;
    let dir = tempfile::tempdir().unwrap();
    let key = cherga_auth::generate(cherga_auth::Alg::EdDSA, "k1").unwrap();
    let keys_path = dir.path().join("keys.json");
    std::fs::write(&keys_path, serde_json::to_string(&KeyFile { keys: vec![key.clone()] }).unwrap()).unwrap();
    let server = Server::start_with(&Backend::sqlite(), &["--auth-keys", keys_path.to_str().unwrap()]).await;
    let keys = cherga_auth::KeySet::from_file_contents(&KeyFile { keys: vec![key] }).unwrap();
    let mint = move |subject: &str, scopes: &[&str]| {
        let now_s =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let new = cherga_auth::NewToken {
            subject: subject.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            issuer: "cherga".into(),
            audience: "cherga".into(),
            now_s,
            ttl_s: 3600,
            jti: None,
        };
        cherga_auth::issue(&keys, Some("k1"), &new).unwrap().0
    };
    (dir, server, mint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_retried_from_the_dashboard_succeeds_live() {
    let Some(browser) = Browser::start().await else { return };
    let server = Server::start(&Backend::sqlite()).await;
    let (status, _) = server.put("/v1/queues/mail", json!({"max_attempts": 2})).await;
    assert_eq!(status, 200);
    let (status, task) = server
        .post("/v1/queues/mail/tasks", json!({"kind": "send", "payload": {"to": "ops@example.com"}}))
        .await;
    assert_eq!(status, 201, "{task}");
    let doomed = id(&task);
    // Fails until dead: two attempts, two nacks.
    for attempt in 1..=2 {
        let (status, leased) =
            server.post("/v1/queues/mail/lease", json!({"max": 1, "worker": "mailer-1"})).await;
        assert_eq!(status, 200, "{leased}");
        let lease = leased["tasks"][0]["lease"]["token"].as_str().unwrap().to_owned();
        let (status, nacked) = server
            .post(
                &format!("/v1/tasks/{doomed}/nack"),
                json!({"lease": lease, "error": "smtp: connection refused", "retry_in_ms": 0}),
            )
            .await;
        assert_eq!(status, 200, "attempt {attempt}: {nacked}");
        if attempt == 1 {
            wait_until(PATIENCE, "the nacked task to be ready again", || async {
                server.get(&format!("/v1/tasks/{doomed}")).await.1["state"] == "ready"
            })
            .await;
        }
    }
    assert_eq!(server.get(&format!("/v1/tasks/{doomed}")).await.1["state"], "dead");
    let xss = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let (_, task) =
        server.post("/v1/queues/web/tasks", json!({"kind": "render", "payload": {"comment": xss}})).await;
    let hostile = id(&task);
    for n in 0..3 {
        server
            .post("/v1/queues/reports/tasks", json!({"kind": "daily", "payload": {"n": n}, "group": "eu"}))
            .await;
    }

    // The overview lists the queues with their counts.
    browser.goto(&server.url("/ui")).await;
    browser.wait_for("#queues tr[data-queue=\"mail\"]").await;
    browser.wait_attribute("#live", "class", "live on").await;
    let dead_cell = browser.wait_for("#queues tr[data-queue=\"mail\"] td[data-count=\"dead\"]").await;
    assert_eq!(browser.text(&dead_cell).await, "1");
    browser.screenshot("overview").await;

    // Dead letters, grouped by error; retry, and watch it run to success.
    browser.click("a[data-nav=\"dead\"]").await;
    let row = format!("tr[data-task=\"{doomed}\"]");
    browser.wait_for(&row).await;
    let group = browser.wait_for(".dead-group .error-text").await;
    assert_eq!(browser.text(&group).await, "smtp: connection refused");
    browser.screenshot("dead-letters").await;
    let page = browser.wait_for("body").await;
    browser.click(&format!("button[data-retry=\"{doomed}\"]")).await;
    browser.wait_attribute(&row, "data-state", "ready").await;
    let (status, leased) =
        server.post("/v1/queues/mail/lease", json!({"max": 1, "worker": "mailer-2"})).await;
    assert_eq!((status, id(&leased["tasks"][0])), (200, doomed.clone()), "{leased}");
    browser.wait_attribute(&row, "data-state", "running").await;
    let lease = leased["tasks"][0]["lease"]["token"].as_str().unwrap().to_owned();
    let (status, acked) = server
        .post(&format!("/v1/tasks/{doomed}/ack"), json!({"lease": lease, "result": {"sent": true}}))
        .await;
    assert_eq!(status, 200, "{acked}");
    browser.wait_attribute(&row, "data-state", "succeeded").await;
    assert!(browser.still_attached(&page).await, "the page was reloaded");

    // The task page: its attempts (two failed, one succeeded) and events.
    browser.click(&format!("{row} a")).await;
    browser.wait_for("#task-state [data-state=\"succeeded\"]").await;
    browser.wait_for("#history li.outcome-succeeded").await;
    assert_eq!(browser.find_all("#history li.outcome-failed").await.len(), 2);
    browser.wait_for("#events tr[data-event]").await;
    browser.screenshot("task").await;

    // A hostile payload is text: no script or image element comes of it.
    browser.goto(&server.url(&format!("/ui#/task/{hostile}"))).await;
    let payload = browser.wait_for("#payload").await;
    assert!(browser.text(&payload).await.contains(xss), "{}", browser.text(&payload).await);
    assert_eq!(browser.find_all("#payload *").await.len(), 0, "the payload became elements");
    assert_eq!(browser.find_all("script").await.len(), 1, "only app.js is a script");
    let alert = browser.command("GET", "/alert/text", None).await;
    assert!(alert.is_err(), "an alert is open: {alert:?}");

    // The queue page, by state.
    browser.goto(&server.url("/ui#/queue/reports")).await;
    browser.wait_for("#tasks tr[data-task]").await;
    assert_eq!(browser.find_all("#tasks tr[data-task]").await.len(), 3);
    let oldest = browser.wait_for("#oldest-ready").await;
    wait_until(PATIENCE, "the age of the oldest ready task", || async {
        browser.text(&oldest).await.starts_with("oldest ready task enqueued")
    })
    .await;
    browser.screenshot("queue").await;
    browser.quit().await;
}

/// With auth on, the page asks for a token, keeps it out of the URL, and offers
/// only what the token's scopes allow: a `consume:` token gets no purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_token_is_not_offered_purge() {
    let Some(browser) = Browser::start().await else { return };
    let (_dir, server, mint) = server_with_auth().await;
    let admin = mint("ops", &["admin"]);
    let consumer = mint("mailer", &["consume:mail"]);
    let enqueued = http()
        .post(server.url("/v1/queues/mail/tasks"))
        .bearer_auth(&admin)
        .json(&json!({"kind": "send"}))
        .send()
        .await
        .unwrap();
    assert_eq!(enqueued.status(), 201);

    browser.goto(&server.url("/ui")).await;
    browser.wait_for("#token").await;
    browser.screenshot("sign-in").await;
    browser.type_into("#token", &consumer).await;
    browser.click("#login button[type=submit]").await;
    browser.click("#queues tr[data-queue=\"mail\"] a").await;
    browser.wait_for("#tasks tr[data-task]").await;
    let who = browser.wait_for("#who").await;
    assert_eq!(browser.text(&who).await, "mailer · consume:mail");
    assert!(browser.find_all("#bulk").await.len() == 1, "the bulk card is shown");
    assert_eq!(browser.find_all("[data-action=\"bulk-purge\"]").await, Vec::<String>::new(), "purge offered");
    assert_eq!(browser.find_all("#pause").await, Vec::<String>::new(), "pause offered");
    assert!(!browser.url().await.contains(&consumer), "the token is in the URL");

    // The same page with an admin token offers them: the check above can fail.
    browser.click("#logout").await;
    browser.type_into("#token", &admin).await;
    browser.click("#login button[type=submit]").await;
    browser.wait_for("[data-action=\"bulk-purge\"]").await;
    browser.wait_for("#pause").await;
    browser.quit().await;
}

/// The queue page searches the whole queue, not only the page shown: tasks of a
/// kind enqueued after the first page are found by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_page_searches_the_whole_queue() {
    let Some(browser) = Browser::start().await else { return };
    let server = Server::start(&Backend::sqlite()).await;
    let mut tasks: Vec<Value> = (0..120).map(|i| json!({"kind": "email", "payload": i})).collect();
    tasks
        .extend((0..3).map(|i| json!({"kind": "refund", "payload": i, "idempotency_key": format!("r-{i}")})));
    let (status, _) = server.post("/v1/queues/shop/tasks/batch", json!({ "tasks": tasks })).await;
    assert_eq!(status, 200);
    browser.goto(&server.url("/ui#/queue/shop")).await;
    browser.wait_text("#page-summary", "50 in this page").await;
    assert!(browser.find_all("#tasks tr[data-task]").await.len() == 50);
    browser.type_into("#task-search", "refund\u{E007}").await;
    browser.wait_text("#page-summary", "3 in this page with kind refund").await;
    assert_eq!(browser.find_all("#tasks tr[data-task]").await.len(), 3);
    browser.screenshot("queue-search").await;
    // By idempotency key: one task.
    browser.click("#task-search-field option[value=\"key\"]").await;
    let search = browser.wait_for("#task-search").await;
    browser.must("POST", &format!("/element/{search}/clear"), Some(json!({}))).await;
    browser.type_into("#task-search", "r-2\u{E007}").await;
    browser.wait_text("#page-summary", "1 in this page with key r-2").await;
    browser.quit().await;
}

/// On a dead task's page, "Edit payload & retry" sends the payload as typed
/// (checked as JSON first, and not re-encoded: a number beyond a double's
/// precision stays as typed); the task runs again with it, and the timeline
/// shows the edit with the subject of the token that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_tasks_payload_is_edited_and_retried_from_its_page() {
    let Some(browser) = Browser::start().await else { return };
    let (_dir, server, mint) = server_with_auth().await;
    let admin = mint("ops@example.com", &["admin"]);
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http().request(method, server.url(path)).bearer_auth(&admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let post = |path: &str, body: Value| call(reqwest::Method::POST, path, Some(body));
    assert_eq!(call(reqwest::Method::PUT, "/v1/queues/mail", Some(json!({"max_attempts": 1}))).await.0, 200);
    let (status, task) =
        post("/v1/queues/mail/tasks", json!({"kind": "send", "payload": {"to": "typo@"}})).await;
    assert_eq!(status, 201, "{task}");
    let task_id = id(&serde_json::from_str(&task).unwrap());
    let (_, leased) = post("/v1/queues/mail/lease", json!({"worker": "mailer-1"})).await;
    let leased: Value = serde_json::from_str(&leased).unwrap();
    let lease = leased["tasks"][0]["lease"]["token"].as_str().unwrap().to_owned();
    let (status, dead) =
        post(&format!("/v1/tasks/{task_id}/nack"), json!({"lease": lease, "error": "bad address"})).await;
    assert_eq!(status, 200, "{dead}");

    browser.goto(&server.url("/ui")).await;
    browser.type_into("#token", &admin).await;
    browser.click("#login button[type=submit]").await;
    browser.wait_for("#queues tr[data-queue=\"mail\"]").await;
    browser.goto(&server.url(&format!("/ui#/task/{task_id}"))).await;
    browser.wait_for("#task-state [data-state=\"dead\"]").await;
    browser.click("#edit-payload").await;
    let area = browser.wait_for("#payload-edit").await;
    let prefilled = browser.must("GET", &format!("/element/{area}/property/value"), None).await;
    let prefilled = prefilled.as_str().unwrap_or_default().to_owned();
    assert_eq!(serde_json::from_str::<Value>(&prefilled).ok(), Some(json!({"to": "typo@"})), "{prefilled:?}");

    // Not JSON: refused on the page, nothing sent.
    browser.clear("#payload-edit").await;
    browser.type_into("#payload-edit", "{\"to\": oops").await;
    browser.click("#retry-with-payload").await;
    browser.wait_attribute("#flash", "class", "bad").await;
    let flash = browser.wait_for("#flash").await;
    assert!(browser.text(&flash).await.starts_with("not JSON"), "{}", browser.text(&flash).await);
    let (_, still) = call(reqwest::Method::GET, &format!("/v1/tasks/{task_id}"), None).await;
    assert!(still.contains(r#""state":"dead""#) && still.contains(r#""payload":{"to":"typo@"}"#), "{still}");

    let fixed = r#"{"to": "ops@example.com", "n": 12345678901234567890}"#;
    browser.clear("#payload-edit").await;
    browser.type_into("#payload-edit", fixed).await;
    browser.click("#retry-with-payload").await;
    browser.wait_for("#task-state [data-state=\"ready\"]").await;
    browser.wait_text("#history li.payload-edit .edited-by", "ops@example.com").await;
    assert_eq!(browser.find_all("#history li.outcome-failed").await.len(), 1);
    browser.wait_text("#events tr[data-event] td:nth-child(3) .muted", "(new payload)").await;
    let (_, leased) = post("/v1/queues/mail/lease", json!({"worker": "mailer-2"})).await;
    assert!(
        leased.contains(r#""payload":{"to":"ops@example.com","n":12345678901234567890}"#),
        "the lease has the payload as typed: {leased}"
    );
    let (_, got) = call(reqwest::Method::GET, &format!("/v1/tasks/{task_id}"), None).await;
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["history"][0]["payload_edit"]["by"], "ops@example.com", "{got}");
    browser.wait_for("#task-state [data-state=\"running\"]").await;
    browser.quit().await;
}

/// When the event stream drops the page says so, and when the server is back it
/// resumes after the last event it saw: a change made meanwhile still shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_the_stream_drops_and_catches_up_after() {
    let Some(browser) = Browser::start().await else { return };
    let server = Server::start(&Backend::sqlite()).await;
    let enqueue = || server.post("/v1/queues/mail/tasks", json!({"kind": "send"}));
    assert_eq!(enqueue().await.0, 201);
    let upstream = server.base.strip_prefix("http://").expect("a plain HTTP server").to_owned();
    let proxy = Proxy::start(upstream).await;
    browser.goto(&format!("http://127.0.0.1:{}/ui", proxy.port)).await;
    let ready = "#queues tr[data-queue=\"mail\"] td[data-count=\"ready\"]";
    browser.wait_text(ready, "1").await;
    browser.wait_attribute("#live", "class", "live on").await;
    // An event through the stream first, so the page has an id to resume after.
    assert_eq!(enqueue().await.0, 201);
    browser.wait_text(ready, "2").await;

    proxy.cut();
    browser.wait_attribute("#live", "class", "live off").await;
    browser.wait_text("#live", "disconnected — reconnecting").await;
    assert_eq!(enqueue().await.0, 201);
    proxy.restore();
    browser.wait_attribute("#live", "class", "live on").await;
    // Only the missed event can make the page count again.
    browser.wait_text(ready, "3").await;
    browser.quit().await;
}
