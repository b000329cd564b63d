//! Optimizer offload (`offload.optimizer = cpu | nvme`) on the CPU backend:
//! offloaded runs equal the plain run bit for bit (losses, weights,
//! optimizer state), the NVMe tier's files really hold the state, resume
//! works across tiers, and a run that would not fit refuses before it
//! starts.

#[path = "common/checkpoints.rs"]
mod checkpoints;
use checkpoints::{assert_same_state, last_ckpt};
use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::{Backend, View};
use ferrotron::config::{self, Config};
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::Unit;
use ferrotron::parallel::offload::budget;
use ferrotron::parallel::offload::Offload;
use ferrotron::parallel::zero::Zero;
use ferrotron::train::trainer::train;
use std::path::Path;

fn cfg(dir: &Path, name: &str, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = [
        "train.steps=10", "train.batch_size=2", "train.seq_len=32", "train.eval_every=5", "train.eval_batches=1",
        "train.ckpt_every=5", "train.keep_ckpts=5", "train.samples=0", "train.warmup_steps=2", "run.progress=false",
        "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=128",
        "optimizer.lr=3e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name={name}"));
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &sets).unwrap()
}

/// Each training step's gradient norm, from the run's metrics.jsonl.
fn grad_norms(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().get("grad_norm").and_then(|v| v.as_f64())).collect()
}


