//! Free lists for `Handle` and `TimerHandle` objects.
//!
//! Every `call_soon` makes a handle and every callback run lets one go, so
//! on the scheduling paths the object's allocation is a visible share of the
//! work: `PyType_GenericAlloc` goes through the object allocator, links the
//! object into the collector's counts and zeroes it, and `PyObject_GC_Del`
//! undoes it all. Here the type's `tp_free` keeps up to [`CAPACITY`] freed
//! objects of the exact type, and its `tp_alloc` hands them out again: the
//! memory is zeroed, the header set (`PyObject_Init`) and the object tracked
//! by the collector, as `PyType_GenericAlloc` leaves a new one. pyo3 then
//! writes the contents as it does into fresh memory.
//!
//! The loop makes its `Handle`s with [`new_handle`], without pyo3's general
//! initialiser: the object comes from the list (or `PyType_GenericAlloc`)
//! and the value is written where pyo3 keeps it, found once from the first
//! handle pyo3 made, after checking that nothing else in that object needed
//! setting (pyo3's way is kept otherwise).
//!
//! pyo3's own `#[pyclass(freelist = N)]` is not used: it hands objects out
//! untracked by the collector, which would lose asyncio's guarantee that a
//! cycle through a handle (`self.h = loop.call_later(1, self.cb)`) is
//! collected, and it takes a lock per call.
//!
//! Subclasses (a Python class deriving from `Handle`) keep the generic
//! functions: CPython gives a class made with `class` statements its own
//! `tp_alloc` and `tp_free`, and the functions below check the exact type.
//! Everything here runs with the GIL held (`tp_alloc` and `tp_free` are
//! called by the interpreter on an attached thread; the module declares
//! `gil_used = true`), which serialises access to the lists.

use std::cell::UnsafeCell;
use std::os::raw::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;

use crate::handle::{Handle, TimerHandle};

/// Objects kept per type: enough for the hundred callbacks in flight of a
/// busy loop, small enough (about 20 KiB per type) to keep for good.
const CAPACITY: usize = 128;

struct List {
    ty: *mut ffi::PyTypeObject,
    len: usize,
    items: [*mut ffi::PyObject; CAPACITY],
}

impl List {
    /// A kept object, made as `PyType_GenericAlloc` makes a new one of the
    /// list's type; None when the list is empty.
    ///
    /// # Safety
    /// The GIL must be held, and `ty` set (`install` ran).
    #[inline]
    unsafe fn reuse(&mut self) -> Option<*mut ffi::PyObject> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        let obj = self.items[self.len];
        // SAFETY: `obj` was an object of exactly `self.ty`, given back by
        // `free` after pyo3 dropped its contents and the collector stopped
        // tracking it: its memory (header before it included) is still
        // allocated and `tp_basicsize` bytes long. Zeroing it, then
        // `PyObject_Init` (type, reference count, a reference to the heap
        // type) and tracking it leave it as `PyType_GenericAlloc` leaves a
        // new object.
        unsafe {
            ptr::write_bytes(obj.cast::<u8>(), 0, (*self.ty).tp_basicsize as usize);
            ffi::PyObject_Init(obj, self.ty);
            ffi::PyObject_GC_Track(obj.cast());
        }
        Some(obj)
    }
}

/// One list per type, reached only with the GIL held.
struct Lists(UnsafeCell<[List; 2]>);

// SAFETY: the lists are touched only by `install` (run while the module is
// imported) and by the slot functions below, all with the GIL held, which
// serialises them; the pointers in them are never dereferenced by another
// thread without it.
unsafe impl Sync for Lists {}

const EMPTY: List = List {
    ty: ptr::null_mut(),
    len: 0,
    items: [ptr::null_mut(); CAPACITY],
};

static LISTS: Lists = Lists(UnsafeCell::new([EMPTY, EMPTY]));

/// Where pyo3 keeps a `Handle`'s value inside its object, in bytes from the
/// object's start, once the first handle pyo3 made was looked at;
/// [`UNCHECKED`] before, [`PYO3_ONLY`] when [`new_handle`] must go through
/// pyo3.
static VALUE_OFFSET: AtomicUsize = AtomicUsize::new(UNCHECKED);
const UNCHECKED: usize = 0;
const PYO3_ONLY: usize = 1;

