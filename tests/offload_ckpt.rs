//! Checkpoints of offloaded runs written and read unit by unit
//! (`train::checkpoint_offload`), on the CPU backend:
//! - the files are the plain run's, byte for byte (cpu and nvme tiers,
//!   AdamW and 8-bit AdamW, weights streamed or resident, saves asked to
//!   be asynchronous or not), manifests equal but for time and config;
//! - a resume from them (or from a plain run's, or into a plain run)
//!   continues bit for bit, also when the newest checkpoint is damaged and
//!   the resume falls back to the one before; a checkpoint sharded by
//!   ZeRO ranks resumes offloaded exactly as plain;
//! - kill -9 while a save is in its staging folder leaves the previous
//!   checkpoint the newest, loadable, and the resume exact;
//! - the save's and the load's extra host memory is about a unit, not the
//!   model (peak resident growth in a fresh process, against the old
//!   whole-model assembly measured the same way).

#[path = "common/process_memory.rs"]
mod process_memory;
use process_memory::{hwm, rss};
use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::Backend;
use ferrotron::ckpt::{self, part_read, train_state::Sharding, Manifest};
use ferrotron::config::{self, Config};
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::Unit;
use ferrotron::parallel::offload::host_optimizer::{unit_layout, UnitHost};
use ferrotron::parallel::offload::Offload;
use ferrotron::parallel::zero::Zero;
use ferrotron::train::checkpoint_offload::{read_units, write_checkpoint};
use ferrotron::train::trainer::train;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sets(dir: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train.steps=10", "train.batch_size=2", "train.seq_len=32", "train.eval_every=0", "train.samples=0", "train.ckpt_every=5",
        "train.keep_ckpts=5", "train.warmup_steps=2", "run.progress=false", "model.d_model=64", "model.n_layers=2", "model.n_heads=2",
        "model.n_kv_heads=2", "model.d_ff=128", "optimizer.lr=3e-3",
    ]
    .iter()
    // A setting in `extra` replaces the default.
    .filter(|d| !extra.iter().any(|e| e.split('=').next() == d.split('=').next()))
    .map(|s| s.to_string())
    .collect();
    v.push(format!("run.dir=\"{}\"", dir.display()));
    v.push(format!("run.name={name}"));
    v.push(format!("offload.path=\"{}\"", dir.join("scratch").display()));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn cfg(dir: &Path, name: &str, extra: &[&str]) -> Config {
    config::load(None, &sets(dir, name, extra)).unwrap()
}

fn checkpoint_names(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A checkpoint's files by name; the manifest without its save time,
/// config and guard state (which differ between the runs compared), all
/// else (checksums included) kept.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(&path).unwrap();
        if name == "manifest.json" {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v.as_object_mut().unwrap().remove("created");
            v.as_object_mut().unwrap().remove("config_toml");
            // Not the save's business: the offloaded step does not feed the
            // bad-step guard (offload_step.rs), so its recent losses differ.
            v.as_object_mut().unwrap().remove("guard");
            bytes = serde_json::to_vec_pretty(&v).unwrap();
        }
        out.insert(name, bytes);
    }
    out
}

/// Every checkpoint of two runs, file for file, byte for byte.
fn assert_same_checkpoints(a: &Path, b: &Path, what: &str) {
    let names = checkpoint_names(a);
    assert_eq!(names, checkpoint_names(b), "{what}: checkpoint lists");
    assert!(!names.is_empty());
    for n in &names {
        let (fa, fb) = (files(&a.join("checkpoints").join(n)), files(&b.join("checkpoints").join(n)));
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>(), "{what}: {n}: file lists");
        for (file, bytes) in &fa {
            assert!(bytes == &fb[file], "{what}: {n}/{file} differs from the plain run's\n{}", if file.ends_with(".json") { format!("{}\n{}", String::from_utf8_lossy(bytes), String::from_utf8_lossy(&fb[file])) } else { String::new() });
        }
    }
}

