//! Fd watching: which descriptor a file object names, registering and
//! unregistering readers and writers with the engine (a selector, the
//! ring's poll ops, or a Python selector object), and queueing the
//! callbacks of ready descriptors.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use ferroloop_core::{Clock, Interest, MonotonicClock};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use super::{closed_error, repr_of, Io, Item, LoopCore, State, EVENT_READ, EVENT_WRITE};
use crate::errors::io_err;
use crate::handle::Handle;

/// The descriptor number of an int, or of an object whose `fileno()` gives
/// one (`int(obj.fileno())`), unchecked; `ValueError("Invalid file object")`
/// otherwise, as Python's selectors and asyncio say it.
pub(super) fn fileno_of(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    let invalid = || PyValueError::new_err(format!("Invalid file object: {}", repr_of(obj)));
    if obj.is_instance_of::<PyInt>() {
        return obj.extract().map_err(|_| invalid());
    }
    let py = obj.py();
    obj.call_method0(intern!(py, "fileno"))
        .and_then(|n| py.get_type::<PyInt>().call1((n,)))
        .and_then(|n| n.extract())
        .map_err(|_| invalid())
}

/// `selectors._fileobj_to_fd`: [`fileno_of`], then a valid descriptor.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd = if obj.is_instance_of::<PyInt>() {
        obj.extract::<i64>()?
    } else {
        fileno_of(obj)?
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    if fd > i32::MAX as i64 {
        // What Python's selectors raise when the number reaches the C call.
        return Err(pyo3::exceptions::PyOverflowError::new_err(
            "Python int too large to convert to C int",
        ));
    }
    Ok(fd as RawFd)
}

/// The check asyncio's public `add_reader` / `remove_reader` (and writer)
/// make first, even on a closed loop (`_ensure_fd_no_transport`).
pub(super) fn check_fileobj(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    if obj.is_instance_of::<PyInt>() {
        return Ok(());
    }
    fileno_of(obj).map(drop)
}

/// How often, in seconds, the loop looks for `sock_*` waits whose socket
/// was closed while they waited.
const SWEEP_INTERVAL: f64 = 1.0;

/// The callbacks asyncio's `sock_*` methods wait with; each takes
/// `(future, sock, ...)`.
const SOCK_OPS: [&str; 9] = [
    "_sock_recv",
    "_sock_recv_into",
    "_sock_recvfrom",
    "_sock_recvfrom_into",
    "_sock_sendall",
    "_sock_sendto",
    "_sock_connect_cb",
    "_sock_accept",
    "_sock_connect",
];

/// The socket of a `sock_*` wait: `callback` is one of this loop's
/// [`SOCK_OPS`] methods and the socket is its second argument. Only a
/// missing attribute means "not one"; any other error (a signal's
/// KeyboardInterrupt raised in a Python `__getattr__`) is the caller's.
pub(super) fn sock_wait_socket(
    slf: &Bound<'_, LoopCore>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<Option<Py<PyAny>>> {
    let py = slf.py();
    let attr = |name| match callback.getattr(name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => Ok(None),
        Err(e) => Err(e),
    };
    let Some(owner) = attr(intern!(py, "__self__"))? else {
        return Ok(None);
    };
    if !owner.is(slf) {
        return Ok(None);
    }
    let Some(name) = attr(intern!(py, "__name__"))? else {
        return Ok(None);
    };
    let is_op = name
        .cast::<pyo3::types::PyString>()
        .ok()
        .and_then(|n| n.to_str().ok())
        .is_some_and(|n| SOCK_OPS.contains(&n));
    if !is_op {
        return Ok(None);
    }
    Ok(args.get_item(1).ok().map(Bound::unbind))
}

/// How [`LoopCore::watch`] registers a descriptor with epoll (the other
/// backends are level-triggered whatever is asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// As asyncio's selectors: reported at every wait while ready.
    Level,
    /// Reported once, then disarmed (`sock_*` waits).
    OneShot,
    /// Reported when it becomes ready (stream transports' reading).
    Edge,
}

impl LoopCore {
    /// The directions (write or not) of the `sock_*` waits on `fd` whose
    /// socket no longer has that descriptor: it was closed while they
    /// waited (and the number may be in use again).
    fn stale_sock_waits(&self, py: Python<'_>, fd: RawFd) -> Vec<bool> {
        let socks: Vec<(bool, Py<PyAny>)> = {
            let st = self.st.borrow(py);
            [false, true]
                .into_iter()
                .filter_map(|w| st.sock_waits.get(&(fd, w)).map(|s| (w, s.clone_ref(py))))
                .collect()
        };
        socks
            .into_iter()
            // A socket that cannot say (a test double) is taken as open.
            .filter(|(_, sock)| fileno_of(sock.bind(py)).is_ok_and(|n| n != fd as i64))
            .map(|(w, _)| w)
            .collect()
    }

