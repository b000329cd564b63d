//! Runs that survive (issue 17): diverging steps, concurrent processes,
//! damaged checkpoints, closed stdout, odd inputs, resume settings, memory.
//! Tiny models and few steps; the binary is driven where the behaviour is
//! the process's (exit status, stderr, locks).

use ferrotron::config::{self, Config};
use ferrotron::train::guard::Guard;
use ferrotron::train::trainer::train;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn cfg(dir: &Path, name: &str, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = [
        "train.steps=4", "train.batch_size=2", "train.seq_len=16", "train.eval_every=2", "train.eval_batches=1",
        "train.ckpt_every=2", "train.keep_ckpts=2", "train.samples=0", "train.warmup_steps=1", "run.progress=false",
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name={name}"));
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &sets).unwrap()
}

fn resume(run: &Path, sets: &[&str]) -> anyhow::Result<ferrotron::train::trainer::RunSummary> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let c = ferrotron::train::run_dir::resume_config(run, &sets, None)?;
    train(&c, Some(run))
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn step_dirs(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(run.join("checkpoints")).map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ferrotron(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(args).current_dir(cwd).output().expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A clean failure: non-zero exit, no panic, every needle in stderr.
fn fails_with(out: &Output, needles: &[&str]) {
    let e = stderr(out);
    assert!(!out.status.success(), "expected failure; stderr: {e}");
    assert!(!e.contains("panicked"), "panic instead of an error: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr should mention `{n}`: {e}");
    }
}

const QUICK: &[&str] = &[
    "--set", "train.batch_size=2", "--set", "train.seq_len=16", "--set", "model.d_model=32", "--set", "model.n_heads=2",
    "--set", "model.n_kv_heads=2", "--set", "model.d_ff=64", "--set", "model.n_layers=1", "--set", "train.samples=0",
    "--set", "run.progress=false", "--set", "train.eval_every=0",
];

fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train"];
    v.extend_from_slice(QUICK);
    v.extend_from_slice(extra);
    v
}

// ------------------------------------------------------ 1. bad steps

#[test]
fn guard_skips_non_finite_and_spiking_steps_and_stops_after_a_streak() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), "g", &["train.max_bad_steps=3", "train.skip_spike_z=4.0"]);
    let mut g = Guard::new(&c.train);
    assert_eq!(g.judge(1, 2.0, 1.0), None);
    assert!(g.judge(2, f32::NAN, 1.0).unwrap().contains("loss is NaN"));
    assert!(g.judge(3, 2.0, f32::INFINITY).unwrap().contains("gradient norm is inf"));
    assert!(g.in_streak());
    assert!(g.check_streak("x", true, tmp.path()).is_ok(), "2 of 3 allowed");
    assert!(g.judge(4, f32::NEG_INFINITY, 1.0).is_some());
    let e = err_text(g.check_streak("loss is -inf", true, tmp.path()));
    assert!(e.contains("3 steps in a row (steps 2..=4)") && e.contains("train.max_bad_steps = 3") && e.contains("no checkpoint was saved yet") && e.contains("optimizer.lr"), "{e}");
    // An applied step ends the streak.
    assert_eq!(g.judge(5, 2.0, 1.0), None);
    assert!(!g.in_streak() && g.check_streak("x", true, tmp.path()).is_ok());
    assert_eq!(g.state.skipped, 3);
    // Non-finite weights stop at once.
    assert!(g.judge(6, f32::NAN, f32::NAN).is_some());
    assert!(err_text(g.check_streak("loss is NaN", false, tmp.path())).contains("weights are no longer finite"));

    // The spike rule judges only after 16 applied steps; a loss 4 standard
    // deviations above the recent mean is skipped, a normal one is not.
    let mut g = Guard::new(&c.train);
    for i in 0..15 {
        assert_eq!(g.judge(i + 1, 3.0 + 0.01 * (i % 3) as f32, 1.0), None);
    }
    assert_eq!(g.judge(16, 100.0, 1.0), None, "too little history to judge");
    let mut g = Guard::new(&c.train);
    for i in 0..20 {
        g.judge(i + 1, 3.0 + 0.01 * (i % 3) as f32, 1.0);
    }
    assert_eq!(g.judge(21, 3.015, 1.0), None);
    assert!(g.judge(22, 3.5, 1.0).unwrap().contains("loss spike"));
    // Off by default.
    let mut off = Guard::new(&cfg(tmp.path(), "g", &[]).train);
    for i in 0..20 {
        off.judge(i + 1, 3.0 + 0.01 * (i % 3) as f32, 1.0);
    }
    assert_eq!(off.judge(21, 30.0, 1.0), None);
    // The state survives a checkpoint.
    let mut back = Guard::new(&c.train);
    back.load_json(&g.to_json()).unwrap();
    assert_eq!(back.state, g.state);
}

