//! One pass of the loop: compute the wait from the timers, wait on the
//! engine (GIL released), queue what became ready (descriptors, ring
//! completions), run due timers, then run what was ready when the pass
//! began, with asyncio's rules (see `ferroloop_core::scheduler`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use ferroloop_core::proactor::UringWaiter;
use ferroloop_core::selector::Waiter;
use ferroloop_core::{Clock, MonotonicClock, Waker};
use pyo3::prelude::*;
use pyo3::types::PyFloat;

use super::fds::queue_fd;
use super::{base_events, Io, Item, LoopCore, EVENT_READ, EVENT_WRITE, WAKER_TOKEN};
use crate::errors::io_err;
use crate::handle::Handle;
use crate::proactor::Owner;

/// Where a test has asked the next pass of any loop to panic
/// (`_ferroloop._test_panic`), once: [`NO_PANIC`] or a `PANIC_AT_*` site.
/// Read with one relaxed load at each site, so an unarmed hook costs a
/// compare per site and pass.
pub(crate) static TEST_PANIC: AtomicU8 = AtomicU8::new(NO_PANIC);
pub(crate) const NO_PANIC: u8 = 0;
/// At the start of a pass, before anything is touched.
pub(crate) const PANIC_AT_PASS: u8 = 1;
/// After the wait, its results taken, the loop's state borrowed.
pub(crate) const PANIC_AT_WAIT: u8 = 2;
/// After due timers moved to the ready queue, the loop's state borrowed.
pub(crate) const PANIC_AT_TIMERS: u8 = 3;

#[inline(always)]
fn test_panic(site: u8) {
    if TEST_PANIC.load(Ordering::Relaxed) == site {
        forced_panic(site);
    }
}

/// [`test_panic`] with the loop's state borrowed, where the code around
/// holds no borrow of its own.
#[inline(always)]
fn test_panic_borrowed(core: &LoopCore, py: Python<'_>, site: u8) {
    if TEST_PANIC.load(Ordering::Relaxed) == site {
        let _st = core.st.borrow_mut(py);
        forced_panic(site);
    }
}

#[cold]
#[inline(never)]
fn forced_panic(site: u8) -> ! {
    TEST_PANIC.store(NO_PANIC, Ordering::Relaxed);
    panic!("ferroloop test panic at site {site}");
}

