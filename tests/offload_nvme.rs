//! `offload.params = nvme` on the CPU backend (ZeRO-Infinity's parameter
//! tier): the weights a pass needs are read from the units' files, so
//! neither the device nor host memory holds them between uses. Runs equal
//! the plain run and `offload.params = cpu` bit for bit (the arithmetic is
//! the same: only where the weights wait between uses changes); the files
//! really hold the weights; the disk check refuses before anything is
//! written; a kill -9 leaves the last checkpoint loadable and `--resume`
//! ends where the uninterrupted run ends.

#[path = "common/checkpoints.rs"]
mod checkpoints;
#[path = "common/offload_runs.rs"]
mod offload_runs;
use offload_runs::{small_cfg, strings, train_metric};
use checkpoints::{assert_same_state, last_ckpt};
use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::{Backend, View};
use ferrotron::ckpt;
use ferrotron::config::Config;
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::{ParamStore, Unit};
use ferrotron::model::{Model, Recompute};
use ferrotron::parallel::offload::budget;
use ferrotron::parallel::offload::host_optimizer::{unit_layout, UnitHost};
use ferrotron::parallel::offload::nvme::{AlignedBuf, StateFiles};
use ferrotron::parallel::offload::Offload;
use ferrotron::parallel::zero::Zero;
use ferrotron::train::trainer::train;
use std::path::Path;
use std::process::{Command, Stdio};

fn cfg(dir: &Path, name: &str, extra: &[String]) -> Config {
    small_cfg(dir, name, 3, extra)
}


/// The plain run, `offload.params = cpu` and `offload.params = nvme`
/// with the same settings: same losses (train and validation), same
/// weights and optimizer state, bit for bit; the scratch folder is gone
/// after the run.
fn three_ways_equal(opt: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    let mut base = strings(extra);
    base.push(format!("optimizer.name={opt}"));
    base.push(format!("offload.path=\"{}\"", scratch.display()));
    let run = |name: &str, off: &[&str]| {
        let mut sets = base.clone();
        sets.extend(strings(off));
        train(&cfg(tmp.path(), name, &sets), None).unwrap()
    };
    let plain = run("plain", &[]);
    let host = run("cpu", &["offload.optimizer=cpu", "offload.params=cpu"]);
    let disk = run("nvme", &["offload.optimizer=nvme", "offload.params=nvme"]);
    let what = format!("{opt} {extra:?}");
    assert_eq!(plain.losses.len(), 8);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (name, other) in [("params=cpu", &host), ("params=nvme", &disk)] {
        assert!(bits(&plain.losses) == bits(&other.losses), "{what} {name}: losses {:?} vs {:?}", plain.losses, other.losses);
        assert_eq!(plain.final_val_loss.map(f32::to_bits), other.final_val_loss.map(f32::to_bits), "{what} {name}: val loss");
        assert_same_state(&last_ckpt(&tmp.path().join("plain")), &last_ckpt(&tmp.path().join(if name == "params=cpu" { "cpu" } else { "nvme" })), &format!("{what} {name}"));
    }
    // metrics.jsonl: every step of the nvme run read weights from disk.
    let read_mb = train_metric(&tmp.path().join("nvme"), "offload_read_mb");
    assert!(read_mb.len() == 8 && read_mb.iter().all(|&m| m > 0.0), "{what}: offload_read_mb {read_mb:?}");
    if scratch.exists() {
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "{what}: scratch files left behind: {left:?}");
    }
}

#[test]
fn streamed_from_disk_equals_plain_and_host_adamw() {
    three_ways_equal("adamw", &[]);
    three_ways_equal("adamw", &["train.grad_clip=0", "train.grad_accum=2"]);
}

#[test]
fn streamed_from_disk_equals_plain_and_host_adamw8bit() {
    three_ways_equal("adamw8bit", &["train.grad_accum=2", "model.tied_embeddings=false"]);
    three_ways_equal("adamw8bit", &["train.grad_clip=0", "train.checkpoint_layers=true", "offload.prefetch=1"]);
}