    /// End a `sock_*` wait whose socket was closed: forget the watch (the
    /// engine's errors are expected, the descriptor being gone or another
    /// file's now) and run its callback once more, which finds the socket
    /// closed and fails the wait's future (`OSError`, `EBADF`). The old
    /// handle is cancelled, so the future's done callback, which asyncio
    /// gives the descriptor number, does not remove a new watch on it.
    fn end_sock_wait(slf: &Bound<'_, Self>, fd: RawFd, write: bool) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        let again = {
            let st = core.st.borrow(py);
            let map = if write { &st.writers } else { &st.readers };
            map.get(&fd).map(|h| h.clone_ref(py))
        };
        let again = match again {
            Some(h) => h.get().copy(py)?,
            None => None,
        };
        Self::forget_fd(slf, fd, write, true, false)?;
        if let Some(h) = again {
            core.st.borrow_mut(py).sched.call_soon(super::Item::new(h));
        }
        Ok(())
    }

    /// Look for `sock_*` waits whose socket was closed under them, and end
    /// them; the loop does this every [`SWEEP_INTERVAL`] while there are
    /// such waits, and when `select` refuses a closed descriptor. How many
    /// were ended.
    pub(super) fn sweep_sock_waits(slf: &Bound<'_, Self>) -> PyResult<usize> {
        let py = slf.py();
        let core = slf.get();
        let fds: Vec<RawFd> = {
            let mut st = core.st.borrow_mut(py);
            st.next_sweep = MonotonicClock.now() + SWEEP_INTERVAL;
            let mut fds: Vec<RawFd> = st.sock_waits.keys().map(|(fd, _)| *fd).collect();
            fds.sort_unstable();
            fds.dedup();
            fds
        };
        let mut ended = 0;
        for fd in fds {
            for write in core.stale_sock_waits(py, fd) {
                Self::end_sock_wait(slf, fd, write)?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Register `handle` as the reader (or writer) of `fd`, replacing and
    /// cancelling the previous one, as `BaseSelectorEventLoop._add_reader` does.
    /// `sock` is the socket of a `sock_*` wait.
    ///
    /// `Trigger::Edge`: a stream transport's reading, edge-triggered on
    /// epoll (its reads re-arm with [`Self::refresh_fd`] when they may
    /// have left bytes queued; see `Interest::edge`).
    ///
    /// `Trigger::OneShot`: a native `sock_*` wait, which ends at the first event
    /// that completes it. On epoll, when nothing else watches the
    /// descriptor, it is registered `EPOLLONESHOT`, and when the wait ends
    /// after its event the registration is not removed but left disarmed
    /// ("parked", [`Self::end_watch`]): the next wait on the descriptor
    /// re-arms it with one `EPOLL_CTL_MOD` instead of an `ADD` and a `DEL`.
    /// A parked registration whose socket was closed is safe: if the file
    /// is gone, epoll dropped it, and the `MOD` of the number's next file
    /// fails with `ENOENT` and becomes an `ADD`; if the file lives on
    /// (duplicated, or held by a forked child), its entry stays in the
    /// epoll set, disarmed, and never reports.
    pub(crate) fn watch(
        slf: &Bound<'_, Self>,
        fd_obj: &Bound<'_, PyAny>,
        write: bool,
        h: Py<Handle>,
        sock: Option<Py<PyAny>>,
        trigger: Trigger,
    ) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        let fd = fileobj_to_fd(fd_obj)?;
        // A `sock_*` wait left on this number by a socket closed under it:
        // end it, so the number's new file starts afresh.
        if !core.st.borrow(py).sock_waits.is_empty() {
            for w in core.stale_sock_waits(py, fd) {
                Self::end_sock_wait(slf, fd, w)?;
            }
        }
        let pysel = {
            let mut st = core.st.borrow_mut(py);
            let st = &mut *st;
            match &mut st.io {
                Io::Native(sel) => {
                    let had_r = st.readers.contains_key(&fd);
                    let had_w = st.writers.contains_key(&fd);
                    let parked = st.parked.remove(&fd);
                    let mut interest = Interest::new(had_r || !write, had_w || write);
                    match trigger {
                        Trigger::OneShot if !had_r && !had_w && sel.supports_oneshot() => {
                            interest = interest.oneshot();
                        }
                        Trigger::Edge => interest = interest.edge(),
                        _ => {}
                    }
                    let res = if had_r || had_w {
                        sel.modify(fd, interest, fd as u64)
                    } else if parked {
                        sel.rearm(fd, interest, fd as u64)
                    } else {
                        sel.register(fd, interest, fd as u64)
                    };
                    if let Err(e) = res {
                        if parked {
                            st.parked.insert(fd);
                        }
                        return Err(io_err(e));
                    }
                    None
                }
                Io::Ring(ring) => {
                    let had_r = st.readers.contains_key(&fd);
                    let had_w = st.writers.contains_key(&fd);
                    let interest = Interest::new(had_r || !write, had_w || write);
                    let res = if had_r || had_w {
                        ring.modify(fd, interest, fd as u64)
                    } else {
                        ring.register(fd, interest, fd as u64)
                    };
                    res.map_err(io_err)?;
                    None
                }
                Io::Python(sel) => Some(sel.clone_ref(py)),
                Io::Closed => return Err(closed_error()),
            }
        };
        if let Some(sel) = pysel {
            let sel = sel.bind(py);
            let bit = if write { EVENT_WRITE } else { EVENT_READ };
            match sel.call_method1(intern!(py, "get_key"), (fd,)) {
                Ok(key) => {
                    let mask: u32 = key.getattr(intern!(py, "events"))?.extract()?;
                    sel.call_method1(intern!(py, "modify"), (fd, mask | bit, py.None()))?;
                }
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(py) => {
                    sel.call_method1(intern!(py, "register"), (fd, bit, py.None()))?;
                }
                Err(e) => return Err(e),
            }
        }
        let old = {
            let mut st = core.st.borrow_mut(py);
            let map = if write {
                &mut st.writers
            } else {
                &mut st.readers
            };
            let old = map.insert(fd, h);
            st.fileobjs
                .entry(fd)
                .or_insert_with(|| fd_obj.clone().unbind());
            match sock {
                Some(sock) => {
                    if st.sock_waits.is_empty() {
                        st.next_sweep = MonotonicClock.now() + SWEEP_INTERVAL;
                    }
                    st.sock_waits.insert((fd, write), sock);
                }
                None => drop(st.sock_waits.remove(&(fd, write))),
            }
            old
        };
        if let Some(old) = old {
            Handle::cancel_bound(old.bind(py))?;
        }
        Ok(())
    }

    /// The descriptor of `fd_obj`; for an object whose `fileno()` no longer
    /// works (a closed socket), the descriptor it was registered under.
    pub(super) fn registered_fd(
        &self,
        py: Python<'_>,
        fd_obj: &Bound<'_, PyAny>,
    ) -> PyResult<RawFd> {
        match fileobj_to_fd(fd_obj) {
            Ok(fd) => Ok(fd),
            Err(e) if e.is_instance_of::<PyValueError>(py) => {
                let st = self.st.borrow(py);
                st.fileobjs
                    .iter()
                    .find(|(_, o)| o.is(fd_obj))
                    .map(|(fd, _)| *fd)
                    .ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn unwatch(
        slf: &Bound<'_, Self>,
        fd_obj: &Bound<'_, PyAny>,
        write: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        let core = slf.get();
        if core.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let fd = match core.registered_fd(py, fd_obj) {
            // No descriptor so large can be watched (asyncio's selectors
            // look it up and find nothing).
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(py) => {
                return Ok(false)
            }
            r => r?,
        };
        Self::unwatch_fd(slf, fd, write)
    }

    pub(super) fn unwatch_fd(slf: &Bound<'_, Self>, fd: RawFd, write: bool) -> PyResult<bool> {
        Self::forget_fd(slf, fd, write, false, false)
    }

    /// The end of a native `sock_*` wait (`sock_ops.rs`): stop watching
    /// `fd`, as `remove_reader(fd)` / `remove_writer(fd)`; the engine's
    /// errors are ignored, as Python's selectors ignore them when a
    /// descriptor is unregistered (it may have been closed meanwhile).
    ///
    /// `fired`: the wait ends because its registration reported (its
    /// callback ran for an event): a one-shot registration is then
    /// disarmed, and is parked instead of removed (see [`Self::watch`]).
    pub(crate) fn end_watch(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        write: bool,
        fired: bool,
    ) -> PyResult<()> {
        if slf.get().closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        Self::forget_fd(slf, fd, write, true, fired).map(drop)
    }

    /// After a read on an edge-triggered registration that may have left
    /// bytes queued: have the next wait report `fd` if it is still
    /// readable, as a level-triggered one would.
    pub(crate) fn refresh_fd(&self, py: Python<'_>, fd: RawFd) {
        if let Io::Native(sel) = &mut self.st.borrow_mut(py).io {
            // A failure means the descriptor is gone: the read that comes
            // next, if any, reports it.
            let _ignored = sel.refresh(fd);
        }
    }

    /// A native `sock_*` wait's event came but the call would still block
    /// (another reader took the data): arm its one-shot registration again.
    pub(crate) fn rearm_watch(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<()> {
        let py = slf.py();
        let mut st = slf.get().st.borrow_mut(py);
        if let Io::Native(sel) = &mut st.io {
            if let Some((interest, token)) = sel.registration(fd) {
                if interest.is_oneshot() {
                    sel.modify(fd, interest, token).map_err(io_err)?;
                }
            }
        }
        Ok(())
    }

    /// [`Self::unwatch_fd`]; with `gone`, for a descriptor closed under its
    /// watch: the engine's errors are ignored and the watch forgotten anyway.
    /// With `fired`, for a native wait that ends after its event: a
    /// one-shot registration that nothing else shares is left to epoll,
    /// disarmed, and parked (see [`Self::watch`]).
    fn forget_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        write: bool,
        gone: bool,
        fired: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        let core = slf.get();
        let mut forgotten = None;
        let (old, pysel, other, sock) = {
            let mut st = core.st.borrow_mut(py);
            let st = &mut *st;
            let (map, other_map) = if write {
                (&mut st.writers, &st.readers)
            } else {
                (&mut st.readers, &st.writers)
            };
            let Some(old) = map.remove(&fd) else {
                return Ok(false);
            };
            let other = other_map.contains_key(&fd);
            let park = fired
                && !other
                && matches!(&st.io, Io::Native(sel)
                    if sel.registration(fd).is_some_and(|(i, _)| i.is_oneshot()));
            let pysel = match &mut st.io {
                // The event disarmed it: nothing to tell the engine.
                Io::Native(_) if park => {
                    st.parked.insert(fd);
                    None
                }
                Io::Native(_) | Io::Ring(_) => {
                    let keep = Interest::new(write, !write);
                    let res = match &mut st.io {
                        Io::Native(sel) if other => sel.modify(fd, keep, fd as u64),
                        Io::Native(sel) => sel.deregister(fd),
                        Io::Ring(ring) if other => ring.modify(fd, keep, fd as u64),
                        Io::Ring(ring) => ring.deregister(fd),
                        _ => unreachable!(),
                    };
                    if let Err(e) = res {
                        if !gone {
                            // Keep the registration as it was and report the error.
                            map.insert(fd, old);
                            return Err(io_err(e));
                        }
                    }
                    None
                }
                Io::Python(sel) => Some(sel.clone_ref(py)),
                Io::Closed => None,
            };
            if !other {
                forgotten = st.fileobjs.remove(&fd);
            }
            let sock = st.sock_waits.remove(&(fd, write));
            (old, pysel, other, sock)
        };
        drop((forgotten, sock));
        if let Some(sel) = pysel {
            let sel = sel.bind(py);
            let res = if other {
                let keep = if write { EVENT_READ } else { EVENT_WRITE };
                sel.call_method1(intern!(py, "modify"), (fd, keep, py.None()))
            } else {
                sel.call_method1(intern!(py, "unregister"), (fd,))
            };
            match res {
                Err(_) if gone => {}
                r => {
                    r?;
                }
            }
        }
        Handle::cancel_bound(old.bind(py))?;
        Ok(true)
    }
}

/// Queue the reader and/or writer of a ready descriptor. A watcher whose
/// handle was cancelled (without `remove_reader`) is not queued but noted in
/// `stale`, to be unregistered as asyncio's `_process_events` does; left
/// registered, a level-triggered descriptor would make every wait return.
pub(super) fn queue_fd(
    st: &mut State,
    fd: RawFd,
    readable: bool,
    writable: bool,
    py: Python<'_>,
    stale: &mut Vec<(RawFd, bool)>,
) {
    for (ready, write) in [(readable, false), (writable, true)] {
        if !ready {
            continue;
        }
        let map = if write { &st.writers } else { &st.readers };
        if let Some(h) = map.get(&fd) {
            if h.get().is_cancelled() {
                stale.push((fd, write));
            } else {
                st.sched.call_soon(Item::new(h.clone_ref(py)));
            }
        }
    }
}
