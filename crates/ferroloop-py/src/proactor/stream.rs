//! `RingStreamCore`: the native half of the proactor loop's stream socket
//! transports (TCP and Unix).
//!
//! The protocol sees the same object as on the selector loop (an instance
//! of `ferroloop._transports.SocketTransport`, derived from asyncio's
//! transport classes) with the same rules, messages and callback order;
//! only the I/O half differs:
//!
//! * **Reading**: where the kernel has it, one multishot recv stays armed
//!   while the transport reads, taking buffers from the loop's shared pool
//!   (`LoopCore::ring_recv_group`) as data comes: no submission per read
//!   and no buffer held by an idle connection. Each arrival queues
//!   `_read_done` (once per pass), which copies what came into one `bytes`
//!   for `data_received` (or into `BufferedProtocol.get_buffer` buffers),
//!   handing the pool's buffers straight back. `pause_reading` cancels the
//!   multishot recv (a paused transport must not drain the shared pool);
//!   bytes it brought meanwhile wait until `resume_reading`, which arms a
//!   new one. Large reads (one filled a pool buffer) wait for readiness
//!   with a poll op and `recv` on the spot into the `bytes` for
//!   `data_received`, sized by `FIONREAD`, as the selector loop does: no
//!   buffer waits in the ring, and the bytes are echoed while still in the
//!   cache. Where the pool ran dry (`ENOBUFS`), without multishot recv, or
//!   for a `BufferedProtocol` reading large messages, a transport reads
//!   with one-shot recvs into a buffer the op owns (16 KiB, growing to
//!   256 KiB while reads fill it; first-size buffers of closed transports
//!   are pooled per thread); their bytes equally wait while paused.
//! * **Writing**: `write` queues a send op with a copy of the bytes (or
//!   appends them to the write buffer while a send is in flight); the
//!   first write after a look at the ring that found at most one finished
//!   op, and any write of 64 KiB or more, is first offered to the socket
//!   by a `send` call (`LoopCore::take_direct_send`); the driver continues
//!   partial sends; the send's completion queues
//!   `_write_done`, which sends what accumulated meanwhile. The bytes in
//!   flight count in `get_write_buffer_size()` until the kernel took them.
//! * **Closing**: ops in flight are cancelled; the socket is closed by a
//!   close op in the same ring, after those ops, so its descriptor number
//!   cannot be reused while an op for it is still queued.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;

use ferroloop_core::proactor::{Op, OpId, Shot};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cell::GilCell;
use crate::errors::io_err;
use crate::handle::Handle;
use crate::link::{
    check_bytes_like, is_buffered_protocol, is_exit, read_bytes, would_block, ByteView, LinkCell,
    MAX_READ,
};
use crate::loop_core::LoopCore;
use crate::proactor::{LentBytes, Owner};
use crate::selector::sel::{self, sock_methods, SelState, SockTransport};
use crate::stream_half::{self as half, stream_methods, StreamHalf, StreamTransport};

const READ_FAILED: &str = "Fatal read error on socket transport";
const WRITE_FAILED: &str = "Fatal write error on socket transport";
/// A stream's first recv buffer; it doubles (up to `MAX_READ`) while
/// reads fill it. Every connection has its own while a recv is in flight,
/// so it starts small.
const FIRST_READ: usize = 16 * 1024;
/// The size of the loop's pool buffers (`LoopCore::ring_recv_group`).
const RECV_POOL_BUF: usize = crate::loop_core::RECV_POOL_SIZE as usize;
/// Small reads in a row that send a transport back from its own buffer to
/// the pool.
const SMALL_READS_BACK: u8 = 4;
/// First-size recv buffers kept per thread for the next connections.
const POOL_CAP: usize = 256;

thread_local! {
    // Recv buffers of closed transports, for new ones: a connection that
    // lives for one request then costs no allocation, zeroing or page
    // faults for its buffer (they were most of the proactor's extra cost
    // under connection churn).
    static RECV_POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    // Where a BufferedProtocol's bytes wait between the loop's pool and
    // the protocol's buffers (one per thread, not one per transport).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A recv buffer of `size` bytes, from the pool where it has one.
fn recv_buffer(size: usize) -> Vec<u8> {
    if size == FIRST_READ {
        if let Ok(Some(b)) = RECV_POOL.try_with(|p| p.borrow_mut().pop()) {
            return b;
        }
    }
    vec![0u8; size]
}

/// What a one-shot recv read into: a buffer of the transport's own, or
/// nothing, for a poll.
enum RecvBuf {
    Own(Vec<u8>),
    /// No buffer: a poll said the socket is readable, and `_read_done`
    /// reads it with `recv` (large reads, see `RingIo::own_buffer`).
    Ready,
}

impl RecvBuf {
    /// Where `n` bytes came (the first `n` are written).
    fn filled(&self, n: usize) -> &[u8] {
        match self {
            RecvBuf::Own(b) => &b[..n],
            RecvBuf::Ready => &[],
        }
    }

    fn capacity(&self) -> usize {
        match self {
            RecvBuf::Own(b) => b.len(),
            RecvBuf::Ready => 0,
        }
    }

    fn give_back(self) {
        if let RecvBuf::Own(b) = self {
            give_back(b);
        }
    }
}

/// Keep a first-size recv buffer for another transport.
fn give_back(buf: Vec<u8>) {
    if buf.len() == FIRST_READ {
        let _ = RECV_POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_CAP {
                p.push(buf);
            }
        });
    }
}
/// Writes of at least this many bytes try a direct `send` first; smaller
/// ones ride the pass's single `io_uring_enter`, except in a pass serving
/// one connection (`LoopCore::take_direct_send`).
const DIRECT_SEND_AT: usize = 64 * 1024;
/// A `bytes` of at least this many bytes is lent to the send op; a smaller
/// one is copied into the transport's reused send buffer, which costs less
/// than boxing and releasing the loan (callgrind, 1 KiB echo).
const LEND_AT: usize = 4 * 1024;