/// A learning rate that blows the weights up: the bad steps are skipped and
/// logged, the run stops after train.max_bad_steps of them naming the
/// newest checkpoint, no checkpoint ever holds non-finite values, and a
/// resume at a sane learning rate continues from that checkpoint.
#[test]
fn diverging_run_skips_steps_stops_and_resumes_from_a_finite_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("div");
    train(&cfg(tmp.path(), "div", &["train.keep_ckpts=1"]), None).unwrap();
    assert_eq!(step_dirs(&run), ["step_00000004"]);
    let e = err_text(resume(&run, &["train.steps=40", "optimizer.lr=1e30", "train.max_bad_steps=5", "train.ckpt_every=1"]));
    assert!(e.contains("stopped at step") && e.contains("step_00000004") && e.contains("--set optimizer.lr="), "{e}");
    // Steps 5.. : the update of step 5 overflowed the forward pass; every later
    // step is skipped and logged with loss null and a reason.
    let lines = metrics(&run);
    let skipped: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("skipped").is_some()).collect();
    assert_eq!(skipped.len(), 5, "{lines:?}");
    assert!(skipped.iter().all(|l| l["loss"].is_null() || !l["loss"].as_f64().unwrap().is_finite() || l["grad_norm"].is_null()));
    // No checkpoint was taken while steps were skipped (keep_ckpts=1 would
    // have deleted the good one), and the good one is intact.
    assert_eq!(step_dirs(&run), ["step_00000004"]);
    let (_, weights) = ferrotron::train::generate::load_run_weights(&run).unwrap();
    assert!(weights.iter().all(|w| w.is_finite()));
    // The lr recorded by the failed resume is replaced by this one's.
    let s = resume(&run, &["train.steps=6", "optimizer.lr=1e-3"]).unwrap();
    assert_eq!(s.steps, 6);
    assert!(s.losses.iter().all(|l| l.is_finite()) && s.skipped_steps == 0);
    assert_eq!(step_dirs(&run), ["step_00000006"]);
}

/// A checkpoint written by an older ferrotron with NaN weights (no
/// checksums): generate and export refuse it with a clear error.
#[test]
fn generate_and_export_refuse_non_finite_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ferrotron(&train_args(&["--set", "train.steps=2", "--set", "run.name=r"]), tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = tmp.path().join("runs/r/checkpoints/step_00000002");
    let man = ckpt.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&man).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("checksums");
    fs::write(&man, serde_json::to_vec(&v).unwrap()).unwrap();
    let model = ckpt.join("model.safetensors");
    let mut bytes = fs::read(&model).unwrap();
    let at = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&model, &bytes).unwrap();
    fails_with(&ferrotron(&["generate", "--run", "runs/r", "--max-tokens", "4"], tmp.path()), &["non-finite", "model.safetensors", "no usable checkpoint"]);
    fails_with(&ferrotron(&["export", "--run", "runs/r", "--out", "hf"], tmp.path()), &["non-finite"]);
    assert!(!tmp.path().join("hf/model.safetensors").exists());
}

// ------------------------------------------------------ 2. one process per run folder

#[test]
fn a_locked_run_folder_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("l");
    train(&cfg(tmp.path(), "l", &[]), None).unwrap();
    let lock = ferrotron::util::lock::RunLock::acquire(&run).unwrap();
    let pid = std::process::id().to_string();
    let e = err_text(resume(&run, &["train.steps=6"]));
    assert!(e.contains("in use by process") && e.contains(&pid), "{e}");
    // A new run under the same name is refused by the lock before anything.
    let e = err_text(train(&cfg(tmp.path(), "l", &[]), None));
    assert!(e.contains("in use by process"), "{e}");
    drop(lock);
    resume(&run, &["train.steps=6"]).unwrap();
}

