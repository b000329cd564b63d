//! The command line as a user meets it: bad input gives a clear error, a
//! non-zero exit and no panic trace, and leaves files on disk untouched.

use std::path::Path;
use std::process::{Command, Output};

fn ferrotron(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(args).current_dir(cwd).output().expect("binary runs")
}

/// Asserts a clean failure whose message contains every `needle`.
fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic trace instead of an error: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "error should mention `{n}`: {stderr}");
    }
}

const QUICK: &[&str] = &[
    "--set", "train.steps=2", "--set", "train.batch_size=2", "--set", "train.seq_len=16", "--set", "model.d_model=32",
    "--set", "model.n_heads=2", "--set", "model.n_kv_heads=2", "--set", "model.d_ff=64", "--set", "model.n_layers=1",
    "--set", "train.samples=1", "--set", "train.sample_tokens=8", "--set", "run.progress=false", "--set", "run.name=r",
];

fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train"];
    v.extend_from_slice(QUICK);
    v.extend_from_slice(extra);
    v
}

#[test]
fn unknown_key_names_the_nearest_valid_key() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(&ferrotron(&["train", "--set", "train.stesp=5"], tmp.path()), &["train.stesp", "train.steps"]);
    fails_with(&ferrotron(&["info", "--set", "optimizer.learning_rate=1"], tmp.path()), &["optimizer.learning_rate", "did you mean"]);
}

#[test]
fn unknown_key_in_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("c.toml"), "[model]\nn_layer = 3\n").unwrap();
    fails_with(&ferrotron(&["info", "--config", "c.toml"], tmp.path()), &["model.n_layer", "model.n_layers"]);
}

#[test]
fn out_of_range_values() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(&ferrotron(&["info", "--set", "model.n_heads=5"], tmp.path()), &["n_heads", "d_model"]);
    fails_with(&ferrotron(&["info", "--set", "model.n_kv_heads=3"], tmp.path()), &["n_kv_heads", "n_heads"]);
    fails_with(&ferrotron(&["info", "--set", "train.seq_len=100000"], tmp.path()), &["seq_len", "max_seq_len"]);
    fails_with(&ferrotron(&["info", "--set", "optimizer.lr=-1"], tmp.path()), &["optimizer.lr"]);
    fails_with(&ferrotron(&["info", "--set", "model.preset=gpt5"], tmp.path()), &["gpt5", "gpt2-124m"]);
    fails_with(&ferrotron(&["info", "--set", "device=tpu"], tmp.path()), &["device", "cuda"]);
    fails_with(&ferrotron(&["info", "--set", "train.logits_chunk=100"], tmp.path()), &["train.logits_chunk", "multiple of 64"]);
}

#[test]
fn missing_data_says_which_prepare_command_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(&ferrotron(&train_args(&["--set", "data.path=nowhere"]), tmp.path()), &["nowhere", "ferrotron prepare"]);
}

#[test]
fn train_generate_and_resume_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = ferrotron(&train_args(&[]), tmp.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("sample 1"), "{stdout}");
    let run = tmp.path().join("runs/r");

    // Generation from the run works.
    let gen = ferrotron(&["generate", "--run", "runs/r", "--prompt", "The ", "--max-tokens", "5"], tmp.path());
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));

    // Starting a new run into the same folder is refused; nothing changes.
    let before = std::fs::read(run.join("config.toml")).unwrap();
    fails_with(&ferrotron(&train_args(&[]), tmp.path()), &["already holds a run", "--resume"]);
    assert_eq!(before, std::fs::read(run.join("config.toml")).unwrap());

    // Resuming with a different model shape names the field.
    fails_with(&ferrotron(&["train", "--resume", "runs/r", "--set", "model.d_model=64", "--set", "model.d_ff=64"], tmp.path()), &["model.d_model", "differs"]);

    // A truncated checkpoint is named, and left as it was.
    let ckpt = run.join("checkpoints/step_00000002/model.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let cut = std::fs::read(&ckpt).unwrap();
    fails_with(&ferrotron(&["generate", "--run", "runs/r"], tmp.path()), &["model.safetensors"]);
    assert_eq!(cut, std::fs::read(&ckpt).unwrap());

    // A foreign file in place of the checkpoint.
    std::fs::write(&ckpt, b"this is not a checkpoint at all, just some text").unwrap();
    fails_with(&ferrotron(&["train", "--resume", "runs/r", "--set", "train.steps=4"], tmp.path()), &["model.safetensors"]);
}

