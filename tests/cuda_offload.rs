//! Optimizer offload on CUDA (skipped without a GPU): 50 steps of a small
//! model with the optimizer on the device vs on the host (cpu tier) and in
//! files (nvme tier), for AdamW and 8-bit AdamW. The host step is the CPU
//! backend's kernel, the device step the CUDA kernel: both fp32, but not
//! the same instruction sequence (FMA contraction, sqrt/divide rounding),
//! and the passes run in bf16, so runs drift apart slowly instead of
//! matching bit for bit (on the CPU backend they do: tests/offload.rs).
//! Tolerance: every step's loss within 2% of the plain run's, and the final
//! weights within 2% (relative Frobenius norm of the difference), far
//! below what a wrong update (a missing bias correction gives > 10% after
//! 3 steps) would show. The offloaded runs keep only bf16 weights on the
//! device (norm and embedding weights are read in bf16 too, where the
//! plain run reads fp32, as DeepSpeed's and FSDP2's bf16 parameters do).
//! Both clipping (steps after backward) and no clipping (steps overlapping
//! backward, gradient copies on the copy stream in flight behind it) are
//! run.
//!
//! Learning rate 1e-3, not the 2e-3 these tests used until 2026-12-02: at
//! 2e-3 this model's loss spikes (to 5.1 at step 12 with clipping, 9.3
//! without), and inside a spike the bf16 passes amplify any difference:
//! measured on the H200 (bench/results/gpu_2026-12-02c.md, call 1), an
//! offloaded run with fp32 device weights, whose passes read exactly what
//! the plain run's read (only the optimizer kernel's rounding differs),
//! was 1.5% off the plain loss at step 25, and the bf16-weight run 7.2% at
//! step 12, while the same offloaded run twice was bit-identical (no copy
//! race). A comparison there measures the spike, not the offload. The
//! bound itself is unchanged.

use ferrotron::backend::cuda::CudaBackend;
use ferrotron::ckpt;
use ferrotron::config::{self, Config};
use ferrotron::train::trainer::train;
use std::path::Path;

fn have_gpu() -> bool {
    match CudaBackend::new(0) {
        Ok(_) => true,
        Err(e) => {
            println!("skipping: no CUDA device ({e:#})");
            false
        }
    }
}

fn cfg(dir: &Path, name: &str, extra: &[String]) -> Config {
    let mut sets: Vec<String> = [
        "device=cuda", "train.steps=50", "train.batch_size=4", "train.seq_len=64", "train.eval_every=50", "train.eval_batches=1",
        "train.ckpt_every=50", "train.samples=0", "train.warmup_steps=5", "run.progress=false",
        "model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.n_kv_heads=4", "model.d_ff=256", "optimizer.lr=1e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name={name}"));
    sets.extend(extra.iter().cloned());
    config::load(None, &sets).unwrap()
}

fn weights(run: &Path) -> Vec<f32> {
    let l = ckpt::load(&ckpt::latest(run).unwrap().unwrap()).unwrap();
    l.model.iter().flat_map(|t| t.data.iter().copied()).collect()
}

#[test]
fn offloaded_cuda_runs_track_the_plain_run() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for opt in ["adamw", "adamw8bit"] {
        let base = vec![format!("optimizer.name={opt}")];
        let plain_name = format!("{opt}-plain");
        let plain = train(&cfg(tmp.path(), &plain_name, &base), None).unwrap();
        let mut plain0 = base.clone();
        plain0.push("train.grad_clip=0".into());
        let plain_noclip = train(&cfg(tmp.path(), &format!("{opt}-plain0"), &plain0), None).unwrap();
        let wp = weights(&tmp.path().join(&plain_name));
        for (tier, clip) in [("cpu", "1"), ("nvme", "1"), ("cpu", "0")] {
            let name = format!("{opt}-{tier}-clip{clip}");
            let mut sets = base.clone();
            sets.push(format!("offload.optimizer={tier}"));
            sets.push(format!("train.grad_clip={clip}"));
            sets.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
            let off = train(&cfg(tmp.path(), &name, &sets), None).unwrap();
            let (plain, wp) = if clip == "0" { (&plain_noclip, weights(&tmp.path().join(format!("{opt}-plain0")))) } else { (&plain, wp.clone()) };
            for (i, (a, b)) in plain.losses.iter().zip(&off.losses).enumerate() {
                assert!((a - b).abs() <= 0.02 * a.abs(), "{name}: step {} loss {b} vs plain {a}", i + 1);
            }
            let wo = weights(&tmp.path().join(&name));
            let diff: f64 = wp.iter().zip(&wo).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = wp.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            assert!(diff <= 0.02 * norm, "{name}: weights differ by {:.4} relative", diff / norm);
            let (gap, at) = worst_gap(&plain.losses, &off.losses);
            println!("{name}: final loss {} vs {}, worst step gap {gap:.2e} (step {at}), weights rel diff {:.2e}", off.losses[49], plain.losses[49], diff / norm);
        }
    }
}