/// A store that records, at every fetch, how many units' weights are in
/// host memory (the read-ahead window and the buffers lent to uploads).
struct HostProbe<'a, 'b> {
    inner: &'a mut ferrotron::parallel::offload::OffloadStore<'b, CpuBackend>,
    most: usize,
    /// Device bytes at rest, and the most above them after a fetch.
    base: u64,
    device_peak: u64,
}

impl HostProbe<'_, '_> {
    fn watch(&mut self, b: &CpuBackend) {
        self.most = self.most.max(self.inner.offload().streamed_from_disk().unwrap().0);
        self.device_peak = self.device_peak.max(b.live_memory_bytes().saturating_sub(self.base));
    }
}

impl ParamStore<CpuBackend> for HostProbe<'_, '_> {
    fn fetch(&mut self, b: &mut CpuBackend, u: Unit) -> anyhow::Result<()> {
        self.inner.fetch(b, u)?;
        self.watch(b);
        Ok(())
    }
    fn release(&mut self, b: &mut CpuBackend, u: Unit) -> anyhow::Result<()> {
        self.inner.release(b, u)
    }
    fn fetch_grads(&mut self, b: &mut CpuBackend, u: Unit) -> anyhow::Result<()> {
        self.inner.fetch_grads(b, u)?;
        self.watch(b);
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

/// The units' files hold the weights: between steps no unit is in host
/// memory (neither master and state nor the compute weights) and the
/// device holds nothing; during a pass at most the pool's buffers on the
/// host and `info`'s window of weights on the device; every
/// pass reads each unit's weights from its file; the step rewrites the
/// files and the next pass reads the new weights (copies deferred as on a
/// copy stream: a buffer goes back to the pool only after its upload).
#[test]
fn files_hold_the_weights_between_uses() {
    let tmp = tempfile::tempdir().unwrap();
    for (tied, prefetch) in [(true, 2), (false, 1)] {
        let sets = strings(&["optimizer.name=adamw", "offload.optimizer=nvme", "offload.params=nvme", "train.grad_clip=0", &format!("model.tied_embeddings={tied}"), &format!("offload.prefetch={prefetch}")]);
        let mut sets = sets;
        sets.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
        let c = cfg(tmp.path(), "x", &sets);
        let layout = ParamLayout::new(&c.model);
        let weights = init_weights(&c.model, &layout, 1);
        let mut b = CpuBackend::new();
        b.defer_copies(true);
        let mut zero = Zero::new_streamed(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm)).unwrap();
        let mut off = Offload::new(&c, &layout, &weights).unwrap();
        let units = Unit::all(c.model.n_layers).len();
        let pool = ferrotron::parallel::offload::stream_nvme::pool_buffers(prefetch);
        let mut model = Model::new_bare(&c.model, Recompute::Off);
        let tokens: Vec<u32> = (0..64).map(|i| (i * 7 % 200) as u32).collect();
        let mut losses = vec![];
        let mut rest = None;
        let not_here = ferrotron::backend::BufId(usize::MAX);
        for step in 0..3 {
            // At rest the device holds the passes' activations only (made
            // by the first pass, the same size after every step).
            let live = b.live_memory_bytes();
            assert_eq!(live, *rest.get_or_insert(live), "tied {tied} step {step}: device bytes at rest");
            let views = off.store(&mut zero).params().clone();
            assert!(views.wte.buf == not_here && views.head.buf == not_here && views.layers.iter().all(|l| l.qkv.w.buf == not_here), "tied {tied} step {step}: no weights on the device at rest");
            assert_eq!(off.resident_units(), 0, "no unit's master or state in host memory");
            assert_eq!(off.streamed_from_disk().unwrap().0, 0, "tied {tied} step {step}: no unit's weights in host memory between steps");
            let reads_before = off.streamed_from_disk().unwrap().1.reads;
            off.begin_step(1e-2, 0.0).unwrap();
            let mut store = off.store(&mut zero);
            let mut probe = HostProbe { inner: &mut store, most: 0, base: rest.unwrap_or(0), device_peak: 0 };
            losses.push(model.forward_backward_in(&mut b, &mut probe, &tokens, &tokens, 2, 32, 1.0).unwrap());
            let (most, device_peak) = (probe.most, probe.device_peak);
            drop(store);
            off.finish(&mut b, &mut zero, 0.0).unwrap();
            if step == 0 {
                rest = Some(b.live_memory_bytes());
            }
            let stats = off.streamed_from_disk().unwrap().1;
            if step > 0 {
                // The device holds `info`'s window of streamed weights at most
                // (as params = cpu: the same device side), plus gradients.
                let est = ferrotron::telemetry::memory::estimate(&c);
                assert!(device_peak <= est.weights + est.comm_buffers, "tied {tied}: device peak {device_peak} above info's {} + {}", est.weights, est.comm_buffers);
                assert!(est.weights < 4 * layout.total as u64, "the window is less than the model");
            }
            assert!(most <= pool, "tied {tied}: {most} units on the host during a pass, pool {pool}");
            assert!(stats.buffers <= pool, "tied {tied}: {} buffers allocated, pool {pool}", stats.buffers);
            // Forward reads every unit, backward every block (tied: the head
            // reads the embeddings again): nothing is kept from the last step.
            let layers = c.model.n_layers as u64;
            assert!(stats.reads - reads_before >= units as u64 + layers, "tied {tied}: {} reads in a step", stats.reads - reads_before);
        }
        assert!(losses[2] < losses[0], "tied {tied}: training goes on ({losses:?})");
        // The files' leading sections (fp32 master on the CPU backend) are
        // the master weights of the latest step, not the initial ones.
        let master = off.master_weights().unwrap();
        let dir = off.files_dir().unwrap().to_path_buf();
        let ranges = ferrotron::model::store::unit_ranges(&c.model, &layout);
        for (u, r) in ranges.iter().enumerate() {
            let bytes = std::fs::read(dir.join(format!("unit_{u:04}.state"))).unwrap();
            let file: Vec<f32> = bytes[..4 * r.len()].chunks(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect();
            assert!(file.iter().zip(&master[r.clone()]).all(|(a, b)| a.to_bits() == b.to_bits()), "unit {u}: file vs master");
            assert!(file.iter().zip(&weights[r.clone()]).any(|(a, b)| a != b), "unit {u}: weights changed");
        }
        // An evaluation pass after the steps reads the new weights: its loss
        // is the one a plain model with the master weights gives.
        let eval = model.eval_loss_in(&mut b, &mut off.store(&mut zero), &tokens, &tokens, 2, 32).unwrap();
        let mut pb = CpuBackend::new();
        let mut plain_zero = Zero::new(&mut pb, &c.model, &layout, 0, Box::new(ferrotron::dist::SoloComm), false, &master).unwrap();
        let mut plain_model = Model::new_bare(&c.model, Recompute::Off);
        let want = plain_model.eval_loss_in(&mut pb, &mut plain_zero, &tokens, &tokens, 2, 32).unwrap();
        assert_eq!(eval.to_bits(), want.to_bits(), "tied {tied}: eval reads the stepped weights");
        let _ = View::whole;
        drop(off);
        assert!(!dir.exists(), "scratch folder removed with the run");
    }
}

/// The bf16 layout (`offload.params = nvme` on CUDA), checked on the host:
/// a file leads with the bf16 image of the master weights (a pass reads
/// only that), the optimizer reads master and state back unchanged.
#[test]
fn files_with_images_lead_with_the_bf16_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), "x", &strings(&["optimizer.name=adamw8bit"]));
    let layout = ParamLayout::new(&c.model);
    let ranges = ferrotron::model::store::unit_ranges(&c.model, &layout);
    let weights = init_weights(&c.model, &layout, 3);
    let files = StateFiles::create(&tmp.path().join("f"), true).unwrap();
    for (u, r) in ranges.iter().enumerate() {
        let l = unit_layout(&layout, r);
        let mut host = UnitHost::new(u, &c.optimizer, &l).unwrap();
        host.set_master(&weights[r.clone()]).unwrap();
        files.write(&mut host).unwrap();
        let n = r.len();
        let mut buf = AlignedBuf::new(files.pass_bytes(n)).unwrap();
        files.read_pass(u, n, &mut buf).unwrap();
        assert_eq!(files.pass_bytes(n), (2 * n).div_ceil(4096) * 4096, "a pass reads 2 bytes per parameter");
        host.refresh_image();
        assert_eq!(buf.u16s(0, n), &host.image[..], "unit {u}: the image is the master rounded to bf16");
        let back = files.read(u, &c.optimizer, &l, &serde_json::Value::Null).unwrap();
        assert!(back.master().iter().zip(&weights[r.clone()]).all(|(a, b)| a.to_bits() == b.to_bits()), "unit {u}: master read back");
    }
}

