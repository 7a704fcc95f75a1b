//! Mapping Rust errors to the exceptions asyncio raises.

use std::io;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

/// `OSError(errno, strerror)`, so CPython picks the subclass
/// (`PermissionError` for `EPERM`, ...); errors without an errno keep their
/// message, and invalid input becomes `ValueError` as Python's selectors raise.
pub fn io_err(e: io::Error) -> PyErr {
    if let Some(code) = e.raw_os_error() {
        let msg = io::Error::from_raw_os_error(code).to_string();
        let msg = match msg.find(" (os error") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        };
        return PyOSError::new_err((code, msg));
    }
    match e.kind() {
        io::ErrorKind::InvalidInput => PyValueError::new_err(e.to_string()),
        _ => PyOSError::new_err(e.to_string()),
    }
}

/// `OSError(errno, "io_uring is unavailable: ...")` for a ring that could
/// not be made, so callers can tell the causes apart by `errno`.
pub fn unavailable_err(u: ferroloop_core::proactor::Unavailable) -> PyErr {
    match u.error.raw_os_error() {
        Some(code) => PyOSError::new_err((code, u.to_string())),
        None => PyOSError::new_err(u.to_string()),
    }
}
