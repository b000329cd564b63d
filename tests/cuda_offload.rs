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
//! race). A comparison there measures the spike, not the offload.
//! Without clipping the model still spikes at 1e-3 (call 3: the plain run
//! 3.64 at step 30 against 3.18 and 3.13 around it, the offloaded run
//! 4.22; steps 40 and 50 equal to 1e-4), so the per-step bound applies to
//! the median step and to each of the last 10 steps, not to every step: a
//! wrong update (a missing bias correction: > 10% after 3 steps) stays off
//! and fails both.
//! With `offload.params = nvme` the passes read the bf16 images the steps
//! wrote into the units' files (the same bf16 rounding of the same master
//! weights the other offloaded runs upload), so the same tolerance holds.

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

/// The latest checkpoint's model tensors (layout order).
fn tensors(run: &Path) -> Vec<ckpt::tensors::Tensor> {
    ckpt::load(&ckpt::latest(run).unwrap().unwrap()).unwrap().model
}

/// Relative Frobenius norm of `a - b`.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The tensors whose values differ: name, elements that differ, relative gap.
fn describe_diff(a: &[ckpt::tensors::Tensor], b: &[ckpt::tensors::Tensor]) -> String {
    let parts: Vec<String> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| {
            let n = x.data.iter().zip(&y.data).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
            (n > 0).then(|| format!("{} {n} of {} ({:.2e})", x.name, x.data.len(), rel_diff(&x.data, &y.data)))
        })
        .collect();
    if parts.is_empty() { "bit for bit".into() } else { parts.join(", ") }
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
        for (tier, params, clip) in [("cpu", "none", "1"), ("nvme", "none", "1"), ("cpu", "none", "0"), ("nvme", "nvme", "1"), ("nvme", "nvme", "0")] {
            let name = format!("{opt}-{tier}-params{params}-clip{clip}");
            let mut sets = base.clone();
            sets.push(format!("offload.optimizer={tier}"));
            sets.push(format!("offload.params={params}"));
            sets.push(format!("train.grad_clip={clip}"));
            sets.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
            let off = train(&cfg(tmp.path(), &name, &sets), None).unwrap();
            let (plain, wp) = if clip == "0" { (&plain_noclip, weights(&tmp.path().join(format!("{opt}-plain0")))) } else { (&plain, wp.clone()) };
            assert_tracks(&name, &plain.losses, &off.losses, &wp, &weights(&tmp.path().join(&name)));
        }
    }
}