/// Plain vs offloaded with the same settings: same losses, same weights
/// and state in the final checkpoint, bit for bit.
fn same_as_plain(opt: &str, offload: &[&str], extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut base = vec![format!("optimizer.name={opt}")];
    base.extend(extra.iter().map(|s| s.to_string()));
    let base: Vec<&str> = base.iter().map(|s| s.as_str()).collect();
    let plain = train(&cfg(tmp.path(), "plain", &base), None).unwrap();
    let mut with = base.clone();
    let nvme_dir = tmp.path().join("nvme");
    let path_set = format!("offload.path=\"{}\"", nvme_dir.display());
    with.extend(offload);
    with.push(&path_set);
    let off = train(&cfg(tmp.path(), "off", &with), None).unwrap();
    let what = format!("{opt} {offload:?} {extra:?}");
    assert_eq!(plain.losses.len(), 10);
    assert!(plain.losses.iter().zip(&off.losses).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: losses {:?} vs {:?}", plain.losses, off.losses);
    assert_eq!(plain.final_val_loss.map(f32::to_bits), off.final_val_loss.map(f32::to_bits), "{what}: val loss");
    assert_same_state(&last_ckpt(&tmp.path().join("plain")), &last_ckpt(&tmp.path().join("off")), &what);
    // The norm (the device's over the whole buffer with clipping, summed
    // from the units as they pass without) is the plain run's.
    let (np, no) = (grad_norms(&tmp.path().join("plain")), grad_norms(&tmp.path().join("off")));
    assert_eq!(np.len(), 10, "{what}: a norm per step");
    assert!(np.iter().zip(&no).all(|(a, b)| a.to_bits() == b.to_bits()) && np.len() == no.len(), "{what}: grad norms {np:?} vs {no:?}");
    // The scratch folder is gone with the run.
    if nvme_dir.exists() {
        assert_eq!(std::fs::read_dir(&nvme_dir).unwrap().count(), 0, "{what}: scratch files left behind");
    }
}

#[test]
fn cpu_tier_equals_plain_adamw_and_8bit() {
    for opt in ["adamw", "adamw8bit"] {
        same_as_plain(opt, &["offload.optimizer=cpu"], &[]);
    }
}

#[test]
fn nvme_tier_equals_plain_adamw_and_8bit() {
    for opt in ["adamw", "adamw8bit"] {
        same_as_plain(opt, &["offload.optimizer=nvme", "offload.prefetch=1"], &[]);
    }
}

/// Clipping active every step (grad_clip far below the norm): the norm
/// over the host copies is the device's, so the clip factor is too.
#[test]
fn clipping_and_accumulation_equal_plain() {
    same_as_plain("adamw", &["offload.optimizer=cpu"], &["train.grad_clip=0.05", "train.grad_accum=2"]);
    same_as_plain("adamw8bit", &["offload.optimizer=nvme"], &["train.grad_clip=0.05", "train.grad_accum=3"]);
}

/// No clipping: each unit's step overlaps the rest of backward.
#[test]
fn overlapped_steps_equal_plain() {
    same_as_plain("adamw", &["offload.optimizer=cpu"], &["train.grad_clip=0"]);
    same_as_plain("adamw8bit", &["offload.optimizer=nvme", "offload.prefetch=3"], &["train.grad_clip=0", "model.tied_embeddings=false"]);
}

/// `offload.params = cpu`: the weights stream to the device unit by unit
/// (and the unit ahead is uploaded early); same losses, weights and state
/// as the plain run, with and without clipping and tied embeddings.
#[test]
fn streamed_params_equal_plain() {
    same_as_plain("adamw", &["offload.optimizer=cpu", "offload.params=cpu"], &[]);
    same_as_plain("adamw8bit", &["offload.optimizer=cpu", "offload.params=cpu"], &["train.grad_clip=0", "model.tied_embeddings=false"]);
    same_as_plain("adamw8bit", &["offload.optimizer=cpu", "offload.params=cpu"], &["train.grad_clip=0", "train.checkpoint_layers=true", "train.grad_accum=2"]);
}

/// Twelve units share the five pooled host buffers: backward (no
/// clipping) or the stream after it (clipping) waits for buffers to come
/// back from stepped units, and the result is still the plain run's (also
/// with the weights streamed from the nvme tier's files).
#[test]
fn more_units_than_pool_buffers_equal_plain() {
    let layers = "model.n_layers=10";
    assert!(10 + 2 > ferrotron::parallel::offload::POOL_BUFFERS);
    same_as_plain("adamw", &["offload.optimizer=cpu"], &["train.grad_clip=0", layers]);
    same_as_plain("adamw8bit", &["offload.optimizer=cpu"], &["train.grad_clip=0.05", layers]);
    same_as_plain("adamw", &["offload.optimizer=cpu", "offload.params=cpu"], &["train.grad_clip=0", layers, "model.tied_embeddings=false"]);
    same_as_plain("adamw8bit", &["offload.optimizer=nvme", "offload.prefetch=2"], &["train.grad_clip=0", layers, "train.grad_accum=2"]);
    // Weights streamed from the files: a unit installed in backward (the
    // pool ran dry) ends its step while the passes still read others.
    let from_disk = ["offload.optimizer=nvme", "offload.params=nvme"];
    same_as_plain("adamw", &from_disk, &["train.grad_clip=0", layers]);
    same_as_plain("adamw8bit", &from_disk, &["train.grad_clip=0.05", layers, "offload.prefetch=1"]);
}

/// Checkpoints are the plain run's: a run killed after step 5 resumes with
/// another tier (or none) and ends where the uninterrupted run ends.
#[test]
fn resume_across_tiers_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let nvme = format!("offload.path=\"{}\"", tmp.path().join("nvme").display());
    let full = train(&cfg(tmp.path(), "full", &["optimizer.name=adamw8bit"]), None).unwrap();
    for (i, (first, then)) in [("offload.optimizer=nvme", "offload.optimizer=cpu"), ("offload.optimizer=cpu", "offload.optimizer=none"), ("offload.optimizer=none", "offload.optimizer=nvme")].into_iter().enumerate() {
        let name = format!("killed{i}");
        let run = tmp.path().join(&name);
        train(&cfg(tmp.path(), &name, &["optimizer.name=adamw8bit", first, &nvme]), None).unwrap();
        std::fs::remove_dir_all(run.join("checkpoints/step_00000010")).unwrap();
        let resumed = train(&cfg(tmp.path(), &name, &["optimizer.name=adamw8bit", then, &nvme]), Some(&run)).unwrap();
        assert_eq!(resumed.losses, full.losses[5..].to_vec(), "{first} then {then}");
        assert_same_state(&last_ckpt(&tmp.path().join("full")), &last_ckpt(&run), &format!("{first} then {then}"));
    }
}