/// `info`'s numbers for params = nvme: the disk adds the bf16 images on
/// CUDA; the host holds the pool instead of every unit's image; a disk too
/// small is refused with a message naming the numbers, before a real run
/// creates anything.
#[test]
fn budget_and_refusal_for_params_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let path = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let with = |params: &str, device: &str| {
        let c = cfg(tmp.path(), "x", &strings(&["model.preset=tiny-llama", "offload.optimizer=nvme", &format!("offload.params={params}"), &path, &format!("device={device}")]));
        budget::offload_bytes(&c).unwrap()
    };
    let layout = ParamLayout::new(&cfg(tmp.path(), "x", &strings(&["model.preset=tiny-llama"])).model);
    let (none_cuda, disk_cuda, disk_cpu) = (with("none", "cuda"), with("nvme", "cuda"), with("nvme", "cpu"));
    assert!(disk_cuda.disk >= none_cuda.disk + 2 * layout.total as u64, "the files hold the bf16 images");
    assert!(disk_cuda.disk <= none_cuda.disk + 2 * layout.total as u64 + 4096 * 64, "images padded per unit only");
    assert_eq!(disk_cpu.disk, with("none", "cpu").disk, "fp32 passes read the master: no image section");
    // The host: no unit's image with either (params = none writes a
    // stepped unit's image into its gradient pool buffer), and params =
    // nvme adds the pool the passes read into, each buffer the largest
    // unit's bf16 image.
    let ranges = ferrotron::model::store::unit_ranges(&cfg(tmp.path(), "x", &strings(&["model.preset=tiny-llama"])).model, &layout);
    let biggest = ranges.iter().map(|r| (2 * r.len()).div_ceil(4096) * 4096).max().unwrap() as u64;
    let pool = ferrotron::parallel::offload::stream_nvme::pool_buffers(2) as u64;
    assert_eq!((none_cuda.host_images, disk_cuda.host_images), (0, 0), "no kept images");
    assert_eq!(disk_cuda.host_reads, pool * biggest, "the passes' read pool");
    assert_eq!(disk_cuda.host, none_cuda.host + pool * biggest, "host bytes: the read pool in");
    // Refusal names the disk and the image.
    let c = cfg(tmp.path(), "x", &strings(&["offload.optimizer=nvme", "offload.params=nvme", &path, "device=cuda"]));
    let need = budget::offload_bytes(&c).unwrap();
    let e = budget::check(&c, need, Some(u64::MAX), Some(need.disk - 1)).unwrap_err().to_string();
    assert!(e.contains("of disk") && e.contains("bf16 image"), "{e}");
    budget::check(&c, need, Some(need.host), Some(need.disk)).unwrap();
    // A real run too big for this disk refuses before creating anything.
    let big = cfg(tmp.path(), "big", &strings(&["offload.optimizer=nvme", "offload.params=nvme", &path, "model.d_model=8192", "model.n_layers=400", "model.n_heads=64", "model.n_kv_heads=64", "model.d_ff=22016"]));
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