/// The tolerance of an offloaded CUDA run against the plain run (module
/// doc): a wrong update drifts and stays off; a spike amplifies rounding
/// for a step or two and the runs meet again: so the median step and
/// every one of the last 10 steps are bounded, and the final weights.
fn assert_tracks(name: &str, plain: &[f32], off: &[f32], wp: &[f32], wo: &[f32]) {
    let gaps: Vec<f32> = plain.iter().zip(off).map(|(a, b)| (a - b).abs() / a.abs()).collect();
    let mut sorted = gaps.clone();
    sorted.sort_by(f32::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(median <= 0.01, "{name}: median per-step loss gap {median:.3e} > 1%");
    for (i, g) in gaps.iter().enumerate().skip(gaps.len().saturating_sub(10)) {
        assert!(*g <= 0.02, "{name}: step {} loss {} vs plain {} (gap {g:.3e})", i + 1, off[i], plain[i]);
    }
    let diff: f64 = wp.iter().zip(wo).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = wp.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    assert!(diff <= 0.02 * norm, "{name}: weights differ by {:.4} relative", diff / norm);
    let (gap, at) = worst_gap(plain, off);
    println!("{name}: final loss {} vs {}, worst step gap {gap:.2e} (step {at}), weights rel diff {:.2e}", off[off.len() - 1], plain[plain.len() - 1], diff / norm);
}

/// Three tiers on CUDA (`offload.gpu_gb`: the largest units' master and
/// state on the device, stepped by the CUDA optimizer; `host_gb`: the next
/// in host memory; the rest in files): within the tolerance above of the
/// plain run and of the single-tier (cpu) run, for AdamW and 8-bit AdamW,
/// with clipping (device units step after the norm) and without (they step
/// as their backward ends). The device units run the plain run's CUDA
/// kernel, the others the host's, so the split is neither run bit for bit.
#[test]
fn three_tiers_track_plain_and_single_tier_on_cuda() {
    if !have_gpu() {
        return;
    }
    use ferrotron::parallel::offload::{budget, placement};
    let tmp = tempfile::tempdir().unwrap();
    let scratch = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    for opt in ["adamw", "adamw8bit"] {
        for clip in ["1", "0"] {
            let base = vec![format!("optimizer.name={opt}"), format!("train.grad_clip={clip}"), scratch.clone()];
            let with = |name: &str, extra: &[String]| cfg(tmp.path(), name, &base.iter().cloned().chain(extra.iter().cloned()).collect::<Vec<_>>());
            let probe = with("probe", &["offload.optimizer=nvme".into()]);
            let layout = ferrotron::model::layout::ParamLayout::new(&probe.model);
            let units = placement::unit_bytes(&probe, &layout).unwrap();
            let third = (units.iter().map(|u| u.resident()).sum::<u64>() / 3) as f64 / 1e9 + 1e-9;
            let split = vec!["offload.optimizer=nvme".to_string(), format!("offload.gpu_gb={third}"), format!("offload.host_gb={third}")];
            let need = budget::offload_bytes(&with("n", &split)).unwrap();
            let gpu = budget::gpu_units(&with("n", &split)).unwrap();
            assert!(gpu.units > 0 && need.host_units > 0 && need.disk_units > 0, "{split:?}: a split with all three tiers");
            let tag = format!("{opt}-clip{clip}");
            let plain = train(&with(&format!("{tag}-plain"), &[]), None).unwrap();
            let single = train(&with(&format!("{tag}-cpu"), &["offload.optimizer=cpu".into()]), None).unwrap();
            let three = train(&with(&format!("{tag}-three"), &split), None).unwrap();
            let w = |n: &str| weights(&tmp.path().join(format!("{tag}-{n}")));
            assert_tracks(&format!("{tag} three vs plain"), &plain.losses, &three.losses, &w("plain"), &w("three"));
            assert_tracks(&format!("{tag} three vs cpu tier"), &single.losses, &three.losses, &w("cpu"), &w("three"));
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

/// `offload.params = nvme` on the GPU: the device holds no weights between
/// uses (its peak is below the params = none offloaded run's by most of
/// the bf16 weights), the files lead with bf16 images (a pass reads 2
/// bytes per parameter: `info`'s disk bytes include them), a run equals
/// the params = cpu run bit for bit (losses; the final weights but for
/// the token embedding's atomics, see below), and host memory holds no unit's
/// weights after a step.
#[test]
fn params_on_nvme_stream_bf16_images_from_disk() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scratch = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let sets = |params: &str| vec!["optimizer.name=adamw".to_string(), "offload.optimizer=nvme".into(), format!("offload.params={params}"), scratch.clone(), "train.steps=3".into(), "train.grad_clip=0".into(), "model.n_layers=12".into()];
    let resident = ferrotron::train::bench::bench_train(&cfg(tmp.path(), "r", &sets("none")), 1, 2, None, false).unwrap();
    let streamed = ferrotron::train::bench::bench_train(&cfg(tmp.path(), "s", &sets("nvme")), 1, 2, None, false).unwrap();
    let params = resident.params as u64;
    println!("peak GPU bytes: params none {}, params nvme {} ({} parameters)", resident.peak_mem_bytes, streamed.peak_mem_bytes, params);
    // 12 layers + embeddings + head: the streamed window (about 3 units)
    // is well under half of the model's bf16 weights.
    assert!(streamed.peak_mem_bytes + params <= resident.peak_mem_bytes, "params=nvme peak {} vs params=none {}", streamed.peak_mem_bytes, resident.peak_mem_bytes);
    let c = cfg(tmp.path(), "s", &sets("nvme"));
    let need = ferrotron::parallel::offload::budget::offload_bytes(&c).unwrap();
    let without = ferrotron::parallel::offload::budget::offload_bytes(&cfg(tmp.path(), "r", &sets("none"))).unwrap();
    assert!(need.disk >= without.disk + 2 * params, "disk bytes include the bf16 images");
    // The same bf16 images reach the device as with params = cpu (the same
    // rounding of the same host optimizer's master weights) and the device
    // kernels are deterministic: the two runs agree bit for bit.
    let short = |name: &str, tier: &str| {
        let mut v = vec![format!("offload.optimizer={tier}"), format!("offload.params={tier}"), scratch.clone(), "train.steps=10".into(), "train.ckpt_every=10".into(), "train.eval_every=10".into()];
        v.push("optimizer.name=adamw8bit".into());
        train(&cfg(tmp.path(), name, &v), None).unwrap()
    };
    let (host, disk) = (short("host", "cpu"), short("disk", "nvme"));
    short("host2", "cpu");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&host.losses) == bits(&disk.losses), "params=nvme losses {:?} vs params=cpu {:?}", disk.losses, host.losses);
    // The final master weights: bit for bit but the token embedding. The
    // CUDA embedding backward adds rows sharing a token with fp32 atomics
    // (embed.cu, embed_bwd_wte_k), so the wte gradient, and through the
    // update a few wte master weights, differ in their last bits from run
    // to run, params=cpu twice as well (printed below); the bf16 passes
    // hide that (equal losses). Call 3 of 2026-12-02 failed a bit-for-bit
    // comparison of the whole model on this. 1e-5: a few fp32 ulps of a
    // few elements are ~1e-8 of wte's norm, while a lost or stale update
    // of the unit (lr 1e-3) is ~1e-3 of it.
    let (h, h2, d) = (tensors(&tmp.path().join("host")), tensors(&tmp.path().join("host2")), tensors(&tmp.path().join("disk")));
    println!("params=cpu twice: {}", describe_diff(&h, &h2));
    println!("params=cpu vs params=nvme: {}", describe_diff(&h, &d));
    assert_eq!(h.len(), d.len(), "tensor counts");
    for (a, b) in h.iter().zip(&d) {
        assert_eq!(a.name, b.name);
        if a.name == "wte" {
            let gap = rel_diff(&a.data, &b.data);
            assert!(gap <= 1e-5, "params=nvme wte differs from params=cpu by {gap:.3e} (relative): more than the atomics' last bits");
        } else {
            assert!(bits(&a.data) == bits(&b.data), "params=nvme final weights of {} differ from params=cpu", a.name);
        }
    }
    // Driven by hand: after a step no unit's weights are in host memory.
    use ferrotron::backend::cuda::CudaBackend;
    use ferrotron::model::{Model, Recompute};
    let layout = ferrotron::model::layout::ParamLayout::new(&c.model);
    let weights = ferrotron::model::init::init_weights(&c.model, &layout, 1);
    let mut b = CudaBackend::new(0).unwrap();
    let mut zero = ferrotron::parallel::zero::Zero::new_streamed(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm)).unwrap();
    let mut off = ferrotron::parallel::offload::Offload::new(&c, &layout, &weights).unwrap();
    let mut model = Model::new_bare(&c.model, Recompute::Off);
    let tokens: Vec<u32> = (0..128).map(|i| (i * 7 % 200) as u32).collect();
    for _ in 0..2 {
        off.begin_step(1e-3, 0.0).unwrap();
        model.forward_backward_in(&mut b, &mut off.store(&mut zero), &tokens, &tokens, 2, 64, 1.0).unwrap();
        off.finish(&mut b, &mut zero, 0.0).unwrap();
        let (host_units, stats) = off.streamed_from_disk().unwrap();
        assert_eq!(host_units, 0, "no unit's weights in host memory between steps");
        println!("reads {} ({} bytes, {:.1} ms waited), {} pool buffers", stats.reads, stats.bytes, stats.wait_ms, stats.buffers);
    }
}