/// Two processes into one folder: the second (new run or resume) is refused
/// while the first runs; metrics.jsonl stays valid JSON lines.
#[test]
fn concurrent_trainings_into_one_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_ferrotron"))
        .args(train_args(&["--set", "train.steps=100000", "--set", "run.name=c", "--set", "train.ckpt_every=5"]))
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = tmp.path().join("runs/c");
    let t0 = std::time::Instant::now();
    while step_dirs(&run).is_empty() {
        assert!(t0.elapsed().as_secs() < 60, "first training never checkpointed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = first.id().to_string();
    fails_with(&ferrotron(&train_args(&["--set", "train.steps=3", "--set", "run.name=c"]), tmp.path()), &["in use by process", &pid]);
    fails_with(&ferrotron(&["train", "--resume", "runs/c"], tmp.path()), &["in use by process", &pid]);
    first.kill().unwrap();
    first.wait().unwrap();
    for l in fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"));
    }
    // The lock died with the process: the resume now runs.
    let out = ferrotron(&["train", "--resume", "runs/c", "--set", "train.steps=12"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
}

// ------------------------------------------------------ 3. checksums and fallback

#[test]
fn damaged_newest_checkpoint_falls_back_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let c = ["--set", "train.steps=4", "--set", "train.ckpt_every=2", "--set", "run.name=d"];
    let out = ferrotron(&train_args(&c), tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let run = tmp.path().join("runs/d");
    let opt = run.join("checkpoints/step_00000004/optimizer.safetensors");
    let mut bytes = fs::read(&opt).unwrap();
    let at = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 100;
    bytes[at] ^= 0x02;
    fs::write(&opt, &bytes).unwrap();
    let out = ferrotron(&["train", "--resume", "runs/d", "--set", "train.steps=6"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("step_00000004/optimizer.safetensors is damaged") && e.contains("falling back to") && e.contains("step_00000002"), "{e}");
    // A newest checkpoint without its manifest: the fallback is announced too.
    fs::remove_file(run.join("checkpoints/step_00000006/manifest.json")).unwrap();
    let out = ferrotron(&["generate", "--run", "runs/d", "--max-tokens", "3"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("incomplete (no manifest.json)") && stderr(&out).contains("falling back"), "{}", stderr(&out));
}

/// Resuming from an older checkpoint after a damaged newer one is passed
/// over gives the same steps as the uninterrupted run.
#[test]
fn fallback_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let full = train(&cfg(tmp.path(), "full", &["train.steps=6", "train.schedule=constant"]), None).unwrap();
    let run = tmp.path().join("cut");
    train(&cfg(tmp.path(), "cut", &["train.steps=4", "train.schedule=constant"]), None).unwrap();
    let model = run.join("checkpoints/step_00000004/model.safetensors");
    let mut bytes = fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    fs::write(&model, &bytes).unwrap();
    let s = resume(&run, &["train.steps=6"]).unwrap();
    assert_eq!(s.losses, full.losses[2..].to_vec());
}

// ------------------------------------------------------ 4. closed stdout

#[test]
fn closed_or_full_stdout_is_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    // A pipe whose reader is gone before the first write: quiet exit 141.
    for args in [&["info"][..], &["info", "--keys"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(args).current_dir(tmp.path()).stdout(writer).stderr(Stdio::piped()).output().unwrap();
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", stderr(&out));
        assert!(out.stderr.is_empty(), "a broken pipe ends quietly: {}", stderr(&out));
    }
    // A training whose stdout reader left: it still trains and checkpoints.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(train_args(&["--set", "train.steps=2", "--set", "run.name=p"])).current_dir(tmp.path()).stdout(writer).output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
    assert_eq!(step_dirs(&tmp.path().join("runs/p")), ["step_00000002"]);
    // A full disk on stdout is an error.
    if Path::new("/dev/full").exists() {
        for args in [&["info"][..], &["generate", "--run", "runs/p", "--max-tokens", "3"][..]] {
            let full = fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(args).current_dir(tmp.path()).stdout(full).output().unwrap();
            fails_with(&out, &["cannot write to standard output", "No space left on device"]);
        }
    }
}

// ------------------------------------------------------ 5. odd inputs and leftovers

/// A run killed before its first checkpoint can be restarted under its
/// name, or resumed (from step 0, exactly like a fresh run).
#[test]
fn a_run_without_checkpoints_can_be_restarted_or_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = train(&cfg(tmp.path(), "fresh", &[]), None).unwrap();
    let run = tmp.path().join("k");
    train(&cfg(tmp.path(), "k", &[]), None).unwrap();
    fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let again = resume(&run, &[]).unwrap();
    assert_eq!(again.losses, fresh.losses);
    fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let restarted = train(&cfg(tmp.path(), "k", &[]), None).unwrap();
    assert_eq!(restarted.losses, fresh.losses);
    assert_eq!(metrics(&run).iter().filter(|l| l["kind"] == "train").count(), 4, "metrics start over");
    // With a checkpoint, a new start under the name is still refused.
    assert!(err_text(train(&cfg(tmp.path(), "k", &[]), None)).contains("already holds a run"));
}

#[test]
fn zero_steps_is_refused_before_any_folder_exists() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(&ferrotron(&train_args(&["--set", "train.steps=0", "--set", "run.name=z"]), tmp.path()), &["train.steps must be at least 1"]);
    assert!(!tmp.path().join("runs/z").exists());
}

#[test]
fn data_without_a_validation_split_trains_without_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("d")).unwrap();
    fs::write(tmp.path().join("d/a.txt"), "a small document of plain words. ".repeat(300)).unwrap();
    let out = ferrotron(&["prepare", "--input", "d", "--out", "sh", "--val-fraction", "0", "--tokenizer", "bytes"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferrotron(&train_args(&["--set", "data.path=sh", "--set", "train.steps=2", "--set", "run.name=v", "--set", "train.eval_every=1"]), tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no validation split"), "{}", stderr(&out));
    // No evaluation lines (train and checkpoint-timing lines only).
    assert!(metrics(&tmp.path().join("runs/v")).iter().all(|l| l["kind"] != "eval"));
}

#[test]
fn string_keys_take_the_text_as_it_is() {
    for name in ["nan", "inf", "-inf", "1e5", "true", "0x10"] {
        let c = config::load(None, &[format!("run.name={name}")]).unwrap();
        assert_eq!(c.run.name, name);
    }
    let c = config::load(None, &["run.name=\"quoted name\"".into(), "data.path=123".into()]).unwrap();
    assert_eq!((c.run.name.as_str(), c.data.path.as_str()), ("quoted name", "123"));
    // Numeric keys still read numbers (and a NaN learning rate is refused).
    assert_eq!(config::load(None, &["optimizer.lr=2e-3".into()]).unwrap().optimizer.lr, 2e-3);
    assert!(err_text(config::load(None, &["optimizer.lr=nan".into()])).contains("optimizer.lr"));
}

/// Binary garbage in metrics.jsonl does not block a resume: unreadable lines
/// are dropped (the original kept beside it) and the file is valid again.
#[test]
fn garbage_in_metrics_does_not_block_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("m");
    train(&cfg(tmp.path(), "m", &[]), None).unwrap();
    let path = run.join("metrics.jsonl");
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    bytes.splice(mid..mid, b"\x00\xff\xfe garbage \x80\x81\n".iter().copied());
    fs::write(&path, &bytes).unwrap();
    resume(&run, &["train.steps=6"]).unwrap();
    assert!(run.join("metrics.jsonl.damaged").exists());
    let steps: Vec<u64> = metrics(&run).iter().filter(|l| l["kind"] == "train").map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
}

// ------------------------------------------------------ 6. the resume rule

/// Settings given to a resume become the run's (written to config.toml, so
/// a later plain resume keeps them); the fixed keys are checked against the
/// checkpoint, whether changed with --set or by editing config.toml.
#[test]
fn resume_settings_follow_one_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    train(&cfg(tmp.path(), "r", &[]), None).unwrap();
    resume(&run, &["train.steps=6", "optimizer.lr=5e-4"]).unwrap();
    let plain = ferrotron::train::run_dir::resume_config(&run, &[], None).unwrap();
    assert_eq!((plain.optimizer.lr, plain.train.steps), (5e-4, 6));
    let manifest = ferrotron::ckpt::read_manifest(&run.join("checkpoints/step_00000006")).unwrap();
    assert!(manifest.config_toml.contains("lr = 0.0005"), "{}", manifest.config_toml);
    // --set of a fixed key: refused. (train.batch_size is per rank: it may
    // change only with the number of ranks, the global batch kept.)
    assert!(err_text(resume(&run, &["train.batch_size=4"])).contains("global batch"));
    // The same change made by editing config.toml: refused too, against the checkpoint.
    let path = run.join("config.toml");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("batch_size = 2", "batch_size = 4")).unwrap();
    let e = err_text(resume(&run, &["train.steps=8"]));
    assert!(e.contains("global batch") && e.contains("step_00000006"), "{e}");
}

