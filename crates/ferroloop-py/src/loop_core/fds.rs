//! Fd watching: which descriptor a file object names, registering and
//! unregistering readers and writers with the engine (a selector, the
//! ring's poll ops, or a Python selector object), and queueing the
//! callbacks of ready descriptors.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use ferroloop_core::Interest;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyInt;

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
    obj.call_method0("fileno")
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

impl LoopCore {
    /// Register `handle` as the reader (or writer) of `fd`, replacing and
    /// cancelling the previous one, as `BaseSelectorEventLoop._add_reader` does.
    pub(super) fn watch(
        slf: &Bound<'_, Self>,
        fd_obj: &Bound<'_, PyAny>,
        write: bool,
        h: Py<Handle>,
    ) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        let fd = fileobj_to_fd(fd_obj)?;
        let pysel = {
            let mut st = core.st.borrow_mut(py);
            let st = &mut *st;
            match &mut st.io {
                Io::Native(sel) => {
                    let had_r = st.readers.contains_key(&fd);
                    let had_w = st.writers.contains_key(&fd);
                    let interest = Interest::new(had_r || !write, had_w || write);
                    let res = if had_r || had_w {
                        sel.modify(fd, interest, fd as u64)
                    } else {
                        sel.register(fd, interest, fd as u64)
                    };
                    res.map_err(io_err)?;
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
            match sel.call_method1("get_key", (fd,)) {
                Ok(key) => {
                    let mask: u32 = key.getattr("events")?.extract()?;
                    sel.call_method1("modify", (fd, mask | bit, py.None()))?;
                }
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(py) => {
                    sel.call_method1("register", (fd, bit, py.None()))?;
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
        let fd = core.registered_fd(py, fd_obj)?;
        Self::unwatch_fd(slf, fd, write)
    }

    pub(super) fn unwatch_fd(slf: &Bound<'_, Self>, fd: RawFd, write: bool) -> PyResult<bool> {
        let py = slf.py();
        let core = slf.get();
        let mut forgotten = None;
        let (old, pysel, other) = {
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
            let pysel = match &mut st.io {
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
                        // Keep the registration as it was and report the error.
                        map.insert(fd, old);
                        return Err(io_err(e));
                    }
                    None
                }
                Io::Python(sel) => Some(sel.clone_ref(py)),
                Io::Closed => None,
            };
            if !other {
                forgotten = st.fileobjs.remove(&fd);
            }
            (old, pysel, other)
        };
        drop(forgotten);
        if let Some(sel) = pysel {
            let sel = sel.bind(py);
            if other {
                let keep = if write { EVENT_READ } else { EVENT_WRITE };
                sel.call_method1("modify", (fd, keep, py.None()))?;
            } else {
                sel.call_method1("unregister", (fd,))?;
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
                st.sched.call_soon(Item(h.clone_ref(py)));
            }
        }
    }
}