/// The NVMe tier keeps master weights and state in its files, not in host
/// or device memory, and every step rewrites them.
#[test]
fn nvme_files_hold_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), "x", &["optimizer.name=adamw", "offload.optimizer=nvme", &format!("offload.path=\"{}\"", tmp.path().display()), "train.grad_clip=0"]);
    let layout = ParamLayout::new(&c.model);
    let weights = init_weights(&c.model, &layout, 1);
    let mut b = CpuBackend::new();
    let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
    let device_bytes = b.live_bytes();
    assert_eq!(device_bytes, 4 * layout.total as u64, "the device holds the weights only: no gradients, no optimizer state");
    let mut off = Offload::new(&c, &layout, &weights).unwrap();
    assert_eq!(off.resident_units(), 0, "no unit's state in host memory");
    let dir = off.files_dir().unwrap().to_path_buf();
    let files = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    let units = Unit::all(c.model.n_layers);
    assert_eq!(files(&dir).len(), units.len());
    // Each file: master weights + m + v (AdamW), each section 4 KiB-padded.
    let ranges = ferrotron::model::store::unit_ranges(&c.model, &layout);
    for (f, r) in files(&dir).iter().zip(&ranges) {
        let want = 3 * (4 * r.len()).div_ceil(4096) * 4096;
        assert_eq!(std::fs::metadata(f).unwrap().len() as usize, want, "{}", f.display());
    }
    let read_all = |d: &Path| files(d).iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>();
    let before = read_all(&dir);
    for step in 0..2 {
        off.begin_step(1e-2, 0.0).unwrap();
        // What the passes do: each unit's gradients from fetch_grads to
        // grads_done (here filled with a constant), in backward order.
        for &u in units.iter().rev() {
            off.fetch_grads(&mut b, u).unwrap();
            let v = off.device_grads(u).unwrap();
            b.fill(v, 0.01 * (step + 1) as f32).unwrap();
            off.grads_done(&mut b, &mut zero, u).unwrap();
            assert!(off.device_grads(u).is_none());
        }
        assert_eq!(b.live_bytes(), device_bytes, "gradient buffers freed after their unit's backward");
        off.finish(&mut b, &mut zero, 0.0).unwrap();
        assert_eq!(off.resident_units(), 0);
        let now = read_all(&dir);
        for (a, n) in before.iter().zip(&now) {
            assert_ne!(a, n, "step {step} rewrote every file");
        }
    }
    // The device weights are the files' master weights.
    let mut dev = vec![0.0f32; layout.total];
    b.download(View::whole(zero.shard_params, layout.total), &mut dev).unwrap();
    for (f, r) in files(&dir).iter().zip(&ranges) {
        let bytes = std::fs::read(f).unwrap();
        let master: Vec<f32> = bytes[..4 * r.len()].chunks(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect();
        assert!(master.iter().zip(&dev[r.clone()]).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(master.iter().zip(&weights[r.clone()]).any(|(a, b)| a != b), "weights changed");
    }
    drop(off);
    assert!(!dir.exists(), "scratch folder removed with the run");
}

#[test]
fn refuses_when_disk_or_host_is_short() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), "x", &["offload.optimizer=nvme", &format!("offload.path=\"{}\"", tmp.path().display())]);
    let need = budget::offload_bytes(&c).unwrap();
    assert!(need.disk > 0 && need.host > 0);
    let e = budget::check(&c, need, Some(u64::MAX), Some(need.disk - 1)).unwrap_err().to_string();
    assert!(e.contains("of disk") && e.contains("offload.path"), "{e}");
    let e = budget::check(&c, need, Some(need.host - 1), Some(u64::MAX)).unwrap_err().to_string();
    assert!(e.contains("host memory") && e.contains("offload.optimizer = nvme"), "{e}");
    budget::check(&c, need, Some(need.host), Some(need.disk)).unwrap();
    // A real run whose state cannot fit on this disk refuses before it
    // creates anything (about 3·10^11 parameters: terabytes of state).
    let big = cfg(tmp.path(), "big", &["offload.optimizer=nvme", &format!("offload.path=\"{}\"", tmp.path().join("scratch").display()), "model.d_model=8192", "model.n_layers=400", "model.n_heads=64", "model.n_kv_heads=64", "model.d_ff=22016"]);
    let need = budget::offload_bytes(&big).unwrap();
    let free = budget::disk_available(tmp.path()).unwrap();
    if need.disk <= free {
        eprintln!("skipped: {free} bytes free, more than the {} the big model needs", need.disk);
        return;
    }
    let e = train(&big, None).unwrap_err().to_string();
    assert!(e.contains("of disk"), "{e}");
    assert!(!tmp.path().join("big").exists() && !tmp.path().join("scratch").exists(), "nothing created");
}

#[test]
fn offload_settings_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |sets: &[&str]| {
        let mut v: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        v.push(format!("run.dir=\"{}\"", tmp.path().display()));
        config::load(None, &v).map(|_| ()).unwrap_err().to_string()
    };
    assert!(load(&["offload.optimizer=gpu"]).contains("none, cpu or nvme"));
    assert!(load(&["offload.optimizer=nvme"]).contains("offload.path"));
    assert!(load(&["offload.params=cpu"]).contains("needs offload.optimizer = cpu"));
    assert!(load(&["offload.params=nvme", "offload.optimizer=cpu"]).contains("needs offload.optimizer = nvme"));
    assert!(load(&["offload.optimizer=cpu", "optimizer.name=muon"]).contains("adamw or adamw8bit"));
}