// ------------------------------------------------------ 7. host memory

#[test]
fn a_run_larger_than_host_memory_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    // llama3-8b on the CPU with a large batch: terabytes.
    let out = ferrotron(&["train", "--set", "model.preset=llama3-8b", "--set", "train.batch_size=64", "--set", "train.seq_len=4096", "--set", "run.name=huge", "--set", "run.progress=false"], tmp.path());
    fails_with(&out, &["MemAvailable", "train.batch_size", "train.checkpoint_layers", "ferrotron info"]);
    assert!(!tmp.path().join("runs/huge").exists());
    // The same check against a given amount, and the /proc/meminfo parser.
    let tiny = cfg(tmp.path(), "t", &[]);
    assert!(ferrotron::train::preflight::check_against(&tiny, 1 << 40).is_ok());
    assert!(err_text(ferrotron::train::preflight::check_against(&tiny, 1000)).contains("1000 B is available"));
    let text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
    assert_eq!(ferrotron::util::meminfo::parse_mem_available(text), Some(8_000_000 * 1024));
    assert_eq!(ferrotron::util::meminfo::parse_mem_available("MemFree: 1 kB\n"), None);
}

// ------------------------------------------------------ kill -9 torture

/// A small deterministic generator for kill delays (xorshift64*).
struct Delays(u64);

