//! ferrotron against Hugging Face transformers, on the CPU, in CI: the
//! small checkpoints, tokenizer and reference outputs in tests/fixtures/hf/
//! were made by transformers and tokenizers (tools/make_hf_fixtures.py; the
//! versions are in its manifest.json), so no Python is needed here.
//!
//! - logits of a GPT-2 (fp16 file), a GQA Llama (bf16) and a Llama 3.2-style
//!   model (GQA, tied embeddings, llama3 rope scaling, sharded bf16) equal
//!   transformers' fp32 logits, and the rotary frequencies equal its own;
//! - the tokenizer.json encodes and decodes as transformers does;
//! - greedy generation equals transformers' `generate`;
//! - prepare --tokenizer, a 1-step fine-tune at lr 0 and export give back
//!   the imported tensors byte for byte, in the same layout (bf16, sharded,
//!   rope scaling, tied embeddings, token ids).
//!
//! Tolerance for logits: both sides compute in fp32 from the same (rounded)
//! weights, so only summation order and the libm of exp/cos/sin differ:
//! a few fp32 ulps per operation, ~1e-6 relative after two layers. We
//! allow 1e-4 × max(1, max |logit|) (the earlier GPU-machine comparison
//! measured 1.2e-6 on bigger models); a real mistake (a wrong rope
//! frequency, a missing norm weight) moves logits by 1e-2 or more, and the
//! test below checks that dropping the rope scaling alone does.

use ferrotron::backend::cpu::CpuBackend;
use ferrotron::ckpt;
use ferrotron::config::{self, ModelConfig};
use ferrotron::data::{Dataset, Split, Tokenizer};
use ferrotron::model::{Model, Recompute};
use ferrotron::train::sample::{self, SampleOptions};
use ferrotron::util::rng::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    fixtures_dir()
}