/// Mixed tiers on CUDA (`offload.optimizer = nvme` with `offload.host_gb`
/// holding about half of the units): the resident units' bf16 images come
/// from host memory (the pool buffer, or with params = nvme their kept
/// image), the others' from their files' step or image section. The same
/// host optimizer and the same rounding: the losses equal the all-resident
/// (cpu tier) and all-in-files runs bit for bit, the final weights too but
/// for wte's atomics (see `params_on_nvme_stream_bf16_images_from_disk`).
#[test]
fn mixed_tiers_equal_single_tiers_on_cuda() {
    if !have_gpu() {
        return;
    }
    use ferrotron::parallel::offload::placement;
    let tmp = tempfile::tempdir().unwrap();
    let scratch = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for params in ["none", "nvme"] {
        let base = vec!["optimizer.name=adamw8bit".to_string(), scratch.clone(), "train.steps=10".into(), "train.ckpt_every=10".into(), "train.eval_every=10".into(), "train.grad_clip=0".into(), "model.n_layers=8".into()];
        let with = |name: &str, extra: &[String]| {
            let mut v = base.clone();
            v.extend(extra.iter().cloned());
            cfg(tmp.path(), name, &v)
        };
        let probe = with("probe", &["offload.optimizer=nvme".into(), format!("offload.params={params}")]);
        let layout = ferrotron::model::layout::ParamLayout::new(&probe.model);
        let units = placement::unit_bytes(&probe, &layout).unwrap();
        let half: u64 = units.iter().map(|u| u.resident()).sum::<u64>() / 2;
        let split = format!("offload.host_gb={}", (half as f64 + 0.5) / 1e9);
        let host_params = if params == "none" { "none" } else { "cpu" };
        let runs = [
            (format!("{params}-host"), vec!["offload.optimizer=cpu".to_string(), format!("offload.params={host_params}")]),
            (format!("{params}-files"), vec!["offload.optimizer=nvme".to_string(), format!("offload.params={params}")]),
            (format!("{params}-mixed"), vec!["offload.optimizer=nvme".to_string(), format!("offload.params={params}"), split.clone()]),
        ];
        let mixed_need = ferrotron::parallel::offload::budget::offload_bytes(&with("m", &runs[2].1)).unwrap();
        assert!(mixed_need.host_units > 0 && mixed_need.disk_units > 0, "{split}: a split with both tiers");
        let out: Vec<_> = runs.iter().map(|(name, extra)| train(&with(name, extra), None).unwrap()).collect();
        let t: Vec<_> = runs.iter().map(|(name, _)| tensors(&tmp.path().join(name))).collect();
        for i in [0, 1] {
            let what = format!("params={params}: mixed vs {}", runs[i].0);
            assert!(bits(&out[2].losses) == bits(&out[i].losses), "{what}: losses {:?} vs {:?}", out[2].losses, out[i].losses);
            println!("{what}: {}", describe_diff(&t[i], &t[2]));
            for (a, b) in t[i].iter().zip(&t[2]) {
                if a.name == "wte" {
                    assert!(rel_diff(&a.data, &b.data) <= 1e-5, "{what}: wte differs by more than the atomics' last bits");
                } else {
                    assert!(bits(&a.data) == bits(&b.data), "{what}: final weights of {} differ", a.name);
                }
            }
        }
    }
}

