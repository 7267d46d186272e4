//! Running chunks of rows on several threads and folding their results in order, with a bounded
//! number waiting and the caller polled for Ctrl-C.

use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use super::{Poll, Replay, ReplayError, CHUNK_ROWS, POLL_EVERY};

/// Chunks computed ahead of the next one to be added in, per thread: enough slack that a thread
/// rarely waits on a slower one, few enough that memory does not grow with the rows.
const WINDOW_PER_THREAD: usize = 4;

/// Fewer rows than this per thread, and the rows run on fewer threads: starting a thread costs
/// tens of microseconds, about what a layer-sized program takes over this many rows.
const MIN_ROWS_PER_THREAD: usize = 128;

/// At most this many bytes of chunk results wait to be added in at any time (at least one
/// chunk per thread, however large a chunk's results are).
const WINDOW_BYTES: usize = 64 << 20;

/// How many chunk results of `width` numbers fit in [`WINDOW_BYTES`].
pub(super) fn results_that_fit(width: usize) -> usize {
    WINDOW_BYTES / 8 / width.max(1)
}

/// Runs `work` over the fixed-size chunks of `0..n_rows` on up to `threads` threads (the
/// calling thread and up to `threads - 1` more), each with a state of its own (`S::default()`,
/// kept from one chunk to the next), and hands each chunk's result to `fold` on the
/// calling thread, in chunk order, as soon as the chunks before it have been folded. At most
/// `max_waiting` results (but at least one per thread) are held at a time. `poll` is called on
/// the calling thread about every [`POLL_EVERY`] (between chunks); when it returns true, the
/// other threads stop after their current chunk and this returns [`ReplayError::Interrupted`].
pub(super) fn fold_chunks<T: Send, S: Default>(
    n_rows: usize,
    threads: usize,
    max_waiting: usize,
    work: impl Fn(&mut S, Range<usize>) -> Replay<T> + Sync,
    mut fold: impl FnMut(T),
    poll: Poll<'_>,
) -> Replay<()> {
    let n_chunks = n_rows.div_ceil(CHUNK_ROWS);
    let range = |i: usize| i * CHUNK_ROWS..((i + 1) * CHUNK_ROWS).min(n_rows);
    // Starting a thread costs tens of microseconds: give each at least MIN_ROWS_PER_THREAD rows.
    let threads = threads.clamp(1, (n_rows / MIN_ROWS_PER_THREAD).clamp(1, n_chunks.max(1)));
    let mut last_poll = Instant::now();
    if threads == 1 {
        let mut state = S::default();
        for i in 0..n_chunks {
            fold(work(&mut state, range(i))?);
            if last_poll.elapsed() >= POLL_EVERY {
                if poll() {
                    return Err(ReplayError::Interrupted);
                }
                last_poll = Instant::now();
            }
        }
        return Ok(());
    }
    let window = max_waiting.clamp(threads, WINDOW_PER_THREAD * threads);
    let queue = Mutex::new(Queue {
        next: 0,
        folded: 0,
        done: (0..window).map(|_| None).collect(),
        stop: None,
    });
    let (chunk_done, room_freed) = (Condvar::new(), Condvar::new());
    let lock = || queue.lock().unwrap_or_else(PoisonError::into_inner);
    // Runs chunk `i` without holding the queue, then hands its result back through `q`.
    let run = |state: &mut S, i: usize| {
        // A panic is a bug in the engine: carry it to the calling thread, which would otherwise
        // wait forever for this chunk.
        let result = panic::catch_unwind(AssertUnwindSafe(|| work(state, range(i))));
        let mut q = lock();
        match result {
            Ok(Ok(part)) => q.done[i % window] = Some(part),
            Ok(Err(err)) => {
                q.stop.get_or_insert(Stop::Failed(err));
            }
            Err(payload) => {
                q.stop.get_or_insert(Stop::Panicked(payload));
            }
        }
        chunk_done.notify_one();
        if q.stop.is_some() {
            room_freed.notify_all();
        }
    };
    let stop = std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|| {
                let mut state = S::default();
                loop {
                    let i = {
                        let mut q = lock();
                        while q.stop.is_none() && q.next < n_chunks && q.next >= q.folded + window {
                            q = room_freed.wait(q).unwrap_or_else(PoisonError::into_inner);
                        }
                        if q.stop.is_some() || q.next == n_chunks {
                            return;
                        }
                        q.next += 1;
                        q.next - 1
                    };
                    run(&mut state, i);
                }
            });
        }
        // The calling thread is a worker too; between its chunks it folds what is ready and
        // polls, so that no third thread competes for the cores.
        let mut state = S::default();
        let mut q = lock();
        while q.stop.is_none() && q.folded < n_chunks {
            let at = q.folded % window;
            if last_poll.elapsed() >= POLL_EVERY {
                // Never hold the queue while the caller's poll runs: it may wait (for the GIL).
                drop(q);
                let interrupted = poll();
                last_poll = Instant::now();
                q = lock();
                if interrupted {
                    q.stop.get_or_insert(Stop::Failed(ReplayError::Interrupted));
                }
            } else if let Some(part) = q.done[at].take() {
                drop(q);
                fold(part);
                q = lock();
                q.folded += 1;
                room_freed.notify_all();
            } else if q.next < n_chunks && q.next < q.folded + window {
                q.next += 1;
                let i = q.next - 1;
                drop(q);
                run(&mut state, i);
                q = lock();
            } else {
                let wait = POLL_EVERY.saturating_sub(last_poll.elapsed());
                q = chunk_done
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        // Wakes the workers waiting for room so that they see the end (or the stop) and return.
        let stop = q.stop.take();
        q.stop = Some(Stop::Finished);
        room_freed.notify_all();
        stop
    });
    match stop {
        None | Some(Stop::Finished) => Ok(()),
        Some(Stop::Failed(err)) => Err(err),
        Some(Stop::Panicked(payload)) => panic::resume_unwind(payload),
    }
}

