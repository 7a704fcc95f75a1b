//! A thread-local default-loop policy, mirroring asyncio's default policy:
//! each thread has at most one current loop; in the main thread
//! [`get_event_loop`] creates one on first use, in any other thread it fails
//! until [`set_event_loop`] gave the thread a loop.
//!
//! Which kind of loop the policy makes ([`set_loop_kind`]: a selector loop
//! by default, or a proactor loop) is one setting for the whole process, as
//! asyncio's policy is.
//!
//! Callbacks receive `&mut EventLoop` and should use it: the loop is borrowed
//! while it runs, so borrowing the shared handle from inside a callback panics.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::rc::Rc;
use std::sync::Mutex;

use crate::clock::MonotonicClock;
use crate::event_loop::{EventLoop, LoopKind};

/// A loop shared within its thread.
pub type SharedLoop = Rc<RefCell<EventLoop>>;

static KIND: Mutex<LoopKind> = Mutex::new(LoopKind::best());

thread_local! {
    static CURRENT: RefCell<Option<SharedLoop>> = const { RefCell::new(None) };
    static CREATED: RefCell<bool> = const { RefCell::new(false) };
}

/// Why [`get_event_loop`] gave no loop.
#[derive(Debug)]
pub enum PolicyError {
    /// Not the main thread, and no loop was set (asyncio's `RuntimeError`).
    NoCurrentLoop(String),
    /// Creating the loop failed.
    Io(io::Error),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::NoCurrentLoop(name) => {
                write!(f, "There is no current event loop in thread '{name}'.")
            }
            PolicyError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// True on the process's main thread.
pub fn is_main_thread() -> bool {
    // SAFETY: getpid and gettid have no preconditions.
    unsafe { libc::getpid() == libc::gettid() }
}

/// The current thread's loop; created on first use in the main thread.
pub fn get_event_loop() -> Result<SharedLoop, PolicyError> {
    if let Some(lp) = CURRENT.with(|c| c.borrow().clone()) {
        return Ok(lp);
    }
    let first = CREATED.with(|c| !*c.borrow());
    if is_main_thread() && first {
        let lp = new_event_loop().map_err(PolicyError::Io)?;
        set_event_loop(Some(lp.clone()));
        return Ok(lp);
    }
    let name = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_owned();
    Err(PolicyError::NoCurrentLoop(name))
}

/// Set (or with `None`, clear) the current thread's loop.
pub fn set_event_loop(lp: Option<SharedLoop>) {
    CREATED.with(|c| *c.borrow_mut() = true);
    CURRENT.with(|c| *c.borrow_mut() = lp);
}

/// Make every loop the policy creates from now on of this kind, in every
/// thread (loops that exist keep theirs).
pub fn set_loop_kind(kind: LoopKind) {
    *KIND.lock().unwrap_or_else(|e| e.into_inner()) = kind;
}

/// The kind of loop the policy creates.
pub fn loop_kind() -> LoopKind {
    *KIND.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new loop of [`loop_kind`], not made current.
pub fn new_event_loop() -> io::Result<SharedLoop> {
    Ok(Rc::new(RefCell::new(EventLoop::with_kind(
        loop_kind(),
        MonotonicClock,
    )?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_threads_have_no_loop_until_one_is_set() {
        std::thread::spawn(|| {
            let err = get_event_loop().err().expect("no loop in a new thread");
            assert!(err
                .to_string()
                .starts_with("There is no current event loop"));
            let lp = new_event_loop().unwrap();
            set_event_loop(Some(lp.clone()));
            assert!(Rc::ptr_eq(&get_event_loop().unwrap(), &lp));
            set_event_loop(None);
            assert!(get_event_loop().is_err());
        })
        .join()
        .unwrap();
    }
}
