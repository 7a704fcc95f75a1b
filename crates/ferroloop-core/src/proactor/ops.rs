//! The completion ops a [`Proactor`](super::Proactor) runs, each owning
//! what the kernel reads or writes until its completion.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::OpId;

/// An address for `connect`, or the one `accept` filled in.
#[derive(Clone)]
pub struct SockAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl SockAddr {
    /// An empty address with room for any family.
    pub fn empty() -> Box<Self> {
        Box::new(SockAddr {
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        })
    }

    /// An address from raw bytes of a `sockaddr`.
    pub fn from_bytes(raw: &[u8]) -> Option<Box<Self>> {
        let mut a = Self::empty();
        if raw.len() > std::mem::size_of::<libc::sockaddr_storage>() {
            return None;
        }
        // SAFETY: `raw` fits in the storage, which is plain bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                (&mut a.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                raw.len(),
            )
        };
        a.len = raw.len() as libc::socklen_t;
        Some(a)
    }
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockAddr")
            .field("family", &self.storage.ss_family)
            .field("len", &self.len)
            .finish()
    }
}

/// The header and address of a `recvmsg` or `sendmsg` op, boxed so the
/// pointers the kernel follows stay put while the op is in flight.
pub struct MsgBuf {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddr,
}

// SAFETY: the raw pointers in `hdr` and `iov` point into this value and
// into the buffer of the op that owns it, which move threads together.
unsafe impl Send for MsgBuf {}

impl MsgBuf {
    /// For a `recvmsg`: room for the sender's address.
    pub fn new() -> Box<MsgBuf> {
        Self::with_addr(*SockAddr::empty())
    }

    /// For a `sendmsg` to `addr`; `None` for a connected socket.
    pub fn to(addr: Option<&SockAddr>) -> Box<MsgBuf> {
        match addr {
            Some(a) => Self::with_addr(a.clone()),
            None => {
                let mut m = Self::new();
                m.addr.len = 0;
                m
            }
        }
    }

    fn with_addr(addr: SockAddr) -> Box<MsgBuf> {
        Box::new(MsgBuf {
            // SAFETY: msghdr and iovec are plain data; all zeroes is valid.
            hdr: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            addr,
        })
    }

    /// The address a finished `recvmsg` reported (raw `sockaddr` bytes).
    pub fn peer(&self) -> &[u8] {
        let len =
            (self.hdr.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `len` bytes of the storage, which is plain memory.
        unsafe {
            std::slice::from_raw_parts(
                (&self.addr.storage as *const libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        }
    }

    /// Point the header at `buf` and at the address.
    fn prepare(&mut self, buf: *mut u8, len: usize, recv: bool) -> *mut libc::msghdr {
        self.iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: len,
        };
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        if recv {
            self.hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        } else {
            self.hdr.msg_namelen = self.addr.len;
        }
        self.hdr.msg_name = if self.hdr.msg_namelen == 0 {
            std::ptr::null_mut()
        } else {
            (&mut self.addr.storage as *mut libc::sockaddr_storage).cast()
        };
        &mut self.hdr
    }
}

impl std::fmt::Debug for MsgBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgBuf")
            .field("addr", &self.addr)
            .field("namelen", &self.hdr.msg_namelen)
            .finish()
    }
}

/// `IORING_RECVSEND_POLL_FIRST` (include/uapi/linux/io_uring.h), in a recv's
/// `ioprio`; the crate does not export it.
const RECVSEND_POLL_FIRST: u16 = 1;