/// The device keeps bf16 weights only: an offloaded step's peak GPU
/// memory is below the plain step's by at least the fp32 weights and the
/// AdamW state it no longer holds (4 + 8 bytes per parameter; the plain
/// run's bf16 shadow equals the offloaded run's bf16 weights, and the
/// offloaded gradient window is at most the plain run's full gradients).
#[test]
fn offloaded_cuda_run_keeps_bf16_weights_only() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sets = |off: &str| vec!["optimizer.name=adamw".to_string(), format!("offload.optimizer={off}"), "train.steps=3".into(), "train.grad_clip=0".into()];
    let plain = ferrotron::train::bench::bench_train(&cfg(tmp.path(), "p", &sets("none")), 1, 2, None, false).unwrap();
    let off = ferrotron::train::bench::bench_train(&cfg(tmp.path(), "o", &sets("cpu")), 1, 2, None, false).unwrap();
    let params = plain.params as u64;
    println!("peak GPU bytes: plain {}, offloaded {} ({} parameters)", plain.peak_mem_bytes, off.peak_mem_bytes, params);
    assert!(off.peak_mem_bytes + 12 * params <= plain.peak_mem_bytes, "offloaded peak {} vs plain {}", off.peak_mem_bytes, plain.peak_mem_bytes);
    assert_eq!(off.offload.len(), 2, "per-step offload phases reported");
}

/// The largest relative gap between two runs' per-step losses, and its step.
fn worst_gap(a: &[f32], b: &[f32]) -> (f32, usize) {
    a.iter().zip(b).enumerate().map(|(i, (x, y))| ((x - y).abs() / x.abs(), i + 1)).fold((0.0, 0), |m, g| if g.0 > m.0 { g } else { m })
}

/// Separates the two things an offloaded CUDA run changes: where the
/// optimizer runs (host kernel instead of device kernel) and the device's
/// weights (bf16 only instead of fp32 + bf16 shadow). With
/// `debug.offload_fp32_weights` the passes read exactly what the plain
/// run's read, so only the optimizer kernel differs; the same offloaded
/// run twice must agree bit for bit (a copy-ordering race would not).
#[test]
fn offloaded_cuda_run_is_deterministic_and_fp32_weights_track_plain() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["optimizer.name=adamw".to_string(), "train.grad_clip=1".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
        v
    };
    let plain = train(&cfg(tmp.path(), "plain", &base(&[])), None).unwrap();
    let off_a = train(&cfg(tmp.path(), "off-a", &base(&["offload.optimizer=cpu"])), None).unwrap();
    let off_b = train(&cfg(tmp.path(), "off-b", &base(&["offload.optimizer=cpu"])), None).unwrap();
    let off32 = train(&cfg(tmp.path(), "off32", &base(&["offload.optimizer=cpu", "debug.offload_fp32_weights=true"])), None).unwrap();
    let (g_bf16, s_bf16) = worst_gap(&plain.losses, &off_a.losses);
    let (g_32, s_32) = worst_gap(&plain.losses, &off32.losses);
    println!("worst per-step loss gap vs plain: bf16 device weights {g_bf16:.3e} (step {s_bf16}), fp32 device weights {g_32:.3e} (step {s_32})");
    assert_eq!(off_a.losses, off_b.losses, "the same offloaded run twice differs: a race in the copies");
    // 2%: the bound of offloaded_cuda_runs_track_the_plain_run, here with
    // the passes' arithmetic equal to the plain run's.
    assert!(g_32 <= 0.02, "fp32 device weights: step {s_32} loss gap {g_32:.3e}");
}
