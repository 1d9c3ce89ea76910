//! The HTTP server: axum routes over a [`Store`], long-poll waiters, and the timer
//! that promotes scheduled tasks, expires leases and purges old ones.
//!
//! **Boundary:** this crate translates HTTP to store calls and back. It holds no
//! task state of its own: only who is waiting for which queue.
//!
//! The one entry point is [`serve`], which takes a listener, a store, a config and
//! a shutdown future, so `main` and tests differ only in arguments.

mod error;
mod extract;
mod routes;
mod waiters;

use cherga_api::Limits;
use cherga_core::Millis;
use cherga_store::Store;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use error::ApiError;
pub use routes::router;
use waiters::Waiters;

/// Server settings, validated by the binary before they get here.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest payload or result in bytes.
    pub max_payload_bytes: usize,
}

/// Longest the timer sleeps without looking, so purges run even when idle.
const TIMER_IDLE_MS: Millis = 1_000;

/// What every handler shares.
pub struct App<S> {
    store: Arc<S>,
    limits: Limits,
    waiters: Arc<Waiters>,
    timer: Timer,
    /// Becomes `true` when the server starts shutting down: long polls return early.
    shutting_down: watch::Receiver<bool>,
}

/// Wakes the timer loop early when a timer earlier than its planned wake appears.
struct Timer {
    kick: Notify,
    /// When the timer loop plans to run next.
    planned: AtomicI64,
}

impl Timer {
    /// Makes sure the timer runs by `at`.
    fn due_by(&self, at: Millis) {
        if at < self.planned.load(Ordering::Relaxed) {
            self.kick.notify_one();
        }
    }
}

impl<S: Store> App<S> {
    /// The shared state for a router over `store`. The returned sender starts a
    /// shutdown when it sends `true`.
    pub fn new(store: Arc<S>, config: &ServerConfig) -> (Arc<Self>, watch::Sender<bool>) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let waiters = Arc::new(Waiters::default());
        let remote = waiters.clone();
        store.on_remote_work(Arc::new(move |queue: &str| remote.wake(queue)));
        let app = Arc::new(Self {
            store,
            limits: Limits { max_payload_bytes: config.max_payload_bytes },
            waiters,
            timer: Timer { kick: Notify::new(), planned: AtomicI64::new(0) },
            shutting_down: shutdown_rx,
        });
        (app, shutdown_tx)
    }

    /// Runs the timers until shutdown: promotes due tasks, expires leases, purges,
    /// and wakes the long polls of queues where something became leasable.
    pub async fn run_timers(self: Arc<Self>) {
        let mut shutting_down = self.shutting_down.clone();
        let mut failures = 0u32;
        loop {
            let now = now_ms();
            let next = match self.store.tick(now).await {
                Ok(report) => {
                    failures = 0;
                    for queue in &report.woken_queues {
                        self.waiters.wake(queue);
                    }
                    if report.expired > 0 || report.purged > 0 {
                        tracing::debug!(
                            expired = report.expired,
                            promoted = report.promoted,
                            purged = report.purged,
                            "timers ran"
                        );
                    }
                    // A full tick may have left work behind: look again at once.
                    let busy = report.promoted + report.expired >= 10_000;
                    let idle_wake = now + TIMER_IDLE_MS;
                    if busy { now } else { report.next_timer.map_or(idle_wake, |t| t.min(idle_wake)) }
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::error!(%error, failures, "timer tick failed; retrying");
                    }
                    now + TIMER_IDLE_MS
                }
            };
            self.timer.planned.store(next, Ordering::Relaxed);
            let sleep_ms = (next - now_ms()).max(0) as u64;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                () = self.timer.kick.notified() => {}
                _ = shutting_down.wait_for(|&s| s) => return,
            }
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting,
/// finishes the requests in flight (long polls return at once with what they
/// have), stops the timers and closes the store.
///
/// # Errors
/// When the listener fails.
pub async fn serve<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (app, shutdown_tx) = App::new(store.clone(), &config);
    let timers = tokio::spawn(app.clone().run_timers());
    let router = router(app, &config);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = shutdown_tx.send(true);
    };
    let served = axum::serve(listener, router).with_graceful_shutdown(signal).await;
    let _ = timers.await;
    store.close().await;
    tracing::info!("store closed");
    served
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}
