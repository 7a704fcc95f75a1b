//! Clocks. Time is a `f64` of seconds, like asyncio's `loop.time()`.
//!
//! [`MonotonicClock`] reads `CLOCK_MONOTONIC`, the clock that CPython's
//! `time.monotonic()` reads on Linux, and converts nanoseconds to seconds the
//! same way, so a deadline computed in Rust compares correctly with one
//! computed in Python.

use std::cell::Cell;
use std::rc::Rc;

/// A source of the current time in seconds.
pub trait Clock {
    /// The current time in seconds.
    fn now(&self) -> f64;
    /// The clock's resolution in seconds (asyncio adds it to "now" when it
    /// decides which timers are due).
    fn resolution(&self) -> f64;
}

/// The system monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl MonotonicClock {
    /// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
    #[inline]
    // time_t and c_long are i64 on 64-bit Linux but not on every target.
    #[allow(clippy::unnecessary_cast)]
    pub fn now_ns() -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
    }

    /// Nanoseconds to seconds, as CPython's `_PyTime_AsSecondsDouble` does it.
    #[inline]
    pub fn ns_to_secs(ns: i64) -> f64 {
        if ns % 1_000_000_000 == 0 {
            (ns / 1_000_000_000) as f64
        } else {
            ns as f64 / 1e9
        }
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> f64 {
        Self::ns_to_secs(Self::now_ns())
    }

    fn resolution(&self) -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
        if rc != 0 {
            return 1e-9;
        }
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }
}

/// A clock that moves only when told to. Cloning shares the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Rc<Cell<f64>>,
}

impl ManualClock {
    /// A manual clock starting at `start` seconds.
    pub fn new(start: f64) -> Self {
        Self {
            now: Rc::new(Cell::new(start)),
        }
    }

    /// Move the clock forward by `secs`.
    pub fn advance(&self, secs: f64) {
        self.now.set(self.now.get() + secs);
    }

    /// Set the clock to `secs`.
    pub fn set(&self, secs: f64) {
        self.now.set(secs);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        self.now.get()
    }

    fn resolution(&self) -> f64 {
        1e-9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let c = MonotonicClock;
        let mut last = c.now();
        for _ in 0..1000 {
            let t = c.now();
            assert!(t >= last);
            last = t;
        }
        assert!(c.resolution() > 0.0 && c.resolution() < 0.01);
    }

    #[test]
    fn conversion_matches_cpython_rule() {
        assert_eq!(MonotonicClock::ns_to_secs(3_000_000_000), 3.0);
        assert_eq!(MonotonicClock::ns_to_secs(1_500_000_000), 1.5);
    }

    #[test]
    fn manual_clock_is_shared_by_clones() {
        let a = ManualClock::new(10.0);
        let b = a.clone();
        a.advance(2.5);
        assert_eq!(b.now(), 12.5);
        b.set(1.0);
        assert_eq!(a.now(), 1.0);
    }
}