/// Memory a send reads that its owner keeps, not the driver: for example
/// an immutable Python `bytes` object, sent without copying it. The op holds
/// the value, and so the memory, until its completion.
///
/// # Safety
///
/// For as long as the value lives, `as_ptr()` must return the same pointer
/// to `len()` readable bytes that do not change and are not freed, and the
/// value may be dropped on any thread.
pub unsafe trait LentBuf: Send + std::fmt::Debug {
    fn as_ptr(&self) -> *const u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Memory a recv writes that its owner provides, not the driver: for
/// example a new Python `bytes` object nothing else has seen yet, filled in
/// place and handed on without a copy. The op holds the value until its
/// completion, which gives it back (`Any` lets the owner recover its type).
///
/// # Safety
///
/// For as long as the value lives, `as_mut_ptr()` must return the same
/// pointer to `len()` writable bytes that nothing else reads or writes and
/// that are not freed, and the value may be dropped on any thread.
pub unsafe trait LentBufMut: Send + std::fmt::Debug + std::any::Any {
    fn as_mut_ptr(&mut self) -> *mut u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One completion op. Buffers are `Vec`s whose heap memory does not move
/// while the op is in flight, [`LentBuf`]s or [`LentBufMut`]s.
#[derive(Debug)]
pub enum Op {
    /// A multishot recv into buffers of provided-buffer ring `group` (see
    /// [`Proactor::add_buf_ring`](super::Proactor::add_buf_ring)): it stays
    /// armed, and each time data comes the kernel fills one buffer of the
    /// pool and reports it as a [`Shot`], with the buffer's id in its flags.
    /// The op ends (a [`Completion`], which may carry a last buffer) at end
    /// of stream (result 0), on an error, when cancelled, and with `ENOBUFS`
    /// when the pool has no free buffer (not an end of stream: the caller
    /// arms it again, or reads another way, once buffers are back).
    RecvMulti { fd: RawFd, group: u16 },
    /// `recv(fd, buf[..buf.len()])`; the completion's result is the count.
    /// `poll_first`: the caller expects no data yet (its last recv left the
    /// socket empty), so the kernel should wait for readiness before trying
    /// (`IORING_RECVSEND_POLL_FIRST`, where the kernel has it) rather than
    /// make a first attempt that only finds nothing.
    Recv {
        fd: RawFd,
        buf: Vec<u8>,
        poll_first: bool,
    },
    /// [`Recv`](Op::Recv) into memory the caller lent.
    RecvLent {
        fd: RawFd,
        buf: Box<dyn LentBufMut>,
        poll_first: bool,
    },
    /// `send(fd, buf[sent..], MSG_NOSIGNAL)` until all of `buf` is sent (or
    /// an error): partial sends are continued by the driver. The result is
    /// the total sent.
    Send {
        fd: RawFd,
        buf: Vec<u8>,
        sent: usize,
    },
    /// [`Send`](Op::Send) from memory the caller lent.
    SendLent {
        fd: RawFd,
        buf: Box<dyn LentBuf>,
        sent: usize,
    },
    /// `read(fd, buf)` at the current position (pipes, character devices).
    Read { fd: RawFd, buf: Vec<u8> },
    /// `write(fd, buf[written..])` until all of `buf` is written, as Send.
    Write {
        fd: RawFd,
        buf: Vec<u8>,
        written: usize,
    },
    /// `recvmsg(fd)` of one datagram into `buf`; the sender's address is
    /// in `msg` ([`MsgBuf::peer`]). The result is the datagram's length
    /// (at most `buf.len()`: a longer one is truncated, as `recvfrom`).
    RecvMsg {
        fd: RawFd,
        buf: Vec<u8>,
        msg: Box<MsgBuf>,
    },
    /// `sendmsg(fd, MSG_NOSIGNAL)` of `buf` as one datagram, to the address
    /// in `msg` (or the connected peer). Not continued: a datagram goes
    /// whole or not at all.
    SendMsg {
        fd: RawFd,
        buf: Vec<u8>,
        msg: Box<MsgBuf>,
    },
    /// A multishot `accept4(fd, SOCK_CLOEXEC)` (Linux 5.19,
    /// [`Features::accept_multishot`](super::Features::accept_multishot)):
    /// it stays armed and reports each accepted descriptor as a [`Shot`]
    /// (the caller owns it from then on); it ends on an error or when
    /// cancelled.
    AcceptMulti { fd: RawFd },
    /// `accept4(fd, SOCK_CLOEXEC)`; the peer's address lands in `addr`.
    Accept { fd: RawFd, addr: Box<SockAddr> },
    /// `connect(fd, addr)`.
    Connect { fd: RawFd, addr: Box<SockAddr> },
    /// `close(fd)`.
    Close { fd: RawFd },
    /// A one-shot `poll(fd, mask)`; the result is the returned mask.
    Poll { fd: RawFd, mask: u32 },
}

impl Op {
    /// A `Recv` of up to `len` bytes into a new buffer.
    pub fn recv(fd: RawFd, len: usize) -> Op {
        Op::Recv {
            fd,
            buf: vec![0; len],
            poll_first: false,
        }
    }