/// name → (dtype, shape, raw bytes) of every tensor in a safetensors file.
type Raw = HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn read_raw(path: &Path) -> Raw {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

/// Every tensor of an HF model folder, single file or sharded.
fn read_model(dir: &Path) -> Raw {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return read_raw(&dir.join("model.safetensors"));
    }
    let json: Value = serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    let files: std::collections::BTreeSet<&str> = json["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    let mut all = Raw::new();
    for f in files {
        all.extend(read_raw(&dir.join(f)));
    }
    all
}

fn f32s(raw: &Raw, name: &str) -> Vec<f32> {
    let (dtype, _, bytes) = &raw[name];
    assert_eq!(*dtype, safetensors::Dtype::F32, "{name}");
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn i64s(raw: &Raw, name: &str) -> Vec<i64> {
    raw[name].2.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// ferrotron's CPU logits for the fixture's reference tokens, and transformers'.
fn logits(cfg: &ModelConfig, params: &[f32], reference: &Raw) -> (Vec<f32>, Vec<f32>) {
    let shape = &reference["tokens"].1;
    let (batch, seq) = (shape[0], shape[1]);
    let tokens: Vec<u32> = i64s(reference, "tokens").iter().map(|&t| t as u32).collect();
    let mut b = CpuBackend::new();
    let mut m = Model::new(&mut b, cfg, Recompute::Off).unwrap();
    m.set_params(&mut b, params).unwrap();
    (m.logits(&mut b, &tokens, batch, seq).unwrap(), f32s(reference, "logits"))
}

#[test]
fn logits_match_transformers() {
    for name in ["gpt2", "llama-gqa", "llama32"] {
        let dir = fixtures().join(name);
        let (cfg, params) = ckpt::import(&dir).unwrap();
        let reference = read_raw(&dir.join("reference.safetensors"));
        let (ours, theirs) = logits(&cfg, &params, &reference);
        let scale = theirs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&ours, &theirs);
        println!("{name}: max |logit| {scale:.3}, max |ferrotron - transformers| {d:.2e}");
        assert!(d <= 1e-4 * scale.max(1.0), "{name}: logits differ from transformers by {d} (max |logit| {scale})");
    }
}

#[test]
fn llama32_fixture_is_what_it_claims() {
    let dir = fixtures().join("llama32");
    assert!(dir.join("model.safetensors.index.json").exists() && !dir.join("model.safetensors").exists(), "sharded");
    let (cfg, _) = ckpt::import(&dir).unwrap();
    assert!(cfg.tied_embeddings);
    assert_eq!((cfg.n_heads, cfg.n_kv_heads, cfg.head_dim(), cfg.vocab_size), (2, 1, 32, 300));
    assert_eq!((cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_seq), (8.0, 1.0, 4.0, 64));
    assert!(read_model(&dir).values().all(|(dtype, _, _)| *dtype == safetensors::Dtype::BF16));
}

/// The rotary table both backends use equals the one transformers builds
/// (default rope and llama3 scaling), value for value.
#[test]
fn rope_frequencies_match_transformers() {
    for name in ["llama-gqa", "llama32"] {
        let dir = fixtures().join(name);
        let (cfg, _) = ckpt::import(&dir).unwrap();
        let theirs = f32s(&read_raw(&dir.join("reference.safetensors")), "inv_freq");
        let ours = cfg.rope().inv_freq(cfg.head_dim());
        let worst = ours.iter().zip(&theirs).map(|(a, b)| ((a - b) / b).abs()).fold(0.0f32, f32::max);
        println!("{name}: inv_freq {ours:?}\n  largest relative difference to transformers {worst:.1e}");
        // Same f32 operations in the same order; powf may differ by an ulp.
        assert!(worst <= 2.0 * f32::EPSILON, "{name}: {ours:?} vs {theirs:?}");
    }
    // The llama32 fixture has pairs in all three bands.
    let (cfg, _) = ckpt::import(&fixtures().join("llama32")).unwrap();
    let scaled = cfg.rope().inv_freq(32);
    let plain = ferrotron::backend::Rope::plain(cfg.rope_theta).inv_freq(32);
    let kept = scaled.iter().zip(&plain).filter(|(s, p)| s == p).count();
    let divided = scaled.iter().zip(&plain).filter(|(s, p)| **s == **p / 8.0).count();
    assert!(kept > 0 && divided > 0 && kept + divided < 16, "kept {kept}, divided {divided} of 16");
}

/// Without its llama3 scaling the Llama 3.2 fixture's logits move by far
/// more than the tolerance: the comparison above really tests the scaling.
#[test]
fn llama3_scaling_changes_the_logits() {
    let dir = fixtures().join("llama32");
    let (cfg, params) = ckpt::import(&dir).unwrap();
    let reference = read_raw(&dir.join("reference.safetensors"));
    let plain = ModelConfig { rope_scaling_factor: 0.0, ..cfg };
    let (ours, theirs) = logits(&plain, &params, &reference);
    let scale = theirs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let d = max_abs_diff(&ours, &theirs);
    println!("without rope scaling: max difference {d:.3} (max |logit| {scale:.3})");
    assert!(d > 100.0 * 1e-4 * scale, "dropping the scaling moved logits by only {d}");
}

#[test]
fn tokenizer_matches_transformers() {
    let dir = fixtures().join("tokenizer");
    let tok = Tokenizer::load(dir.to_str().unwrap()).unwrap();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("encodings.json")).unwrap()).unwrap();
    assert_eq!(tok.name(), "hf");
    assert_eq!(tok.vocab_size(), expected["vocab_size"].as_u64().unwrap() as usize);
    assert_eq!(tok.eot(), Some(expected["eos_id"].as_u64().unwrap() as u32));
    assert_eq!(tok.doc_start(), vec![expected["bos_id"].as_u64().unwrap() as u32]);
    for case in expected["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text), ids, "encoding {text:?}");
        assert_eq!(tok.decode(&ids), case["decoded"].as_str().unwrap(), "decoding {text:?}");
    }
    // The file itself, or the model folder that carries it, loads the same.
    assert_eq!(Tokenizer::load(dir.join("tokenizer.json").to_str().unwrap()).unwrap(), tok);
    assert_eq!(Tokenizer::load(fixtures().join("llama32").to_str().unwrap()).unwrap().encode("The cat"), tok.encode("The cat"));
    // Decoding never fails: unknown ids and cut characters become U+FFFD.
    let party = tok.encode("🎉");
    assert!(tok.decode(&[party[1]]).contains('\u{FFFD}'));
    assert_eq!(tok.decode(&[party[0], 99_999]), "<|begin_of_text|>\u{FFFD}");
}

fn greedy_expected() -> (String, Vec<u32>, Vec<u32>, String) {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("llama32/greedy.json")).unwrap()).unwrap();
    let ids = |k: &str| g[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<u32>>();
    (g["prompt"].as_str().unwrap().to_string(), ids("prompt_ids"), ids("new_ids"), g["text"].as_str().unwrap().to_string())
}

#[test]
fn greedy_generation_matches_transformers() {
    let dir = fixtures().join("llama32");
    let (prompt, prompt_ids, new_ids, _) = greedy_expected();
    let tok = Tokenizer::load(dir.to_str().unwrap()).unwrap();
    assert_eq!(tok.encode(&prompt), prompt_ids, "the prompt's tokens (BOS first)");
    let (cfg, params) = ckpt::import(&dir).unwrap();
    let mut b = CpuBackend::new();
    let mut m = Model::new(&mut b, &cfg, Recompute::Off).unwrap();
    m.set_params(&mut b, &params).unwrap();
    let opts = SampleOptions { max_tokens: new_ids.len(), temperature: 0.0, top_k: 0 };
    let ours = sample::generate(&mut b, &mut m, &prompt_ids, opts, None, &mut Rng::new(0)).unwrap();
    assert_eq!(ours, new_ids);
}