/// A Python object for `h`: a kept one, filled in place, when there is one
/// and the layout was checked; else pyo3's `Py::new`.
#[inline]
pub fn new_handle(py: Python<'_>, h: Handle) -> PyResult<Py<Handle>> {
    let offset = VALUE_OFFSET.load(Ordering::Relaxed);
    if offset > PYO3_ONLY {
        // SAFETY: `py` proves the GIL is held; the borrow ends in this block.
        let list = unsafe { &mut (*LISTS.0.get())[0] };
        let ty = list.ty;
        // SAFETY: the list is `Handle`'s (set by `install`, which ran
        // before `VALUE_OFFSET` could be set) and the GIL is held.
        let obj = match unsafe { list.reuse() } {
            Some(obj) => obj,
            None => {
                // SAFETY: `ty` is `Handle`'s type; the GIL is held.
                let obj = unsafe { ffi::PyType_GenericAlloc(ty, 0) };
                if obj.is_null() {
                    return Err(PyErr::fetch(py));
                }
                obj
            }
        };
        // SAFETY: `obj` is a zeroed, initialised `Handle` object, as pyo3's
        // `tp_alloc` call gives it to its initialiser; `value_offset`
        // checked that an object pyo3 made is all zeroes but for its header
        // and its value at `offset`, so moving the value in there leaves
        // what `Py::new` leaves. No code runs between the allocation and
        // the write, so the collector never sees the object unfilled.
        unsafe {
            ptr::write(obj.cast::<u8>().add(offset).cast::<Handle>(), h);
            return Ok(Bound::from_owned_ptr(py, obj)
                .cast_into_unchecked()
                .unbind());
        }
    }
    let made = Bound::new(py, h)?;
    if offset == UNCHECKED {
        let found = value_offset(&made).unwrap_or(PYO3_ONLY);
        VALUE_OFFSET.store(found, Ordering::Relaxed);
    }
    Ok(made.unbind())
}

/// Whether an object pyo3 made for `h` is zero outside its header and its
/// value; its value's offset if so.
fn value_offset(h: &Bound<'_, Handle>) -> Option<usize> {
    let start = h.as_ptr() as usize;
    let value = h.get() as *const Handle as usize;
    let offset = value.checked_sub(start)?;
    let header = std::mem::size_of::<ffi::PyObject>();
    // SAFETY: `h` is a live object of exactly `Handle`'s type, so its
    // `tp_basicsize` bytes are readable; they are read as bytes only.
    let bytes = unsafe {
        let size = (*ffi::Py_TYPE(h.as_ptr())).tp_basicsize as usize;
        std::slice::from_raw_parts(start as *const u8, size)
    };
    let end = offset + std::mem::size_of::<Handle>();
    if offset < header || end > bytes.len() {
        return None;
    }
    let rest_zero = bytes[header..offset]
        .iter()
        .chain(&bytes[end..])
        .all(|b| *b == 0);
    rest_zero.then_some(offset)
}

/// The list kept for objects of exactly `ty`, if any.
///
/// # Safety
/// The GIL must be held, and the returned borrow must end before the next
/// call (no call into Python in between).
#[inline(always)]
unsafe fn list_for(ty: *mut ffi::PyTypeObject) -> Option<&'static mut List> {
    // SAFETY: the caller holds the GIL, so nothing else touches the lists
    // while this borrow lives (see the caller's contract).
    let lists = unsafe { &mut *LISTS.0.get() };
    lists.iter_mut().find(|l| l.ty == ty && !ty.is_null())
}

/// `tp_alloc`: a kept object of the exact type, or a new one.
unsafe extern "C" fn alloc(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if nitems == 0 {
        // SAFETY: the interpreter calls `tp_alloc` with the GIL held; the
        // borrow ends before anything else runs; `list_for` gives the list
        // of exactly `subtype`, whose type `install` set.
        if let Some(obj) = unsafe { list_for(subtype).and_then(|l| l.reuse()) } {
            return obj;
        }
    }
    // SAFETY: what the interpreter would call for this type without us.
    unsafe { ffi::PyType_GenericAlloc(subtype, nitems) }
}

/// `tp_free`: keep the object if its list has room, else free it.
unsafe extern "C" fn free(obj: *mut c_void) {
    let o = obj.cast::<ffi::PyObject>();
    // SAFETY: the interpreter (pyo3's `tp_dealloc`) calls `tp_free` with
    // the GIL held, on an object whose contents are dropped and which the
    // collector no longer tracks (pyo3's dealloc untracks it first); its
    // type is still readable.
    unsafe {
        if let Some(list) = list_for(ffi::Py_TYPE(o)) {
            if list.len < CAPACITY {
                list.items[list.len] = o;
                list.len += 1;
                return;
            }
        }
        ffi::PyObject_GC_Del(obj);
    }
}

/// Give `Handle` and `TimerHandle` the functions above.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let types = [py.get_type::<Handle>(), py.get_type::<TimerHandle>()];
    // SAFETY: run once, with the GIL held, while the module is imported and
    // before any handle exists; the types are live heap types whose
    // instances are GC objects of fixed size, so `PyObject_GC_Del` is the
    // `tp_free` that `free` falls back to.
    unsafe {
        let lists = &mut *LISTS.0.get();
        for (list, ty) in lists.iter_mut().zip(types.iter()) {
            let raw = ty.as_type_ptr();
            if (*raw).tp_itemsize != 0 || ffi::PyType_IS_GC(raw) == 0 {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "handle types are expected to be fixed-size GC types",
                ));
            }
            list.ty = raw;
            (*raw).tp_alloc = Some(alloc);
            (*raw).tp_free = Some(free);
        }
    }
    Ok(())
}