/// The chunks a [`fold_chunks`] has handed out and got back.
struct Queue<T> {
    /// The first chunk no worker has taken.
    next: usize,
    /// The first chunk not yet folded.
    folded: usize,
    /// Results waiting to be folded: chunk `i` at `i % window`.
    done: Vec<Option<T>>,
    stop: Option<Stop>,
}

/// Why workers stop taking chunks.
enum Stop {
    Finished,
    Failed(ReplayError),
    Panicked(Box<dyn std::any::Any + Send>),
}

#[cfg(test)]
mod tests {
    use super::super::tests::go_on;
    use super::*;
    use std::time::Duration;

    /// Chunks that take a while, counting how many ran and how many results are held at once.
    /// Chunks that take a while, counting how many ran and how many results are held at once.
    struct Slow {
        ran: std::sync::atomic::AtomicUsize,
        alive: std::sync::atomic::AtomicUsize,
        most_alive: std::sync::atomic::AtomicUsize,
    }

    struct Held<'a>(&'a Slow, usize);

    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.alive.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Slow {
        fn new() -> Self {
            Slow {
                ran: 0.into(),
                alive: 0.into(),
                most_alive: 0.into(),
            }
        }

        fn work(&self, range: Range<usize>, pause: Duration) -> Replay<Held<'_>> {
            use std::sync::atomic::Ordering::SeqCst;
            std::thread::sleep(pause);
            self.ran.fetch_add(1, SeqCst);
            let alive = self.alive.fetch_add(1, SeqCst) + 1;
            self.most_alive.fetch_max(alive, SeqCst);
            Ok(Held(self, range.start))
        }
    }

    #[test]
    fn chunks_are_folded_in_order_with_a_bounded_number_waiting() {
        for threads in [1, 2, 3] {
            let slow = Slow::new();
            let mut starts = Vec::new();
            let work = |_: &mut (), r| slow.work(r, Duration::from_micros(200));
            fold_chunks(
                500 * CHUNK_ROWS + 7,
                threads,
                2,
                work,
                |h| starts.push(h.1),
                &mut go_on(),
            )
            .unwrap();
            let want: Vec<usize> = (0..501).map(|i| i * CHUNK_ROWS).collect();
            assert_eq!(starts, want);
            let most = slow.most_alive.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                most <= threads.max(2),
                "{most} results held at once on {threads} threads"
            );
        }
    }

    #[test]
    fn a_poll_that_asks_to_stop_stops_the_chunks() {
        for threads in [1, 2] {
            let slow = Slow::new();
            let mut polls = 0;
            let mut poll = || {
                polls += 1;
                true
            };
            let work = |_: &mut (), r| slow.work(r, Duration::from_millis(2));
            let n_chunks = 10_000;
            let got = fold_chunks(n_chunks * CHUNK_ROWS, threads, 8, work, drop, &mut poll);
            assert_eq!(got.unwrap_err(), ReplayError::Interrupted);
            assert_eq!(polls, 1);
            let ran = slow.ran.load(std::sync::atomic::Ordering::SeqCst);
            assert!(ran < n_chunks / 10, "{ran} chunks ran after being asked to stop");
        }
    }

    #[test]
    fn a_failing_chunk_stops_the_others() {
        let failing = |_: &mut (), r: Range<usize>| {
            if r.start == 40 * CHUNK_ROWS {
                Err(ReplayError::OutOfMemory {
                    what: "a test",
                    bytes: 1,
                })
            } else {
                Ok(r.start)
            }
        };
        for threads in [1, 2] {
            let mut folded = 0;
            let got = fold_chunks(
                100 * CHUNK_ROWS,
                threads,
                4,
                failing,
                |_| folded += 1,
                &mut go_on(),
            );
            assert_eq!(
                got.unwrap_err(),
                ReplayError::OutOfMemory {
                    what: "a test",
                    bytes: 1
                }
            );
            assert_eq!(folded, 40);
        }
    }
}