fn cfg(run_dir: &Path, name: &str, sets: &[String]) -> config::Config {
    let mut all: Vec<String> = ["train.batch_size=2", "train.seq_len=32", "train.eval_every=0", "train.eval_batches=1", "train.ckpt_every=0", "train.samples=0", "run.progress=false"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.push(format!("run.dir=\"{}\"", run_dir.display()));
    all.push(format!("run.name={name}"));
    all.extend(sets.iter().cloned());
    config::load(None, &all).unwrap()
}

/// The whole path a user takes: prepare text with the checkpoint's own
/// tokenizer, fine-tune from the checkpoint (one step at lr 0: the weights
/// must not move, weight decay included), generate, export. The export is
/// the imported checkpoint again, tensor for tensor and byte for byte, in
/// the same layout (bf16, sharded, tied, llama3 rope scaling, token ids).
#[test]
fn prepare_finetune_at_lr_0_generate_and_export_give_back_the_checkpoint() {
    use ferrotron::data::prepare::{prepare, PrepareOptions};
    let tmp = tempfile::tempdir().unwrap();
    let ckpt_dir = fixtures().join("llama32");
    let text = tmp.path().join("corpus.txt");
    std::fs::write(&text, "The cat sat on the mat. The dog sat on the log.\n".repeat(40)).unwrap();
    let data = tmp.path().join("data");
    let opts = PrepareOptions { tokenizer: fixtures().join("tokenizer/tokenizer.json").display().to_string(), progress: false, val_fraction: 0.1, ..Default::default() };
    let summary = prepare(&[text], &data, &opts).unwrap();
    assert!(summary.tokenizer.contains("tokenizer.json") && summary.tokenizer.contains("300 ids"), "{}", summary.tokenizer);
    assert!(data.join("tokenizer.json").exists() && data.join("tokenizer_config.json").exists());
    let ds = Dataset::open(data.to_str().unwrap()).unwrap();
    let train_tokens = ds.tokens(Split::Train).unwrap();
    assert_eq!(train_tokens[0], 298, "a document starts with the BOS the tokenizer adds");
    let val_tokens = ds.tokens(Split::Val).unwrap();
    assert_eq!(val_tokens.last(), Some(&299), "the document ends with EOS (its tail is the validation split)");

    let sets = vec![
        format!("model.init_from=\"{}\"", ckpt_dir.display()),
        format!("data.path=\"{}\"", data.display()),
        "model.preset=tiny-llama".into(),
        "train.steps=1".into(),
        "optimizer.lr=0".into(),
        "optimizer.weight_decay=0.1".into(),
    ];
    let run = ferrotron::train::trainer::train(&cfg(tmp.path(), "ft", &sets), None).unwrap();
    assert!(run.losses[0].is_finite() && run.losses[0] < 3.0, "the trained checkpoint knows this text: loss {}", run.losses[0]);
    let run_dir = tmp.path().join("ft");
    assert!(run_dir.join("tokenizer.json").exists(), "the run keeps its tokenizer");

    // generate (the CLI's path) with the run's tokenizer = transformers' greedy text.
    let (prompt, _, new_ids, text) = greedy_expected();
    let opts = SampleOptions { max_tokens: new_ids.len(), temperature: 0.0, top_k: 0 };
    let out = ferrotron::train::generate::generate_from_run(&run_dir, &prompt, opts, 1, 0, "cpu").unwrap();
    assert_eq!(out[0].ids, new_ids);
    assert_eq!(out[0].text, text);

    // export as it came: bf16, shards of at most 100 KB.
    let exported = tmp.path().join("export");
    ferrotron::train::export::export_run(&run_dir, &exported, ckpt::Dtype::Bf16, 100_000).unwrap();
    let (ours, theirs) = (read_model(&exported), read_model(&ckpt_dir));
    let mut names: Vec<&String> = theirs.keys().collect();
    names.sort();
    assert_eq!(ours.keys().collect::<std::collections::BTreeSet<_>>(), names.iter().copied().collect(), "the same tensors (no lm_head: tied)");
    for name in names {
        assert!(ours[name] == theirs[name], "{name}: exported tensor differs from the imported one");
    }
    assert!(exported.join("model.safetensors.index.json").exists() && !exported.join("model.safetensors").exists());
    let config: Value = serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(config["rope_scaling"]["factor"], 8.0);
    assert_eq!(config["rope_scaling"]["original_max_position_embeddings"], 64);
    assert_eq!((config["bos_token_id"].clone(), config["eos_token_id"].clone()), (Value::from(298), Value::from(299)));
    assert_eq!(std::fs::read(exported.join("tokenizer.json")).unwrap(), std::fs::read(fixtures().join("tokenizer/tokenizer.json")).unwrap());
    // And it imports as the same model.
    let (a, pa) = ckpt::import(&exported).unwrap();
    let (b, pb) = ckpt::import(&ckpt_dir).unwrap();
    assert_eq!((a, pa), (b, pb));
}

/// Token ids above 65535 (Llama 3 has 128256) go through prepare, u32
/// shards and the loader.
#[test]
fn vocabularies_above_65536_use_u32_shards() {
    let tmp = tempfile::tempdir().unwrap();
    // A word-level tokenizer of 70000 words: w0 ... w69999.
    let vocab: serde_json::Map<String, Value> = (0..70_000).map(|i| (format!("w{i}"), Value::from(i))).collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    let tok_path = tmp.path().join("tokenizer.json");
    std::fs::write(&tok_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let text = tmp.path().join("t.txt");
    let words: Vec<String> = (0..400).map(|i| format!("w{}", 65_000 + i * 11)).collect();
    std::fs::write(&text, words.join(" ")).unwrap();
    let data = tmp.path().join("data");
    let opts = ferrotron::data::PrepareOptions { tokenizer: tok_path.display().to_string(), progress: false, val_fraction: 0.0, ..Default::default() };
    ferrotron::data::prepare(&[text], &data, &opts).unwrap();
    let meta = ferrotron::data::Meta::read(&data).unwrap();
    assert_eq!((meta.tokenizer, meta.vocab_size), (ferrotron::data::TokenizerKind::Hf, 70_000));
    let shard = ferrotron::data::read_shard(&data.join(&meta.train.shards[0].file)).unwrap();
    assert_eq!(shard.dtype, ferrotron::data::Dtype::U32);
    assert_eq!(shard.vocab_size, 70_000);
    let ds = Dataset::open(data.to_str().unwrap()).unwrap();
    let tokens = ds.tokens(Split::Train).unwrap();
    // No BOS/EOS in this tokenizer: the words, then a newline... which this
    // word-level vocabulary does not have, so nothing (whitespace is dropped).
    let expected: Vec<u32> = (0..400).map(|i| 65_000 + i * 11).collect();
    assert_eq!(tokens, expected);
    assert!(tokens.iter().any(|&t| t >= 65_536));
}

/// The CPU model and loss over a vocabulary above 65536 ids (padded to a
/// multiple of 64): ids past 65535 embed and score like any other, and an
/// untrained model's loss is the uniform guess ln(V).
#[test]
fn loss_over_a_vocabulary_above_65536() {
    let cfg = config::load(None, &["model.preset=tiny-llama".into(), "model.vocab_size=70001".into(), "model.d_model=32".into(), "model.n_heads=2".into(), "model.n_kv_heads=1".into(), "model.d_ff=64".into(), "model.n_layers=1".into()]).unwrap().model;
    assert_eq!(cfg.padded_vocab(), 70016);
    let mut b = CpuBackend::new();
    let mut m = Model::new(&mut b, &cfg, Recompute::Off).unwrap();
    let mut w = ferrotron::model::init::init_weights(&cfg, &m.layout, 3);
    w.iter_mut().for_each(|x| *x *= 1e-3); // near-uniform predictions
    m.set_params(&mut b, &w).unwrap();
    let tokens: Vec<u32> = (0..16).map(|i| 65_530 + 277 * i).collect();
    let loss = m.eval_loss(&mut b, &tokens[..15], &tokens[1..], 1, 15).unwrap();
    assert!((loss - (70001f32).ln()).abs() < 1e-3, "loss {loss} vs ln V {}", (70001f32).ln());
    assert!(m.forward_backward(&mut b, &tokens[..15], &tokens[1..], 1, 15, 1.0).unwrap().is_finite());
    // An id outside the vocabulary is an error, not a silent zero row.
    assert!(m.eval_loss(&mut b, &[70001; 4], &[1; 4], 1, 4).is_err());
}

/// A Llama 3-shaped config (vocab 128256, the 3.2 rope scaling) is taken as
/// a model config and `info` describes it.
#[test]
fn llama3_vocabulary_in_info() {
    let c = config::load(None, &["model.preset=llama3-8b".into(), "model.rope_scaling_factor=32".into(), "model.rope_original_max_seq=8192".into()]).unwrap();
    let info = ferrotron::telemetry::report::format_info(&c);
    assert!(info.contains("128256") || info.contains("128,256"), "{info}");
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
