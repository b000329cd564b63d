//! An exact in-memory copy of the training state, and putting it back.
//!
//! What a checkpoint holds, without the disk, for this rank: its fp32
//! master weights (its ZeRO shard, `zero.shard_params`; stage 0: every
//! weight), every optimizer state tensor of that shard in its storage type
//! (8-bit codes stay codes), the optimizer's scalar state (step counters,
//! limiter norms), the training data loader's position, the RNG, the step
//! and the bad-step guard's state. Restoring puts the shard back and
//! refreshes the copies made from it (`Zero::set_shard_weights`: the
//! device's bf16 copy, or at ZeRO stages 1–2 the full weights through an
//! all-gather, so every rank restores together) and goes through
//! `load_meta` like a checkpoint resume (which makes state regenerated from
//! the seed — APOLLO's projections — be drawn again), so a restored state
//! continues bit for bit like the saved one. Gradients and activations are
//! not state: every step overwrites them.
//!
//! An offloaded run (`offload.optimizer`) keeps its master weights and
//! optimizer state on the host or disk; it has no snapshot. 1-bit Adam's
//! error-feedback buffers (after its freeze step) are not in its state
//! tensors either: AutoLRS refuses `onebit_adam`.
//!
//! AutoLRS uses it to try several learning rates from one point of training.

use super::guard::GuardState;
use super::trainer::State;
use crate::backend::{Backend, DType};
use crate::data::loader::LoaderState;
use crate::util::rng::Rng;
use anyhow::{bail, Result};

/// The saved state; `take` and `restore` pair with one run's `State`.
pub struct Snapshot {
    step: u64,
    /// This rank's master-weight shard.
    params: Vec<f32>,
    /// Optimizer state tensors in `state_tensors()` order.
    opt_f32: Vec<Vec<f32>>,
    opt_u8: Vec<Vec<u8>>,
    opt_meta: serde_json::Value,
    loader: LoaderState,
    rng: Rng,
    guard: GuardState,
}

impl Snapshot {
    pub(super) fn take<B: Backend>(b: &mut B, st: &State<B>) -> Result<Self> {
        if st.off.is_some() {
            bail!("an offloaded run (offload.optimizer) has no in-memory snapshot: its optimizer state is on the host or disk");
        }
        let params = st.zero.shard_weights(b)?;
        let (mut opt_f32, mut opt_u8) = (vec![], vec![]);
        for t in st.opt.state_tensors() {
            match t.dtype {
                DType::U8 => {
                    let mut host = vec![0u8; t.view.len];
                    b.download_u8(t.view, &mut host)?;
                    opt_u8.push(host);
                }
                _ => {
                    let mut host = vec![0f32; t.view.len];
                    b.download(t.view, &mut host)?;
                    opt_f32.push(host);
                }
            }
        }
        Ok(Snapshot { step: st.step, params, opt_f32, opt_u8, opt_meta: st.opt.meta(), loader: st.train.state(), rng: st.rng.clone(), guard: st.guard.state.clone() })
    }

    /// Puts the saved state back; the snapshot stays valid for more restores.
    /// A collective at ZeRO stages 1–2 (every rank restores its snapshot).
    pub(super) fn restore<B: Backend>(&self, b: &mut B, st: &mut State<B>) -> Result<()> {
        st.zero.set_shard_weights(b, &self.params)?;
        let (mut f, mut u) = (self.opt_f32.iter(), self.opt_u8.iter());
        for t in st.opt.state_tensors() {
            match t.dtype {
                DType::U8 => {
                    let Some(host) = u.next() else { bail!("snapshot has no 8-bit tensor for {}", t.name) };
                    check_len(&t.name, host.len(), t.view.len)?;
                    b.upload_u8(t.view, host)?;
                }
                _ => {
                    let Some(host) = f.next() else { bail!("snapshot has no tensor for {}", t.name) };
                    check_len(&t.name, host.len(), t.view.len)?;
                    b.upload(t.view, host)?;
                }
            }
        }
        if f.next().is_some() || u.next().is_some() {
            bail!("snapshot holds more optimizer tensors than the optimizer has");
        }
        st.opt.load_meta(&self.opt_meta)?;
        st.train.restore(&self.loader)?;
        st.rng = self.rng.clone();
        st.step = self.step;
        st.guard.state = self.guard.clone();
        b.synchronize()
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// Host bytes the snapshot holds.
    pub fn bytes(&self) -> usize {
        4 * self.params.len() + self.opt_f32.iter().map(|v| 4 * v.len()).sum::<usize>() + self.opt_u8.iter().map(Vec::len).sum::<usize>()
    }
}

fn check_len(name: &str, have: usize, want: usize) -> Result<()> {
    if have != want {
        bail!("snapshot tensor {name} has {have} values, the optimizer's has {want}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::trainer::{new_state, train_step_at};
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::config::{self, OPTIMIZERS};
    use crate::data::Dataset;

    /// For every optimizer and ZeRO stage (one rank): steps from a restored
    /// snapshot repeat the steps taken from the saved point bit for bit,
    /// after a detour at another learning rate (which changed weights,
    /// optimizer state, data position, the guard's loss window and APOLLO's
    /// projection refresh) — weights, optimizer, data position, RNG, step
    /// and guard all come back.
    #[test]
    fn restore_after_a_detour_is_bit_exact_for_every_optimizer() {
        let data = Dataset::open("builtin").unwrap();
        for stage in 0..=3 {
            // 1-bit Adam's error buffers are outside its state (AutoLRS refuses it).
            for name in OPTIMIZERS.iter().filter(|n| **n != "onebit_adam") {
                let sets: Vec<String> = [
                    &format!("optimizer.name={name}")[..], &format!("dist.zero_stage={stage}"), "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2",
                    "model.d_ff=64", "train.batch_size=2", "train.seq_len=16", "optimizer.rank=4", "optimizer.update_every=2", "optimizer.lr=1e-3",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let cfg = config::load(None, &sets).unwrap();
                let mut b = CpuBackend::new();
                let mut st = new_state(&mut b, &cfg, &data, Box::new(crate::dist::SoloComm)).unwrap();
                for _ in 0..3 {
                    train_step_at(&mut b, &mut st, &cfg, 1e-3).unwrap();
                }
                let snap = Snapshot::take(&mut b, &st).unwrap();
                let (rng_before, guard_before) = (st.rng.clone(), st.guard.state.clone());
                let run = |b: &mut CpuBackend, st: &mut State<CpuBackend>, lr: f32| -> (Vec<u64>, Vec<u32>) {
                    let losses = (0..3).map(|_| train_step_at(b, st, &cfg, lr).unwrap().loss.to_bits()).collect();
                    (losses, st.zero.full_weights(b).unwrap().iter().map(|x| x.to_bits()).collect())
                };
                let first = run(&mut b, &mut st, 1e-3);
                snap.restore(&mut b, &mut st).unwrap();
                let detour = run(&mut b, &mut st, 5e-3);
                assert_ne!(detour.1, first.1, "{name} stage {stage}: the detour should change the weights");
                assert_ne!(st.guard.state, guard_before, "{name} stage {stage}: the detour should change the guard's window");
                st.rng.next_u64();
                snap.restore(&mut b, &mut st).unwrap();
                assert_eq!((st.step, &st.rng, &st.guard.state), (3, &rng_before, &guard_before), "{name} stage {stage}");
                let again = run(&mut b, &mut st, 1e-3);
                assert_eq!(again, first, "{name} stage {stage}: restored run differs");
            }
        }
    }
}