/// The offloaded run's checkpoints are the plain run's files.
#[test]
fn unit_by_unit_checkpoints_are_the_plain_runs_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 5] = [
        ("adamw", &["offload.optimizer=cpu"]),
        ("adamw8bit", &["offload.optimizer=cpu", "offload.params=cpu", "train.async_checkpoint=false"]),
        ("adamw", &["offload.optimizer=nvme", "model.tied_embeddings=false"]),
        ("adamw8bit", &["offload.optimizer=nvme", "offload.params=nvme"]),
        ("adamw8bit", &["offload.optimizer=nvme", "train.async_checkpoint=false", "train.grad_clip=0"]),
    ];
    for (i, (opt, off)) in cases.iter().enumerate() {
        let what = format!("{opt} {off:?}");
        let mut base = vec![format!("optimizer.name={opt}")];
        base.extend(off.iter().filter(|s| !s.starts_with("offload.")).map(|s| s.to_string()));
        let base: Vec<&str> = base.iter().map(|s| s.as_str()).collect();
        let mut with = base.clone();
        with.extend(off.iter().filter(|s| s.starts_with("offload.")));
        let (plain, offloaded) = (format!("plain{i}"), format!("off{i}"));
        train(&cfg(tmp.path(), &plain, &base), None).unwrap();
        train(&cfg(tmp.path(), &offloaded, &with), None).unwrap();
        assert_same_checkpoints(&tmp.path().join(&plain), &tmp.path().join(&offloaded), &what);
        // An offloaded run's saves are synchronous whatever was asked.
        let text = std::fs::read_to_string(tmp.path().join(&offloaded).join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|l: &serde_json::Value| l["kind"] == "ckpt").collect();
        assert_eq!(lines.len(), 2, "{what}: a ckpt line per checkpoint");
        assert!(lines.iter().all(|l| l["async"] == false), "{what}: {lines:?}");
    }
}

/// Resumes through unit-by-unit checkpoints, between tiers and plain runs,
/// end where the uninterrupted plain run ends, bit for bit. The newest
/// checkpoint (step 10) is damaged by a flipped byte: the resume falls
/// back to step 5, as every resume does.
#[test]
fn resumes_continue_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    for opt in ["adamw", "adamw8bit"] {
        let full = format!("full-{opt}");
        let o = format!("optimizer.name={opt}");
        let uncut = train(&cfg(tmp.path(), &full, &[&o]), None).unwrap();
        let ways: [(&[&str], &[&str]); 3] = [
            (&["offload.optimizer=nvme", "offload.params=nvme"], &["offload.optimizer=nvme", "offload.params=nvme"]),
            (&["offload.optimizer=cpu", "offload.params=cpu"], &["offload.optimizer=none"]),
            (&["offload.optimizer=none"], &["offload.optimizer=cpu"]),
        ];
        for (i, (first, then)) in ways.iter().enumerate() {
            let what = format!("{opt}: {first:?} then {then:?}");
            let name = format!("cut-{opt}-{i}");
            let run = tmp.path().join(&name);
            let with = |s: &[&str]| -> Vec<String> { s.iter().map(|x| x.to_string()).chain([o.clone()]).collect() };
            let first_sets = with(first);
            train(&cfg(tmp.path(), &name, &first_sets.iter().map(|s| s.as_str()).collect::<Vec<_>>()), None).unwrap();
            let model = run.join("checkpoints/step_00000010/model.safetensors");
            let mut bytes = std::fs::read(&model).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x10;
            std::fs::write(&model, bytes).unwrap();
            let then_sets = with(then);
            let resumed = train(&cfg(tmp.path(), &name, &then_sets.iter().map(|s| s.as_str()).collect::<Vec<_>>()), Some(&run)).unwrap();
            assert_eq!(resumed.losses.len(), 5, "{what}: resumed from step 5");
            assert_eq!(resumed.losses, uncut.losses[5..].to_vec(), "{what}: losses after the resume");
            let (a, b) = (files(&tmp.path().join(&full).join("checkpoints/step_00000010")), files(&run.join("checkpoints/step_00000010")));
            for f in ["model.safetensors", "optimizer.safetensors"] {
                assert!(a[f] == b[f], "{what}: {f} differs from the uninterrupted run's");
            }
        }
    }
}

/// Train losses in step order (metrics.jsonl).
fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["kind"] == "train").map(|v| v["loss"].as_f64().unwrap()).collect()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cli(sets: &[String]) -> Vec<String> {
    sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]).collect()
}