    /// A `Send` of `buf`.
    pub fn send(fd: RawFd, buf: Vec<u8>) -> Op {
        Op::Send { fd, buf, sent: 0 }
    }

    /// The descriptor the op works on.
    pub fn fd(&self) -> RawFd {
        match self {
            Op::Recv { fd, .. }
            | Op::RecvLent { fd, .. }
            | Op::RecvMulti { fd, .. }
            | Op::RecvMsg { fd, .. }
            | Op::SendMsg { fd, .. }
            | Op::AcceptMulti { fd }
            | Op::Send { fd, .. }
            | Op::SendLent { fd, .. }
            | Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::Accept { fd, .. }
            | Op::Connect { fd, .. }
            | Op::Close { fd }
            | Op::Poll { fd, .. } => *fd,
        }
    }

    /// The submission entry for the op as it stands (without user data).
    /// `poll_first_ok`: the kernel takes `IORING_RECVSEND_POLL_FIRST`.
    pub(super) fn entry(&mut self, poll_first_ok: bool) -> squeue::Entry {
        match self {
            Op::Recv {
                fd,
                buf,
                poll_first,
            } => recv_entry(
                *fd,
                buf.as_mut_ptr(),
                buf.len(),
                *poll_first && poll_first_ok,
            ),
            // LentBufMut's contract: `len` writable bytes at `as_mut_ptr`,
            // untouched by anyone else while the op holds `buf`.
            Op::RecvLent {
                fd,
                buf,
                poll_first,
            } => recv_entry(
                *fd,
                buf.as_mut_ptr(),
                buf.len(),
                *poll_first && poll_first_ok,
            ),
            Op::RecvMulti { fd, group } => opcode::RecvMulti::new(types::Fd(*fd), *group).build(),
            Op::RecvMsg { fd, buf, msg } => {
                let hdr = msg.prepare(buf.as_mut_ptr(), buf.len(), true);
                opcode::RecvMsg::new(types::Fd(*fd), hdr).build()
            }
            Op::SendMsg { fd, buf, msg } => {
                let hdr = msg.prepare(buf.as_mut_ptr(), buf.len(), false);
                opcode::SendMsg::new(types::Fd(*fd), hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
            Op::AcceptMulti { fd } => opcode::AcceptMulti::new(types::Fd(*fd))
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            Op::Send { fd, buf, sent } => {
                let rest = &buf[*sent..];
                opcode::Send::new(types::Fd(*fd), rest.as_ptr(), clamp(rest.len()))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Op::SendLent { fd, buf, sent } => {
                // SAFETY: LentBuf's contract: `len` bytes stay readable at
                // `as_ptr` while the op holds `buf`; `sent <= len`.
                let rest = unsafe { buf.as_ptr().add(*sent) };
                opcode::Send::new(types::Fd(*fd), rest, clamp(buf.len() - *sent))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Op::Read { fd, buf } => {
                opcode::Read::new(types::Fd(*fd), buf.as_mut_ptr(), clamp(buf.len()))
                    .offset(u64::MAX)
                    .build()
            }
            Op::Write { fd, buf, written } => {
                let rest = &buf[*written..];
                opcode::Write::new(types::Fd(*fd), rest.as_ptr(), clamp(rest.len()))
                    .offset(u64::MAX)
                    .build()
            }
            Op::Accept { fd, addr } => {
                addr.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                opcode::Accept::new(
                    types::Fd(*fd),
                    (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
                    &mut addr.len,
                )
                .flags(libc::SOCK_CLOEXEC)
                .build()
            }
            Op::Connect { fd, addr } => opcode::Connect::new(
                types::Fd(*fd),
                (&addr.storage as *const libc::sockaddr_storage).cast(),
                addr.len,
            )
            .build(),
            Op::Close { fd } => opcode::Close::new(types::Fd(*fd)).build(),
            Op::Poll { fd, mask } => opcode::PollAdd::new(types::Fd(*fd), *mask).build(),
        }
    }

    /// The op reports results as [`Shot`]s until its last.
    pub fn is_multishot(&self) -> bool {
        matches!(self, Op::RecvMulti { .. } | Op::AcceptMulti { .. })
    }

    /// Count `n` more bytes as done; true if a send or write has more to go.
    pub(super) fn advance(&mut self, n: usize) -> bool {
        match self {
            Op::Send {
                buf, sent: done, ..
            }
            | Op::Write {
                buf, written: done, ..
            } => {
                *done += n;
                *done < buf.len()
            }
            Op::SendLent { buf, sent, .. } => {
                *sent += n;
                *sent < buf.len()
            }
            _ => false,
        }
    }

    /// The result of the op once its last completion arrived.
    pub(super) fn finish(&self, res: i32) -> io::Result<usize> {
        let done = match self {
            Op::Send { sent, .. } | Op::SendLent { sent, .. } => *sent,
            Op::Write { written, .. } => *written,
            _ => 0,
        };
        if res < 0 {
            // Bytes a send already took count as sent, as a partial send
            // would report; the error shows on the next one.
            if done > 0 {
                return Ok(done);
            }
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(match self {
            Op::Send { .. } | Op::SendLent { .. } | Op::Write { .. } => done,
            _ => res as usize,
        })
    }
}

/// A recv of `len` bytes into `ptr`, waiting for readiness first if
/// `poll_first`.
fn recv_entry(fd: RawFd, ptr: *mut u8, len: usize, poll_first: bool) -> squeue::Entry {
    let prio = if poll_first { RECVSEND_POLL_FIRST } else { 0 };
    opcode::Recv::new(types::Fd(fd), ptr, clamp(len))
        .ioprio(prio)
        .build()
}

fn clamp(len: usize) -> u32 {
    len.min(u32::MAX as usize) as u32
}

/// The buffer a completion's flags name (`IORING_CQE_F_BUFFER`).
fn buffer_of(flags: u32) -> Option<u16> {
    io_uring::cqueue::buffer_select(flags)
}

/// One result of a multishot op that goes on ([`Op::RecvMulti`]): the op
/// stays in flight, its owner with it (see [`Proactor::owner`](super::Proactor::owner)).
#[derive(Debug)]
pub struct Shot {
    /// The op's identity, as `submit` returned it.
    pub id: OpId,
    /// Bytes received into [`buffer`](Shot::buffer), or the error.
    pub result: io::Result<usize>,
    /// The completion's flags (`IORING_CQE_F_*`).
    pub flags: u32,
}

impl Shot {
    /// The provided buffer the bytes are in, if any.
    pub fn buffer(&self) -> Option<u16> {
        buffer_of(self.flags)
    }
}

/// A finished op: who asked, what came of it, and the op with its buffers.
#[derive(Debug)]
pub struct Completion<T> {
    /// The op's identity, as `submit` returned it.
    pub id: OpId,
    /// The value given to `submit`.
    pub owner: T,
    /// Bytes moved, the new descriptor (accept), the poll mask (poll), or 0;
    /// or the error.
    pub result: io::Result<usize>,
    /// The completion's flags (`IORING_CQE_F_*`).
    pub flags: u32,
    /// `cancel` was called for the op (it may have finished anyway).
    pub cancelled: bool,
    /// The op, with its buffers.
    pub op: Op,
}

impl<T> Completion<T> {
    /// The provided buffer a multishot recv's last bytes are in, if any.
    pub fn buffer(&self) -> Option<u16> {
        buffer_of(self.flags)
    }

    /// The owner, and the completion without it.
    pub fn take_owner(self) -> (T, Completion<()>) {
        let Completion {
            id,
            owner,
            result,
            flags,
            cancelled,
            op,
        } = self;
        let rest = Completion {
            id,
            owner: (),
            result,
            flags,
            cancelled,
            op,
        };
        (owner, rest)
    }
}