#[test]
fn init_from_a_missing_checkpoint_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(&ferrotron(&train_args(&["--set", "model.init_from=no-such-model"]), tmp.path()), &["model.init_from", "no-such-model"]);
    assert!(!tmp.path().join("runs/r").exists(), "a failed start must not leave a run folder");
}

#[test]
fn resume_of_a_folder_that_is_not_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(&ferrotron(&["train", "--resume", "nothing-here"], tmp.path()), &["nothing-here", "config.toml"]);
}

#[test]
fn info_prints_counts_flops_and_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ferrotron(&["info", "--set", "model.preset=gpt2-124m"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("124.44M") || text.contains("124,439,808"), "{text}");
}

#[test]
fn shard_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    std::fs::write(tmp.path().join("d/a.txt"), "hello world, this is a small document. ".repeat(200)).unwrap();
    let ok = ferrotron(&["prepare", "--input", "d", "--out", "shards", "--val-fraction", "0.0"], tmp.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let shard = std::fs::read_dir(tmp.path().join("shards")).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("train")).unwrap();
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
    let name = shard.file_name().unwrap().to_string_lossy().to_string();
    fails_with(&ferrotron(&train_args(&["--set", "data.path=shards", "--set", "model.vocab_size=50257"]), tmp.path()), &[&name]);
}

