//! The timer queue.
//!
//! A binary heap ordered by `(deadline, insertion order)`: timers with the same
//! deadline fire in the order they were scheduled. Cancellation is lazy, as in
//! asyncio: a cancelled item stays in the heap and reports itself cancelled
//! through [`Cancel`]; the owner tells the queue with [`TimerQueue::note_cancelled`],
//! and the queue drops cancelled items from its head, or rebuilds itself
//! without them once they are more than half of a queue of over 100 items
//! (asyncio's `_MIN_SCHEDULED_TIMER_HANDLES` and
//! `_MIN_CANCELLED_TIMER_HANDLES_FRACTION`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What the queues need to know about a scheduled item.
pub trait Cancel {
    /// True once the item was cancelled; the loop skips it.
    fn is_cancelled(&self) -> bool;
    /// Told when the item leaves the timer queue (it fired, or was dropped as
    /// cancelled). asyncio's `TimerHandle._scheduled` flag follows this.
    fn unscheduled(&self) {}
}

/// Queues of at most this many timers are never compacted.
pub const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A queue of timers ordered by deadline, then by insertion order.
pub struct TimerQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: usize,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: 0,
        }
    }
}

impl<T: Cancel> TimerQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of items in the heap, cancelled ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when the heap holds nothing.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Number of cancelled items still in the heap, as counted by
    /// [`note_cancelled`](Self::note_cancelled).
    pub fn cancelled_count(&self) -> usize {
        self.cancelled
    }

    /// Schedule `item` at `when` seconds.
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    /// Record that one item still in the heap was cancelled.
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// Deadline of the earliest item, cancelled or not.
    pub fn peek_when(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// asyncio's clean-up at the start of a pass: compact the whole heap when
    /// cancelled items are more than half of a queue of over 100, otherwise
    /// drop cancelled items from its head. The items taken out are appended
    /// to `removed`, so the caller decides when they are dropped (dropping a
    /// Python handle can run arbitrary code).
    pub fn purge_cancelled(&mut self, removed: &mut Vec<T>) {
        let len = self.heap.len();
        if len > MIN_SCHEDULED_FOR_COMPACTION && self.cancelled * 2 > len {
            let old = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(len - self.cancelled.min(len));
            for e in old {
                if e.item.is_cancelled() {
                    e.item.unscheduled();
                    removed.push(e.item);
                } else {
                    kept.push(e);
                }
            }
            self.heap = BinaryHeap::from(kept);
            self.cancelled = 0;
        } else {
            while let Some(head) = self.heap.peek() {
                if !head.item.is_cancelled() {
                    break;
                }
                if let Some(e) = self.heap.pop() {
                    self.cancelled = self.cancelled.saturating_sub(1);
                    e.item.unscheduled();
                    removed.push(e.item);
                }
            }
        }
    }

    /// Pop the earliest item if its deadline is before `end` (asyncio pops a
    /// timer when `when < now + clock_resolution`). Cancelled items are popped
    /// too; the ready queue skips them.
    pub fn pop_due(&mut self, end: f64) -> Option<T> {
        if self.heap.peek()?.when >= end {
            return None;
        }
        let e = self.heap.pop()?;
        e.item.unscheduled();
        Some(e.item)
    }

    /// Every item in the heap, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }

    /// Remove everything (closing the loop).
    pub fn clear(&mut self) {
        self.heap.clear();
        self.cancelled = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct Item {
        id: u32,
        cancelled: Rc<Cell<bool>>,
        scheduled: Rc<Cell<bool>>,
    }
    impl Item {
        fn new(id: u32) -> Self {
            Self {
                id,
                cancelled: Rc::new(Cell::new(false)),
                scheduled: Rc::new(Cell::new(true)),
            }
        }
    }
    impl Cancel for Item {
        fn is_cancelled(&self) -> bool {
            self.cancelled.get()
        }
        fn unscheduled(&self) {
            self.scheduled.set(false);
        }
    }

    fn drain(q: &mut TimerQueue<Item>, end: f64) -> Vec<u32> {
        let mut out = vec![];
        while let Some(i) = q.pop_due(end) {
            if !i.is_cancelled() {
                out.push(i.id);
            }
        }
        out
    }

    #[test]
    fn ties_fire_in_insertion_order() {
        let mut q = TimerQueue::new();
        for id in 0..50 {
            q.push(5.0, Item::new(id));
        }
        q.push(1.0, Item::new(100));
        let order = drain(&mut q, 10.0);
        assert_eq!(order[0], 100);
        assert_eq!(&order[1..], &(0..50).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn due_uses_strict_less_than() {
        let mut q = TimerQueue::new();
        q.push(2.0, Item::new(1));
        assert!(q.pop_due(2.0).is_none());
        assert_eq!(q.pop_due(2.0 + 1e-9).map(|i| i.id), Some(1));
    }

    #[test]
    fn head_purge_drops_only_leading_cancelled() {
        let mut q = TimerQueue::new();
        let items: Vec<Item> = (0..5).map(Item::new).collect();
        for (n, it) in items.iter().enumerate() {
            q.push(n as f64, it.clone());
        }
        for n in [0usize, 1, 3] {
            items[n].cancelled.set(true);
            q.note_cancelled();
        }
        q.purge_cancelled(&mut vec![]);
        // 0 and 1 are at the head and go; 3 sits behind 2 and stays.
        assert_eq!(q.len(), 3);
        assert_eq!(q.cancelled_count(), 1);
        assert!(!items[0].scheduled.get() && !items[1].scheduled.get());
        assert!(items[3].scheduled.get());
        assert_eq!(drain(&mut q, 100.0), vec![2, 4]);
    }

    #[test]
    fn compaction_when_more_than_half_cancelled() {
        let mut q = TimerQueue::new();
        let items: Vec<Item> = (0..200).map(Item::new).collect();
        for it in &items {
            q.push(1000.0 - it.id as f64, it.clone());
        }
        // Cancel 101 items that are not at the head (the head is id 199).
        for it in items.iter().take(101) {
            it.cancelled.set(true);
            q.note_cancelled();
        }
        q.purge_cancelled(&mut vec![]);
        assert_eq!(q.len(), 99);
        assert_eq!(q.cancelled_count(), 0);
        assert!(items.iter().take(101).all(|i| !i.scheduled.get()));
        let order = drain(&mut q, 2000.0);
        assert_eq!(order, (101..200).rev().collect::<Vec<_>>());
    }

    #[test]
    fn no_compaction_at_exactly_half_or_small_queues() {
        let mut q = TimerQueue::new();
        let items: Vec<Item> = (0..100).map(Item::new).collect();
        for it in &items {
            q.push(it.id as f64, it.clone());
        }
        for it in items.iter().skip(1).take(99) {
            it.cancelled.set(true);
            q.note_cancelled();
        }
        q.purge_cancelled(&mut vec![]);
        // 100 items is not "over 100": only the head is examined, and it is live.
        assert_eq!(q.len(), 100);
    }
}