fn cli_sets(name: &str, scratch: &Path, steps: u64) -> Vec<String> {
    let mut v = vec!["train".to_string()];
    for s in [
        "train.batch_size=2", "train.seq_len=16", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64",
        "model.n_layers=2", "train.samples=0", "run.progress=false", "train.eval_every=0", "train.ckpt_every=1", "train.keep_ckpts=2",
        "optimizer.name=adamw8bit", "offload.optimizer=nvme", "offload.params=nvme",
    ] {
        v.push("--set".into());
        v.push(s.into());
    }
    for s in [format!("train.steps={steps}"), format!("run.name={name}"), format!("offload.path=\"{}\"", scratch.display())] {
        v.push("--set".into());
        v.push(s);
    }
    v
}

/// kill -9 in the middle of a params = nvme run (steps rewrite the files
/// all the time): every checkpoint left loads, the killed run's scratch
/// folder is removed by the next start, and `--resume` ends where the
/// uninterrupted run ends, bit for bit.
#[test]
fn kill_9_mid_run_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    let steps = 30;
    let bin = env!("CARGO_BIN_EXE_ferrotron");
    let out = Command::new(bin).args(cli_sets("ref", &scratch, steps)).current_dir(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = tmp.path().join("runs/victim");
    let mut child = Command::new(bin).args(cli_sets("victim", &scratch, steps)).current_dir(tmp.path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill once a few checkpoints exist (the run is mid-way, files open).
    let t0 = std::time::Instant::now();
    let saved = |run: &Path| std::fs::read_dir(run.join("checkpoints")).map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().contains('.')).count()).unwrap_or(0);
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|m| m.lines().count()).unwrap_or(0) < 4 {
        assert!(t0.elapsed().as_secs() < 120, "the victim never got going");
        assert!(child.try_wait().unwrap().is_none(), "the victim ended before the kill");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(saved(&run) >= 1, "a checkpoint before the kill");
    for e in std::fs::read_dir(run.join("checkpoints")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("step_") && name[5..].bytes().all(|c| c.is_ascii_digit()) {
            ckpt::load(&e.path()).unwrap_or_else(|err| panic!("unloadable {name}: {err:#}"));
        }
    }
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "the killed run's scratch folder is left: {left:?}");
    let out = Command::new(bin).args(["train", "--resume", "runs/victim"]).current_dir(tmp.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("removed 1 scratch folder"), "the resume sweeps the killed run's folder: {err}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "nothing left after the resumed run");
    let last = format!("checkpoints/step_{steps:08}");
    let (a, b) = (ckpt::load(&tmp.path().join("runs/ref").join(&last)).unwrap(), ckpt::load(&run.join(&last)).unwrap());
    assert_same_state(&a, &b, "killed and resumed vs uninterrupted");
}

/// A start removes the scratch folders of ended runs (their lock is free)
/// and leaves those of live runs (locked) and anything not ours alone.
#[test]
fn sweep_removes_dead_scratch_only() {
    use ferrotron::parallel::offload::nvme::{sweep_dead_scratch, SCRATCH_PREFIX};
    let tmp = tempfile::tempdir().unwrap();
    // Names with other pids than ours: the sweep judges them by their lock.
    let live_dir = tmp.path().join(format!("{SCRATCH_PREFIX}1-0"));
    let live = StateFiles::create(&live_dir, false).unwrap();
    let dead = tmp.path().join(format!("{SCRATCH_PREFIX}2-0"));
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("unit_0000.state"), vec![0u8; 8192]).unwrap();
    let other = tmp.path().join("my-data");
    std::fs::create_dir(&other).unwrap();
    assert_eq!(sweep_dead_scratch(tmp.path()), (1, 8192));
    assert!(live_dir.exists() && !dead.exists() && other.exists());
    drop(live);
    assert_eq!(sweep_dead_scratch(tmp.path()).0, 1, "its process ended: swept");
    assert!(!live_dir.exists() && other.exists());
}