/// Three steps of an offload driven as the passes drive it, with
/// deterministic gradients; returns the master and the device weights.
fn drive(c: &Config, defer: bool) -> (Vec<f32>, Vec<f32>) {
    let layout = ParamLayout::new(&c.model);
    let weights = init_weights(&c.model, &layout, 1);
    let mut b = CpuBackend::new();
    b.defer_copies(defer);
    let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
    let mut off = Offload::new(c, &layout, &weights).unwrap();
    let units = Unit::all(c.model.n_layers);
    for step in 0..3 {
        off.begin_step(1e-2, c.train.grad_clip).unwrap();
        for (k, &u) in units.iter().rev().enumerate() {
            off.fetch_grads(&mut b, u).unwrap();
            let v = off.device_grads(u).unwrap();
            let g: Vec<f32> = (0..v.len).map(|i| ((i * 7 + k * 3 + step) % 11) as f32 * 1e-3 - 5e-3).collect();
            b.upload(v, &g).unwrap();
            off.grads_done(&mut b, &mut zero, u).unwrap();
            // The copy stream's twin: copies stay in flight behind backward
            // (and, once the pool runs dry, uploads of stepped units too).
            if units.len() <= ferrotron::parallel::offload::POOL_BUFFERS {
                assert!(b.copies_in_flight() <= 2, "at most COPY_LAG gradient copies in flight");
            }
        }
        off.finish(&mut b, &mut zero, c.train.grad_clip).unwrap();
        assert_eq!(b.copies_in_flight(), 0, "every copy waited for by the end of the step");
    }
    let mut dev = vec![0.0f32; layout.total];
    b.download(View::whole(zero.shard_params, layout.total), &mut dev).unwrap();
    (off.master_weights().unwrap(), dev)
}

/// Gradient copies that land only when waited for (as on a copy stream)
/// give the same weights as copies done at once: the offload waits before
/// it reads, frees device buffers only after their copy, and leaves
/// uploaded weights alone until their copy is done (the twin checks all
/// three). The device weights are the master weights.
#[test]
fn deferred_copies_give_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let path = format!("offload.path=\"{}\"", tmp.path().display());
    let many = "model.n_layers=10";
    for sets in [
        vec!["offload.optimizer=cpu", "train.grad_clip=0"],
        vec!["offload.optimizer=cpu", "train.grad_clip=0.01"],
        vec!["offload.optimizer=nvme", "train.grad_clip=0", "optimizer.name=adamw8bit"],
        vec!["offload.optimizer=cpu", "train.grad_clip=0", many],
        vec!["offload.optimizer=cpu", "train.grad_clip=0.01", many],
        vec!["offload.optimizer=nvme", "train.grad_clip=0.01", many],
    ] {
        let mut sets: Vec<&str> = sets;
        sets.push(&path);
        let c = cfg(tmp.path(), "x", &sets);
        let (master, dev) = drive(&c, false);
        let (master_d, dev_d) = drive(&c, true);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&master) == bits(&master_d), "{sets:?}: master weights");
        assert!(bits(&dev) == bits(&dev_d) && bits(&dev) == bits(&master), "{sets:?}: device weights");
    }
}

/// A store that records the largest rise of live bytes over `base` right
/// after each gradient fetch.
struct Peak<'a> {
    inner: &'a mut dyn ferrotron::model::store::ParamStore<CpuBackend>,
    base: u64,
    peak: u64,
}

impl ferrotron::model::store::ParamStore<CpuBackend> for Peak<'_> {
    fn fetch(&mut self, b: &mut CpuBackend, u: Unit) -> anyhow::Result<()> {
        self.inner.fetch(b, u)
    }
    fn release(&mut self, b: &mut CpuBackend, u: Unit) -> anyhow::Result<()> {
        self.inner.release(b, u)
    }
    fn fetch_grads(&mut self, b: &mut CpuBackend, u: Unit) -> anyhow::Result<()> {
        self.inner.fetch_grads(b, u)?;
        self.peak = self.peak.max(b.live_memory_bytes().saturating_sub(self.base));
        Ok(())
    }
    fn grads_done(&mut self, b: &mut CpuBackend, u: Unit) -> anyhow::Result<()> {
        self.inner.grads_done(b, u)
    }
    fn params(&self) -> &ferrotron::model::views::ModelViews {
        self.inner.params()
    }
    fn grads(&self) -> &ferrotron::model::views::ModelViews {
        self.inner.grads()
    }
}

