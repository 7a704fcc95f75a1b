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

/// A cheap clock for timing the loop's callbacks: reading it costs a few
/// nanoseconds, so the loop can read it once per callback and stay within
/// its statistics' budget. On x86-64, where the kernel itself keeps time
/// with the TSC (its clocksource is `tsc`, so the counter is constant-rate
/// and synchronised across CPUs), it reads the TSC; elsewhere it reads
/// `CLOCK_MONOTONIC_COARSE` (nanoseconds, moving once per kernel tick).
/// Ticks become seconds through [`TickClock::secs`], calibrated against
/// `CLOCK_MONOTONIC`. `FERROLOOP_STATS_CLOCK=coarse` in the environment
/// forces the coarse clock (for a machine whose TSC reads are slow, as under
/// a hypervisor that traps them); `FERROLOOP_STATS_CLOCK=off` stops it (it
/// always reads 0: no callback is timed).
#[derive(Debug, Clone, Copy)]
pub struct TickClock {
    tsc: bool,
    /// Not read at all (`FERROLOOP_STATS_CLOCK=off`).
    off: bool,
    /// The first calibration sample: (ticks, CLOCK_MONOTONIC ns).
    start: (u64, i64),
}

impl TickClock {
    /// The process's tick clock (the source is chosen and the first
    /// calibration sample taken once).
    pub fn get() -> Self {
        static CLOCK: std::sync::OnceLock<TickClock> = std::sync::OnceLock::new();
        *CLOCK.get_or_init(|| {
            let choice = std::env::var_os("FERROLOOP_STATS_CLOCK");
            let off = choice.as_ref().is_some_and(|v| v == "off");
            let tsc = cfg!(target_arch = "x86_64")
                && choice.as_ref().is_none_or(|v| v == "tsc")
                && std::fs::read_to_string(
                    "/sys/devices/system/clocksource/clocksource0/current_clocksource",
                )
                .is_ok_and(|s| s.trim() == "tsc");
            let mut c = TickClock {
                tsc,
                off,
                start: (0, 0),
            };
            c.start = (c.now(), MonotonicClock::now_ns());
            c
        })
    }

    /// The current tick count.
    #[inline]
    pub fn now(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.tsc {
            // SAFETY: RDTSC exists on every x86-64 CPU and only reads the
            // time-stamp counter.
            return unsafe { core::arch::x86_64::_rdtsc() };
        }
        self.slow_now()
    }

    #[cold]
    fn slow_now(&self) -> u64 {
        if self.off {
            0
        } else {
            Self::coarse_ns()
        }
    }

    #[allow(clippy::unnecessary_cast)]
    fn coarse_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE
        // exists on Linux since 2.6.32.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        (ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64) as u64
    }

    /// The smallest duration the clock tells apart, in seconds (the TSC's is
    /// far below a microsecond; the coarse clock's is a kernel tick).
    pub fn resolution(&self) -> f64 {
        if self.tsc {
            return 1e-9;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc != 0 {
            return 0.004;
        }
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    /// `ticks` in seconds. For the TSC, the rate is measured between the
    /// first sample and now; when less than 10 ms separate them, it waits
    /// for that much first, so the rate is good to well under 0.1%.
    pub fn secs(&self, ticks: u64) -> f64 {
        if !self.tsc {
            return ticks as f64 * 1e-9;
        }
        let mut elapsed_ns = MonotonicClock::now_ns() - self.start.1;
        if elapsed_ns < 10_000_000 {
            std::thread::sleep(std::time::Duration::from_nanos(
                (10_000_000 - elapsed_ns) as u64,
            ));
        }
        let now = self.now();
        elapsed_ns = MonotonicClock::now_ns() - self.start.1;
        let rate = now.wrapping_sub(self.start.0) as f64 / elapsed_ns as f64;
        ticks as f64 / rate * 1e-9
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
    fn tick_clock_measures_a_sleep() {
        let c = TickClock::get();
        let t0 = c.now();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let dt = c.secs(c.now().wrapping_sub(t0));
        // The coarse clock moves in kernel ticks (up to 10 ms); a sleep
        // may also overrun on a busy machine.
        assert!((0.015..0.5).contains(&dt), "{dt}");
        assert!(c.resolution() > 0.0 && c.resolution() <= 0.01);
    }

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