impl LoopCore {
    /// One pass; see `ferroloop_core::scheduler` for the rules.
    pub(super) fn run_once_impl(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        test_panic(PANIC_AT_PASS);

        // Steps 1 and 2: clean timers, compute the wait.
        enum Wait {
            Skip,
            Native(Waiter),
            Ring(UringWaiter),
            Python(Py<PyAny>),
        }
        let custom_time = Self::time_overridden(slf)?;
        if !custom_time && Self::nothing_to_wait_for(core, py) {
            // Steps 1 to 3 would purge no timer, skip the wait and queue
            // nothing: go straight to the callbacks.
            py.check_signals()?;
            return Self::run_due_and_ready(slf, false, None);
        }
        let now_py = Self::overridden_now(slf, custom_time)?;
        let mut purged = Vec::new();
        let (wait, timeout) = {
            let mut st = core.st.borrow_mut(py);
            let st = &mut *st;
            let mut timeout = st.sched.poll_timeout(
                || now_py.unwrap_or_else(|| MonotonicClock.now()),
                &mut purged,
            );
            // `sock_*` waits are looked at every second, for sockets closed
            // under them (fds.rs): wait no longer than until then.
            if !st.sock_waits.is_empty() {
                let left = (st.next_sweep - MonotonicClock.now()).max(0.0);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            let wait = match &mut st.io {
                // Only the waker is registered and nothing needs waking: a
                // zero wait could report nothing, so skip the system call.
                Io::Native(sel) if timeout == Some(0.0) && sel.len() - st.parked.len() <= 1 => {
                    Wait::Skip
                }
                Io::Native(sel) => {
                    if std::mem::take(&mut st.events_in_hand) {
                        sel.refresh_all();
                    }
                    Wait::Native(sel.prepare_wait())
                }
                // Nothing to submit or reap and no wait wanted: skip it.
                Io::Ring(ring) => {
                    if timeout == Some(0.0) && ring.idle() {
                        Wait::Skip
                    } else {
                        Wait::Ring(ring.prepare_wait())
                    }
                }
                Io::Python(sel) => Wait::Python(sel.clone_ref(py)),
                Io::Closed => Wait::Skip,
            };
            st.polls += u64::from(!matches!(wait, Wait::Skip));
            (wait, timeout)
        };
        // Cancelled timers leave the queue here; dropping them may run Python
        // code (finalizers, weakref callbacks), so only now, unborrowed.
        drop(purged);

        // Step 3: wait, then queue the callbacks of ready descriptors.
        let mut stale = Vec::new();
        // When the wait blocked, the time it began (the statistics count
        // what follows as running again).
        let mut woke_from: Option<f64> = None;
        // `select` refused a descriptor that was closed (EBADF): perhaps a
        // `sock_*` wait's socket, which the sweep below would end.
        let mut bad_fd: Option<PyErr> = None;
        let waited = !matches!(wait, Wait::Skip);
        match wait {
            Wait::Skip => {}
            Wait::Native(mut waiter) => {
                let blocking = timeout != Some(0.0);
                let res = if blocking {
                    let from = core.wait_begins(py);
                    core.sleeping.store(true, Ordering::SeqCst);
                    let r = py.detach(|| waiter.wait(timeout));
                    core.sleeping.store(false, Ordering::SeqCst);
                    woke_from = Some(from);
                    r
                } else {
                    waiter.wait(timeout)
                };
                {
                    if let Some(from) = woke_from {
                        core.wait_ends(py, from);
                    }
                    let mut st = core.st.borrow_mut(py);
                    let st = &mut *st;
                    let mut events = std::mem::take(&mut st.events);
                    if let Io::Native(sel) = &mut st.io {
                        sel.finish_wait(waiter, &mut events);
                    }
                    // Cleared once the events are queued; a pass that finds
                    // it set looks at the edge-triggered registrations again
                    // (level-triggered ones report anyway).
                    st.events_in_hand = true;
                    test_panic(PANIC_AT_WAIT);
                    match res {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e)
                            if e.raw_os_error() == Some(libc::EBADF)
                                && !st.sock_waits.is_empty() =>
                        {
                            bad_fd = Some(io_err(e));
                        }
                        Err(e) => {
                            st.events = events;
                            return Err(io_err(e));
                        }
                    }
                    for ev in events.drain(..) {
                        if ev.token == WAKER_TOKEN {
                            if let Some(w) = &st.waker {
                                w.drain();
                            }
                            continue;
                        }
                        queue_fd(st, ev.fd, ev.readable, ev.writable, py, &mut stale);
                    }
                    st.events = events;
                    st.events_in_hand = false;
                }
            }
            Wait::Ring(first) => {
                let blocking = timeout != Some(0.0);
                let deadline = timeout.map(|t| MonotonicClock.now() + t);
                if blocking {
                    woke_from = Some(core.wait_begins(py));
                }
                let mut waiter = first;
                loop {
                    let left = deadline.map(|d| (d - MonotonicClock.now()).max(0.0));
                    let res = if blocking {
                        core.sleeping.store(true, Ordering::SeqCst);
                        let r = py.detach(|| waiter.wait(left));
                        core.sleeping.store(false, Ordering::SeqCst);
                        r
                    } else {
                        waiter.wait(left)
                    };
                    // A signal (EINTR) ends the wait: its handler runs below.
                    let interrupted = res.is_err();
                    let (woke, again) = Self::reap_ring(slf, waiter, res, &mut stale)?;
                    // What was reaped is queued already: nothing is lost.
                    test_panic_borrowed(core, py, PANIC_AT_WAIT);
                    // Completions that needed no callback (a send that went
                    // out whole) are no reason to run a pass: wait on, for
                    // what is left of the timeout.
                    let expired = left.is_some_and(|l| l <= 0.0);
                    match again {
                        Some(w) if !woke && !interrupted && blocking && !expired => waiter = w,
                        _ => break,
                    }
                }
                if let Some(from) = woke_from {
                    core.wait_ends(py, from);
                }
            }
            Wait::Python(sel) => {
                let to: Option<f64> = timeout;
                if to != Some(0.0) {
                    woke_from = Some(core.wait_begins(py));
                }
                core.sleeping.store(to != Some(0.0), Ordering::SeqCst);
                let ready = sel
                    .bind(py)
                    .call_method1(pyo3::intern!(py, "select"), (to,));
                core.sleeping.store(false, Ordering::SeqCst);
                if let Some(from) = woke_from {
                    core.wait_ends(py, from);
                }
                let ready = match ready {
                    Err(e)
                        if e.is_instance_of::<pyo3::exceptions::PyOSError>(py)
                            && e.value(py)
                                .getattr("errno")
                                .and_then(|n| n.extract::<i32>())
                                .is_ok_and(|n| n == libc::EBADF)
                            && !core.st.borrow(py).sock_waits.is_empty() =>
                    {
                        bad_fd = Some(e);
                        pyo3::types::PyList::empty(py).into_any()
                    }
                    r => r?,
                };
                let mut got: Vec<(RawFd, u32)> = Vec::new();
                for pair in ready.try_iter()? {
                    let pair = pair?;
                    let key = pair.get_item(0)?;
                    let mask: u32 = pair.get_item(1)?.extract()?;
                    got.push((key.getattr(pyo3::intern!(py, "fd"))?.extract()?, mask));
                }
                let mut st = core.st.borrow_mut(py);
                let st = &mut *st;
                test_panic(PANIC_AT_WAIT);
                let waker_fd = st.waker.as_ref().map(Waker::fd);
                for (fd, mask) in got {
                    if Some(fd) == waker_fd {
                        if let Some(w) = &st.waker {
                            w.drain();
                        }
                        continue;
                    }
                    let (r, w) = (mask & EVENT_READ != 0, mask & EVENT_WRITE != 0);
                    queue_fd(st, fd, r, w, py, &mut stale);
                }
            }
        }
        for (fd, write) in stale {
            Self::unwatch_fd(slf, fd, write)?;
        }
        let sweep = {
            let st = core.st.borrow(py);
            !st.sock_waits.is_empty() && MonotonicClock.now() >= st.next_sweep
        };
        if sweep || bad_fd.is_some() {
            let ended = Self::sweep_sock_waits(slf)?;
            if let Some(e) = bad_fd {
                // Not one of the waits: a descriptor closed under some
                // other watch, which asyncio reports the same way.
                if ended == 0 {
                    return Err(e);
                }
            }
        }

        // Run the Python handlers of signals that arrived (Ctrl-C), as
        // asyncio's selector call would. Every pass: a pass may run only C
        // callbacks, and then nothing else would ever check.
        py.check_signals()?;

        // Step 4: due timers.
        let now_py = Self::overridden_now(slf, custom_time)?;
        Self::run_due_and_ready(slf, waited && woke_from.is_none(), now_py)
    }

