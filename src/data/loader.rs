//! Batches of (input, target) sequences from a token stream: seeded shuffling,
//! data-parallel sharding and exact resume.
//!
//! The stream is cut into windows of `seq + 1` tokens at stride `seq`:
//! window `i` is `tokens[i*seq ..= i*seq + seq]`. Inputs of different
//! windows never overlap; a window's last token (the final target) is the
//! next window's first input, so every token is predicted once per epoch and
//! nothing is wasted. The tail shorter than a window is unused.
//!
//! Each epoch visits all windows in an order shuffled with `(seed, epoch)`.
//! With `world` data-parallel ranks, all ranks compute the same shuffled order
//! and rank `r` takes positions `r, r + world, r + 2*world, ...`, so ranks see
//! disjoint windows and stay in lockstep. Each rank gets `windows / world`
//! windows per epoch (the remainder is skipped that epoch, so every rank makes
//! the same number of steps). Batches run across epoch boundaries.
//!
//! Sequence parallelism (`dist.sp = P`): the `world` above is the number of
//! data-parallel groups and `rank` the group's index, so the P ranks of a
//! group read the same windows; [`Loader::with_seq_slice`] then gives rank
//! `r` of the group tokens `[seq·r/P, seq·(r+1)/P)` of every window (inputs
//! and their targets).

use super::dataset::{Dataset, Split};
use super::store::TokenStore;
use crate::util::rng::{mix, Rng};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `batch * seq` tokens each, row-major `[batch][seq]`;
/// `targets[k] = token after inputs[k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
}

/// Everything needed to continue exactly where a loader stopped. Saved in
/// checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub seed: u64,
    pub epoch: u64,
    /// Windows this rank has consumed in the current epoch.
    pub cursor: u64,
    /// The following identify the stream; restore refuses a mismatch,
    /// because the same cursor would then mean different data.
    pub seq: usize,
    pub windows: u64,
    pub rank: usize,
    pub world: usize,
}

pub struct Loader {
    tokens: Arc<TokenStore>,
    split: Split,
    batch: usize,
    seq: usize,
    seed: u64,
    rank: usize,
    world: usize,
    /// Global number of windows in the stream.
    windows: usize,
    /// This rank's windows for the current epoch, in visiting order.
    order: Vec<u32>,
    epoch: u64,
    cursor: usize,
    /// Which slice of each sequence this rank takes: (part, parts).
    slice: (usize, usize),
}

impl Loader {
    pub fn new(
        data: &Dataset,
        split: Split,
        batch: usize,
        seq: usize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<Loader> {
        check_shape(data, split, batch, seq, rank, world)?;
        let tokens = data.shared(split).clone();
        let windows = (tokens.len() - 1) / seq;
        if windows < world {
            bail!(
                "the {split:?} split has {} tokens, only {windows} windows of {} tokens, fewer \
                 than the {world} data-parallel ranks: use more data or a shorter seq_len",
                tokens.len(),
                seq + 1
            );
        }
        let mut loader = Loader {
            tokens,
            split,
            batch,
            seq,
            seed,
            rank,
            world,
            windows,
            order: Vec::new(),
            epoch: 0,
            cursor: 0,
            slice: (0, 1),
        };
        loader.reset();
        Ok(loader)
    }

    /// Hands out part `part` of `parts` equal slices of every sequence
    /// (sequence parallelism: the rank's place in its group). `seq_len`
    /// must be divisible by `parts`.
    pub fn with_seq_slice(mut self, part: usize, parts: usize) -> Result<Loader> {
        if parts == 0 || part >= parts || !self.seq.is_multiple_of(parts) {
            bail!("cannot cut sequences of {} tokens into {parts} equal slices (slice {part}): seq_len must be a multiple of dist.sp", self.seq);
        }
        self.slice = (part, parts);
        Ok(self)
    }

    /// Back to the first batch of epoch 0 (gives identical eval batches each time).
    pub fn reset(&mut self) {
        self.epoch = 0;
        self.cursor = 0;
        self.order = self.epoch_order(0);
    }

    /// The next `batch` windows (an error only if reading a shard fails).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let (b, s) = (self.batch, self.seq);
        let (part, parts) = self.slice;
        let (lo, hi) = (s * part / parts, s * (part + 1) / parts);
        let mut inputs = Vec::with_capacity(b * (hi - lo));
        let mut targets = Vec::with_capacity(b * (hi - lo));
        let mut w = Vec::with_capacity(s + 1);
        for _ in 0..b {
            let start = self.next_window() * s;
            w.clear();
            self.tokens.read_into(start, s + 1, &mut w)?;
            inputs.extend_from_slice(&w[lo..hi]);
            targets.extend_from_slice(&w[lo + 1..hi + 1]);
        }
        Ok(Batch {
            inputs,
            targets,
            batch: b,
            seq: hi - lo,
        })
    }