/// The ops in flight and what they brought.
struct RingIo {
    read_op: Option<OpId>,
    read_size: usize,
    /// The last recv left the socket empty (it brought less than its
    /// buffer): the next one waits for readiness before its first try.
    drained: bool,
    /// A finished recv not yet handed to the protocol.
    read_result: Option<(io::Result<usize>, RecvBuf)>,
    read_queued: bool,
    spare_read: Option<Vec<u8>>,
    /// The loop's recv pool, once this transport read from it.
    group: Option<u16>,
    /// The transport may read with multishot recvs (cleared if the kernel
    /// refuses them).
    multi_ok: bool,
    /// `read_op` is a multishot recv.
    multi: bool,
    /// The next read goes to a buffer of the transport's own (the pool ran
    /// dry).
    single_next: bool,
    /// Reads are large (a shot filled a whole pool buffer): until
    /// `SMALL_READS_BACK` reads in a row come small, they wait for
    /// readiness and `recv` on the spot (`read_ready`), or, for a
    /// BufferedProtocol, go to the transport's own growing buffer.
    own_buffer: bool,
    small_reads: u8,
    /// A multishot recv brought this transport a chunk that did not fill
    /// its pool buffer: it reads small messages, and when the pool runs dry
    /// under it, the pool is too small for the connections reading small.
    pool_small: bool,
    /// Pool buffers (id, length) the multishot recv filled, not yet handed
    /// to the protocol.
    chunks: Vec<(u16, u32)>,
    /// How the multishot recv ended, once it did, until `_read_done` acts
    /// on it (after the bytes in `chunks`).
    multi_end: Option<io::Result<usize>>,

    write_op: Option<OpId>,
    /// Bytes in the send op in flight.
    in_flight: usize,
    write_result: Option<io::Result<usize>>,
    spare_write: Option<Vec<u8>>,
    /// What the last send op left unsent. The driver reports a send that
    /// fails after taking part of its bytes as a short success (its error
    /// shows on the next send), so `_write_done` sends this rest first.
    short_rest: Option<Vec<u8>>,

    /// The callbacks completions queue (`_read_done`, `_write_done`).
    read_handle: Option<Py<Handle>>,
    write_handle: Option<Py<Handle>>,
}

impl RingIo {
    /// A read of `n` bytes while reads are large: `SMALL_READS_BACK` small
    /// ones in a row end the large-read mode.
    fn count_large_read(&mut self, n: usize) {
        if n < FIRST_READ {
            self.small_reads += 1;
            if self.small_reads >= SMALL_READS_BACK {
                self.own_buffer = false;
            }
        } else {
            self.small_reads = 0;
        }
    }

    /// Keep a recv's buffer for the next recv.
    fn keep(&mut self, buf: RecvBuf) {
        if let RecvBuf::Own(b) = buf {
            self.spare_read = Some(b);
        }
    }
}

impl Drop for RingIo {
    fn drop(&mut self) {
        if let Some(b) = self.spare_read.take() {
            give_back(b);
        }
        if let Some((_, b)) = self.read_result.take() {
            b.give_back();
        }
    }
}

/// The state and work of one completion-based stream transport.
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct RingStreamCore {
    link: LinkCell,
    sel: GilCell<SelState>,
    st: GilCell<StreamHalf>,
    io: GilCell<RingIo>,
}

impl SockTransport for RingStreamCore {
    fn link(&self) -> &LinkCell {
        &self.link
    }
    fn sel(&self) -> &GilCell<SelState> {
        &self.sel
    }
    fn has_buffered(&self, py: Python<'_>) -> bool {
        self.write_buffer_size(py) > 0
    }
    fn clear_buffer(&self, py: Python<'_>) {
        self.st.borrow_mut(py).buf.clear();
        let mut io = self.io.borrow_mut(py);
        io.in_flight = 0;
        io.short_rest = None;
    }