#[test]
fn compare_runs_writes_a_plot_and_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, opt) in [("a", "adamw"), ("b", "lion")] {
        let run = format!("run.name={name}");
        let o = format!("optimizer.name={opt}");
        let out = ferrotron(&train_args(&["--set", &run, "--set", &o, "--set", "train.eval_every=1", "--set", "train.samples=0"]), tmp.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = ferrotron(&["compare", "--runs", "runs/a", "runs/b", "--out", "c.png"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| a | adamw |") && table.contains("| b | lion |"), "{table}");
    assert_eq!(&std::fs::read(tmp.path().join("c.png")).unwrap()[..4], b"\x89PNG");
    fails_with(&ferrotron(&["compare", "--runs", "runs/nope"], tmp.path()), &["runs/nope"]);
}

#[test]
fn info_works_for_every_preset() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, _) in ferrotron::config::PRESETS {
        let set = format!("model.preset={name}");
        for device in ["cpu", "cuda"] {
            let dev = format!("device={device}");
            let out = ferrotron(&["info", "--set", &set, "--set", &dev], tmp.path());
            assert!(out.status.success(), "{name} on {device}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains("optimizer state"), "{name}");
        }
    }
}

/// A preset's file given with --config is that preset, not its keys over
/// `tiny`'s (the header said "preset tiny" for configs/llama3-8b.toml).
#[test]
fn a_preset_file_given_as_config_names_its_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in ferrotron::config::PRESETS {
        let file = root.join("configs").join(format!("{name}.toml"));
        let out = ferrotron(&["info", "--config", file.to_str().unwrap()], tmp.path());
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let header = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
        assert!(header.contains(&format!("preset {name} ")), "{name}: {header}");
    }
}

#[test]
fn generate_rejects_an_unknown_device() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = ferrotron(&train_args(&["--set", "train.samples=0"]), tmp.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    fails_with(&ferrotron(&["generate", "--run", "runs/r", "--device", "tpu"], tmp.path()), &["tpu", "cpu or cuda"]);
}

#[test]
fn head_sizes_the_cuda_kernels_lack_are_refused_on_cuda_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    // Head size 16 now runs (CUDA-core kernels, padded); 160 is past the largest tile.
    let ok = ferrotron(&["info", "--set", "device=cuda", "--set", "model.d_model=32", "--set", "model.n_heads=2", "--set", "model.n_kv_heads=2"], tmp.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let out = ferrotron(&["info", "--set", "device=cuda", "--set", "model.d_model=320", "--set", "model.n_heads=2", "--set", "model.n_kv_heads=2"], tmp.path());
    fails_with(&out, &["head size", "160", "1 to 128", "device=cpu"]);
}

#[test]
fn lr_0_is_a_value_and_rope_scaling_keys_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ferrotron(&["info", "--set", "optimizer.lr=0"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let llama = ["info", "--set", "model.preset=tiny-llama", "--set", "model.rope_scaling_factor=8"];
    let out = ferrotron(&llama, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = [&llama[..], &["--set", "model.rope_high_freq_factor=0.5"]].concat();
    fails_with(&ferrotron(&bad, tmp.path()), &["model.rope_low_freq_factor", "model.rope_high_freq_factor"]);
    let bad = [&llama[..], &["--set", "model.rope_original_max_seq=0"]].concat();
    fails_with(&ferrotron(&bad, tmp.path()), &["model.rope_original_max_seq"]);
    fails_with(&ferrotron(&["info", "--set", "model.rope_scaling_factor=-2"], tmp.path()), &["model.rope_scaling_factor"]);
}

/// Head size 160 (QUICK's model, widened) has no CUDA attention kernel:
/// generate --device cuda says so and samples on the CPU, with the CPU's
/// result.
#[test]
fn generate_on_cuda_falls_back_to_the_cpu_for_other_head_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let wide = ["--set", "train.samples=0", "--set", "model.d_model=320", "--set", "model.n_heads=2", "--set", "model.n_kv_heads=2", "--set", "train.steps=2"];
    let ok = ferrotron(&train_args(&wide), tmp.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let args = |dev: &'static str| vec!["generate", "--run", "runs/r", "--prompt", "The", "--temperature", "0", "--max-tokens", "12", "--ids", "--device", dev];
    let cpu = ferrotron(&args("cpu"), tmp.path());
    let cuda = ferrotron(&args("cuda"), tmp.path());
    assert!(cpu.status.success() && cuda.status.success(), "{}", String::from_utf8_lossy(&cuda.stderr));
    assert!(String::from_utf8_lossy(&cuda.stderr).contains("head size 160 is not supported by the CUDA attention kernels"), "{}", String::from_utf8_lossy(&cuda.stderr));
    assert_eq!(cpu.stdout, cuda.stdout);
    let ids: Vec<u32> = serde_json::from_slice(&cpu.stdout).unwrap();
    assert_eq!(ids.len(), 12);
}

/// The checkpoint's own tokenizer through the command line: prepare
/// --tokenizer, fine-tune from the checkpoint at lr 0, greedy generate
/// (= transformers' tokens, recorded in the fixture), export as bf16 shards.
#[test]
fn prepare_with_a_tokenizer_json_then_generate_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = fixtures_dir();
    std::fs::write(tmp.path().join("t.txt"), "The cat sat on the mat. The dog sat on the log.\n".repeat(30)).unwrap();
    fails_with(&ferrotron(&["prepare", "--input", "t.txt", "--out", "d", "--tokenizer", "nope/tokenizer.json"], tmp.path()), &["nope/tokenizer.json", "gpt2"]);
    let tok = fixtures.join("tokenizer").display().to_string();
    let out = ferrotron(&["prepare", "--input", "t.txt", "--out", "d", "--tokenizer", &tok, "--val-fraction", "0.2"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("300 ids"), "{}", String::from_utf8_lossy(&out.stdout));
    let init = format!("model.init_from={}", fixtures.join("llama32").display());
    let train = ["train", "--set", &init, "--set", "model.preset=tiny-llama", "--set", "data.path=d", "--set", "optimizer.lr=0", "--set", "train.steps=1",
        "--set", "train.batch_size=2", "--set", "train.seq_len=32", "--set", "train.samples=0", "--set", "run.progress=false", "--set", "run.name=ft"];
    let out = ferrotron(&train, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let greedy: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures.join("llama32/greedy.json")).unwrap()).unwrap();
    let out = ferrotron(&["generate", "--run", "runs/ft", "--prompt", "The cat sat", "--temperature", "0", "--max-tokens", "16", "--ids"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids, greedy["new_ids"]);
    let out = ferrotron(&["generate", "--run", "runs/ft", "--prompt", "The cat sat", "--temperature", "0", "--max-tokens", "16"], tmp.path());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), format!("The cat sat{}", greedy["text"].as_str().unwrap()));
    fails_with(&ferrotron(&["export", "--run", "runs/ft", "--out", "hf", "--dtype", "fp8"], tmp.path()), &["--dtype fp8", "bf16"]);
    fails_with(&ferrotron(&["export", "--run", "runs/ft", "--out", "hf", "--max-shard-size", "5XB"], tmp.path()), &["--max-shard-size", "XB"]);
    let out = ferrotron(&["export", "--run", "runs/ft", "--out", "hf", "--dtype", "bf16", "--max-shard-size", "100KB"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(tmp.path().join("hf").join(f).exists(), "export lacks {f}");
    }
}

/// tests/fixtures/hf: relative to the working directory when it is there (a
/// test executable run from a copy of the repository on another machine),
/// else in the source tree this test was built from.
fn fixtures_dir() -> std::path::PathBuf {
    let here = std::path::Path::new("tests/fixtures/hf");
    if let Ok(abs) = here.canonicalize() {
        return abs;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}
