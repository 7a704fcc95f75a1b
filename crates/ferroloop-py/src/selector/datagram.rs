//! `DatagramCore`: the native half of ferroloop's datagram transports (UDP
//! and Unix datagram sockets, `create_datagram_endpoint`).
//!
//! The rules, messages and callback order are those of asyncio's
//! `_SelectorDatagramTransport`, with one deliberate difference: one read
//! readiness delivers up to [`RECV_BATCH`] queued datagrams, as libuv (and
//! so uvloop) does, instead of one per pass.
//!
//! For a plain `socket.socket` of family `AF_INET`, `AF_INET6` or `AF_UNIX`
//! the transport makes the system calls itself: one `recvmmsg` takes the
//! batch, each sender's address is made as the socket module makes it
//! (`crate::sockaddr::to_py`) or taken from a small cache of the addresses
//! already made (keyed by the sockaddr's bytes, so never stale), and
//! `sendto` to the address object just handed to `datagram_received` (the
//! echo case) reuses that datagram's sockaddr instead of parsing the object
//! again (with the socket module's `socket.sendto` audit event). Anything
//! else (other families, socket subclasses, other address objects) goes
//! through the socket's own `recvfrom`, `send` and `sendto`, so addresses,
//! name resolution and errors are exactly the socket module's.
//!
//! Datagrams taken but not yet delivered (the protocol paused reading or
//! raised in the middle of a batch) wait in `pending` and are delivered
//! first, in order, once reading goes on; closing drops them, as closing
//! the socket drops what the kernel still queues.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int};
use std::os::fd::RawFd;

use ferroloop_core::net::{self, RecvBatch, SockAddr, RECV_BATCH};

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::cell::GilCell;
use crate::link::{
    check_bytes_like, is_exit, logger, would_block, Flow, LinkCell,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES, MAX_READ,
};
use crate::loop_core::LoopCore;
use crate::selector::sel::{self, sock_methods, SelState, SockTransport};

/// Entries of a transport's cache of senders' address objects
/// (direct-mapped by a hash of the sockaddr bytes).
const PEER_CACHE: usize = 64;
/// The largest sockaddr the cache keeps (`sockaddr_in6`); Unix addresses
/// are made afresh each time.
const PEER_KEY: usize = std::mem::size_of::<libc::sockaddr_in6>();

thread_local! {
    /// The batch buffers, one per thread as every loop runs on one thread;
    /// taken out while in use, so a re-entrant read gets a fresh one.
    static BATCH: RefCell<Option<Box<RecvBatch>>> = const { RefCell::new(None) };
}

extern "C" {
    // CPython's (variadic, so not in pyo3's bindings).
    fn PySys_Audit(event: *const c_char, format: *const c_char, ...) -> c_int;
}

/// A sender's address object and the sockaddr bytes it was made from.
struct Peer {
    key: [u8; PEER_KEY],
    len: u8,
    obj: Py<PyAny>,
}

fn peer_slot(key: &[u8]) -> usize {
    // FNV-1a: the port and the last address bytes differ between peers.
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h as usize) % PEER_CACHE
}
const DGRAM_READ_FAILED: &str = "Fatal read error on datagram transport";
const DGRAM_WRITE_FAILED: &str = "Fatal write error on datagram transport";

struct DgSt {
    /// The remote address given to `create_datagram_endpoint`, if any.
    address: Option<Py<PyAny>>,
    /// The socket is connected (`extra['peername']` is set): `send`, not
    /// `sendto`.
    connected: bool,
    buf: VecDeque<(Py<PyAny>, Py<PyAny>)>,
    buf_size: usize,
    flow: Flow,
    /// The socket's system calls are made natively (see the module docs).
    native: bool,
    /// Datagrams taken from the socket, not yet delivered, with their
    /// senders' address objects and sockaddrs.
    pending: VecDeque<(Py<PyAny>, Py<PyAny>, SockAddr)>,
    /// Address objects already made, by sockaddr (allocated on first use).
    peers: Vec<Option<Peer>>,
    /// The address object of the datagram being delivered and its sockaddr.
    current: Option<(Py<PyAny>, SockAddr)>,
}

