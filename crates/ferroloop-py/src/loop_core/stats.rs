//! The loop's always-on statistics (`loop.stats()`).
//!
//! Everything here is kept cheap enough to leave on: counters are plain
//! increments, the precise clock is read only around waits that block (a
//! system call anyway) and when timers are due (the pass reads it then
//! already), and each callback is timed with one read of the [`TickClock`]
//! (the TSC where the kernel trusts it).

use ferroloop_core::TickClock;

/// How long a "recent" maximum lasts: the slowest callback and the largest
/// lag are reported from the current window and the one before it.
const WINDOW: f64 = 60.0;

/// A window's maxima.
#[derive(Default)]
struct Recent {
    lag: f64,
    slow_ticks: u64,
    slow_what: Option<String>,
}

pub(super) struct Stats {
    pub passes: u64,
    pub callbacks: u64,
    busy: f64,
    wait: f64,
    /// When the current stretch of running (not waiting) began, while the
    /// loop runs.
    busy_from: Option<f64>,
    /// The tick clock's reading when the last callback ended (or the loop
    /// woke), which the next callback's duration is measured from.
    pub last_tick: u64,
    lag: f64,
    recent: [Recent; 2],
    window_start: f64,
    pub clock: TickClock,
}

/// What `stats()` hands to Python.
pub(super) type Snapshot = (u64, u64, f64, f64, f64, f64, Option<String>, Option<f64>);

impl Stats {
    pub fn new(now: f64) -> Self {
        let clock = TickClock::get();
        Stats {
            passes: 0,
            callbacks: 0,
            busy: 0.0,
            wait: 0.0,
            busy_from: None,
            last_tick: clock.now(),
            lag: 0.0,
            recent: Default::default(),
            window_start: now,
            clock,
        }
    }

    fn rotate(&mut self, now: f64) {
        let age = now - self.window_start;
        if age >= WINDOW {
            let old = std::mem::take(&mut self.recent[0]);
            self.recent[1] = if age >= 2.0 * WINDOW {
                Recent::default()
            } else {
                old
            };
            self.window_start = now;
        }
    }

    /// The loop starts running (or a pass is run on its own).
    pub fn start(&mut self, now: f64) {
        self.busy_from = Some(now);
        self.last_tick = self.clock.now();
    }

    /// The loop stops running.
    pub fn stop(&mut self, now: f64) {
        if let Some(from) = self.busy_from.take() {
            self.busy += (now - from).max(0.0);
        }
    }

    /// A blocking wait begins at `now`.
    pub fn wait_begins(&mut self, now: f64) {
        self.stop(now);
        self.rotate(now);
    }

    /// The blocking wait that began at `from` ended at `now`.
    pub fn wait_ended(&mut self, from: f64, now: f64) {
        self.wait += (now - from).max(0.0);
        self.busy_from = Some(now);
        self.last_tick = self.clock.now();
    }

    /// Timers became due; the earliest was due `lag` seconds ago.
    pub fn timers_due(&mut self, lag: f64, now: f64) {
        self.rotate(now);
        self.lag = lag.max(0.0);
        if self.lag > self.recent[0].lag {
            self.recent[0].lag = self.lag;
        }
    }

    /// The longest callback of the current window, in ticks.
    #[inline]
    pub fn slowest_ticks(&self) -> u64 {
        self.recent[0].slow_ticks
    }

    /// A callback took `ticks`, longer than any other in the window.
    pub fn slow_callback(&mut self, ticks: u64, what: String) {
        self.recent[0].slow_ticks = ticks;
        self.recent[0].slow_what = Some(what);
    }

    pub fn snapshot(&mut self, now: f64) -> Snapshot {
        self.rotate(now);
        let busy = self.busy + self.busy_from.map_or(0.0, |f| (now - f).max(0.0));
        let slow = self
            .recent
            .iter()
            .max_by_key(|r| r.slow_ticks)
            .filter(|r| r.slow_ticks > 0);
        let max_lag = self.recent[0].lag.max(self.recent[1].lag);
        (
            self.passes,
            self.callbacks,
            busy,
            self.wait,
            self.lag,
            max_lag,
            slow.and_then(|r| r.slow_what.clone()),
            slow.map(|r| self.clock.secs(r.slow_ticks)),
        )
    }
}