    /// Steps 4 and 5: move due timers to the ready queue, then run what
    /// was ready when the pass began, timing each callback for the
    /// statistics. `fresh_tick`: the pass waited without blocking, so the
    /// first callback's time starts now rather than at the end of the last
    /// one; `now_py`: the overridden clock's reading, if any.
    fn run_due_and_ready(
        slf: &Bound<'_, Self>,
        fresh_tick: bool,
        now_py: Option<f64>,
    ) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        let (n, clock, mut tick, mut slowest) = {
            let mut st = core.st.borrow_mut(py);
            let st = &mut *st;
            if let Some(first) = st.sched.timers().peek_when() {
                let now = now_py.unwrap_or_else(|| MonotonicClock.now());
                let end = now + st.clock_resolution;
                if first <= end {
                    st.stats.timers_due(now - first, now);
                }
                st.sched.collect_due(end);
            }
            test_panic(PANIC_AT_TIMERS);
            st.stats.passes += 1;
            let clock = st.stats.clock;
            // A callback's time is measured from the end of the one before;
            // after a wait (and the work of queueing what it found), from now.
            let tick = if fresh_tick {
                clock.now()
            } else {
                st.stats.last_tick
            };
            (st.sched.begin_pass(), clock, tick, st.stats.slowest_ticks())
        };

