//! The one arena every Value in the process lives in, kept under Python's GIL.
//!
//! Every use of the arena comes from Python (an op, a destructor, a method) on a thread that
//! holds the GIL, so the GIL is its lock. A `Mutex` of its own cost four locked instructions per
//! eager op (taking and giving back the arena to make the node, and again to release the
//! temporary the op replaced), each waiting for the processor's store buffer to drain: 64
//! against 46 to 49 ns per op on the benchmark's 100,000-op graph. `ArenaCell` keeps what a destructor running in the middle of
//! an op needs (a queue of releases); [`ARENA`] checks on every use that the caller holds the GIL.

use std::ffi::c_int;

use gradrs_engine::{ArenaCell, ArenaGuard, NodeId};
use pyo3::Python;

pub(crate) struct GilArena(ArenaCell);

// SAFETY: `ArenaCell` is not `Sync` because two threads using it at once would race. Every use
// of the one `GilArena` goes through `lock` or `release_soon`, which first check that the
// calling thread holds the GIL, or through their `_attached` forms, whose caller proves it is
// attached to the interpreter (holds a `Python` token), which means holding the GIL. Only one
// thread holds the GIL at a time: the module is built for the stable ABI, which no
// free-threaded CPython loads, and declares `gil_used = true`, so an interpreter that could run
// without the GIL turns it on when importing it (and `_core` refuses to load if it was forced
// off). The GIL cannot pass to another thread while the arena is lent: code holding an
// `ArenaGuard` runs no Python code and calls nothing that lets the GIL go.
unsafe impl Sync for GilArena {}

/// The process-wide arena.
pub(crate) static ARENA: GilArena = GilArena(ArenaCell::new());

impl GilArena {
    /// Lends the arena to this thread, which must hold the GIL; never call Python code while
    /// holding the guard (see `ArenaCell::lock`).
    #[inline]
    pub(crate) fn lock(&self) -> ArenaGuard<'_> {
        require_the_gil();
        self.0.lock()
    }

    /// [`GilArena::lock`] for a caller that is attached to the interpreter, which (with the
    /// GIL always on, as `_core`'s import makes sure) means it holds the GIL: no check needed.
    /// For the per-op paths, where the check was a tenth of an op.
    #[inline]
    pub(crate) fn lock_attached(&self, _attached: Python<'_>) -> ArenaGuard<'_> {
        self.0.lock()
    }

    /// Drops one reference to `id`, now or when the arena is given back: for destructors,
    /// which may run while the arena is in use.
    #[inline]
    pub(crate) fn release_soon(&self, id: NodeId) {
        require_the_gil();
        self.0.release_soon(id);
    }

    /// [`GilArena::release_soon`] for a caller attached to the interpreter (see `lock_attached`).
    #[inline]
    pub(crate) fn release_soon_attached(&self, _attached: Python<'_>, id: NodeId) {
        self.0.release_soon(id);
    }
}

extern "C" {
    // Public and documented since CPython 3.4, but outside the limited API's headers, so
    // declared here. It reads this thread's state: no lock and no locked instruction.
    fn PyGILState_Check() -> c_int;
}

#[inline]
fn require_the_gil() {
    // SAFETY: PyGILState_Check may be called from any thread at any time.
    if unsafe { PyGILState_Check() } == 0 {
        not_holding_the_gil();
    }
}

#[cold]
#[inline(never)]
fn not_holding_the_gil() -> ! {
    panic!("gradrs's arena was used by a thread that does not hold the GIL (a bug in gradrs)")
}
