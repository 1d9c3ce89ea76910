//! When the timer loop (`App::run_timers`) looks next: after each tick it sleeps
//! until the earliest timer the tick reported, and handlers that make an earlier
//! one (a lease, a retry in backoff) move that time forward and wake it.
//!
//! **Invariant:** a timer made at any moment, during a tick too, is looked at by
//! its time: the loop never sleeps past the earliest `at` given to
//! [`Timer::due_by`] since the tick before its sleep began. A tick may not see a
//! lease made while it runs (its report was computed before), so the time the
//! loop plans is the earlier of the tick's report and every `due_by` since the
//! tick began, not the report alone.

use cherga_core::Millis;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::Notify;

pub(crate) struct Timer {
    /// Wakes the loop to read [`Timer::wake_at`] again. A wake-up given while the
    /// loop is not waiting is kept (one permit) for its next wait.
    kick: Notify,
    /// The earliest time the loop must look again. While a tick runs it holds
    /// the earliest `due_by` since the tick began (`Millis::MAX` if none).
    wake_at: AtomicI64,
}

impl Timer {
    pub(crate) fn new() -> Self {
        Self { kick: Notify::new(), wake_at: AtomicI64::new(0) }
    }

    /// Makes sure the timer loop looks by `at`.
    pub(crate) fn due_by(&self, at: Millis) {
        if at < self.wake_at.fetch_min(at, Ordering::AcqRel) {
            self.kick.notify_one();
        }
    }

    /// Called before a tick reads the store: from here on, every `due_by` is
    /// remembered for [`Timer::tick_ended`], whether or not the tick sees it.
    pub(crate) fn tick_starts(&self) {
        self.wake_at.store(Millis::MAX, Ordering::Release);
    }

    /// Called after a tick whose report asks to look again at `next`: when to
    /// look, the earlier of `next` and every timer made while the tick ran.
    pub(crate) fn tick_ended(&self, next: Millis) -> Millis {
        self.wake_at.fetch_min(next, Ordering::AcqRel).min(next)
    }

    /// When to look, as it stands now.
    pub(crate) fn wake_at(&self) -> Millis {
        self.wake_at.load(Ordering::Acquire)
    }

    /// Resolves when `due_by` has moved the wake-up time earlier (also for a call
    /// made since the last wait).
    pub(crate) async fn kicked(&self) {
        self.kick.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;

    const T0: Millis = 1_700_000_000_000;

    /// Whether a wake-up is waiting for the loop's next wait.
    fn kicked(timer: &Timer) -> bool {
        let notified = timer.kick.notified();
        tokio::pin!(notified);
        // One poll takes a kept permit; no runtime is needed for that.
        let waker = std::task::Waker::noop();
        notified.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }

    /// Runs a tick whose report says `next`, with `during` called while it runs,
    /// and returns when the loop then plans to look.
    fn check(timer: &Timer, next: Millis, during: impl FnOnce(&Timer)) -> Millis {
        timer.tick_starts();
        during(timer);
        timer.tick_ended(next)
    }

    #[test]
    fn a_lease_made_during_a_tick_is_not_slept_past() {
        let timer = Timer::new();
        // The loop looked at T0; the tick computed its report (nothing due for a
        // second) before a handler made a lease that expires 100 ms later.
        let planned = check(&timer, T0 + 1_000, |timer| timer.due_by(T0 + 100));
        assert_eq!(planned, T0 + 100, "the loop would sleep past the new lease's expiry");
        assert_eq!(timer.wake_at(), T0 + 100);
    }

    #[test]
    fn the_earliest_of_the_report_and_every_timer_made_during_the_tick_wins() {
        let timer = Timer::new();
        let planned = check(&timer, T0 + 1_000, |timer| {
            timer.due_by(T0 + 700);
            timer.due_by(T0 + 300);
            timer.due_by(T0 + 900);
        });
        assert_eq!(planned, T0 + 300);
        let planned = check(&timer, T0 + 200, |timer| timer.due_by(T0 + 300));
        assert_eq!(planned, T0 + 200, "the report's earlier timer");
        let planned = check(&timer, T0 + 1_000, |_| {});
        assert_eq!(planned, T0 + 1_000, "what an earlier tick saw does not linger");
    }

    #[test]
    fn while_the_loop_sleeps_only_an_earlier_timer_wakes_it() {
        let timer = Timer::new();
        assert_eq!(check(&timer, T0 + 1_000, |_| {}), T0 + 1_000);
        assert!(!kicked(&timer), "no timer was made");
        timer.due_by(T0 + 2_000);
        assert!(!kicked(&timer), "a later timer leaves the sleep alone");
        assert_eq!(timer.wake_at(), T0 + 1_000);
        timer.due_by(T0 + 400);
        assert!(kicked(&timer), "an earlier timer wakes the loop");
        assert_eq!(timer.wake_at(), T0 + 400, "to sleep until the new time");
        timer.due_by(T0 + 400);
        assert!(!kicked(&timer), "the same time again changes nothing");
    }
}