        // Step 5: run what was ready when the pass began, timing each
        // callback for the statistics.
        let debug = core.debug(py);
        let mut ran = 0;
        for _ in 0..n {
            let item = core.st.borrow_mut(py).sched.pop_ready();
            let Some(item) = item else { break };
            if item.0.get().is_cancelled() {
                continue;
            }
            let h = item.0.bind(py);
            let r = if debug {
                Self::run_debug(slf, h)
            } else {
                Handle::run(h)
            };
            ran += 1;
            let now = clock.now();
            let took = now.wrapping_sub(tick);
            tick = now;
            let noted = if took > slowest {
                slowest = took;
                Self::slow_callback(slf, h, took)
            } else {
                Ok(())
            };
            if r.is_err() || noted.is_err() {
                core.callbacks_ran(py, ran, tick);
                return r.and(noted);
            }
        }
        core.callbacks_ran(py, ran, tick);
        Ok(())
    }

    /// True when this pass would skip its wait and find nothing more to
    /// do before the callbacks: some are ready, no timer is queued (so none
    /// to purge or make due), no `sock_*` wait is watched, and the native
    /// selector has nothing registered but the waker, or the ring nothing
    /// to submit or reap.
    #[inline]
    fn nothing_to_wait_for(core: &LoopCore, py: Python<'_>) -> bool {
        let mut st = core.st.borrow_mut(py);
        let st = &mut *st;
        st.sched.begin_pass() > 0
            && st.sched.timers().is_empty()
            && st.sock_waits.is_empty()
            && match &mut st.io {
                // Parked registrations are disarmed: they report nothing.
                Io::Native(sel) => sel.len() - st.parked.len() <= 1,
                Io::Ring(ring) => ring.idle(),
                Io::Python(_) | Io::Closed => false,
            }
    }

    /// The statistics' side of running `ran` callbacks, the last ending at
    /// `tick`.
    #[inline]
    fn callbacks_ran(&self, py: Python<'_>, ran: u64, tick: u64) {
        let mut st = self.st.borrow_mut(py);
        st.stats.callbacks += ran;
        st.stats.last_tick = tick;
    }

    /// Remember `h` as the slowest callback of the statistics' window. A
    /// handle that cannot be described is "<handle>"; what is not an
    /// `Exception` (a KeyboardInterrupt from a signal that arrived while
    /// the description ran) goes on to the caller.
    #[cold]
    fn slow_callback(slf: &Bound<'_, Self>, h: &Bound<'_, Handle>, ticks: u64) -> PyResult<()> {
        let py = slf.py();
        let what = base_events(py)
            .and_then(|be| be.call_method1("_format_handle", (h,)))
            .and_then(|s| s.str().map(|s| s.to_string()));
        let what = match what {
            Ok(w) => w,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                "<handle>".to_owned()
            }
            Err(e) => return Err(e),
        };
        slf.get().st.borrow_mut(py).stats.slow_callback(ticks, what);
        Ok(())
    }

    /// Reap the ring after a wait: queue the callbacks of ready descriptors
    /// and of finished ops. True in the first value when anything was
    /// queued (or must be looked at); the second is the next wait, prepared,
    /// for a caller that waits on when nothing was.
    fn reap_ring(
        slf: &Bound<'_, Self>,
        waiter: UringWaiter,
        res: std::io::Result<()>,
        stale: &mut Vec<(RawFd, bool)>,
    ) -> PyResult<(bool, Option<UringWaiter>)> {
        let py = slf.py();
        let core = slf.get();
        let (mut done, mut shots, had_events) = {
            let mut st = core.st.borrow_mut(py);
            let st = &mut *st;
            let mut events = std::mem::take(&mut st.events);
            let mut done = std::mem::take(&mut st.completions);
            let mut shots = std::mem::take(&mut st.shots);
            if let Io::Ring(ring) = &mut st.io {
                ring.finish_wait(waiter, &mut events, &mut done, &mut shots);
            }
            if let Err(e) = res {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    st.events = events;
                    st.completions = done;
                    st.shots = shots;
                    return Err(io_err(e));
                }
            }
            // A multishot op's results before its last go to its owner,
            // found while the ring is at hand (and before the op's own
            // completion, which comes after them).
            let mut owned = std::mem::take(&mut st.owned_shots);
            if let Io::Ring(ring) = &st.io {
                for s in shots.drain(..) {
                    if let Some(Owner::Read(t)) = ring.shot_owner(&s, &done) {
                        owned.push((t.clone_ref(py), s));
                    }
                }
            }
            st.shots = shots;
            let had_events = !events.is_empty();
            for ev in events.drain(..) {
                if ev.token == WAKER_TOKEN {
                    if let Some(w) = &st.waker {
                        w.drain();
                    }
                    continue;
                }
                queue_fd(st, ev.fd, ev.readable, ev.writable, py, stale);
            }
            st.events = events;
            (done, owned, had_events)
        };
        // Owners are handed their completions, and dropped, with the loop's
        // state unborrowed: dropping the last reference to a transport may
        // run Python code.
        let mut handles = std::mem::take(&mut core.st.borrow_mut(py).reaped_handles);
        for (t, s) in shots.drain(..) {
            if let Some(h) = t.get().shot_received(py, s) {
                handles.push(h);
            }
        }
        for c in done.drain(..) {
            if let Some(h) = Owner::deliver(py, c) {
                handles.push(h);
            }
        }
        let mut st = core.st.borrow_mut(py);
        let st = &mut *st;
        st.completions = done;
        st.owned_shots = shots;
        st.direct_send = handles.len() <= 1;
        let woke = had_events || !handles.is_empty() || st.sched.ready_len() > 0;
        for h in handles.drain(..) {
            st.sched.call_soon(Item::new(h));
        }
        st.reaped_handles = handles;
        let again = match &mut st.io {
            Io::Ring(ring) if !woke => Some(ring.prepare_wait()),
            _ => None,
        };
        Ok((woke, again))
    }

    /// The statistics' side of a blocking wait that begins now.
    fn wait_begins(&self, py: Python<'_>) -> f64 {
        let now = MonotonicClock.now();
        self.st.borrow_mut(py).stats.wait_begins(now);
        now
    }

    /// The statistics' side of the blocking wait begun at `from` ending now.
    fn wait_ends(&self, py: Python<'_>, from: f64) {
        self.st
            .borrow_mut(py)
            .stats
            .wait_ended(from, MonotonicClock.now());
    }

    pub(super) fn run_debug(slf: &Bound<'_, Self>, h: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        core.st.borrow_mut(py).current_handle = Some(h.clone().into_any().unbind());
        let t0 = MonotonicClock.now();
        let res = Handle::run(h);
        let dt = MonotonicClock.now() - t0;
        let old = core.st.borrow_mut(py).current_handle.take();
        drop(old);
        res?;
        let (slow, odd) = {
            let st = core.st.borrow(py);
            let odd = st.slow_callback_obj.as_ref().map(|o| o.clone_ref(py));
            (st.slow_callback_duration, odd)
        };
        let is_slow = match odd {
            // Not a number: compared as asyncio compares it (TypeError for a str).
            Some(o) if slow.is_nan() => PyFloat::new(py, dt).ge(o.bind(py))?,
            _ => dt >= slow,
        };
        if is_slow {
            let be = base_events(py)?;
            let what = be.call_method1("_format_handle", (h,))?;
            be.getattr("logger")?
                .call_method1("warning", ("Executing %s took %.3f seconds", what, dt))?;
        }
        Ok(())
    }
}
