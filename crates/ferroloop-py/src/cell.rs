//! `GilCell`: loop-thread state inside frozen Python objects.
//!
//! Python objects shared across threads must be `Sync`. The loop's state is
//! only ever touched by code holding the GIL (the module declares
//! `gil_used = true`, so the interpreter never runs it without one), which
//! serialises every access; a `RefCell` then catches the one remaining hazard,
//! re-entrancy, as a panic instead of undefined behaviour. Borrows are kept
//! short and never span a call into Python: Python code may release the GIL,
//! or call back into the loop.

use std::cell::{Ref, RefCell, RefMut};

use pyo3::Python;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: every access goes through `borrow`/`borrow_mut`, which take a
// `Python` token, so the caller holds the GIL; the module is marked
// `gil_used = true`, so the GIL exists and serialises all threads. No borrow
// is held across a point where the GIL may be released (see module docs).
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub fn new(v: T) -> Self {
        GilCell(RefCell::new(v))
    }

    /// With the cell owned exclusively (its owner's `Drop`), no borrow flag
    /// is needed.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }

    #[inline]
    pub fn borrow<'a>(&'a self, _py: Python<'_>) -> Ref<'a, T> {
        self.0.borrow()
    }

    #[inline]
    pub fn borrow_mut<'a>(&'a self, _py: Python<'_>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }

    /// For `__traverse__`, which runs inside the garbage collector with the
    /// GIL held but may not take a `Python` token: `None` when busy (a missed
    /// edge only keeps a cycle alive; it is never unsound).
    #[inline]
    pub fn gc_borrow(&self) -> Option<Ref<'_, T>> {
        self.0.try_borrow().ok()
    }

    /// For `__clear__` (GIL held, no token): `None` when busy.
    #[inline]
    pub fn gc_borrow_mut(&self) -> Option<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }
}