impl DgSt {
    /// The address object for `sa`: from the cache, else made and cached.
    fn peer_obj(&mut self, py: Python<'_>, sa: &SockAddr) -> PyResult<Py<PyAny>> {
        let key = sa.as_bytes();
        let cacheable = matches!(sa.family(), libc::AF_INET | libc::AF_INET6)
            && !key.is_empty()
            && key.len() <= PEER_KEY;
        if !cacheable {
            return crate::sockaddr::to_py(py, sa);
        }
        if self.peers.is_empty() {
            self.peers.resize_with(PEER_CACHE, || None);
        }
        let slot = peer_slot(key);
        if let Some(p) = &self.peers[slot] {
            if &p.key[..usize::from(p.len)] == key {
                return Ok(p.obj.clone_ref(py));
            }
        }
        let obj = crate::sockaddr::to_py(py, sa)?;
        let mut k = [0u8; PEER_KEY];
        k[..key.len()].copy_from_slice(key);
        let old = self.peers[slot].replace(Peer {
            key: k,
            len: key.len() as u8,
            obj: obj.clone_ref(py),
        });
        drop(old);
        Ok(obj)
    }
}

/// Whether the transport can make `sock`'s system calls itself: a plain
/// `socket.socket` (not a subclass or a stand-in, whose methods may differ)
/// of a family whose addresses `crate::sockaddr::to_py` makes.
fn is_native(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = sock.py();
    if !crate::plain_sock::is_plain_socket(sock)? {
        return Ok(false);
    }
    let family: i32 = sock.getattr(pyo3::intern!(py, "family"))?.extract()?;
    Ok(matches!(
        family,
        libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX
    ))
}

/// A native socket call's outcome, sorted as [`classify`] sorts the socket
/// module's: a signal's interruption runs the handlers (their exception is
/// the call's, as in the socket module) and tries again; `EAGAIN` is
/// [`Outcome::WouldBlock`]; other errors are the `OSError` the socket module
/// raises.
fn sys_call<T>(py: Python<'_>, mut f: impl FnMut() -> std::io::Result<T>) -> PyResult<Outcome<T>> {
    loop {
        match f() {
            Ok(v) => return Ok(Outcome::Done(v)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if let Err(e) = py.check_signals() {
                    return classify(py, Err(e));
                }
            }
            Err(e) if would_block(&e) => return Ok(Outcome::WouldBlock),
            Err(e) => return Ok(Outcome::OsError(crate::errors::io_err(e))),
        }
    }
}

/// The state and work of one datagram transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct DatagramCore {
    link: LinkCell,
    sel: GilCell<SelState>,
    st: GilCell<DgSt>,
}

impl SockTransport for DatagramCore {
    fn link(&self) -> &LinkCell {
        &self.link
    }
    fn sel(&self) -> &GilCell<SelState> {
        &self.sel
    }
    fn has_buffered(&self, py: Python<'_>) -> bool {
        !self.st.borrow(py).buf.is_empty()
    }
    /// Start (or resume) reading; datagrams already taken are delivered
    /// in the next pass even if the socket has nothing more.
    fn begin_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        me.link
            .add_watch(slf.as_any(), pyo3::intern!(py, "_read_ready"), false)?;
        me.schedule_pending(slf)
    }
    fn clear_buffer(&self, py: Python<'_>) {
        let taken = {
            let mut st = self.st.borrow_mut(py);
            st.buf_size = 0;
            std::mem::take(&mut st.buf)
        };
        drop(taken);
    }
}

sock_methods!(DatagramCore);

/// How a socket call ended, sorted as asyncio's `except` clauses sort it.
enum Outcome<T> {
    Done(T),
    WouldBlock,
    /// An OSError: goes to `protocol.error_received`.
    OsError(PyErr),
    /// Anything else: fatal (SystemExit and KeyboardInterrupt propagate).
    Fatal(PyErr),
}

fn classify<T>(py: Python<'_>, res: PyResult<T>) -> PyResult<Outcome<T>> {
    Ok(match res {
        Ok(v) => Outcome::Done(v),
        Err(e)
            if e.is_instance_of::<PyBlockingIOError>(py)
                || e.is_instance_of::<PyInterruptedError>(py) =>
        {
            Outcome::WouldBlock
        }
        Err(e) if e.is_instance_of::<PyOSError>(py) => Outcome::OsError(e),
        Err(e) if is_exit(py, &e) => return Err(e),
        Err(e) => Outcome::Fatal(e),
    })
}