/// kill -9 while the unit-by-unit save of step 8 sits in its staging
/// folder (`debug.ckpt_write_delay_ms`, after its tensor files): step 4
/// stays the newest checkpoint and loads, and `--resume` ends bit for bit
/// where the uninterrupted run ends.
#[test]
fn kill_during_a_save_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ferrotron");
    let base = ["train.steps=12", "train.ckpt_every=4", "train.keep_ckpts=2", "optimizer.name=adamw8bit", "offload.optimizer=nvme", "train.schedule=constant"];
    let run_args = |name: &str, extra: &[&str]| {
        let all: Vec<&str> = base.iter().chain(extra).copied().collect();
        let mut a = vec!["train".to_string()];
        a.extend(cli(&sets(tmp.path(), name, &all)));
        a
    };
    let out = Command::new(bin).args(run_args("ref", &[])).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = Command::new(bin).args(run_args("victim", &["debug.ckpt_write_delay_ms=1500"])).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let run = tmp.path().join("victim");
    let ckpts = run.join("checkpoints");
    wait_for("step 4 to be published", Duration::from_secs(120), || ckpts.join("step_00000004/manifest.json").is_file());
    wait_for("step 8's staged files", Duration::from_secs(120), || ckpts.join("step_00000008.tmp/optimizer.safetensors").is_file());
    assert!(!ckpts.join("step_00000008").exists(), "the delay should still hold step 8's save");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ckpts.join("step_00000008.tmp").is_dir(), "killed inside the save");
    assert_eq!(ckpt::latest(&run).unwrap(), Some(ckpts.join("step_00000004")));
    ckpt::load(&ckpts.join("step_00000004")).unwrap();
    part_read::verify(&ckpts.join("step_00000004")).unwrap();
    let resume_sets = vec!["debug.ckpt_write_delay_ms=0".to_string()];
    let c = ferrotron::train::run_dir::resume_config(&run, &resume_sets, None).unwrap();
    train(&c, Some(&run)).unwrap();
    assert!(checkpoint_names(&run).iter().all(|n| !n.ends_with(".tmp") && !n.ends_with(".shards")), "litter left: {:?}", checkpoint_names(&run));
    let (a, b) = (files(&tmp.path().join("ref/checkpoints/step_00000012")), files(&ckpts.join("step_00000012")));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(a[f] == b[f], "{f} differs from the uninterrupted run's");
    }
    assert_eq!(losses(&run), losses(&tmp.path().join("ref")));
}

const CASE_VAR: &str = "FERROTRON_OFFLOAD_CKPT_MEM_CASE";
const MEM_TEST: &str = "save_and_load_hold_about_a_unit_not_the_model";

/// ~12.7M parameters in 16 blocks of ~0.8M and a small vocabulary: a unit
/// is a sixteenth of the model, so "a unit" and "the model" are far apart.
fn mem_cfg(case: &str, scratch: &Path) -> Config {
    let (opt, tier) = case.split_once(',').unwrap();
    let sets: Vec<String> = ["model.d_model=256", "model.n_layers=16", "model.n_heads=4", "model.n_kv_heads=4", "model.d_ff=1024", "model.vocab_size=512", "run.progress=false"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("optimizer.name={opt}"), format!("offload.optimizer={tier}"), format!("offload.path=\"{}\"", scratch.display())])
        .collect();
    config::load(None, &sets).unwrap()
}

/// Peak resident growth while `f` runs.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    // Linux: writing 5 resets VmHWM to the current resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = rss();
    let out = f();
    (out, hwm().saturating_sub(before))
}

/// The child's part: an offload after one step, saved unit by unit, loaded
/// back unit by unit, then the old whole-model assembly, each one's peak.
fn measure(case: &str) {
    // SAFETY: before this process allocates anything large.
    assert_eq!(unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024) }, 1, "mallopt");
    let scratch = tempfile::tempdir().unwrap();
    let c = mem_cfg(case, scratch.path());
    let layout = ParamLayout::new(&c.model);
    let weights = init_weights(&c.model, &layout, 1);
    let mut b = CpuBackend::new();
    let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
    let mut off = Offload::new_owned(&c, &layout, weights).unwrap();
    off.begin_step(1e-3, 1.0).unwrap();
    for &u in Unit::all(c.model.n_layers).iter().rev() {
        off.fetch_grads(&mut b, u).unwrap();
        let v = off.device_grads(u).unwrap();
        b.fill(v, 1e-3).unwrap();
        off.grads_done(&mut b, &mut zero, u).unwrap();
    }
    off.finish(&mut b, &mut zero, 1.0).unwrap();
    let run = tempfile::tempdir().unwrap();
    let base = Manifest::new(1, c.to_toml());
    let sharding = Sharding { world: 1, zero_stage: 0, whole_tensors: false };
    let (dir, save) = peak_of(|| write_checkpoint(&mut off, &layout, &c, run.path(), &base, &sharding, &mut || Ok(())).unwrap());
    let (manifest, verify) = peak_of(|| part_read::verify(&dir).unwrap());
    let device = zero.full_weights_view();
    let (_, load) = peak_of(|| read_units(&mut b, device, &mut off, &layout, &c, &dir, &manifest).unwrap());
    // The old save: the master weights and a whole-model optimizer, then
    // its download (what `HostOptState::download` made of it).
    let (held, whole) = peak_of(|| {
        let w = off.master_weights().unwrap();
        let (mut h, opt) = off.full_optimizer().unwrap();
        let state = ferrotron::ckpt::train_state::HostOptState::download(&mut h, opt.as_ref()).unwrap();
        (w, h, opt, state)
    });
    drop(held);
    let biggest = off.unit_ranges().iter().max_by_key(|r| r.len()).unwrap().clone();
    let unit = UnitHost::new(0, &c.optimizer, &unit_layout(&layout, &biggest)).unwrap().h.live_bytes();
    let model = UnitHost::new(0, &c.optimizer, &layout).unwrap().h.live_bytes();
    println!("CKPTMEM {save} {verify} {load} {whole} {unit} {model}");
}