    fn begin_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let (busy, stashed) = {
            let io = me.io.borrow(py);
            let stashed =
                io.read_result.is_some() || !io.chunks.is_empty() || io.multi_end.is_some();
            (io.read_op.is_some(), stashed)
        };
        if stashed {
            // Bytes that came while paused go to the protocol first.
            me.queue_read_done(py)
        } else if busy {
            Ok(())
        } else {
            Self::submit_recv(slf)
        }
    }

    fn pause_io(&self, py: Python<'_>) -> PyResult<()> {
        // A one-shot recv in flight stays, and what it brings waits for
        // resume; a multishot one would keep taking the pool's buffers.
        let id = {
            let io = self.io.borrow(py);
            io.read_op.filter(|_| io.multi)
        };
        self.cancel(py, id);
        Ok(())
    }

    fn end_reading(&self, py: Python<'_>) -> PyResult<()> {
        let id = self.io.borrow(py).read_op;
        self.cancel(py, id);
        Ok(())
    }

    fn end_writing(&self, py: Python<'_>) -> PyResult<()> {
        let id = self.io.borrow(py).write_op;
        self.cancel(py, id);
        Ok(())
    }

    fn take_sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let sock = self.sel.borrow_mut(py).sock.take()?;
        // Cancel what is still in flight, then close through the ring, so
        // the close comes after the ops that name this descriptor.
        self.end_reading(py).ok();
        self.end_writing(py).ok();
        if crate::plain_sock::makefile_users(sock.bind(py)) == Some(true) {
            // A `makefile()` object still uses the descriptor: close the
            // socket as `socket.close()` does, which leaves the descriptor
            // to that object, as asyncio's transports leave it.
            return Some(sock);
        }
        let fd = match sock.bind(py).call_method0(pyo3::intern!(py, "detach")) {
            Ok(fd) => fd.extract::<RawFd>().unwrap_or(-1),
            Err(_) => return Some(sock), // not a real socket: close it
        };
        if fd < 0 {
            return None;
        }
        let queued = self.link.lp(py).is_some_and(|lp| {
            lp.get()
                .ring_submit(py, Op::Close { fd }, Owner::Nobody)
                .is_some()
        });
        if !queued {
            // SAFETY: `fd` was detached from its socket object: we own it.
            unsafe { libc::close(fd) };
        }
        None
    }
}

impl StreamTransport for RingStreamCore {
    fn half(&self) -> &GilCell<StreamHalf> {
        &self.st
    }

    fn write_buffer_size(&self, py: Python<'_>) -> usize {
        self.io.borrow(py).in_flight + self.st.borrow(py).buf.len()
    }
}

sock_methods!(RingStreamCore);
stream_methods!(RingStreamCore);

