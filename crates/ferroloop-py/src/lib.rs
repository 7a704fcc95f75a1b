//! `ferroloop._ferroloop`: the native half of the ferroloop Python package.
//!
//! `LoopCore` holds the loop's queues, selector and waker and runs its
//! passes; `Handle` and `TimerHandle` are what the scheduling methods return.
//! The public classes live in the Python package `ferroloop`.

mod accepted;
mod cell;
mod errors;
mod fastcall;
mod freelist;
mod handle;
mod link;
mod loop_core;
mod plain_sock;
mod proactor;
mod selector;
mod sock_ops;
mod sockaddr;
mod stream_half;

use selector::{datagram, pipe, stream};

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// What a ring made here gets from the kernel (`python -m ferroloop
/// --info`): a dict, or the `OSError` a `ProactorEventLoop()` would raise.
#[pyfunction]
fn _ring_features(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let f = ferroloop_core::proactor::probe().map_err(errors::unavailable_err)?;
    let d = PyDict::new(py);
    d.set_item("setup_flags", f.setup_flags.clone())?;
    d.set_item("recv_multishot", f.recv_multishot)?;
    d.set_item("accept_multishot", f.accept_multishot)?;
    d.set_item("recv_poll_first", f.recv_poll_first)?;
    Ok(d)
}

/// For tests only: make the next pass of a loop panic, once, at `site`:
/// `"pass"` (its start), `"wait"` (after the wait, the loop's state
/// borrowed) or `"timers"` (after due timers became ready, borrowed);
/// `None` disarms. The panic reaches Python as pyo3's `PanicException`
/// from `run_forever` (tests/test_panic.py).
#[pyfunction]
#[pyo3(signature = (site=None))]
fn _test_panic(site: Option<&str>) -> PyResult<()> {
    use loop_core::{NO_PANIC, PANIC_AT_PASS, PANIC_AT_TIMERS, PANIC_AT_WAIT, TEST_PANIC};
    let at = match site {
        None => NO_PANIC,
        Some("pass") => PANIC_AT_PASS,
        Some("wait") => PANIC_AT_WAIT,
        Some("timers") => PANIC_AT_TIMERS,
        Some(other) => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown panic site {other:?}"
            )))
        }
    };
    TEST_PANIC.store(at, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<loop_core::LoopCore>()?;
    fastcall::install(&m.py().get_type::<loop_core::LoopCore>())?;
    fastcall::install_cores(m.py())?;
    m.add_class::<sock_ops::SockCall>()?;
    sock_ops::install(&m.py().get_type::<sock_ops::SockCall>())?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    freelist::install(m.py())?;
    m.add_class::<stream::StreamCore>()?;
    m.add_class::<proactor::stream::RingStreamCore>()?;
    m.add_class::<datagram::DatagramCore>()?;
    m.add_class::<pipe::ReadPipeCore>()?;
    m.add_class::<pipe::WritePipeCore>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(_ring_features, m)?)?;
    m.add_function(wrap_pyfunction!(_test_panic, m)?)?;
    m.add_function(wrap_pyfunction!(sockaddr::_accept_nonblocking, m)?)?;
    m.add_function(wrap_pyfunction!(link::_register_transport, m)?)?;
    m.add_function(wrap_pyfunction!(sockaddr::_sockname, m)?)?;
    m.add_function(wrap_pyfunction!(accepted::_socket_from_fd, m)?)?;
    m.add_function(wrap_pyfunction!(accepted::_accept_into, m)?)?;
    m.add_function(wrap_pyfunction!(accepted::_init_socket_extra, m)?)?;
    m.add_function(wrap_pyfunction!(accepted::_server_attach, m)?)?;
    m.add_function(wrap_pyfunction!(fastcall::_install_transport_methods, m)?)?;
    Ok(())
}