/// A resume of an offloaded CUDA run from its unit-by-unit checkpoint
/// (train::checkpoint_offload: the device's bf16 weights uploaded unit by
/// unit from the checkpoint's master weights; with params = nvme the
/// files' bf16 images rewritten) continues the run that wrote the
/// checkpoint: the first resumed step's loss bit for bit (its forward
/// reads the same bf16 rounding of the same master weights), the later
/// ones within 1e-3 relative (not bit for bit: the embedding backward's
/// fp32 atomics make two passes differ in a few last bits of wte, see
/// params_on_nvme_stream_bf16_images_from_disk; a wrong restore, e.g.
/// stale device weights or fresh optimizer state, is off by far more).
/// The reference is the same run's first pass, not a second process: two
/// processes' first ten steps already differ by those atomics (the H200
/// showed step 11 at 3.9500172 vs 3.9500163 against another process).
#[test]
fn offloaded_cuda_run_resumes_from_its_unit_by_unit_checkpoint() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scratch = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    for (tier, params) in [("cpu", "none"), ("nvme", "nvme")] {
        let sets = vec!["optimizer.name=adamw8bit".to_string(), format!("offload.optimizer={tier}"), format!("offload.params={params}"), scratch.clone(), "train.steps=20".into(), "train.ckpt_every=10".into(), "train.eval_every=0".into()];
        let name = format!("cut-{tier}");
        let run = tmp.path().join(&name);
        let full = train(&cfg(tmp.path(), &name, &sets), None).unwrap();
        std::fs::remove_dir_all(run.join("checkpoints/step_00000020")).unwrap();
        let resumed = train(&cfg(tmp.path(), &name, &sets), Some(&run)).unwrap();
        assert_eq!(resumed.losses.len(), 10, "{tier}: resumed from step 10");
        assert_eq!(resumed.losses[0].to_bits(), full.losses[10].to_bits(), "{tier}: step 11 loss {} vs uninterrupted {}", resumed.losses[0], full.losses[10]);
        let (gap, step) = worst_gap(&full.losses[10..], &resumed.losses);
        println!("{tier}: worst loss gap after the resume {gap:.3e} (resumed step {step})");
        assert!(gap <= 1e-3, "{tier}: resumed step {step} loss gap {gap:.3e}");
    }
}
