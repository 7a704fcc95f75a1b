//! The protocol-facing write half that every transport shares, whatever
//! moves its bytes (a readiness selector or a completion ring): the bytes a
//! `write` accepted but the kernel has not taken yet ([`WriteBuf`]), and the
//! high / low water marks that tell the protocol to pause and resume writing
//! ([`Flow`]), with asyncio's defaults and rules.

use std::fmt;

/// asyncio's default high-water mark (64 KiB); the low mark defaults to a
/// quarter of the high one.
pub const DEFAULT_HIGH_WATER: i64 = 64 * 1024;

/// Bytes accepted by `write` but not yet written, oldest first.
///
/// One contiguous buffer with a start offset, so the pending bytes are one
/// slice for `send`; space at the front is reclaimed when the buffer empties
/// or when the consumed part is large and at least half of the whole.
#[derive(Debug, Default)]
pub struct WriteBuf {
    data: Vec<u8>,
    start: usize,
}

impl WriteBuf {
    /// Consumed bytes worth moving the rest to the front for.
    const COMPACT_AT: usize = 64 * 1024;
    /// Capacity kept after `clear`, when the buffer grew past `SHRINK_ABOVE`.
    const KEEP: usize = 64 * 1024;
    const SHRINK_ABOVE: usize = 1024 * 1024;

    #[inline]
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes still to write, in order.
    #[inline]
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.is_empty() {
            self.data.clear();
            self.start = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// Forget the first `n` pending bytes (the kernel took them).
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.data.len() {
            self.clear();
        } else if self.start >= Self::COMPACT_AT && self.start * 2 >= self.data.len() {
            self.data.drain(..self.start);
            self.start = 0;
        }
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
        if self.data.capacity() > Self::SHRINK_ABOVE {
            self.data.shrink_to(Self::KEEP);
        }
    }
}

/// Limits that `set_write_buffer_limits` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLimits {
    pub high: i64,
    pub low: i64,
}

impl fmt::Display for BadLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // asyncio's message, word for word.
        write!(
            f,
            "high ({}) must be >= low ({}) must be >= 0",
            self.high, self.low
        )
    }
}

impl std::error::Error for BadLimits {}

/// Write flow control: the water marks and whether the protocol was told to
/// pause (asyncio's `_FlowControlMixin` state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub high: i64,
    pub low: i64,
    pub paused: bool,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_HIGH_WATER / 4,
            paused: false,
        }
    }
}

impl Flow {
    /// `set_write_buffer_limits(high, low)`: without `high`, 64 KiB, or four
    /// times `low` when `low` is given; without `low`, a quarter of `high`
    /// (rounded down); then `high >= low >= 0` must hold. Refused limits
    /// leave the marks as they were.
    pub fn set_limits(&mut self, high: Option<i64>, low: Option<i64>) -> Result<(), BadLimits> {
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, None) => DEFAULT_HIGH_WATER,
            (None, Some(l)) => l.saturating_mul(4),
        };
        let low = low.unwrap_or(high.div_euclid(4));
        if !(high >= low && low >= 0) {
            return Err(BadLimits { high, low });
        }
        self.high = high;
        self.low = low;
        Ok(())
    }

    /// After the buffer grew to `size`: true when the protocol must now be
    /// told to pause (above the high mark, not yet paused).
    pub fn should_pause(&mut self, size: usize) -> bool {
        if Self::as_i64(size) <= self.high || self.paused {
            return false;
        }
        self.paused = true;
        true
    }

    /// After the buffer shrank to `size`: true when the protocol must now be
    /// told to resume (paused, and at or below the low mark).
    pub fn should_resume(&mut self, size: usize) -> bool {
        if self.paused && Self::as_i64(size) <= self.low {
            self.paused = false;
            return true;
        }
        false
    }

    fn as_i64(size: usize) -> i64 {
        i64::try_from(size).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buf_keeps_order_across_partial_writes() {
        let mut b = WriteBuf::default();
        assert!(b.is_empty());
        b.push(b"hello ");
        b.push(b"world");
        assert_eq!(b.pending(), b"hello world");
        b.consume(4);
        assert_eq!(b.pending(), b"o world");
        b.push(b"!");
        assert_eq!(b.pending(), b"o world!");
        assert_eq!(b.len(), 8);
        b.consume(100);
        assert!(b.is_empty());
        assert_eq!(b.pending(), b"");
    }

    #[test]
    fn write_buf_compacts_a_large_consumed_front() {
        let mut b = WriteBuf::default();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        b.push(&data);
        b.consume(150_000);
        assert_eq!(b.pending(), &data[150_000..]);
        assert_eq!(b.start, 0, "the consumed front was reclaimed");
        b.push(b"tail");
        assert_eq!(&b.pending()[b.len() - 4..], b"tail");
    }

    #[test]
    fn write_buf_clear_gives_back_large_capacity() {
        let mut b = WriteBuf::default();
        b.push(&vec![0u8; 4 * 1024 * 1024]);
        b.clear();
        assert!(b.is_empty());
        assert!(b.data.capacity() <= 1024 * 1024);
    }

    #[test]
    fn limits_follow_asyncio_defaults_and_checks() {
        let mut f = Flow::default();
        assert_eq!((f.low, f.high), (16384, 65536));
        f.set_limits(Some(100), None).unwrap();
        assert_eq!((f.low, f.high), (25, 100));
        f.set_limits(None, Some(10)).unwrap();
        assert_eq!((f.low, f.high), (10, 40));
        f.set_limits(Some(0), None).unwrap();
        assert_eq!((f.low, f.high), (0, 0));
        let e = f.set_limits(Some(10), Some(20)).unwrap_err();
        assert_eq!(e.to_string(), "high (10) must be >= low (20) must be >= 0");
        let e = f.set_limits(Some(-4), None).unwrap_err();
        assert_eq!(e.to_string(), "high (-4) must be >= low (-1) must be >= 0");
        assert_eq!((f.low, f.high), (0, 0), "refused limits change nothing");
        assert!(f.set_limits(None, Some(i64::MAX)).is_ok());
    }

    #[test]
    fn pause_and_resume_fire_once_each() {
        let mut f = Flow::default();
        f.set_limits(Some(100), Some(10)).unwrap();
        assert!(!f.should_pause(100));
        assert!(f.should_pause(101));
        assert!(!f.should_pause(500), "already paused");
        assert!(!f.should_resume(11));
        assert!(f.should_resume(10));
        assert!(!f.should_resume(0), "already resumed");
    }
}
