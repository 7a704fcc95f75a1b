//! Ready queue + timer queue, and the rules of one loop pass.
//!
//! One pass of an asyncio loop (`BaseEventLoop._run_once`) is:
//!
//! 1. clean cancelled timers ([`TimerQueue::purge_cancelled`]);
//! 2. wait for I/O: not at all when callbacks are ready or the loop is
//!    stopping, until the earliest timer otherwise (capped at one day), or
//!    for ever when there is nothing to wait for ([`Scheduler::poll_timeout`]);
//! 3. queue the callbacks of ready file descriptors;
//! 4. queue the timers due before `now + clock resolution`
//!    ([`Scheduler::collect_due`]);
//! 5. run the callbacks that were queued when this step began, and no
//!    others: what they schedule runs in the next pass
//!    ([`Scheduler::begin_pass`], then [`Scheduler::pop_ready`] that many times).
//!
//! The scheduler keeps the data and applies these rules; the caller owns the
//! wait and the calls, so it can drop every borrow before running a callback
//! (the Python layer must: a callback may schedule more callbacks).

use std::collections::VecDeque;

pub use crate::timers::Cancel;
use crate::timers::TimerQueue;

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest single wait, in seconds.
pub const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

/// The ready queue and the timer queue of one loop.
pub struct Scheduler<T> {
    ready: VecDeque<T>,
    timers: TimerQueue<T>,
    stopping: bool,
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            timers: TimerQueue::default(),
            stopping: false,
        }
    }
}

impl<T: Cancel> Scheduler<T> {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `item` to run in the next pass (FIFO).
    #[inline]
    pub fn call_soon(&mut self, item: T) {
        self.ready.push_back(item);
    }

    /// Schedule `item` at `when` seconds.
    #[inline]
    pub fn call_at(&mut self, when: f64, item: T) {
        self.timers.push(when, item);
    }

    /// Record that a timer still in the queue was cancelled.
    #[inline]
    pub fn timer_cancelled(&mut self) {
        self.timers.note_cancelled();
    }

    /// Ask the running loop to stop after the current pass.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// True once [`stop`](Self::stop) was called and the loop has not yet
    /// finished the pass.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Forget a stop request (the loop stopped).
    pub fn clear_stopping(&mut self) {
        self.stopping = false;
    }

    /// Number of callbacks ready to run.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The timer queue, to inspect it.
    pub fn timers(&self) -> &TimerQueue<T> {
        &self.timers
    }

    /// Steps 1 and 2: purge cancelled timers (appended to `removed`, for the
    /// caller to drop) and compute how long to wait, in seconds; `None` means
    /// no limit. `now` is read only when a timer needs it.
    pub fn poll_timeout(&mut self, now: impl FnOnce() -> f64, removed: &mut Vec<T>) -> Option<f64> {
        self.timers.purge_cancelled(removed);
        if !self.ready.is_empty() || self.stopping {
            return Some(0.0);
        }
        let when = self.timers.peek_when()?;
        Some((when - now()).clamp(0.0, MAXIMUM_SELECT_TIMEOUT))
    }

    /// Step 4: move the timers due before `end` to the ready queue.
    pub fn collect_due(&mut self, end: f64) {
        while let Some(item) = self.timers.pop_due(end) {
            self.ready.push_back(item);
        }
    }

    /// Step 5: the number of callbacks this pass runs.
    #[inline]
    pub fn begin_pass(&self) -> usize {
        self.ready.len()
    }

    /// The next ready callback (the caller skips cancelled ones).
    #[inline]
    pub fn pop_ready(&mut self) -> Option<T> {
        self.ready.pop_front()
    }

    /// Every queued callback and timer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.ready.iter().chain(self.timers.iter())
    }

    /// Drop every queued callback and timer (closing the loop).
    pub fn clear(&mut self) {
        self.ready.clear();
        self.timers.clear();
    }

    /// Take all queued callbacks and timers out, to drop them outside any borrow.
    pub fn take_all(&mut self) -> (Vec<T>, TimerQueue<T>) {
        let ready = self.ready.drain(..).collect();
        (ready, std::mem::take(&mut self.timers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct Cb(u32, Rc<Cell<bool>>);
    impl Cancel for Cb {
        fn is_cancelled(&self) -> bool {
            self.1.get()
        }
    }
    fn cb(n: u32) -> Cb {
        Cb(n, Rc::new(Cell::new(false)))
    }

    #[test]
    fn timeout_rules() {
        let mut s: Scheduler<Cb> = Scheduler::new();
        assert_eq!(s.poll_timeout(|| 0.0, &mut vec![]), None);
        s.call_at(5.0, cb(1));
        assert_eq!(s.poll_timeout(|| 2.0, &mut vec![]), Some(3.0));
        assert_eq!(s.poll_timeout(|| 9.0, &mut vec![]), Some(0.0));
        s.call_at(1e9, cb(2));
        s.call_soon(cb(3));
        assert_eq!(s.poll_timeout(|| 2.0, &mut vec![]), Some(0.0));
        let mut far: Scheduler<Cb> = Scheduler::new();
        far.call_at(1e9, cb(1));
        assert_eq!(
            far.poll_timeout(|| 0.0, &mut vec![]),
            Some(MAXIMUM_SELECT_TIMEOUT)
        );
        far.stop();
        assert_eq!(far.poll_timeout(|| 0.0, &mut vec![]), Some(0.0));
    }

    #[test]
    fn cancelled_head_timer_does_not_shorten_the_wait() {
        let mut s: Scheduler<Cb> = Scheduler::new();
        let early = cb(1);
        s.call_at(1.0, early.clone());
        s.call_at(10.0, cb(2));
        early.1.set(true);
        s.timer_cancelled();
        assert_eq!(s.poll_timeout(|| 0.0, &mut vec![]), Some(10.0));
    }

    #[test]
    fn pass_runs_only_what_was_ready_when_it_began() {
        let mut s: Scheduler<Cb> = Scheduler::new();
        s.call_soon(cb(1));
        s.call_soon(cb(2));
        let n = s.begin_pass();
        let mut ran = vec![];
        for _ in 0..n {
            let c = s.pop_ready().unwrap();
            ran.push(c.0);
            s.call_soon(cb(c.0 + 10));
        }
        assert_eq!(ran, vec![1, 2]);
        assert_eq!(s.ready_len(), 2);
    }

    #[test]
    fn due_timers_follow_ready_callbacks() {
        let mut s: Scheduler<Cb> = Scheduler::new();
        s.call_at(1.0, cb(10));
        s.call_at(0.5, cb(11));
        s.call_soon(cb(1));
        s.collect_due(2.0);
        let n = s.begin_pass();
        let ran: Vec<u32> = (0..n).map(|_| s.pop_ready().unwrap().0).collect();
        assert_eq!(ran, vec![1, 11, 10]);
    }
}