/// Device bytes above the resting state at their peak over one offloaded
/// training step (after an evaluation pass has made every lazy buffer).
fn offloaded_step_peak(c: &Config, b: &mut CpuBackend, zero: &mut Zero<CpuBackend>, off: &mut Offload) -> u64 {
    use ferrotron::model::{Model, Recompute};
    let mut model = Model::new_bare(&c.model, Recompute::Off);
    let tokens: Vec<u32> = (0..64).map(|i| (i * 7 % 200) as u32).collect();
    model.eval_loss_in(b, &mut off.store(zero), &tokens, &tokens, 2, 32).unwrap();
    let base = b.live_memory_bytes();
    off.begin_step(1e-3, c.train.grad_clip).unwrap();
    let mut store = off.store(zero);
    let mut probe = Peak { inner: &mut store, base, peak: 0 };
    model.forward_backward_in(b, &mut probe, &tokens, &tokens, 2, 32, 1.0).unwrap();
    let peak = probe.peak;
    drop(store);
    off.finish(b, zero, c.train.grad_clip).unwrap();
    peak
}

/// `info`'s device bytes of an offloaded run equal what it allocates: the
/// compute weights exactly, no gradients or state at rest, and the
/// gradient buffers at their peak over a step with copies in flight (the
/// copy-stream twin keeps them there as long as a GPU may) — with
/// clipping, the whole model's gradients, kept until the norm is known.
#[test]
fn info_equals_an_offloaded_runs_device_allocations() {
    let tmp = tempfile::tempdir().unwrap();
    for (tied, clip) in [(true, "0"), (false, "0"), (true, "1"), (false, "1")] {
        let c = cfg(tmp.path(), "x", &["model.preset=tiny-llama", "offload.optimizer=cpu", &format!("train.grad_clip={clip}"), &format!("model.tied_embeddings={tied}")]);
        let est = ferrotron::telemetry::memory::estimate(&c);
        let layout = ParamLayout::new(&c.model);
        let weights = init_weights(&c.model, &layout, 1);
        let mut b = CpuBackend::new();
        b.defer_copies(true);
        let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
        // At rest: weights only (gradients exist during a step).
        assert_eq!(b.live_memory_bytes(), est.weights + est.optimizer_state.unwrap(), "tied {tied}: allocated vs info");
        let mut off = Offload::new(&c, &layout, &weights).unwrap();
        let peak = offloaded_step_peak(&c, &mut b, &mut zero, &mut off);
        assert_eq!(peak, est.grads + est.comm_buffers, "tied {tied}, clip {clip}: gradient buffers vs info");
        assert_eq!(clip == "1", est.grads == 4 * layout.total as u64, "tied {tied}, clip {clip}: the whole gradient stays on the device only when clipping");
    }
}

/// `offload.params = cpu`: no weights on the device at rest, and at most
/// `info`'s window of streamed units during a step (a bound: the two
/// largest neighbouring units, plus tied embeddings).
#[test]
fn streamed_weights_stay_within_infos_window() {
    let tmp = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let c = cfg(tmp.path(), "x", &["model.preset=tiny-llama", "offload.optimizer=cpu", "offload.params=cpu", "train.grad_clip=0", &format!("model.tied_embeddings={tied}")]);
        let est = ferrotron::telemetry::memory::estimate(&c);
        let layout = ParamLayout::new(&c.model);
        let weights = init_weights(&c.model, &layout, 1);
        let mut b = CpuBackend::new();
        let mut zero = Zero::new_streamed(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm)).unwrap();
        assert_eq!(b.live_memory_bytes(), 0, "tied {tied}: nothing on the device at rest");
        let mut off = Offload::new(&c, &layout, &weights).unwrap();
        let peak = offloaded_step_peak(&c, &mut b, &mut zero, &mut off);
        println!("tied {tied}: streamed weights + gradients peak {peak} B, info {} + {} B, whole model {} B", est.weights, est.comm_buffers, 4 * layout.total);
        assert!(peak <= est.weights + est.comm_buffers, "tied {tied}: peak {peak} above info's {} + {}", est.weights, est.comm_buffers);
        assert!(est.weights < 4 * layout.total as u64, "tied {tied}: the window is less than the model");
    }
}
