//! The training loop end to end on the CPU: learning on the built-in data,
//! the run folder, exact resume, determinism.

use ferrotron::config::{self, Config};
use ferrotron::train::trainer::train;
use std::path::Path;

fn cfg(dir: &Path, name: &str, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = [
        "train.steps=8", "train.batch_size=4", "train.seq_len=32", "train.eval_every=4", "train.eval_batches=2",
        "train.ckpt_every=4", "train.keep_ckpts=5", "train.samples=0", "train.warmup_steps=2", "run.progress=false",
        "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name={name}"));
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &sets).unwrap()
}

#[test]
fn run_folder_has_config_metrics_checkpoints_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let s = train(&cfg(tmp.path(), "a", &[]), None).unwrap();
    assert_eq!(s.steps, 8);
    assert_eq!(s.losses.len(), 8);
    let run = tmp.path().join("a");
    for f in ["config.toml", "metrics.jsonl", "loss.png", "tokenizer.txt"] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l["kind"] == "train").count(), 8);
    assert_eq!(lines.iter().filter(|l| l["kind"] == "eval").count(), 2);
    for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(lines[0].get(key).is_some(), "train line lacks {key}");
    }
    assert!(run.join("checkpoints/step_00000004").is_dir());
    assert!(run.join("checkpoints/step_00000008").is_dir());
}

#[test]
fn same_seed_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let a = train(&cfg(tmp.path(), "a", &[]), None).unwrap();
    let b = train(&cfg(tmp.path(), "b", &[]), None).unwrap();
    assert_eq!(a.losses, b.losses);
    let c = train(&cfg(tmp.path(), "c", &["seed=7"]), None).unwrap();
    assert_ne!(a.losses, c.losses);
}

/// A run killed after its step-4 checkpoint and resumed reproduces the
/// uninterrupted run bit for bit.
#[test]
fn resume_after_kill_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let full = train(&cfg(tmp.path(), "full", &[]), None).unwrap();
    let c = cfg(tmp.path(), "killed", &[]);
    train(&c, None).unwrap();
    let run = tmp.path().join("killed");
    std::fs::remove_dir_all(run.join("checkpoints/step_00000008")).unwrap();
    let resumed = train(&c, Some(&run)).unwrap();
    assert_eq!(resumed.losses, full.losses[4..].to_vec());
    assert_eq!(resumed.final_val_loss, full.final_val_loss);
    // metrics.jsonl holds each step once.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "train")
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
}

/// N steps, then resume with the step budget raised to 2N, equals 2N steps
/// straight (constant schedule, so the learning rate of the first N steps
/// does not depend on the total), for GPT-2 and Llama variants.
#[test]
fn n_plus_n_equals_2n() {
    for variant in [&[][..], &["model.preset=tiny-llama", "model.d_ff=48", "model.n_kv_heads=1"][..]] {
        let tmp = tempfile::tempdir().unwrap();
        let mut extra: Vec<&str> = vec!["train.schedule=constant"];
        extra.extend_from_slice(variant);
        let straight = train(&cfg(tmp.path(), "s", &extra), None).unwrap();
        let mut half = extra.clone();
        half.push("train.steps=4");
        train(&cfg(tmp.path(), "h", &half), None).unwrap();
        let run = tmp.path().join("h");
        let cont = ferrotron::train::run_dir::resume_config(&run, &["train.steps=8".into()], None).unwrap();
        let rest = train(&cont, Some(&run)).unwrap();
        let first = ferrotron::telemetry::metrics::read_metrics(&run.join("metrics.jsonl")).unwrap();
        assert_eq!(first.len(), 10, "8 train lines + 2 eval lines");
        assert_eq!(rest.losses, straight.losses[4..].to_vec(), "variant {variant:?}");
    }
}

#[test]
fn builtin_data_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = ["train.steps=150", "train.eval_every=0", "train.ckpt_every=0", "optimizer.lr=3e-3", "train.batch_size=8", "train.seq_len=64", "model.d_model=64", "model.d_ff=256"];
    let s = train(&cfg(tmp.path(), "learn", &extra), None).unwrap();
    let first = s.losses[0];
    let last = s.final_val_loss.unwrap();
    let data = ferrotron::data::Dataset::open("builtin").unwrap();
    let unigram = ferrotron::data::unigram_entropy(&data.tokens(ferrotron::data::Split::Val).unwrap()) as f32;
    assert!(first > 5.0, "untrained byte-level loss should be near ln 256 = 5.55, got {first}");
    // A model that only learned byte frequencies would sit at the unigram
    // entropy (3.17 nats); real learning of words and sentences goes far below.
    assert!(last < unigram - 0.5, "validation loss {last} should be well below the unigram baseline {unigram}");
}

