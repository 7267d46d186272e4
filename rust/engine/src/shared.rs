//! The process-wide arena shared by every thread, and the rule that keeps
//! destructors from ever waiting on it.
//!
//! Python runs a handle's destructor wherever its last reference disappears: on
//! any thread, in the middle of an allocation, inside the cyclic garbage
//! collector. A destructor that blocked on the arena's lock could deadlock with
//! the code it interrupted, so [`SharedArena::release_soon`] only ever *tries*
//! the lock and otherwise queues the release; the queue is drained by whoever
//! takes the lock next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::arena::{Arena, NodeId};

pub struct SharedArena {
    arena: Mutex<Arena>,
    pending: Mutex<Vec<NodeId>>,
    has_pending: AtomicBool,
}

/// The one arena every `Value` in the process lives in.
pub static ARENA: SharedArena = SharedArena::new();

impl SharedArena {
    pub const fn new() -> Self {
        SharedArena {
            arena: Mutex::new(Arena::new()),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
        }
    }

    /// Locks the arena, first applying any releases queued by destructors.
    /// Never call back into Python while holding the guard.
    pub fn lock(&self) -> MutexGuard<'_, Arena> {
        // A panic while locked would be a bug in the engine; the arena's
        // invariants hold between operations, so the lock stays usable.
        let mut arena = self.arena.lock().unwrap_or_else(PoisonError::into_inner);
        if self.has_pending.load(Ordering::Acquire) {
            self.drain_into(&mut arena);
        }
        arena
    }

    /// Drops one reference to `id` without ever blocking on the arena's lock.
    pub fn release_soon(&self, id: NodeId) {
        match self.arena.try_lock() {
            Ok(mut arena) => {
                arena.release(id);
                if self.has_pending.load(Ordering::Acquire) {
                    self.drain_into(&mut arena);
                }
            }
            Err(_) => {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                pending.push(id);
                self.has_pending.store(true, Ordering::Release);
            }
        }
    }

    fn drain_into(&self, arena: &mut Arena) {
        let queued = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            self.has_pending.store(false, Ordering::Release);
            std::mem::take(&mut *pending)
        };
        for id in queued {
            arena.release(id);
        }
    }

    /// Releases queued by destructors that found the lock taken and have not
    /// been applied yet.
    pub fn pending_releases(&self) -> usize {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Default for SharedArena {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_while_locked_is_queued_then_applied() {
        let shared = SharedArena::new();
        let id = shared.lock().leaf(1.0).unwrap();
        {
            let guard = shared.lock();
            shared.release_soon(id); // the lock is held: must not block
            assert_eq!(guard.live_nodes(), 1);
            assert_eq!(shared.pending_releases(), 1);
        }
        assert_eq!(shared.lock().live_nodes(), 0);
        assert_eq!(shared.pending_releases(), 0);
    }
}