    fn next_window(&mut self) -> usize {
        if self.cursor == self.order.len() {
            self.epoch += 1;
            self.cursor = 0;
            self.order = self.epoch_order(self.epoch);
        }
        self.cursor += 1;
        self.order[self.cursor - 1] as usize
    }

    /// The shared shuffle of all windows for an epoch, then this rank's slice.
    fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        let mut all: Vec<u32> = (0..self.windows as u32).collect();
        Rng::new(mix(self.seed, epoch)).shuffle(&mut all);
        let per_rank = self.windows / self.world;
        all.into_iter()
            .skip(self.rank)
            .step_by(self.world)
            .take(per_rank)
            .collect()
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            seed: self.seed,
            epoch: self.epoch,
            cursor: self.cursor as u64,
            seq: self.seq,
            windows: self.windows as u64,
            rank: self.rank,
            world: self.world,
        }
    }

    /// Continues from a saved state; the next batches are exactly those the
    /// saved loader would have produced. The batch size may differ, and so
    /// may the number of ranks: every rank consumes the same number of
    /// windows per step, so the saved rank's cursor times the saved world
    /// is the global position, which the new world divides among its ranks
    /// (the same global batches, as long as batch × ranks is unchanged).
    pub fn restore(&mut self, st: &LoaderState) -> Result<()> {
        let global = st.cursor * st.world as u64;
        let st = &if st.world != self.world && global % self.world as u64 == 0 {
            LoaderState { cursor: global / self.world as u64, rank: self.rank, world: self.world, ..st.clone() }
        } else {
            LoaderState { rank: if st.world == self.world { st.rank } else { usize::MAX }, ..st.clone() }
        };
        let mine = (self.seq, self.windows as u64, self.world);
        let theirs = (st.seq, st.windows, st.world);
        if mine != theirs {
            bail!(
                "cannot resume the {:?} data loader: the saved state is for seq_len {} and {} \
                 windows over {} rank(s), but this run has seq_len {}, {} windows over {} rank(s) \
                 (the data or seq_len changed since the checkpoint, or the new number of ranks \
                 does not divide the windows already consumed)",
                self.split,
                st.seq,
                st.windows,
                st.world,
                self.seq,
                self.windows,
                self.world
            );
        }
        if st.cursor as usize > self.windows / self.world {
            bail!(
                "cannot resume the data loader: cursor {} is past the end of an epoch",
                st.cursor
            );
        }
        self.seed = st.seed;
        self.epoch = st.epoch;
        self.order = self.epoch_order(st.epoch);
        self.cursor = st.cursor as usize;
        Ok(())
    }

    /// Windows this rank visits per epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.order.len()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub fn seq_len(&self) -> usize {
        self.seq
    }
}

fn check_shape(
    data: &Dataset,
    split: Split,
    batch: usize,
    seq: usize,
    rank: usize,
    world: usize,
) -> Result<()> {
    if batch == 0 || seq == 0 {
        bail!("batch size and seq_len must be at least 1 (got batch {batch}, seq_len {seq})");
    }
    if world == 0 || rank >= world {
        bail!("data-parallel rank {rank} is not inside a world of {world} ranks");
    }
    let n = data.len(split);
    if n < seq + 1 {
        bail!(
            "the {split:?} split of {} has only {n} tokens, but one sequence needs seq_len + 1 = \
             {} tokens: prepare more text or lower train.seq_len",
            data.source,
            seq + 1
        );
    }
    if n > u32::MAX as usize * seq {
        bail!("the {split:?} split is too large to index ({n} tokens)");
    }
    Ok(())
}