/// A run started from a Hugging Face checkpoint (`model.init_from`) takes
/// its shape from config.json and its weights from the safetensors: the
/// first training loss equals the exported model's loss on that batch.
#[test]
fn init_from_hugging_face_checkpoint() {
    use ferrotron::backend::cpu::CpuBackend;
    use ferrotron::data::{Dataset, Loader, Split};
    use ferrotron::model::Model;
    let tmp = tempfile::tempdir().unwrap();
    // vocab 300: 320 rows with the default vocabulary padding (multiple of 64);
    // d_ff 48: 64 hidden units with the default SwiGLU padding.
    let first = cfg(tmp.path(), "src", &["model.preset=tiny-llama", "model.d_ff=48", "model.n_kv_heads=1", "model.vocab_size=300"]);
    train(&first, None).unwrap();
    let (src_cfg, weights) = ferrotron::train::generate::load_run_weights(&tmp.path().join("src")).unwrap();
    let hf = tmp.path().join("hf");
    ferrotron::ckpt::export(&hf, &src_cfg.model, &ferrotron::model::layout::ParamLayout::new(&src_cfg.model), &weights, ferrotron::ckpt::Dtype::F32).unwrap();

    let mut b = CpuBackend::new();
    let mut m = Model::new(&mut b, &src_cfg.model, ferrotron::model::Recompute::Off).unwrap();
    m.set_params(&mut b, &weights).unwrap();
    // Deliberately give another shape: init_from's config.json must win; the
    // vocabulary and MLP padding are ours to choose (the defaults, none, other).
    let init = format!("model.init_from=\"{}\"", hf.display());
    for (multiple, ffn) in [(64, 64), (1, 1), (128, 16)] {
        let name = format!("ft{multiple}");
        let c = cfg(tmp.path(), &name, &[&init, "model.d_model=64", "train.steps=1", &format!("model.vocab_multiple={multiple}"), &format!("model.ffn_multiple={ffn}")]);
        let run = train(&c, None).unwrap();
        let data = Dataset::open("builtin").unwrap();
        let batch = Loader::new(&data, Split::Train, 4, 32, c.seed, 0, 1).unwrap().next_batch().unwrap();
        let expected = m.eval_loss(&mut b, &batch.inputs, &batch.targets, 4, 32).unwrap();
        assert_eq!(run.losses[0], expected, "vocab_multiple {multiple}");
        let saved = std::fs::read_to_string(tmp.path().join(&name).join("config.toml")).unwrap();
        assert!(saved.contains("d_model = 32") && saved.contains("d_ff = 48") && saved.contains("init_from"), "{saved}");
        assert!(saved.contains(&format!("vocab_multiple = {multiple}")) && saved.contains(&format!("ffn_multiple = {ffn}")), "{saved}");
    }
}

/// Trains a 2-step run with `settings`, deletes `key` from its saved
/// config.toml (as written before the key existed) and resumes it to step 3;
/// returns the resumed config and the run folder.
fn resume_without_key(tmp: &Path, key: &str, settings: &[&str]) -> (Config, std::path::PathBuf) {
    let mut all = vec!["train.steps=2", "train.ckpt_every=2"];
    all.extend_from_slice(settings);
    train(&cfg(tmp, "old", &all), None).unwrap();
    let run = tmp.join("old");
    let path = run.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.lines().filter(|l| !l.starts_with(key)).collect::<Vec<_>>().join("\n")).unwrap();
    let cont = ferrotron::train::run_dir::resume_config(&run, &["train.steps=3".into()], None).unwrap();
    train(&cont, Some(&run)).unwrap();
    (cont, run)
}

/// Runs saved before `model.vocab_multiple` existed did not pad their
/// vocabulary; their config.toml lacks the key, which must read as 1 (not
/// today's default of 64), so they resume and compare as they were.
#[test]
fn runs_saved_without_vocab_multiple_resume_unpadded() {
    let tmp = tempfile::tempdir().unwrap();
    let (cont, run) = resume_without_key(tmp.path(), "vocab_multiple", &["model.vocab_size=300", "model.vocab_multiple=1"]);
    assert_eq!(cont.model.vocab_multiple, 1);
    let summary = ferrotron::telemetry::compare::load_run(&run).unwrap();
    assert_eq!(summary.cfg.model.padded_vocab(), 300);
}

/// The same for `model.ffn_multiple` (SwiGLU width padding): a run saved
/// without the key resumes with its unpadded d_ff.
#[test]
fn runs_saved_without_ffn_multiple_resume_unpadded() {
    let tmp = tempfile::tempdir().unwrap();
    let (cont, _) = resume_without_key(tmp.path(), "ffn_multiple", &["model.preset=tiny-llama", "model.d_ff=100", "model.ffn_multiple=1"]);
    assert_eq!((cont.model.ffn_multiple, cont.model.padded_ff()), (1, 100));
}
