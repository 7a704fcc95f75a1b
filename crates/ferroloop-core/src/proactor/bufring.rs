//! Provided-buffer rings: a pool of equal buffers the kernel picks from
//! when a multishot recv ([`Op::RecvMulti`](super::Op::RecvMulti)) has
//! data, instead of each connection keeping a buffer of its own in flight.
//!
//! The pool is two anonymous mappings, neither inherited by a forked child
//! (`MADV_DONTFORK`): the ring of buffer descriptors the kernel reads
//! (`io_uring_buf`, 16 bytes each; the ring's tail shares the first
//! descriptor's last two bytes) and the buffers themselves. A completion
//! names the buffer it filled (`IORING_CQE_F_BUFFER`); the buffer is the
//! caller's until it is handed back with [`recycle`](BufRing::recycle),
//! which puts it at the ring's tail for the kernel to pick again.
//!
//! The kernel takes buffers from the ring's head in order, so every buffer
//! in the ring is written in turn, even by one connection: a pool of 256
//! buffers had every one of its pages resident after 256 reads. So a ring
//! starts with only some of its buffers in it, and [`grow`](BufRing::grow)
//! adds more (doubling) when the ones in it are all lent, which the caller
//! learns from `ENOBUFS`: what stays resident follows the reads a pass has
//! in flight at once, not the pool's size.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// One anonymous, private mapping, not inherited across fork.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let m = Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap returned a null mapping"),
            len,
        };
        // SAFETY: advice on the mapping just made, which we own.
        if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
            return Err(io::Error::last_os_error()); // `m` unmaps it
        }
        Ok(m)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more
        // (the owner unregistered it, or it was never registered).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A pool of `count` buffers of `size` bytes registered with a ring as
/// buffer group `group` (see the module docs).
pub struct BufRing {
    ring: Mapping,
    bufs: Mapping,
    count: u16,
    size: u32,
    group: u16,
    /// Our copy of the tail the kernel reads; published after each change.
    tail: u16,
    /// Buffers currently handed out to the caller (for tests and stats).
    lent: usize,
    /// Buffers ever put in the ring (the first `posted` ids); the rest
    /// wait for [`grow`](BufRing::grow).
    posted: u16,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("group", &self.group)
            .field("count", &self.count)
            .field("size", &self.size)
            .field("lent", &self.lent)
            .field("posted", &self.posted)
            .finish()
    }
}

/// The kernel's `struct io_uring_buf`.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    /// In descriptor 0, the ring's tail.
    resv: u16,
}

fn page_round(n: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    n.div_ceil(page) * page
}

impl BufRing {
    /// Map a pool of `count` (a power of two, at most 32768) buffers of
    /// `size` bytes, the first `initial` (at least one, at most `count`) in
    /// the ring. Not registered yet.
    pub(super) fn new(group: u16, count: u16, initial: u16, size: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || size == 0 || initial == 0 || initial > count
        {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let ring = Mapping::new(page_round(count as usize * std::mem::size_of::<RawBuf>()))?;
        let bufs = Mapping::new(count as usize * size as usize)?;
        let mut r = BufRing {
            ring,
            bufs,
            count,
            size,
            group,
            tail: 0,
            lent: 0,
            posted: 0,
        };
        r.post_more(initial);
        Ok(r)
    }

    /// Put the next `n` buffers never in the ring yet into it.
    fn post_more(&mut self, n: u16) {
        for bid in self.posted..self.posted + n {
            self.lent += 1; // `put` counts a buffer coming back
            self.put(bid);
        }
        self.posted += n;
        self.publish();
    }

    /// Put more of the pool's buffers in the ring: as many as are in it
    /// already, or all that are left. False when none are left.
    pub fn grow(&mut self) -> bool {
        let n = self.posted.min(self.count - self.posted);
        if n == 0 {
            return false;
        }
        self.post_more(n);
        true
    }

    /// Buffers ever put in the ring.
    pub fn posted(&self) -> u16 {
        self.posted
    }

    /// The ring's address, for `IORING_REGISTER_PBUF_RING`.
    pub(super) fn ring_addr(&self) -> u64 {
        self.ring.ptr.as_ptr() as u64
    }

    /// The group id ops name.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Number of buffers.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> u32 {
        self.size
    }

    /// Buffers the kernel filled that were not handed back yet.
    pub fn lent(&self) -> usize {
        self.lent
    }

    /// The first `len` bytes of buffer `bid` (a filled buffer not yet
    /// recycled; `len` as its completion reported).
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.posted && len <= self.size as usize,
            "no such buffer"
        );
        // SAFETY: buffer `bid` lies within the mapping; the kernel does not
        // write it until it is recycled, which takes `&mut self`.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .ptr
                    .as_ptr()
                    .add(bid as usize * self.size as usize),
                len,
            )
        }
    }

    /// Hand buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.posted, "no such buffer");
        self.put(bid);
        self.publish();
    }

    fn put(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        let addr = self.bufs.ptr.as_ptr() as u64 + bid as u64 * self.size as u64;
        // SAFETY: `slot < count` descriptors fit in the ring mapping; the
        // kernel only reads descriptors between its head and our published
        // tail, and this one is past the tail. `resv` is not written: in
        // descriptor 0 it is the tail itself.
        unsafe {
            let d = self.ring.ptr.as_ptr().cast::<RawBuf>().add(slot);
            std::ptr::addr_of_mut!((*d).addr).write(addr);
            std::ptr::addr_of_mut!((*d).len).write(self.size);
            std::ptr::addr_of_mut!((*d).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.lent -= 1;
    }

    fn publish(&self) {
        // SAFETY: the tail is the u16 at offset 14 of descriptor 0, aligned
        // to 2; the kernel reads it with acquire ordering, so the release
        // store makes the descriptors written before it visible.
        let tail = unsafe { &*self.ring.ptr.as_ptr().add(14).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Count a buffer the kernel just filled as handed out.
    pub(super) fn taken(&mut self) {
        self.lent += 1;
    }
}