fn recv_now(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller passes a writable region of `len` bytes that stays
    // valid for the call.
    let n = unsafe { libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send_now(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for the duration of the call; send
    // only reads it. MSG_NOSIGNAL turns SIGPIPE into EPIPE.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl RingStreamCore {
    /// The multishot recv brought bytes and stays armed (called while
    /// reaping, no Python code runs).
    pub fn shot_received(&self, py: Python<'_>, shot: Shot) -> Option<Py<Handle>> {
        let n = *shot.result.as_ref().ok()?;
        let bid = shot.buffer()?;
        self.stash_chunk(py, bid, n)
    }

    /// Keep pool buffer `bid` (with `n` bytes) for `_read_done`; the handle
    /// to queue, if it is not queued yet. Once the connection is lost the
    /// buffer goes straight back to the pool.
    fn stash_chunk(&self, py: Python<'_>, bid: u16, n: usize) -> Option<Py<Handle>> {
        let mut io = self.io.borrow_mut(py);
        debug_assert!(io.group.is_some(), "a shot from a pool we never read from");
        io.chunks.push((bid, n as u32));
        if io.read_handle.is_none() {
            drop(io);
            self.release_chunks(py);
            return None;
        }
        let switch = (n >= RECV_POOL_BUF && !io.own_buffer)
            .then_some(io.read_op)
            .flatten();
        if n >= RECV_POOL_BUF {
            io.own_buffer = true;
            io.small_reads = 0;
            io.read_size = io.read_size.max(2 * FIRST_READ);
        } else if !io.own_buffer {
            // (Not the tail of a large read.)
            io.pool_small = true;
        }
        let h = self.take_read_handle(&mut io, py);
        drop(io);
        // Large reads: end the multishot recv; the next read (after what
        // it still brings) is a one-shot recv into our own buffer.
        self.cancel(py, switch);
        h
    }

    /// The read handle to queue, unless it is queued already.
    fn take_read_handle(&self, io: &mut RingIo, py: Python<'_>) -> Option<Py<Handle>> {
        if io.read_queued {
            return None;
        }
        let h = io.read_handle.as_ref()?.clone_ref(py);
        io.read_queued = true;
        Some(h)
    }

    /// Hand every pool buffer the transport holds back, unread.
    fn release_chunks(&self, py: Python<'_>) {
        let (group, chunks) = {
            let mut io = self.io.borrow_mut(py);
            (io.group, std::mem::take(&mut io.chunks))
        };
        if let (Some(group), Some(lp)) = (group, self.link.lp(py)) {
            lp.get().ring_recycle(py, group, &chunks);
        }
    }

    /// A recv completed (called while reaping, no Python code runs).
    /// `buffer`: the pool buffer a multishot recv's last bytes are in.
    pub fn read_completed(
        &self,
        py: Python<'_>,
        result: io::Result<usize>,
        op: Op,
        buffer: Option<u16>,
    ) -> Option<Py<Handle>> {
        let buf = match op {
            Op::Recv { buf, .. } => RecvBuf::Own(buf),
            Op::Poll { .. } => RecvBuf::Ready,
            Op::RecvMulti { .. } => {
                // Bytes with the last result are kept as a shot's.
                let last = buffer.zip(result.as_ref().ok().copied());
                let mut io = self.io.borrow_mut(py);
                io.read_op = None;
                io.multi = false;
                io.multi_end = Some(result);
                if let Some((bid, n)) = last {
                    drop(io);
                    return self.stash_chunk(py, bid, n);
                }
                return self.take_read_handle(&mut io, py);
            }
            _ => return None,
        };
        let mut io = self.io.borrow_mut(py);
        io.read_op = None;
        if io.read_handle.is_none() {
            drop(io);
            buf.give_back();
            return None;
        }
        io.read_result = Some((result, buf));
        self.take_read_handle(&mut io, py)
    }

    /// A send completed (called while reaping, no Python code runs).
    pub fn write_completed(
        &self,
        py: Python<'_>,
        result: io::Result<usize>,
        op: Op,
    ) -> Option<Py<Handle>> {
        let mut io = self.io.borrow_mut(py);
        // A send ends with bytes unsent only on an error, which the driver
        // leaves for the next send to report (see `short_rest`).
        let ok = result.is_ok();
        let rest = match op {
            Op::Send { mut buf, sent, .. } => {
                let rest = (ok && sent < buf.len()).then(|| buf[sent..].to_vec());
                buf.clear();
                if buf.capacity() <= 4 * MAX_READ {
                    io.spare_write = Some(buf);
                }
                rest
            }
            // The bytes object goes, unless some of it has to be sent again.
            Op::SendLent { buf, sent, .. } => (ok && sent < buf.len()).then(|| {
                // SAFETY: LentBuf's contract: `buf.len()` bytes stay
                // readable at `buf.as_ptr()` while `buf` lives, and
                // `sent < buf.len()`.
                unsafe { std::slice::from_raw_parts(buf.as_ptr().add(sent), buf.len() - sent) }
                    .to_vec()
            }),
            _ => return None,
        };
        io.write_op = None;
        let short = rest.is_some();
        io.short_rest = rest;
        let quiet = ok
            && !short
            && {
                let h = self.st.borrow(py);
                h.buf.is_empty() && !h.flow.paused && !h.eof && h.empty_waiter.is_none()
            }
            && !self.sel.borrow(py).closing;
        if quiet {
            // All sent and nobody to tell: no callback at all (the common
            // case of a reply that fit the socket).
            io.in_flight = 0;
            return None;
        }
        let h = io.write_handle.as_ref()?.clone_ref(py);
        io.write_result = Some(result);
        Some(h)
    }

    fn cancel(&self, py: Python<'_>, id: Option<OpId>) {
        let Some(id) = id else {
            return;
        };
        if let Some(lp) = self.link.lp(py) {
            lp.get().ring_cancel(py, id);
        }
    }

    fn queue_read_done(&self, py: Python<'_>) -> PyResult<()> {
        let h = {
            let mut io = self.io.borrow_mut(py);
            if io.read_queued {
                return Ok(());
            }
            io.read_queued = true;
            io.read_handle.as_ref().map(|h| h.clone_ref(py))
        };
        let (Some(h), Some(lp)) = (h, self.link.lp(py)) else {
            return Ok(());
        };
        LoopCore::_add_callback(lp.get(), py, h.bind(py));
        Ok(())
    }

    fn submit_recv(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(lp) = me.link.lp(py) else {
            return Ok(());
        };
        let fd = me.link.fd(py);
        let multi = {
            let mut io = me.io.borrow_mut(py);
            if io.read_op.is_some() || io.read_result.is_some() {
                return Ok(());
            }
            io.multi_ok && !io.own_buffer && !std::mem::take(&mut io.single_next)
        };
        let group = if multi {
            lp.get().ring_recv_group(py)
        } else {
            None
        };
        if let Some(group) = group {
            let op = Op::RecvMulti { fd, group };
            let id = lp
                .get()
                .ring_submit(py, op, Owner::Read(slf.clone().unbind()));
            let mut io = me.io.borrow_mut(py);
            io.read_op = id;
            io.multi = id.is_some();
            io.group = Some(group);
            // Back on the pool: an own buffer kept from an earlier read
            // would be held for as long as the connection lives.
            if let Some(b) = io.spare_read.take() {
                drop(io);
                give_back(b);
            }
            return Ok(());
        }
        let op = {
            let mut io = me.io.borrow_mut(py);
            let size = io.read_size;
            if io.own_buffer && !me.st.borrow(py).buffered {
                // Large reads for data_received: wait for readiness, then
                // `recv` what the socket holds into a `bytes` of that size
                // (`read_ready`), so the bytes go from the kernel to the
                // protocol and back out while they are in the cache, and
                // no buffer waits in the ring.
                if let Some(b) = io.spare_read.take() {
                    give_back(b);
                }
                Op::Poll {
                    fd,
                    mask: libc::POLLIN as u32,
                }
            } else {
                let buf = match io.spare_read.take() {
                    Some(b) if b.len() == size => b,
                    other => {
                        if let Some(b) = other {
                            give_back(b);
                        }
                        recv_buffer(size)
                    }
                };
                Op::Recv {
                    fd,
                    buf,
                    poll_first: io.drained,
                }
            }
        };
        let id = lp
            .get()
            .ring_submit(py, op, Owner::Read(slf.clone().unbind()));
        me.io.borrow_mut(py).read_op = id;
        Ok(())
    }

    /// Start the transport's one send op, which `build` makes (with the
    /// transport's I/O state, its write buffer and the descriptor; nothing
    /// may be in flight). Nothing happens once the loop is gone.
    fn submit_write(
        slf: &Bound<'_, Self>,
        build: impl FnOnce(&mut RingIo, &mut StreamHalf, RawFd) -> Op,
    ) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(lp) = me.link.lp(py) else {
            return Ok(());
        };
        let fd = me.link.fd(py);
        let op = build(&mut me.io.borrow_mut(py), &mut me.st.borrow_mut(py), fd);
        let id = lp
            .get()
            .ring_submit(py, op, Owner::Write(slf.clone().unbind()));
        me.io.borrow_mut(py).write_op = id;
        Ok(())
    }

    /// Send the write buffer, then `more`, copied into the reused send
    /// buffer.
    fn submit_send(slf: &Bound<'_, Self>, more: &[u8]) -> PyResult<()> {
        Self::submit_write(slf, |io, h, fd| {
            let mut data = io.spare_write.take().unwrap_or_default();
            data.extend_from_slice(h.buf.pending());
            data.extend_from_slice(more);
            h.buf.clear();
            io.in_flight = data.len();
            Op::send(fd, data)
        })
    }

    /// Send `data[sent..]` from the bytes object itself (the write buffer
    /// must be empty).
    fn submit_lent(slf: &Bound<'_, Self>, data: &Bound<'_, PyBytes>, sent: usize) -> PyResult<()> {
        Self::submit_write(slf, |io, _, fd| {
            io.in_flight = data.as_bytes().len() - sent;
            Op::SendLent {
                fd,
                buf: Box::new(LentBytes::new(data)),
                sent,
            }
        })
    }

    /// `_read_done` for the multishot recv: what it brought goes to the
    /// protocol as one `bytes`, then how it ended (if it did) is acted on.
    fn multi_done(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(protocol) = me.link.protocol(py) else {
            return Ok(());
        };
        let protocol = protocol.into_bound(py);
        // At most `MAX_READ` bytes per `data_received`, as asyncio reads
        // (its `max_size`): a longer run of chunks goes in pieces, the
        // rest waiting in `io.chunks` while the protocol pauses.
        loop {
            let (group, chunks, buffered) = {
                let mut io = me.io.borrow_mut(py);
                let mut total = 0usize;
                let take = io
                    .chunks
                    .iter()
                    .take_while(|(_, n)| {
                        total += *n as usize;
                        total <= MAX_READ
                    })
                    .count()
                    .max(1)
                    .min(io.chunks.len());
                let chunks = if take == io.chunks.len() {
                    std::mem::take(&mut io.chunks)
                } else {
                    io.chunks.drain(..take).collect()
                };
                (io.group, chunks, me.st.borrow(py).buffered)
            };
            if let (Some(group), Some(lp), false) = (group, me.link.lp(py), chunks.is_empty()) {
                let lp = lp.get();
                let res = if buffered {
                    // Copied out of the pool first: the protocol's methods may
                    // call back into the loop while they fill their buffers.
                    let mut data = SCRATCH
                        .try_with(|s| std::mem::take(&mut *s.borrow_mut()))
                        .unwrap_or_default();
                    data.clear();
                    lp.ring_take_into(py, group, &chunks, &mut data);
                    let res = Self::feed_buffered(slf, &protocol, &data);
                    if data.capacity() <= MAX_READ {
                        let _ = SCRATCH.try_with(|s| *s.borrow_mut() = data);
                    }
                    res
                } else {
                    let data = lp.ring_take_bytes(py, group, &chunks)?;
                    half::data_received(slf, &protocol, data)
                };
                let mut io = me.io.borrow_mut(py);
                if io.chunks.capacity() == 0 {
                    // Give the list back (emptied) rather than grow a new one.
                    let mut chunks = chunks;
                    chunks.clear();
                    io.chunks = chunks;
                }
                drop(io);
                res?;
                let s = me.sel.borrow(py);
                if s.conn_lost > 0 || s.closing {
                    return Ok(());
                }
                drop(s);
                if !sel::is_reading(me, py) {
                    return Ok(()); // paused: how the recv ended waits too
                }
                if !me.io.borrow(py).chunks.is_empty() {
                    continue; // the next piece
                }
            }
            break;
        }
        let Some(end) = me.io.borrow_mut(py).multi_end.take() else {
            return Ok(()); // still armed
        };
        match end {
            Ok(0) => Self::eof_or_reset(slf, &protocol),
            // The kernel ended it after data (it may), or we did (a pause):
            // arm another.
            Ok(_) => Self::submit_recv(slf),
            Err(e) => match e.raw_os_error() {
                Some(libc::ECANCELED) | Some(libc::EINTR) => Self::submit_recv(slf),
                Some(libc::ENOBUFS) => {
                    // The pool's ring ran dry. Under a transport that reads
                    // small messages, it gets more of the pool's buffers
                    // while some are left. A transport that filled whole
                    // buffers (it goes on with reads of its own) or has not
                    // read yet (the first large messages of many new
                    // connections) does not grow it: that would make the
                    // whole pool resident for reads that leave it anyway.
                    // Else transports served earlier in this pass have
                    // usually handed theirs back by now: then arm again (an
                    // own buffer for every connection of a burst would stay
                    // resident). If not, buffers are held (paused
                    // transports): one read into a buffer of our own, then
                    // back to the pool, so nobody spins.
                    let (group, grow) = {
                        let io = me.io.borrow(py);
                        (io.group, io.pool_small && !io.own_buffer)
                    };
                    let free = match (group, me.link.lp(py)) {
                        (Some(g), Some(lp)) => lp.get().ring_pool_ran_dry(py, g, grow),
                        _ => false,
                    };
                    if !free {
                        me.io.borrow_mut(py).single_next = true;
                    }
                    Self::submit_recv(slf)
                }
                Some(libc::EINVAL) => {
                    // The kernel has no multishot recv after all.
                    me.io.borrow_mut(py).multi_ok = false;
                    Self::submit_recv(slf)
                }
                _ => sel::fatal_error(slf, io_err(e), READ_FAILED),
            },
        }
    }

    /// Hand `data` to a BufferedProtocol through its buffers.
    fn feed_buffered(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        mut data: &[u8],
    ) -> PyResult<()> {
        let py = slf.py();
        const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
        while !data.is_empty() {
            let buf = match protocol.call_method1(pyo3::intern!(py, "get_buffer"), (-1,)) {
                Ok(b) => b,
                Err(e) if is_exit(py, &e) => return Err(e),
                Err(e) => return sel::fatal_error(slf, e, GET_BUFFER_FAILED),
            };
            let n = match ByteView::new(&buf, true) {
                Ok(mut v) => {
                    let (ptr, len) = v.as_mut_ptr();
                    if len == 0 {
                        let e = PyRuntimeError::new_err("get_buffer() returned an empty buffer");
                        return sel::fatal_error(slf, e, GET_BUFFER_FAILED);
                    }
                    let n = len.min(data.len());
                    // SAFETY: `ptr` is a writable buffer of `len` bytes held
                    // by the view; `data` is a separate Rust buffer.
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, n) };
                    n
                }
                Err(e) if is_exit(py, &e) => return Err(e),
                Err(e) => return sel::fatal_error(slf, e, GET_BUFFER_FAILED),
            };
            drop(buf);
            data = &data[n..];
            let res = protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (n,));
            half::after_callback(
                slf,
                res,
                "Fatal error: protocol.buffer_updated() call failed.",
            )?;
            let me = slf.get();
            if me.sel.borrow(py).conn_lost > 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The socket is readable (a poll said so, the transport reading large
    /// messages): `recv` what it holds straight into a `bytes` of that size,
    /// as the selector loop does, arm the next poll and hand the bytes to
    /// the protocol.
    fn read_ready(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let big = AtomicBool::new(true);
        let data = match read_bytes(py, me.link.fd(py), &big, recv_now) {
            Ok(d) => d,
            // Readable no more (another reader took it) or interrupted:
            // wait again.
            Err(e) if would_block(&e) || e.kind() == io::ErrorKind::Interrupted => {
                return Self::submit_recv(slf)
            }
            Err(e) => return sel::fatal_error(slf, io_err(e), READ_FAILED),
        };
        let n = data.as_bytes().len();
        if n == 0 {
            return Self::eof_or_reset(slf, protocol);
        }
        me.io.borrow_mut(py).count_large_read(n);
        if me.st.borrow(py).buffered {
            // (The protocol was swapped for a buffered one while the poll
            // was in flight.)
            Self::feed_buffered(slf, protocol, data.as_bytes())?;
            if sel::is_reading(me, py) && me.sel.borrow(py).conn_lost == 0 {
                Self::submit_recv(slf)?;
            }
            return Ok(());
        }
        Self::submit_recv(slf)?;
        half::data_received(slf, protocol, data)
    }

    /// A recv ended with no bytes: the peer's EOF, or its reset seen late.
    /// A reset wakes the recv and a send in flight together and the kernel
    /// hands its error to only one of them; when the send took it, the recv
    /// sees just the end of the stream. asyncio's selector loop, reading
    /// first, reports the reset, so do the same: a TCP socket closed outright
    /// without our having sent a FIN was reset (after a FIN from the peer it
    /// would wait in CLOSE_WAIT for our close).
    fn eof_or_reset(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if !me.st.borrow(py).eof && tcp_state(me.link.fd(py)) == Some(TCP_CLOSE) {
            let err = io_err(io::Error::from_raw_os_error(libc::ECONNRESET));
            return sel::fatal_error(slf, err, READ_FAILED);
        }
        half::on_eof(slf, protocol)
    }
}

#[pymethods]
impl RingStreamCore {
    #[new]
    #[pyo3(signature = (lp, sock, protocol, transport, server = None))]
    pub(crate) fn py_new(
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock
            .call_method0(pyo3::intern!(sock.py(), "fileno"))?
            .extract()?;
        let buffered = is_buffered_protocol(protocol)?;
        Ok(RingStreamCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            sel: GilCell::new(SelState::new(sock, server)),
            st: GilCell::new(StreamHalf::new(buffered)),
            io: GilCell::new(RingIo {
                read_op: None,
                read_size: FIRST_READ,
                drained: false,
                read_result: None,
                read_queued: false,
                spare_read: None,
                group: None,
                multi_ok: true,
                multi: false,
                single_next: false,
                own_buffer: false,
                small_reads: 0,
                pool_small: false,
                chunks: Vec::new(),
                multi_end: None,
                write_op: None,
                in_flight: 0,
                write_result: None,
                spare_write: None,
                short_rest: None,
                read_handle: None,
                write_handle: None,
            }),
        })
    }

    /// Schedule `connection_made`, the start of reading and the waiter, in
    /// that order, as asyncio's transport constructor does.
    #[pyo3(signature = (waiter = None))]
    pub(crate) fn _start(slf: &Bound<'_, Self>, waiter: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(lp) = me.link.lp(py) else {
            return Ok(());
        };
        let handle = |name: &Bound<'_, pyo3::types::PyString>| -> PyResult<Py<Handle>> {
            Handle::new_bare(py, slf.getattr(name)?.unbind(), lp.clone().unbind())
        };
        let rh = handle(pyo3::intern!(py, "_read_done"))?;
        let wh = handle(pyo3::intern!(py, "_write_done"))?;
        {
            let mut io = me.io.borrow_mut(py);
            io.read_handle = Some(rh);
            io.write_handle = Some(wh);
        }
        let start = slf.getattr(pyo3::intern!(py, "_add_reader_cb"))?;
        me.link.start(py, Some(start), waiter)
    }

    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::start_reading(slf)
    }

    /// A recv finished: hand its bytes to the protocol, read on.
    fn _read_done(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let (result, buf) = {
            let mut io = me.io.borrow_mut(py);
            io.read_queued = false;
            let (lost, closing) = {
                let s = me.sel.borrow(py);
                (s.conn_lost > 0, s.closing)
            };
            if lost || closing {
                if let Some((_, buf)) = io.read_result.take() {
                    buf.give_back();
                }
                io.multi_end = None;
                drop(io);
                me.release_chunks(py);
                return Ok(());
            }
            if !sel::is_reading(me, py) {
                return Ok(()); // paused: the bytes wait for resume_reading
            }
            if !io.chunks.is_empty() || io.multi_end.is_some() {
                drop(io);
                return Self::multi_done(slf);
            }
            let Some(got) = io.read_result.take() else {
                return Ok(());
            };
            got
        };
        let Some(protocol) = me.link.protocol(py) else {
            return Ok(());
        };
        let protocol = protocol.into_bound(py);
        let n = match result {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                buf.give_back();
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                me.io.borrow_mut(py).keep(buf);
                return Self::submit_recv(slf);
            }
            Err(e) => {
                me.io.borrow_mut(py).keep(buf);
                return sel::fatal_error(slf, io_err(e), READ_FAILED);
            }
        };
        if let RecvBuf::Ready = buf {
            return Self::read_ready(slf, &protocol);
        }
        if n == 0 {
            me.io.borrow_mut(py).keep(buf);
            return Self::eof_or_reset(slf, &protocol);
        }
        {
            let mut io = me.io.borrow_mut(py);
            let cap = buf.capacity();
            io.drained = n < cap;
            if io.own_buffer {
                io.count_large_read(n);
            }
            if n == cap && io.read_size < MAX_READ {
                io.read_size = (io.read_size * 2).min(MAX_READ);
            }
        }
        if me.st.borrow(py).buffered {
            // (A protocol may have been swapped for a buffered one while
            // a recv into a bytes object was in flight.)
            Self::feed_buffered(slf, &protocol, buf.filled(n))?;
            me.io.borrow_mut(py).keep(buf);
            if sel::is_reading(me, py) && me.sel.borrow(py).conn_lost == 0 {
                Self::submit_recv(slf)?;
            }
            return Ok(());
        }
        let data = match buf {
            RecvBuf::Own(b) => {
                let data = crate::link::bytes_from(py, &b[..n]);
                me.io.borrow_mut(py).spare_read = Some(b);
                data
            }
            RecvBuf::Ready => return Ok(()), // read by read_ready above
        };
        // The next recv goes out with this pass's enter, whatever the
        // protocol does (pausing leaves it in flight; closing cancels it).
        Self::submit_recv(slf)?;
        half::data_received(slf, &protocol, data)
    }

    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        check_bytes_like(data)?;
        half::check_writable(me, py)?;
        let view;
        let bytes: &[u8] = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                view = ByteView::new(data, false)?;
                view.as_slice()
            }
        };
        if bytes.is_empty() || half::lost_write(me, py)? {
            return Ok(());
        }
        // A send is in flight, or finished with its `_write_done` still to
        // run: either way one send at a time, and what comes meanwhile
        // waits in the buffer (a second op would race the first, and
        // `_write_done` would count the buffer empty under it).
        let sending = {
            let io = me.io.borrow(py);
            io.write_op.is_some() || io.write_result.is_some()
        };
        let mut rest = bytes;
        if !sending
            && me.st.borrow(py).buf.is_empty()
            && (bytes.len() >= DIRECT_SEND_AT
                || me.link.lp(py).is_some_and(|l| l.get().take_direct_send(py)))
        {
            // A large write is offered to the socket at once, from the
            // caller's buffer: no copy of what the kernel takes, and the
            // same buffer sizes the selector loop shows.
            match send_now(me.link.fd(py), bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => rest = &bytes[n..],
                Err(e) if would_block(&e) => {}
                Err(e) => return sel::fatal_error(slf, io_err(e), WRITE_FAILED),
            }
        }
        if sending {
            me.st.borrow_mut(py).buf.push(rest);
        } else if let Some(b) = data
            .cast::<PyBytes>()
            .ok()
            .filter(|_| rest.len() >= LEND_AT && me.st.borrow(py).buf.is_empty())
        {
            // A bytes object cannot change: the op sends from it.
            Self::submit_lent(slf, b, bytes.len() - rest.len())?;
        } else {
            Self::submit_send(slf, rest)?;
        }
        half::maybe_pause(me, py)
    }

    /// A send finished: send what accumulated, tell the protocol, finish
    /// closing or EOF once everything is out.
    fn _write_done(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(result) = me.io.borrow_mut(py).write_result.take() else {
            return Ok(());
        };
        if me.sel.borrow(py).conn_lost > 0 {
            return Ok(());
        }
        if let Err(e) = result {
            me.clear_buffer(py);
            let err = io_err(e);
            let exc = err.value(py).clone().into_any();
            sel::fatal_error(slf, err, WRITE_FAILED)?;
            return half::write_failed(me, py, &exc);
        }
        let rest = me.io.borrow_mut(py).short_rest.take();
        if let Some(rest) = rest {
            // The send stopped short: send the rest (then what was written
            // meanwhile). Its error, if it fails, is the connection's.
            return Self::submit_write(slf, |io, h, fd| {
                let mut data = rest;
                data.extend_from_slice(h.buf.pending());
                h.buf.clear();
                io.in_flight = data.len();
                Op::send(fd, data)
            });
        }
        me.io.borrow_mut(py).in_flight = 0;
        if !me.st.borrow(py).buf.is_empty() {
            Self::submit_send(slf, &[])?;
        }
        half::maybe_resume(me, py)?; // may write more
        if me.write_buffer_size(py) > 0 {
            return Ok(());
        }
        half::buffer_emptied(me, py)?;
        if me.sel.borrow(py).closing {
            Self::_call_connection_lost(slf, py.None().into_bound(py))
        } else if me.st.borrow(py).eof {
            half::shutdown_wr(me.link.fd(py))
        } else {
            Ok(())
        }
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let connected = me.st.borrow(py).protocol_connected;
        let res = sel::connection_lost(me, py, &exc, connected);
        // Completions still to come find no handle: nothing more runs.
        let handles = {
            let mut io = me.io.borrow_mut(py);
            io.read_result = None;
            io.multi_end = None;
            (io.read_handle.take(), io.write_handle.take())
        };
        drop(handles);
        me.release_chunks(py);
        res?;
        half::closed_by_peer(me, py)
    }

    /// What the repr shows, as the selector transport's watch mask would:
    /// (reading and not paused, a send in flight).
    #[getter]
    fn io_state(&self, py: Python<'_>) -> (bool, bool) {
        let live = self.sel.borrow(py).conn_lost == 0;
        let reading = live && sel::is_reading(self, py);
        (reading, live && self.io.borrow(py).write_op.is_some())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        sel::traverse(&self.sel, &visit)?;
        half::traverse(&self.st, &visit)?;
        if let Some(io) = self.io.gc_borrow() {
            visit.call(&io.read_handle)?;
            visit.call(&io.write_handle)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.link.clear();
        sel::clear(&self.sel);
        half::clear(&self.st);
        let taken = self
            .io
            .gc_borrow_mut()
            .map(|mut io| (io.read_handle.take(), io.write_handle.take()));
        drop(taken);
    }
}

/// `TCP_CLOSE` of the kernel's TCP states (`tcpi_state`).
const TCP_CLOSE: u8 = 7;

/// The TCP state of `fd`, or `None` when it is not a TCP socket.
fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: `tcp_info` is plain old data, valid zeroed; getsockopt writes
    // at most `len` bytes into it and we read it only on success.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are live locals of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0 && len >= 1).then_some(info.tcpi_state)
}
