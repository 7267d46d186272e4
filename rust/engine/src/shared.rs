//! An arena shared by every user on one thread at a time, and the rule that keeps destructors
//! from ever waiting on it.
//!
//! The exclusion between threads is the owner's: the Python binding keeps its one arena under
//! Python's GIL, which every caller already holds (a lock of its own cost two locked
//! instructions per op, about a quarter of an eager op). What remains here is reentrancy on one
//! thread. Python runs a handle's destructor wherever its last reference disappears, including
//! in the middle of code that is using the arena; so [`ArenaCell::release_soon`] never needs
//! the arena: while it is in use, the release is queued, and whoever takes the arena next
//! applies the queue first.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::ops::{Deref, DerefMut};

use crate::arena::{Arena, NodeId};

/// An [`Arena`] lent out to one user at a time, with a queue of releases made while it was lent.
pub struct ArenaCell {
    arena: UnsafeCell<Arena>,
    in_use: Cell<bool>,
    pending: RefCell<Vec<NodeId>>,
}

/// The arena, lent by [`ArenaCell::lock`] until this guard is dropped.
pub struct ArenaGuard<'a> {
    cell: &'a ArenaCell,
}

impl ArenaCell {
    pub const fn new() -> Self {
        ArenaCell {
            arena: UnsafeCell::new(Arena::new()),
            in_use: Cell::new(false),
            pending: RefCell::new(Vec::new()),
        }
    }

    /// Lends the arena, first applying any releases queued while it was in use.
    ///
    /// # Panics
    /// If the arena is already lent on this thread: code holding the guard must never run code
    /// that takes it again (for the binding, never Python code).
    #[inline]
    pub fn lock(&self) -> ArenaGuard<'_> {
        if self.in_use.replace(true) {
            already_in_use();
        }
        let mut guard = ArenaGuard { cell: self };
        if !self.pending.borrow().is_empty() {
            self.drain_into(&mut guard);
        }
        guard
    }

    /// Drops one reference to `id` now, or, if the arena is in use, as soon as it is given back.
    #[inline]
    pub fn release_soon(&self, id: NodeId) {
        if self.in_use.get() {
            self.pending.borrow_mut().push(id);
        } else {
            self.lock().release(id);
        }
    }

    #[cold]
    fn drain_into(&self, arena: &mut Arena) {
        // Taken out first: nothing below can queue more (releasing runs no destructor).
        let queued = std::mem::take(&mut *self.pending.borrow_mut());
        for id in queued {
            arena.release(id);
        }
    }

    /// Releases queued while the arena was in use and not applied yet.
    pub fn pending_releases(&self) -> usize {
        self.pending.borrow().len()
    }
}

impl Default for ArenaCell {
    fn default() -> Self {
        Self::new()
    }
}

#[cold]
#[inline(never)]
fn already_in_use() -> ! {
    panic!("the arena was taken while already in use on this thread (a bug in gradrs)")
}

impl Deref for ArenaGuard<'_> {
    type Target = Arena;

    fn deref(&self) -> &Arena {
        // SAFETY: `in_use` was false when this guard was made and stays true until it drops, so
        // it is the only guard (and the only reference to the arena) for its lifetime; the cell
        // is `!Sync`, so no other thread can hold one either.
        unsafe { &*self.cell.arena.get() }
    }
}

impl DerefMut for ArenaGuard<'_> {
    fn deref_mut(&mut self) -> &mut Arena {
        // SAFETY: as for `deref`, and `&mut self` makes this the only use of the guard.
        unsafe { &mut *self.cell.arena.get() }
    }
}

impl Drop for ArenaGuard<'_> {
    fn drop(&mut self) {
        self.cell.in_use.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_while_in_use_is_queued_then_applied() {
        let cell = ArenaCell::new();
        let id = cell.lock().leaf(1.0).unwrap();
        {
            let guard = cell.lock();
            cell.release_soon(id); // in use: queued, not applied
            assert_eq!(guard.live_nodes(), 1);
            assert_eq!(cell.pending_releases(), 1);
        }
        assert_eq!(cell.lock().live_nodes(), 0);
        assert_eq!(cell.pending_releases(), 0);
    }

    #[test]
    fn a_release_while_free_is_applied_at_once() {
        let cell = ArenaCell::new();
        let id = cell.lock().leaf(1.0).unwrap();
        cell.release_soon(id);
        assert_eq!(cell.pending_releases(), 0);
        assert_eq!(cell.lock().live_nodes(), 0);
    }

    #[test]
    fn locking_the_arena_twice_panics_and_the_first_guard_still_gives_it_back() {
        let cell = ArenaCell::new();
        let guard = cell.lock();
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(cell.lock())));
        assert!(again.is_err());
        drop(guard);
        assert_eq!(cell.lock().live_nodes(), 0);
    }
}