/// See the module doc: in a fresh process per case (the measurement's
/// rules are tests/offload_host_memory.rs's), the unit-by-unit save adds
/// at most three units to the peak (a unit read from its file, its
/// buffers), the load four (read, replaced, written back), the streamed
/// verification a few read buffers — while the old whole-model assembly
/// adds more than the model's weights and state.
#[test]
fn save_and_load_hold_about_a_unit_not_the_model() {
    if let Ok(case) = std::env::var(CASE_VAR) {
        measure(&case);
        return;
    }
    for case in ["adamw,cpu", "adamw8bit,cpu", "adamw,nvme", "adamw8bit,nvme"] {
        let out = Command::new(std::env::current_exe().unwrap()).args([MEM_TEST, "--exact", "--nocapture", "--test-threads=1"]).env(CASE_VAR, case).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{case}: the measuring process failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        let line = text.lines().find_map(|l| l.split_once("CKPTMEM ")).unwrap_or_else(|| panic!("{case}: no measurement in\n{text}")).1;
        let v: Vec<u64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let (save, verify, load, whole, unit, model) = (v[0], v[1], v[2], v[3], v[4], v[5]);
        println!("{case}: peak growth: save {save} B, verify {verify} B, load {load} B; whole-model assembly {whole} B; a unit {unit} B, the model {model} B (weights and state)");
        // Slack: 8 MiB for the process's small allocations and thread stacks.
        let slack = 8 << 20;
        assert!(save <= 3 * unit + slack, "{case}: the save's peak {save} B is more than three units ({unit} B each)");
        assert!(load <= 4 * unit + slack, "{case}: the load's peak {load} B is more than four units ({unit} B each)");
        assert!(verify <= slack + (32 << 20), "{case}: the verification's peak {verify} B");
        assert!(whole >= model, "{case}: the old assembly measured {whole} B, less than the model's {model} B: the measurement is broken");
        assert!(save * 4 < model, "{case}: the save's peak {save} B is not small against the model's {model} B");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A checkpoint whose optimizer state two ZeRO-1 ranks saved as shards
/// resumes in one offloaded process (resharded into the units, the one
/// resume that assembles the whole state on the host) exactly as in one
/// plain process: the same losses and the same final files.
#[test]
fn sharded_checkpoint_resumes_offloaded_like_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ["train.steps=6", "train.ckpt_every=3", "train.batch_size=1", "dist.zero_stage=1", "optimizer.name=adamw8bit"];
    let mut args = vec!["launch".to_string(), "--nproc-per-node".into(), "2".into(), "train".into()];
    args.extend(cli(&sets(tmp.path(), "ranks", &base)));
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(&args).current_dir(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut ends = vec![];
    for (name, offload) in [("plain", "offload.optimizer=none"), ("off", "offload.optimizer=cpu")] {
        let run = tmp.path().join(name);
        copy_dir(&tmp.path().join("ranks"), &run);
        let over: Vec<String> = ["train.steps=10", "train.batch_size=2", "dist.zero_stage=0", offload].iter().map(|s| s.to_string()).collect();
        let c = ferrotron::train::run_dir::resume_config(&run, &over, None).unwrap();
        let s = train(&c, Some(&run)).unwrap();
        assert_eq!(s.losses.len(), 4, "{name}: resumed from step 6");
        ends.push((s.losses, files(&run.join("checkpoints/step_00000010"))));
    }
    assert_eq!(ends[0].0, ends[1].0, "losses after the resume");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(ends[0].1[f] == ends[1].1[f], "{f} differs");
    }
}