impl Delays {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % max
    }
}

/// Every checkpoint folder (`step_<digits>`; staging `*.tmp` and
/// `*.shards` are not checkpoints) must be complete and load (checksums,
/// finite values).
fn all_checkpoints_load(run: &Path) -> usize {
    let mut n = 0;
    let is_checkpoint = |n: &String| n.strip_prefix("step_").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    for name in step_dirs(run).into_iter().filter(is_checkpoint) {
        let dir = run.join("checkpoints").join(&name);
        if let Err(e) = ferrotron::ckpt::load(&dir) {
            panic!("unloadable checkpoint {}: {e:#}", dir.display());
        }
        n += 1;
    }
    n
}

/// Kill a CPU training with SIGKILL at random moments, resume it each time,
/// and check after every kill that no checkpoint is unloadable; at the end
/// the run equals an uninterrupted one bit for bit (weights, optimizer
/// state, one metrics line per step). ckpt_every=1 with keep_ckpts=1 puts a
/// save and a prune in almost every instant. 6 kills per setting by default
/// (a few seconds); FERROTRON_TORTURE_ITERS=N for more,
/// FERROTRON_TORTURE_SEED=S to replay a failure. Saves are two-stage (the
/// default `train.async_checkpoint`), so kills also land inside background
/// writes while later steps run.
#[test]
fn kill_9_torture() {
    let iters: usize = std::env::var("FERROTRON_TORTURE_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let seed: u64 = std::env::var("FERROTRON_TORTURE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("kill_9_torture: FERROTRON_TORTURE_SEED={seed}");
    let mut delays = Delays(seed);
    let tmp = tempfile::tempdir().unwrap();
    let steps = 40;
    for (every, keep) in [("1", "1"), ("3", "2")] {
        let sets = |name: &str| -> Vec<String> {
            let mut v: Vec<String> = train_args(&[]).iter().map(|s| s.to_string()).collect();
            for s in [format!("train.steps={steps}"), format!("train.ckpt_every={every}"), format!("train.keep_ckpts={keep}"), format!("run.name={name}"), "train.eval_every=10".into()] {
                v.push("--set".into());
                v.push(s);
            }
            v
        };
        let ref_name = format!("ref{every}");
        let out = Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(sets(&ref_name)).current_dir(tmp.path()).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let name = format!("victim{every}");
        let run = tmp.path().join("runs").join(&name);
        let mut kills = 0;
        let mut finished = false;
        for _ in 0..iters {
            let args: Vec<String> = if run.join("config.toml").exists() {
                vec!["train".into(), "--resume".into(), format!("runs/{name}")]
            } else {
                sets(&name)
            };
            let mut child = Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(&args).current_dir(tmp.path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(delays.next_ms(250)));
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            all_checkpoints_load(&run);
        }
        if !finished {
            let out = ferrotron(&["train", "--resume", &format!("runs/{name}")], tmp.path());
            assert!(out.status.success(), "seed {seed}: {}", stderr(&out));
        }
        eprintln!("kill_9_torture: ckpt_every={every}: {kills} kills");
        assert!(all_checkpoints_load(&run) >= 1);
        // The final saves cleaned every leftover of killed saves and prunes.
        let litter: Vec<String> = step_dirs(&run).into_iter().filter(|n| n.ends_with(".tmp") || n.ends_with(".shards")).collect();
        assert!(litter.is_empty(), "seed {seed}: leftovers {litter:?}");
        let last = format!("checkpoints/step_{steps:08}");
        let a = ferrotron::ckpt::load(&tmp.path().join("runs").join(&ref_name).join(&last)).unwrap();
        let b = ferrotron::ckpt::load(&run.join(&last)).unwrap();
        let bits = |t: &[ferrotron::ckpt::Tensor]| -> Vec<(String, Vec<u32>)> { t.iter().map(|t| (t.name.clone(), t.data.iter().map(|x| x.to_bits()).collect())).collect() };
        assert!(bits(&a.model) == bits(&b.model), "seed {seed}: weights differ from the uninterrupted run");
        assert!(bits(&a.optim) == bits(&b.optim), "seed {seed}: optimizer state differs from the uninterrupted run");
        let train_steps: Vec<u64> = metrics(&run).iter().filter(|l| l["kind"] == "train").map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(train_steps, (1..=steps).collect::<Vec<_>>(), "seed {seed}");
    }
}

/// A run killed after publishing its last checkpoint but before the prune
/// that follows leaves staging litter (`step_N.shards`, `*.tmp`) that no
/// later save would clear, since the run has nothing left to save: the
/// resume clears it (the case kill_9_torture hit on a loaded CI machine).
#[test]
fn resume_of_a_finished_run_clears_litter_of_killed_saves() {
    let tmp = tempfile::tempdir().unwrap();
    let args: Vec<String> = train_args(&[]).iter().map(|s| s.to_string()).chain(["--set".into(), "train.steps=4".into(), "--set".into(), "train.ckpt_every=2".into(), "--set".into(), "run.name=done".into()]).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(&args).current_dir(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = tmp.path().join("runs").join("done");
    let ckpts = run.join("checkpoints");
    for litter in ["step_00000004.shards", "step_00000004.pruned.tmp", "step_00000002.shards"] {
        std::fs::create_dir_all(ckpts.join(litter)).unwrap();
        std::fs::write(ckpts.join(litter).join("rank00000.done"), b"").unwrap();
    }
    let out = ferrotron(&["train", "--resume", "runs/done"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<String> = step_dirs(&run).into_iter().filter(|n| n.ends_with(".tmp") || n.ends_with(".shards")).collect();
    assert!(left.is_empty(), "litter left after the resume: {left:?}");
    assert!(ferrotron::ckpt::load(&ckpts.join("step_00000004")).is_ok());
}