impl DatagramCore {
    fn bound_sock<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.sel
            .borrow(py)
            .sock
            .as_ref()
            .map(|s| s.bind(py).clone())
    }

    fn error_received(&self, py: Python<'_>, err: PyErr) -> PyResult<()> {
        let protocol = self.link.protocol_obj(py);
        protocol
            .bind(py)
            .call_method1(pyo3::intern!(py, "error_received"), (err.into_value(py),))?;
        Ok(())
    }

    /// `sock.send(data)` on a connected socket, else `sock.sendto(data, addr)`.
    fn send_one(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<Outcome<()>> {
        let (connected, native, current) = {
            let st = self.st.borrow(py);
            let current = match &st.current {
                Some((obj, sa)) if !st.connected && obj.is(addr) => Some(*sa),
                _ => None,
            };
            (st.connected, st.native, current)
        };
        if native && (connected || current.is_some()) {
            if let Ok(bytes) = data.cast::<PyBytes>() {
                let fd = self.link.fd(py);
                let data = bytes.as_bytes();
                return match current {
                    Some(sa) => match audit_sendto(sock, addr) {
                        Ok(()) => sys_call(py, || net::sendto(fd, data, &sa).map(drop)),
                        Err(e) => classify(py, Err(e)),
                    },
                    None => sys_call(py, || net::send(fd, data).map(drop)),
                };
            }
        }
        let res = if connected {
            sock.call_method1(pyo3::intern!(py, "send"), (data,))
        } else {
            sock.call_method1(pyo3::intern!(py, "sendto"), (data, addr))
        };
        classify(py, res.map(drop))
    }

    /// When datagrams wait in `pending` and reading goes on, deliver them
    /// in the next pass (the socket may have nothing to wake the watch).
    fn schedule_pending(&self, slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if self.st.borrow(py).pending.is_empty() || !sel::is_reading(self, py) {
            return Ok(());
        }
        let cb = slf.getattr(pyo3::intern!(py, "_read_ready"))?;
        self.link.call_soon(py, cb, PyTuple::empty(py))
    }

    /// Deliver the datagrams in `pending`, in order, while reading is on;
    /// false when reading stopped (paused, closing, closed). When the
    /// protocol raises, the rest wait for the next pass.
    fn deliver_pending(&self, slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        loop {
            {
                let s = self.sel.borrow(py);
                if s.conn_lost > 0 || s.closing || s.sock.is_none() {
                    drop(s);
                    let dropped = std::mem::take(&mut self.st.borrow_mut(py).pending);
                    drop(dropped);
                    return Ok(false);
                }
                if s.paused {
                    return Ok(false);
                }
            }
            let (data, addr) = {
                let mut st = self.st.borrow_mut(py);
                let Some((data, addr, sa)) = st.pending.pop_front() else {
                    return Ok(true);
                };
                // Only IP addresses: `sendto` to them natively is exactly
                // the socket module's.
                if matches!(sa.family(), libc::AF_INET | libc::AF_INET6) {
                    let old = st.current.replace((addr.clone_ref(py), sa));
                    drop(old);
                }
                (data, addr)
            };
            let protocol = self.link.protocol_obj(py);
            let res = protocol
                .bind(py)
                .call_method1(pyo3::intern!(py, "datagram_received"), (&data, addr));
            if let Ok(data) = data.into_bound(py).cast_into::<PyBytes>() {
                crate::link::recycle(data);
            }
            if let Err(e) = res {
                self.schedule_pending(slf)?;
                return Err(e);
            }
        }
    }

    /// One read readiness, native: what is pending, then one `recvmmsg`.
    fn read_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if !me.deliver_pending(slf)? {
            return Ok(());
        }
        let fd = me.link.fd(py);
        // Up to RECV_BATCH datagrams per readiness, in as many reads as it
        // takes: after a batch is delivered, the socket is read again while
        // nothing else is ready to run. A peer sharing the CPU has usually
        // answered by then (the reply just sent handed it the CPU), and
        // reading it now saves a trip through the selector; with other
        // callbacks waiting, they run first, as after any readiness.
        let mut budget = RECV_BATCH;
        loop {
            let mut batch = BATCH
                .with(|b| b.borrow_mut().take())
                .unwrap_or_else(|| Box::new(RecvBatch::new(MAX_READ)));
            let got = sys_call(py, || batch.recv(fd, budget));
            let made = match &got {
                Ok(Outcome::Done(n)) => {
                    let mut st = me.st.borrow_mut(py);
                    (0..*n).try_for_each(|i| {
                        let (data, sa) = batch.get(i);
                        let data = crate::link::bytes_from(py, data).into_any().unbind();
                        let addr = st.peer_obj(py, sa)?;
                        st.pending.push_back((data, addr, *sa));
                        Ok::<_, PyErr>(())
                    })
                }
                _ => Ok(()),
            };
            BATCH.with(|b| *b.borrow_mut() = Some(batch));
            made?;
            let n = match got? {
                Outcome::Done(n) => n,
                Outcome::WouldBlock => return Ok(()),
                Outcome::OsError(e) => return me.error_received(py, e),
                Outcome::Fatal(e) => return sel::fatal_error(slf, e, DGRAM_READ_FAILED),
            };
            if !me.deliver_pending(slf)? {
                return Ok(());
            }
            budget = budget.saturating_sub(n);
            let busy = me.link.lp(py).is_none_or(|lp| lp.get().has_ready(py));
            if budget == 0 || busy {
                return Ok(());
            }
        }
    }

    fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let pause = {
            let mut st = self.st.borrow_mut(py);
            let size = st.buf_size;
            st.flow.should_pause(size)
        };
        if pause {
            self.link.flow_callback(py, "pause_writing")?;
        }
        Ok(())
    }
}

