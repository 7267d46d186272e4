//! Many rows at once: split into chunks of [`CHUNK_ROWS`], replayed as blocks, and their
//! results folded in chunk order.

use super::block::{Block, Scratch};
use super::chunks::{fold_chunks, results_that_fit};
use super::{product, try_vec, try_zeros, Batch, Poll, Program, Reduce, Replay, CHUNK_ROWS};

impl Program {
    /// Forward only over `n_rows` rows of `n_inputs` numbers each: every row's outputs, row by
    /// row. `poll` is asked now and then, from this thread, whether to stop (see [`Program::batch`]).
    pub fn map(
        &self,
        rows: &[f64],
        n_rows: usize,
        params: &[f64],
        threads: usize,
        poll: Poll<'_>,
    ) -> Replay<Vec<f64>> {
        self.check_rows(rows, n_rows, params)?;
        let n_out = self.outputs.len();
        let mut out = try_vec(product(n_rows, n_out)?, "map's outputs")?;
        let chunk =
            |scratch: &mut Scratch, range| Block::new(self, rows, params, range, scratch)?.outputs_by_row();
        let waiting = results_that_fit(CHUNK_ROWS.saturating_mul(n_out));
        fold_chunks(
            n_rows,
            threads,
            waiting,
            chunk,
            |part| out.extend_from_slice(&part),
            poll,
        )?;
        Ok(out)
    }

    /// The outputs over `n_rows` rows, reduced, and for each output its gradient with respect
    /// to the parameters, reduced the same way.
    ///
    /// Rows are replayed in chunks of [`CHUNK_ROWS`] on up to `threads` threads, and each
    /// chunk's sums are added into the total in chunk order as soon as the chunks before it are
    /// in, so the result is the same bit for bit whatever the number of threads, and memory
    /// holds a few chunks' partial sums at a time, not one per chunk. Every [`POLL_EVERY`] or
    /// so, `poll` is called on the calling thread: when it returns true, the replay stops with
    /// [`ReplayError::Interrupted`].
    pub fn batch(
        &self,
        rows: &[f64],
        n_rows: usize,
        params: &[f64],
        reduce: Reduce,
        threads: usize,
        poll: Poll<'_>,
    ) -> Replay<Batch> {
        let (n_out, n_params) = (self.outputs.len(), params.len());
        // One chunk's sums: the outputs' values, then each output's gradient.
        let width = product(n_out, n_params + 1)?;
        let mut total = self.sum_chunks(rows, n_rows, params, reduce, threads, width, |b| b.batch(), poll)?;
        let mut grads = try_vec(n_out, "a batch's gradients")?;
        for k in 0..n_out {
            let at = n_out + k * n_params;
            let mut grad = try_vec(n_params, "a batch's gradients")?;
            grad.extend_from_slice(&total[at..at + n_params]);
            grads.push(grad);
        }
        total.truncate(n_out);
        Ok(Batch { values: total, grads })
    }

    /// [`Program::batch`]'s reduced outputs alone (no reverse sweeps), bit-identical to its
    /// `values`: the same chunks, summed in the same order.
    pub fn batch_values(
        &self,
        rows: &[f64],
        n_rows: usize,
        params: &[f64],
        reduce: Reduce,
        threads: usize,
        poll: Poll<'_>,
    ) -> Replay<Vec<f64>> {
        let width = self.outputs.len();
        self.sum_chunks(rows, n_rows, params, reduce, threads, width, |b| b.sums(), poll)
    }

    /// `part` of each chunk's block (`width` numbers), summed over the chunks in chunk order and
    /// reduced: what [`Program::batch`] and [`Program::batch_values`] share.
    #[allow(clippy::too_many_arguments)]
    fn sum_chunks(
        &self,
        rows: &[f64],
        n_rows: usize,
        params: &[f64],
        reduce: Reduce,
        threads: usize,
        width: usize,
        part: impl Fn(Block<'_, '_>) -> Replay<Vec<f64>> + Sync,
        poll: Poll<'_>,
    ) -> Replay<Vec<f64>> {
        self.check_rows(rows, n_rows, params)?;
        let mut total = try_zeros(width, "a batch's sums")?;
        let chunk = |scratch: &mut Scratch, range| part(Block::new(self, rows, params, range, scratch)?);
        fold_chunks(
            n_rows,
            threads,
            results_that_fit(width),
            chunk,
            |sums| add_into(&mut total, &sums),
            poll,
        )?;
        scale(&mut total, reduce, n_rows);
        Ok(total)
    }
}

fn add_into(total: &mut [f64], part: &[f64]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

/// Turns sums over `n_rows` rows into means when asked to.
fn scale(total: &mut [f64], reduce: Reduce, n_rows: usize) {
    if reduce == Reduce::Mean && n_rows > 0 {
        let scale = 1.0 / n_rows as f64;
        total.iter_mut().for_each(|v| *v *= scale);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{go_on, neuron};
    use super::*;
    use crate::arena::Arena;
    use crate::op::Op;

    #[test]
    fn parallel_batches_equal_serial_ones_bit_for_bit() {
        let mut arena = Arena::new();
        let (_, _, _, _, program) = neuron(&mut arena);
        let rows: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let params = [-1.5, 0.25];
        let batch = |rows: &[f64], reduce, threads| {
            program.batch(rows, rows.len(), &params, reduce, threads, &mut go_on())
        };
        let serial = batch(&rows, Reduce::Mean, 1).unwrap();
        for threads in [2, 3, 8] {
            assert_eq!(batch(&rows, Reduce::Mean, threads).unwrap(), serial);
        }
        let mapped = program.map(&rows, 1000, &params, 4, &mut go_on()).unwrap();
        assert_eq!(
            mapped,
            program.map(&rows, 1000, &params, 1, &mut go_on()).unwrap()
        );
        let mean = mapped.iter().sum::<f64>() / 1000.0;
        assert!((mean - serial.values[0]).abs() < 1e-12);
        assert!(batch(&rows[..3], Reduce::Sum, 1).is_ok());
    }

    #[test]
    fn batch_values_equal_the_values_of_a_full_batch() {
        let mut arena = Arena::new();
        let (_, _, _, _, program) = neuron(&mut arena);
        let rows: Vec<f64> = (0..333).map(|i| (i as f64 * 0.71).cos()).collect();
        let params = [-1.5, 0.25];
        for reduce in [Reduce::Sum, Reduce::Mean] {
            for threads in [1, 3] {
                assert_eq!(
                    program
                        .batch_values(&rows, 333, &params, reduce, threads, &mut go_on())
                        .unwrap(),
                    program
                        .batch(&rows, 333, &params, reduce, 1, &mut go_on())
                        .unwrap()
                        .values
                );
            }
        }
    }

    #[test]
    fn a_program_without_inputs_gives_the_same_outputs_in_every_row() {
        let mut arena = Arena::new();
        let w = arena.leaf(3.0).unwrap();
        let sq = arena.apply2(Op::Mul, w, w).unwrap();
        let program = Program::record(&arena, &[sq], &[]).unwrap();
        let batch = program
            .batch(&[], 5, &[3.0], Reduce::Sum, 2, &mut go_on())
            .unwrap();
        assert_eq!((batch.values, batch.grads), (vec![45.0], vec![vec![30.0]]));
        assert_eq!(
            program.map(&[], 2, &[3.0], 1, &mut go_on()).unwrap(),
            vec![9.0, 9.0]
        );
    }
}