#[pymethods]
impl DatagramCore {
    #[new]
    #[pyo3(signature = (lp, sock, protocol, transport, address, connected))]
    fn py_new(
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        connected: bool,
    ) -> PyResult<Self> {
        let fd: RawFd = sock
            .call_method0(pyo3::intern!(sock.py(), "fileno"))?
            .extract()?;
        Ok(DatagramCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            sel: GilCell::new(SelState::new(sock, None)),
            st: GilCell::new(DgSt {
                address: address.filter(|a| !a.is_none()).map(|a| a.clone().unbind()),
                connected,
                buf: VecDeque::new(),
                buf_size: 0,
                flow: Flow::default(),
                native: is_native(sock)?,
                pending: VecDeque::new(),
                peers: Vec::new(),
                current: None,
            }),
        })
    }

    /// Schedule `connection_made`, the start of reading and the waiter.
    #[pyo3(signature = (waiter = None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let start = slf.getattr(pyo3::intern!(py, "_add_reader_cb"))?;
        slf.get().link.start(py, Some(start), waiter)
    }

    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::start_reading(slf)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.st.borrow(py).native {
            return Self::read_native(slf);
        }
        for _ in 0..RECV_BATCH {
            {
                let s = me.sel.borrow(py);
                if s.conn_lost > 0 || s.closing || s.paused {
                    return Ok(());
                }
            }
            let Some(sock) = me.bound_sock(py) else {
                return Ok(());
            };
            let res = sock.call_method1(pyo3::intern!(py, "recvfrom"), (MAX_READ,));
            match classify(py, res)? {
                Outcome::Done(pair) => {
                    let pair = pair.cast_into::<PyTuple>()?;
                    let protocol = me.link.protocol_obj(py);
                    protocol.bind(py).call_method1(
                        pyo3::intern!(py, "datagram_received"),
                        (pair.get_item(0)?, pair.get_item(1)?),
                    )?;
                }
                Outcome::WouldBlock => return Ok(()),
                Outcome::OsError(e) => return me.error_received(py, e),
                Outcome::Fatal(e) => return sel::fatal_error(slf, e, DGRAM_READ_FAILED),
            }
        }
        Ok(())
    }

    #[pyo3(signature = (data, addr = None))]
    pub(crate) fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        check_bytes_like(data)?;
        if data.len()? == 0 {
            return Ok(());
        }
        let mut addr = addr.unwrap_or_else(|| py.None().into_bound(py));
        let address = me.st.borrow(py).address.as_ref().map(|a| a.clone_ref(py));
        if let Some(address) = &address {
            let address = address.bind(py);
            if !addr.is_none() && !addr.eq(address)? {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            addr = address.clone();
        }
        let conn_lost = me.sel.borrow(py).conn_lost;
        if conn_lost > 0 && address.is_some() {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            me.sel.borrow_mut(py).conn_lost += 1;
            return Ok(());
        }
        if me.st.borrow(py).buf.is_empty() {
            let Some(sock) = me.bound_sock(py) else {
                return Ok(());
            };
            match me.send_one(py, &sock, data, &addr)? {
                Outcome::Done(()) => return Ok(()),
                Outcome::WouldBlock => {
                    me.link
                        .add_watch(slf.as_any(), pyo3::intern!(py, "_sendto_ready"), true)?;
                }
                Outcome::OsError(e) => return me.error_received(py, e),
                Outcome::Fatal(e) => return sel::fatal_error(slf, e, DGRAM_WRITE_FAILED),
            }
        }
        // What is buffered must not change: keep an immutable copy.
        let copy = PyBytes::new(py, crate::link::ByteView::new(data, false)?.as_slice());
        let n = copy.as_bytes().len();
        {
            let mut st = me.st.borrow_mut(py);
            st.buf.push_back((copy.into_any().unbind(), addr.unbind()));
            st.buf_size += n;
        }
        me.maybe_pause_protocol(py)
    }

    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        loop {
            let item = {
                let mut st = me.st.borrow_mut(py);
                let item = st.buf.pop_front();
                if let Some((data, _)) = &item {
                    st.buf_size -= data.bind(py).len()?;
                }
                item
            };
            let Some((data, addr)) = item else { break };
            let Some(sock) = me.bound_sock(py) else {
                return Ok(());
            };
            match me.send_one(py, &sock, data.bind(py), addr.bind(py))? {
                Outcome::Done(()) => {}
                Outcome::WouldBlock => {
                    let mut st = me.st.borrow_mut(py);
                    st.buf_size += data.bind(py).len()?;
                    st.buf.push_front((data, addr));
                    break;
                }
                Outcome::OsError(e) => return me.error_received(py, e),
                Outcome::Fatal(e) => return sel::fatal_error(slf, e, DGRAM_WRITE_FAILED),
            }
        }
        let resume = {
            let mut st = me.st.borrow_mut(py);
            let size = st.buf_size;
            st.flow.should_resume(size)
        };
        if resume {
            me.link.flow_callback(py, "resume_writing")?; // may send more
        }
        if me.st.borrow(py).buf.is_empty() {
            me.link.remove_watch(py, true)?;
            if me.sel.borrow(py).closing {
                sel::connection_lost(me, py, &py.None().into_bound(py), true)?;
            }
        }
        Ok(())
    }

    fn _call_connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        sel::connection_lost(self, py, &exc, true)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.st.borrow(py).buf_size
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (i64, i64) {
        let st = self.st.borrow(py);
        (st.flow.low, st.flow.high)
    }

    #[pyo3(signature = (high = None, low = None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        crate::link::set_limits(&mut self.st.borrow_mut(py).flow, high, low)?;
        self.maybe_pause_protocol(py)
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        self.link.set_protocol(protocol);
    }

    #[getter]
    fn protocol_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).flow.paused
    }

    #[getter]
    fn address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).address.as_ref().map(|a| a.clone_ref(py))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        sel::traverse(&self.sel, &visit)?;
        if let Some(st) = self.st.gc_borrow() {
            visit.call(&st.address)?;
            for (d, a) in &st.buf {
                visit.call(d)?;
                visit.call(a)?;
            }
            for (d, a, _) in &st.pending {
                visit.call(d)?;
                visit.call(a)?;
            }
            for p in st.peers.iter().flatten() {
                visit.call(&p.obj)?;
            }
            if let Some((obj, _)) = &st.current {
                visit.call(obj)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.link.clear();
        sel::clear(&self.sel);
        let taken = self.st.gc_borrow_mut().map(|mut st| {
            (
                st.address.take(),
                std::mem::take(&mut st.buf),
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.peers),
                st.current.take(),
            )
        });
        drop(taken);
    }
}

/// The socket module's `socket.sendto` audit event, `(sock, address)`.
fn audit_sendto(sock: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: the format "OO" takes two object pointers, which `sock` and
    // `addr` keep alive for the call; -1 means an exception is set.
    let rc = unsafe {
        PySys_Audit(
            c"socket.sendto".as_ptr(),
            c"OO".as_ptr(),
            sock.as_ptr(),
            addr.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(PyErr::fetch(sock.py()));
    }
    Ok(())
}
