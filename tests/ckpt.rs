//! Checkpoints (save/load/latest/prune/errors) and Hugging Face exchange.

use ferrotron::ckpt::{self, hf_tensors, Dtype, Manifest, NamedTensor};
use ferrotron::config::{self, ModelConfig};
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::padding::repad;
use std::fs;
use std::path::{Path, PathBuf};

fn preset(name: &str) -> ModelConfig {
    config::load(None, &[format!("model.preset={name}")]).unwrap().model
}

/// Weights of `cfg`'s model: [`values`] on the real tensors, zero padding
/// (what a model holds: padding never leaves zero, and exports drop it).
fn model_values(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let tight = cfg.unpadded();
    repad(&tight, cfg, &values(ParamLayout::new(&tight).total, seed))
}

/// Deterministic values with a spread of magnitudes and signs.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// A tiny model's parameters plus two optimizer buffers, saved at `step`.
struct Fixture {
    cfg: ModelConfig,
    layout: ParamLayout,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Fixture {
    fn new(cfg: ModelConfig) -> Self {
        let layout = ParamLayout::new(&cfg);
        let mut params = values(layout.total, 1);
        // Values that must survive bit-exactly, not just approximately.
        params[0] = -0.0;
        params[1] = f32::MIN_POSITIVE / 4.0;
        params[2] = f32::MAX;
        // Not NaN: a checkpoint never holds a non-finite value (issue 17;
        // see save_refuses_non_finite_values).
        params[3] = -f32::MAX;
        let (m, v) = (values(layout.total, 2), values(layout.total, 3));
        Fixture { cfg, layout, params, m, v }
    }
    fn manifest(&self, step: u64) -> Manifest {
        let mut man = Manifest::new(step, "[model]\npreset = \"tiny\"\n");
        man.loader = serde_json::json!({"shard": 3, "pos": 12345});
        man.rng = serde_json::json!({"state": [1u64, 2, 3]});
        man.optimizer = serde_json::json!({"name": "adamw", "t": step});
        man
    }
    fn save(&self, run: &Path, step: u64, keep: usize) -> PathBuf {
        let model = ckpt::named_from_layout(&self.layout, &self.params).unwrap();
        let optim = vec![
            NamedTensor { name: "adamw.m".into(), shape: vec![self.layout.total], data: &self.m },
            NamedTensor { name: "adamw.v".into(), shape: vec![self.layout.total], data: &self.v },
        ];
        ckpt::save(run, &self.manifest(step), &model, &optim, keep).unwrap()
    }
}

fn step_names(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn save_load_round_trip_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::new(preset("tiny"));
    let dir = fx.save(tmp.path(), 200, 2);
    assert_eq!(dir, tmp.path().join("checkpoints/step_00000200"));
    for f in ["model.safetensors", "optimizer.safetensors", "manifest.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let loaded = ckpt::load(&dir).unwrap();
    // The saved manifest gains a CRC-32 per tensor file.
    assert_eq!(loaded.manifest.checksums.keys().collect::<Vec<_>>(), ["model.safetensors", "optimizer.safetensors"]);
    let without_sums = Manifest { checksums: Default::default(), ..loaded.manifest.clone() };
    assert_eq!(without_sums, fx.manifest(200).clone_with_created(&loaded.manifest.created));
    assert_eq!(loaded.model.len(), fx.layout.params.len());
    let mut back = vec![0.0; fx.layout.total];
    ckpt::load_into_layout(&loaded, &fx.layout, &mut back).unwrap();
    assert_eq!(bits(&back), bits(&fx.params));
    assert_eq!(bits(&loaded.optim_tensor("adamw.m").unwrap().data), bits(&fx.m));
    assert_eq!(bits(&loaded.optim_tensor("adamw.v").unwrap().data), bits(&fx.v));
    assert_eq!(loaded.optim_tensor("adamw.m").unwrap().shape, vec![fx.layout.total]);
    assert!(loaded.optim_tensor("nope").is_err());
}

trait WithCreated {
    fn clone_with_created(&self, created: &str) -> Self;
}
impl WithCreated for Manifest {
    fn clone_with_created(&self, created: &str) -> Self {
        Manifest { created: created.to_string(), ..self.clone() }
    }
}

#[test]
fn manifest_created_is_rfc3339_utc() {
    let c = Manifest::new(1, "").created;
    assert_eq!(c.len(), 20, "{c}");
    assert!(c.ends_with('Z') && &c[4..5] == "-" && &c[10..11] == "T", "{c}");
    assert!(c.as_str() > "2024-01-01", "{c}");
}

#[test]
fn keep_last_prunes_old_checkpoints_and_tmp_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    let fx = Fixture::new(preset("tiny"));
    fs::create_dir_all(run.join("checkpoints/step_00000050.tmp")).unwrap();
    fs::write(run.join("checkpoints/step_00000050.tmp/model.safetensors"), b"partial").unwrap();
    fs::create_dir_all(run.join("checkpoints/notes")).unwrap();
    for step in [100, 200, 300, 400, 500] {
        fx.save(run, step, 2);
    }
    assert_eq!(step_names(run), ["notes", "step_00000400", "step_00000500"]);
    // The new checkpoint counts toward keep_last and survives even when it
    // is not the newest by step (a run resumed from an older checkpoint).
    fx.save(run, 250, 2);
    assert_eq!(step_names(run), ["notes", "step_00000250", "step_00000500"]);
    fx.save(run, 260, 1);
    assert_eq!(step_names(run), ["notes", "step_00000260"]);
}

#[test]
fn saving_the_same_step_twice_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fx = Fixture::new(preset("tiny"));
    fx.save(tmp.path(), 100, 3);
    fx.params[10] = 42.0;
    let dir = fx.save(tmp.path(), 100, 3);
    assert_eq!(step_names(tmp.path()), ["step_00000100"]);
    let loaded = ckpt::load(&dir).unwrap();
    let mut back = vec![0.0; fx.layout.total];
    ckpt::load_into_layout(&loaded, &fx.layout, &mut back).unwrap();
    assert_eq!(back[10], 42.0);
}

#[test]
fn latest_ignores_tmp_and_incomplete_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    assert_eq!(ckpt::latest(run).unwrap(), None);
    let fx = Fixture::new(preset("tiny"));
    let good = fx.save(run, 100, 5);
    // A newer save that crashed before the rename: complete files, .tmp name.
    let staged = run.join("checkpoints/step_00000300.tmp");
    fs::create_dir_all(&staged).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors", "manifest.json"] {
        fs::copy(good.join(f), staged.join(f)).unwrap();
    }
    // A newer directory without its manifest.
    let partial = run.join("checkpoints/step_00000200");
    fs::create_dir_all(&partial).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors"] {
        fs::copy(good.join(f), partial.join(f)).unwrap();
    }
    assert_eq!(ckpt::latest(run).unwrap(), Some(good.clone()));
    let e = err_text(ckpt::load(&partial));
    assert!(e.contains("step_00000200") && e.contains("manifest.json"), "{e}");
    // Sorted by number, not by name length.
    let newer = fx.save(run, 1000, 5);
    assert_eq!(ckpt::latest(run).unwrap(), Some(newer));
}

#[test]
fn truncated_model_file_is_rejected_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::new(preset("tiny"));
    let dir = fx.save(tmp.path(), 200, 2);
    let file = dir.join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(e.contains("truncated"), "{e}");
    // Cut inside the header as well.
    fs::write(&file, &bytes[..20]).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains(&file.display().to_string()) && e.contains("truncated"), "{e}");
    fs::write(&file, &bytes[..3]).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains(&file.display().to_string()) && e.contains("too short"), "{e}");
}

#[test]
fn foreign_file_is_rejected_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::new(preset("tiny"));
    let dir = fx.save(tmp.path(), 200, 2);
    let file = dir.join("optimizer.safetensors");
    fs::write(&file, b"PK\x03\x04 this is a zip archive, not safetensors at all").unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains(&file.display().to_string()) && e.contains("not a safetensors file"), "{e}");
    // An 8-byte length that fits, followed by something that is not JSON.
    let mut fake = 16u64.to_le_bytes().to_vec();
    fake.extend_from_slice(b"\x00\x01binary garbage!!");
    fs::write(&file, &fake).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains(&file.display().to_string()) && e.contains("not a safetensors file"), "{e}");
}

#[test]
fn bad_manifests_are_rejected_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::new(preset("tiny"));
    let dir = fx.save(tmp.path(), 200, 2);
    let path = dir.join("manifest.json");
    let good = fs::read_to_string(&path).unwrap();

    fs::write(&path, good.replace("\"format\": 1", "\"format\": 99")).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains("manifest.json") && e.contains("format 99"), "{e}");

    fs::write(&path, "{ \"format\": 1, ").unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains("manifest.json") && e.contains("not valid JSON"), "{e}");

    fs::write(&path, "{ \"format\": 1 }").unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains("manifest.json") && e.contains("missing field"), "{e}");

    fs::remove_file(&path).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains("no manifest.json"), "{e}");
    assert_eq!(ckpt::latest(tmp.path()).unwrap(), None);
}

#[test]
fn shape_mismatch_and_missing_or_extra_tensors_name_the_tensor_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::new(preset("tiny"));
    let dir = fx.save(tmp.path(), 200, 2);
    let loaded = ckpt::load(&dir).unwrap();
    let file = dir.join("model.safetensors").display().to_string();

    let mut other = fx.cfg.clone();
    other.d_ff = fx.cfg.d_ff / 2;
    let layout = ParamLayout::new(&other);
    let mut buf = vec![0.0; layout.total];
    let e = err_text(ckpt::load_into_layout(&loaded, &layout, &mut buf));
    let want = format!(
        "checkpoint {file}: tensor h.0.mlp.fc.w has shape [{}, {}] but the config expects [{}, {}]",
        fx.cfg.d_ff, fx.cfg.d_model, other.d_ff, other.d_model
    );
    assert!(e.contains(&want), "{e}\nwanted: {want}");

    let mut deeper = fx.cfg.clone();
    deeper.n_layers += 1;
    let layout = ParamLayout::new(&deeper);
    let mut buf = vec![0.0; layout.total];
    let e = err_text(ckpt::load_into_layout(&loaded, &layout, &mut buf));
    assert!(e.contains(&file) && e.contains("tensor h.4.ln1.w is missing"), "{e}");

    let mut shallower = fx.cfg.clone();
    shallower.n_layers -= 1;
    let layout = ParamLayout::new(&shallower);
    let mut buf = vec![0.0; layout.total];
    let e = err_text(ckpt::load_into_layout(&loaded, &layout, &mut buf));
    assert!(e.contains(&file) && e.contains("tensor h.3.") && e.contains("not part of the configured model"), "{e}");
}

#[test]
fn save_rejects_data_that_does_not_match_its_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let data = [1.0f32; 5];
    let model = [NamedTensor { name: "w".into(), shape: vec![2, 3], data: &data }];
    let e = err_text(ckpt::save(tmp.path(), &Manifest::new(1, ""), &model, &[], 1));
    assert!(e.contains("tensor w has shape [2, 3]"), "{e}");
    // Nothing was published, and the staging directory is gone.
    assert_eq!(ckpt::latest(tmp.path()).unwrap(), None);
    assert!(step_names(tmp.path()).is_empty());
}

// ------------------------------------------------------------- Hugging Face

fn hf_round_trip(cfg: &ModelConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = ParamLayout::new(cfg);
    let params = model_values(cfg, 7);
    ckpt::export(tmp.path(), cfg, &layout, &params, Dtype::F32).unwrap();
    let (cfg2, params2) = ckpt::import(tmp.path()).unwrap();
    assert_eq!(ModelConfig { preset: cfg.preset.clone(), ..cfg2.clone() }, *cfg);
    assert_eq!(bits(&params2), bits(&params));
    // Importing the file path directly works too.
    let (_, params3) = ckpt::import(&tmp.path().join("model.safetensors")).unwrap();
    assert_eq!(bits(&params3), bits(&params));

    // bf16: values come back rounded to bf16, the nearest representable.
    ckpt::export(tmp.path(), cfg, &layout, &params, Dtype::Bf16).unwrap();
    let (cfg3, params4) = ckpt::import(tmp.path()).unwrap();
    assert_eq!(cfg3, cfg2);
    for (a, b) in params.iter().zip(&params4) {
        assert_eq!(*b, half::bf16::from_f32(*a).to_f32());
    }
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(json["torch_dtype"], "bfloat16");
}

#[test]
fn hf_round_trip_tiny_gpt2() {
    let cfg = preset("tiny");
    assert!(cfg.tied_embeddings && cfg.bias);
    hf_round_trip(&cfg);
}

#[test]
fn hf_round_trip_tiny_llama_with_gqa() {
    let cfg = preset("tiny-llama");
    assert!(cfg.n_kv_heads < cfg.n_heads && !cfg.tied_embeddings);
    hf_round_trip(&cfg);
    let mut tied = cfg.clone();
    tied.tied_embeddings = true;
    tied.n_kv_heads = 1;
    tied.rope_theta = 500000.0;
    tied.norm_eps = 1e-5;
    hf_round_trip(&tied);
}

#[test]
fn hf_config_json_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = preset("tiny");
    let layout = ParamLayout::new(&cfg);
    ckpt::export(tmp.path(), &cfg, &layout, &vec![0.0; layout.total], Dtype::F32).unwrap();
    let j: serde_json::Value = serde_json::from_slice(&fs::read(tmp.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(j["model_type"], "gpt2");
    assert_eq!(j["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(j["activation_function"], "gelu_new");
    assert_eq!(j["n_embd"], 128);
    assert_eq!(j["layer_norm_epsilon"], 1e-5);
    assert_eq!(j["tie_word_embeddings"], true);
    assert_eq!(j["eos_token_id"], serde_json::Value::Null, "vocab 256 has no <|endoftext|>");

    let cfg = preset("llama3-8b");
    let j = ferrotron::ckpt::hf_config::to_hf_json(&cfg, Dtype::Bf16).unwrap();
    assert_eq!(j["model_type"], "llama");
    assert_eq!(j["architectures"][0], "LlamaForCausalLM");
    assert_eq!(j["hidden_act"], "silu");
    assert_eq!(j["num_key_value_heads"], 8);
    assert_eq!(j["intermediate_size"], 14336);
    assert_eq!(j["rope_theta"], 500000.0);
    assert_eq!(j["rms_norm_eps"], 1e-6);
    assert_eq!(j["tie_word_embeddings"], false);
    assert_eq!(j["eos_token_id"], 50256);
}

#[test]
fn llama_rope_parameters_of_transformers_v5_are_read() {
    // transformers >= 5 saves `rope_parameters` instead of `rope_theta`.
    let cfg = preset("tiny-llama");
    let layout = ParamLayout::new(&cfg);
    let params = model_values(&cfg, 8);
    let tmp = tempfile::tempdir().unwrap();
    ckpt::export(tmp.path(), &cfg, &layout, &params, Dtype::F32).unwrap();
    let path = tmp.path().join("config.json");
    let mut j: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let obj = j.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.remove("rope_scaling");
    obj.insert("rope_parameters".into(), serde_json::json!({"rope_theta": 50000.0, "rope_type": "default"}));
    fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
    let (cfg2, params2) = ckpt::import(tmp.path()).unwrap();
    assert_eq!(cfg2.rope_theta, 50000.0);
    assert_eq!(bits(&params2), bits(&params));

    // Llama 3.1 as transformers 5 writes it.
    let llama31 = serde_json::json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    j["rope_parameters"] = llama31.clone();
    fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
    let (cfg3, _) = ckpt::import(tmp.path()).unwrap();
    let got = (cfg3.rope_theta, cfg3.rope_scaling_factor, cfg3.rope_low_freq_factor, cfg3.rope_high_freq_factor, cfg3.rope_original_max_seq);
    assert_eq!(got, (500000.0, 8.0, 1.0, 4.0, 8192));

    // Incomplete or other scalings are refused, naming what is missing.
    let mut partial = llama31.clone();
    partial.as_object_mut().unwrap().remove("low_freq_factor");
    j["rope_parameters"] = partial;
    fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
    let e = err_text(ckpt::import(tmp.path()));
    assert!(e.contains("config.json") && e.contains("needs `low_freq_factor`"), "{e}");
    j["rope_parameters"] = serde_json::json!({"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0});
    fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
    let e = err_text(ckpt::import(tmp.path()));
    assert!(e.contains("config.json") && e.contains("rope_type `yarn` is not supported") && e.contains("llama3"), "{e}");
}

/// transformers 4 writes `rope_theta` and `rope_scaling` (with `rope_type`,
/// or `type` before 4.45); export writes that form back, and it round-trips.
#[test]
fn llama3_rope_scaling_of_transformers_v4_round_trips() {
    let mut cfg = preset("tiny-llama");
    cfg.rope_theta = 500000.0;
    cfg.rope_scaling_factor = 32.0;
    cfg.rope_original_max_seq = 8192;
    cfg.tied_embeddings = true;
    let layout = ParamLayout::new(&cfg);
    let params = model_values(&cfg, 9);
    let tmp = tempfile::tempdir().unwrap();
    ckpt::export(tmp.path(), &cfg, &layout, &params, Dtype::F32).unwrap();
    let path = tmp.path().join("config.json");
    let mut j: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        j["rope_scaling"],
        serde_json::json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    );
    assert_eq!(j["tie_word_embeddings"], true);
    let (back, params2) = ckpt::import(tmp.path()).unwrap();
    assert_eq!(back, ModelConfig { preset: back.preset.clone(), ..cfg.clone() });
    assert_eq!(bits(&params2), bits(&params));
    // The older spelling `type`.
    let scaling = j["rope_scaling"].as_object_mut().unwrap();
    let kind = scaling.remove("rope_type").unwrap();
    scaling.insert("type".into(), kind);
    fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
    assert_eq!(ckpt::import(tmp.path()).unwrap().0.rope_scaling_factor, 32.0);
    // A plain model exports `rope_scaling: null`.
    let plain = preset("tiny-llama");
    ckpt::export(tmp.path(), &plain, &ParamLayout::new(&plain), &model_values(&plain, 1), Dtype::F32).unwrap();
    let j: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert!(j["rope_scaling"].is_null());
}

/// Big checkpoints are written the way transformers' save_pretrained writes
/// them: shards of at most max_shard_bytes plus an index; a later export
/// into the same folder removes the files it does not replace.
#[test]
fn sharded_export_round_trips_and_replaces_earlier_files() {
    let cfg = preset("tiny-llama");
    let layout = ParamLayout::new(&cfg);
    let params = model_values(&cfg, 10);
    let tmp = tempfile::tempdir().unwrap();
    let opts = ckpt::ExportOptions { max_shard_bytes: 200_000, ..ckpt::ExportOptions::new(Dtype::F32) };
    ckpt::export_with(tmp.path(), &cfg, &layout, &params, &opts).unwrap();
    let shards: Vec<String> = fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("model-")).collect();
    assert!(shards.len() > 2, "{shards:?}");
    for f in &shards {
        let size = fs::metadata(tmp.path().join(f)).unwrap().len();
        // A shard holds whole tensors up to the limit (plus its small header).
        assert!(size < 200_000 + 4096, "{f}: {size} bytes");
    }
    let index: serde_json::Value = serde_json::from_slice(&fs::read(tmp.path().join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], (4 * hf_tensors(&cfg, &layout).unwrap().iter().map(|t| t.shape.iter().product::<usize>()).sum::<usize>()) as u64);
    let (back, params2) = ckpt::import(tmp.path()).unwrap();
    assert_eq!(back.d_model, cfg.d_model);
    assert_eq!(bits(&params2), bits(&params));
    // One file now: the shards and index go.
    ckpt::export(tmp.path(), &cfg, &layout, &params, Dtype::F32).unwrap();
    let left: Vec<String> = fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.starts_with("model-") && n != "model.safetensors.index.json"), "{left:?}");
    assert_eq!(bits(&ckpt::import(tmp.path()).unwrap().1), bits(&params));
    // And sharded again: model.safetensors goes.
    ckpt::export_with(tmp.path(), &cfg, &layout, &params, &opts).unwrap();
    assert!(!tmp.path().join("model.safetensors").exists());
}

fn names_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    hf_tensors(cfg, &ParamLayout::new(cfg)).unwrap().into_iter().map(|t| (t.hf_name, t.shape)).collect()
}

fn find<'a>(list: &'a [(String, Vec<usize>)], name: &str) -> &'a [usize] {
    &list.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not listed")).1
}

#[test]
fn hf_names_and_shapes_match_gpt2_124m() {
    let cfg = preset("gpt2-124m");
    let list = names_shapes(&cfg);
    // The known GPT2LMHeadModel state dict (without attn.bias buffers).
    let expected: &[(&str, &[usize])] = &[
        ("transformer.wte.weight", &[50257, 768]),
        ("transformer.wpe.weight", &[1024, 768]),
        ("transformer.h.0.ln_1.weight", &[768]),
        ("transformer.h.0.ln_1.bias", &[768]),
        ("transformer.h.0.attn.c_attn.weight", &[768, 2304]),
        ("transformer.h.0.attn.c_attn.bias", &[2304]),
        ("transformer.h.0.attn.c_proj.weight", &[768, 768]),
        ("transformer.h.0.attn.c_proj.bias", &[768]),
        ("transformer.h.0.ln_2.weight", &[768]),
        ("transformer.h.0.ln_2.bias", &[768]),
        ("transformer.h.0.mlp.c_fc.weight", &[768, 3072]),
        ("transformer.h.0.mlp.c_fc.bias", &[3072]),
        ("transformer.h.0.mlp.c_proj.weight", &[3072, 768]),
        ("transformer.h.0.mlp.c_proj.bias", &[768]),
    ];
    for (i, (name, shape)) in expected.iter().enumerate() {
        assert_eq!((list[i].0.as_str(), list[i].1.as_slice()), (*name, *shape));
    }
    assert_eq!(find(&list, "transformer.h.11.mlp.c_proj.weight"), &[3072, 768]);
    assert_eq!(find(&list, "transformer.ln_f.weight"), &[768]);
    assert_eq!(find(&list, "transformer.ln_f.bias"), &[768]);
    assert_eq!(list.len(), 2 + 12 * 12 + 2, "tied: no lm_head.weight");
    assert!(list.iter().all(|(n, _)| n != "lm_head.weight"));
    let numel: usize = list.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(numel, 124_439_808, "GPT-2 small parameter count");
}

#[test]
fn hf_names_and_shapes_match_llama() {
    let cfg = preset("llama3-8b");
    let list = names_shapes(&cfg);
    let expected: &[(&str, &[usize])] = &[
        ("model.embed_tokens.weight", &[128256, 4096]),
        ("model.layers.0.input_layernorm.weight", &[4096]),
        ("model.layers.0.self_attn.q_proj.weight", &[4096, 4096]),
        ("model.layers.0.self_attn.k_proj.weight", &[1024, 4096]),
        ("model.layers.0.self_attn.v_proj.weight", &[1024, 4096]),
        ("model.layers.0.self_attn.o_proj.weight", &[4096, 4096]),
        ("model.layers.0.post_attention_layernorm.weight", &[4096]),
        ("model.layers.0.mlp.gate_proj.weight", &[14336, 4096]),
        ("model.layers.0.mlp.up_proj.weight", &[14336, 4096]),
        ("model.layers.0.mlp.down_proj.weight", &[4096, 14336]),
    ];
    for (i, (name, shape)) in expected.iter().enumerate() {
        assert_eq!((list[i].0.as_str(), list[i].1.as_slice()), (*name, *shape));
    }
    assert_eq!(find(&list, "model.norm.weight"), &[4096]);
    assert_eq!(find(&list, "lm_head.weight"), &[128256, 4096]);
    assert_eq!(list.len(), 1 + 32 * 9 + 2);
    let numel: usize = list.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(numel, 8_030_261_248, "Llama 3 8B parameter count");
}

/// Read one tensor of an exported file as (shape, f32 values).
fn read_hf(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (t.shape().to_vec(), v)
}

#[test]
fn gpt2_conv1d_weights_are_transposed_on_export() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = preset("tiny");
    let layout = ParamLayout::new(&cfg);
    let params = model_values(&cfg, 11);
    ckpt::export(tmp.path(), &cfg, &layout, &params, Dtype::F32).unwrap();
    let file = tmp.path().join("model.safetensors");
    for (ours, hf) in [
        ("h.1.attn.qkv.w", "transformer.h.1.attn.c_attn.weight"),
        ("h.1.attn.proj.w", "transformer.h.1.attn.c_proj.weight"),
        ("h.1.mlp.fc.w", "transformer.h.1.mlp.c_fc.weight"),
        ("h.1.mlp.proj.w", "transformer.h.1.mlp.c_proj.weight"),
    ] {
        let info = layout.must(ours);
        let (rows, cols) = (info.shape[0], info.shape[1]);
        let (shape, v) = read_hf(&file, hf);
        assert_eq!(shape, vec![cols, rows], "{hf}");
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(v[j * rows + i], params[info.offset + i * cols + j], "{hf}[{j}][{i}]");
            }
        }
    }
    // Biases are copied as they are; the safetensors metadata says "pt".
    let b = layout.must("h.0.attn.qkv.b");
    assert_eq!(read_hf(&file, "transformer.h.0.attn.c_attn.bias").1, params[b.offset..b.offset + b.numel()].to_vec());
    let bytes = fs::read(&file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
}

#[test]
fn llama_fused_weights_are_split_by_rows_on_export() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = preset("tiny-llama");
    let layout = ParamLayout::new(&cfg);
    let params = model_values(&cfg, 12);
    ckpt::export(tmp.path(), &cfg, &layout, &params, Dtype::F32).unwrap();
    let file = tmp.path().join("model.safetensors");
    let (c, d, f, fp) = (cfg.d_model, cfg.head_dim(), cfg.d_ff, cfg.padded_ff());
    assert!(fp > f, "tiny-llama's d_ff = {f} is padded, so the up block starts at {fp}");
    let (q, kv) = (cfg.n_heads * d, cfg.n_kv_heads * d);
    let rows = |name: &str, start: usize, count: usize| {
        let info = layout.must(name);
        params[info.offset + start * c..info.offset + (start + count) * c].to_vec()
    };
    assert_eq!(read_hf(&file, "model.layers.2.self_attn.q_proj.weight"), (vec![q, c], rows("h.2.attn.qkv.w", 0, q)));
    assert_eq!(read_hf(&file, "model.layers.2.self_attn.k_proj.weight"), (vec![kv, c], rows("h.2.attn.qkv.w", q, kv)));
    assert_eq!(read_hf(&file, "model.layers.2.self_attn.v_proj.weight"), (vec![kv, c], rows("h.2.attn.qkv.w", q + kv, kv)));
    assert_eq!(read_hf(&file, "model.layers.2.mlp.gate_proj.weight"), (vec![f, c], rows("h.2.mlp.fc.w", 0, f)));
    assert_eq!(read_hf(&file, "model.layers.2.mlp.up_proj.weight"), (vec![f, c], rows("h.2.mlp.fc.w", fp, f)));
    // The down projection [c, fp] loses its padding columns.
    let down = layout.must("h.2.mlp.proj.w");
    let cols: Vec<f32> = (0..c).flat_map(|r| params[down.offset + r * fp..down.offset + r * fp + f].to_vec()).collect();
    assert_eq!(read_hf(&file, "model.layers.2.mlp.down_proj.weight"), (vec![c, f], cols));
}

/// Write an HF-style model folder with `tensors` (f32 or f16) and `config`.
fn write_hf(dir: &Path, config: serde_json::Value, tensors: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors")).unwrap();
}

/// (name, shape, values) of one tensor.
type HfTensorData = (String, Vec<usize>, Vec<f32>);

/// The tensors of an export of `cfg`, re-encoded, for hand-made HF folders.
fn exported(cfg: &ModelConfig, params: &[f32]) -> (serde_json::Value, Vec<HfTensorData>) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = ParamLayout::new(cfg);
    ckpt::export(tmp.path(), cfg, &layout, params, Dtype::F32).unwrap();
    let json = serde_json::from_slice(&fs::read(tmp.path().join("config.json")).unwrap()).unwrap();
    let file = tmp.path().join("model.safetensors");
    let list = hf_tensors(cfg, &layout)
        .unwrap()
        .into_iter()
        .map(|t| {
            let (shape, v) = read_hf(&file, &t.hf_name);
            (t.hf_name, shape, v)
        })
        .collect();
    (json, list)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn gpt2_import_accepts_hub_quirks() {
    // Hub GPT-2 files: no `transformer.` prefix, attn.bias / masked_bias
    // buffers, an explicit tied lm_head.weight, f16 tensors.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = preset("tiny");
    cfg.n_layers = 2;
    let params: Vec<f32> = model_values(&cfg, 5).iter().map(|x| half::f16::from_f32(*x).to_f32()).collect();
    let (json, list) = exported(&cfg, &params);
    let mut tensors = Vec::new();
    let f16 = |v: &[f32]| v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>();
    for (name, shape, v) in &list {
        let bare = name.strip_prefix("transformer.").unwrap().to_string();
        tensors.push((bare, shape.clone(), f16(v), safetensors::Dtype::F16));
    }
    let s = cfg.max_seq_len;
    for l in 0..cfg.n_layers {
        tensors.push((format!("h.{l}.attn.bias"), vec![1, 1, s, s], f32_bytes(&vec![1.0; s * s]), safetensors::Dtype::F32));
        tensors.push((format!("h.{l}.attn.masked_bias"), vec![], f32_bytes(&[-1e4]), safetensors::Dtype::F32));
    }
    let wte = &list[0].2;
    tensors.push(("lm_head.weight".into(), vec![cfg.vocab_size, cfg.d_model], f16(wte), safetensors::Dtype::F16));
    write_hf(tmp.path(), json, tensors);
    let (cfg2, params2) = ckpt::import(tmp.path()).unwrap();
    assert_eq!(cfg2.n_layers, 2);
    assert_eq!(bits(&params2), bits(&params));
}

#[test]
fn sharded_llama_import() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = preset("tiny-llama");
    let params = model_values(&cfg, 9);
    let (json, list) = exported(&cfg, &params);
    fs::write(tmp.path().join("config.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in list.chunks(list.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
            chunk.iter().map(|(n, s, v)| (n.clone(), s.clone(), f32_bytes(v))).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, &None, &tmp.path().join(&file)).unwrap();
        for (n, _, _) in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    fs::write(tmp.path().join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let (cfg2, params2) = ckpt::import(tmp.path()).unwrap();
    assert_eq!(cfg2.n_kv_heads, cfg.n_kv_heads);
    assert_eq!(bits(&params2), bits(&params));
}

#[test]
fn hf_import_errors_are_clear() {
    let cfg = preset("tiny-llama");
    let params = model_values(&cfg, 4);
    let (json, list) = exported(&cfg, &params);
    let tensors = |list: &[(String, Vec<usize>, Vec<f32>)]| {
        list.iter().map(|(n, s, v)| (n.clone(), s.clone(), f32_bytes(v), safetensors::Dtype::F32)).collect::<Vec<_>>()
    };
    let case = |json: serde_json::Value, list: &[(String, Vec<usize>, Vec<f32>)]| {
        let tmp = tempfile::tempdir().unwrap();
        write_hf(tmp.path(), json, tensors(list));
        err_text(ckpt::import(tmp.path()))
    };
    let with = |key: &str, v: serde_json::Value| {
        let mut j = json.clone();
        j[key] = v;
        j
    };
    let e = case(with("model_type", "mistral".into()), &list);
    assert!(e.contains("config.json") && e.contains("model_type `mistral` is not supported"), "{e}");
    let e = case(with("attention_bias", true.into()), &list);
    assert!(e.contains("attention_bias") && e.contains("no biases"), "{e}");
    let e = case(with("hidden_act", "gelu".into()), &list);
    assert!(e.contains("hidden_act `gelu` is not supported"), "{e}");
    let e = case(with("rope_scaling", serde_json::json!({"rope_type": "linear", "factor": 8.0})), &list);
    assert!(e.contains("rope_scaling.rope_type `linear` is not supported"), "{e}");
    let e = case(with("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0})), &list);
    assert!(e.contains("rope_scaling of rope_type `llama3` needs `low_freq_factor`"), "{e}");

    // Wrong shape: the config says 1 kv head, the file has 2.
    let e = case(with("num_key_value_heads", 1.into()), &list);
    assert!(e.contains("model.safetensors") && e.contains("_proj.weight has shape [64, 128] but config.json implies [32, 128]"), "{e}");
    // Missing and unexpected tensors.
    let short: Vec<_> = list.iter().filter(|t| t.0 != "model.norm.weight").cloned().collect();
    let e = case(json.clone(), &short);
    assert!(e.contains("tensor model.norm.weight (shape [128]) is missing"), "{e}");
    let mut long = list.clone();
    long.push(("model.layers.0.self_attn.q_proj.bias".into(), vec![128], vec![0.0; 128]));
    let e = case(json.clone(), &long);
    assert!(e.contains("unexpected tensor model.layers.0.self_attn.q_proj.bias"), "{e}");

    // GPT-2 with exact GELU.
    let gpt = preset("tiny");
    let (gjson, glist) = exported(&gpt, &vec![0.0; ParamLayout::new(&gpt).total]);
    let mut gj = gjson.clone();
    gj["activation_function"] = "gelu".into();
    let e = case(gj, &glist);
    assert!(e.contains("activation_function `gelu` is not supported"), "{e}");

    // No model files / not safetensors.
    let tmp = tempfile::tempdir().unwrap();
    let e = err_text(ckpt::import(tmp.path()));
    assert!(e.contains("no model.safetensors"), "{e}");
    write_hf(tmp.path(), json.clone(), tensors(&list));
    fs::write(tmp.path().join("model.safetensors"), b"\x80\x02}q\x00(X\x05pickle").unwrap();
    let e = err_text(ckpt::import(tmp.path()));
    assert!(e.contains("model.safetensors") && e.contains("not a safetensors file"), "{e}");
}

#[test]
fn export_refuses_configs_without_an_hf_equivalent() {
    let mut cfg = preset("tiny");
    cfg.positions = ferrotron::config::Positions::Rope;
    let layout = ParamLayout::new(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    let e = err_text(ckpt::export(tmp.path(), &cfg, &layout, &vec![0.0; layout.total], Dtype::F32));
    assert!(e.contains("no Hugging Face equivalent"), "{e}");
    let cfg = preset("tiny");
    let layout = ParamLayout::new(&cfg);
    let e = err_text(ckpt::export(tmp.path(), &cfg, &layout, &[0.0; 3], Dtype::F32));
    assert!(e.contains("3 values"), "{e}");
}

// ------------------------------------------------- integrity (issue 17)

/// Byte offset where the tensor data of a safetensors file starts.
fn data_start(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Removes the manifest's checksums, as a checkpoint saved before they existed.
fn strip_checksums(dir: &Path) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("checksums").expect("a new manifest has checksums");
    fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn flipped_bytes_fail_the_checksum_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::new(preset("tiny"));
    let dir = fx.save(tmp.path(), 200, 2);
    let file = dir.join("optimizer.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    // The lowest mantissa bit of one value: still a finite, plausible number.
    let at = data_start(&bytes) + 4 * 1000;
    bytes[at] ^= 0x01;
    fs::write(&file, &bytes).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains(&file.display().to_string()) && e.contains("damaged") && e.contains("CRC-32"), "{e}");
    // NaN bytes written over a value are caught the same way.
    bytes[at] ^= 0x01;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&file, &bytes).unwrap();
    assert!(err_text(ckpt::load(&dir)).contains("damaged"));
}

/// Checkpoints saved before checksums existed still load (with a warning on
/// stderr); non-finite values in them are refused, naming the tensor.
#[test]
fn checkpoints_without_checksums_load_but_non_finite_values_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::new(preset("tiny"));
    let dir = fx.save(tmp.path(), 200, 2);
    strip_checksums(&dir);
    let loaded = ckpt::load(&dir).unwrap();
    assert!(loaded.manifest.checksums.is_empty());
    let file = dir.join("model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    let at = data_start(&bytes);
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&file, &bytes).unwrap();
    let e = err_text(ckpt::load(&dir));
    assert!(e.contains("non-finite") && e.contains("model.safetensors") && e.contains("diverged"), "{e}");
}

#[test]
fn save_refuses_non_finite_values() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fx = Fixture::new(preset("tiny"));
    let good = fx.save(tmp.path(), 100, 1);
    for (i, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
        fx.params[5] = bad;
        let model = ckpt::named_from_layout(&fx.layout, &fx.params).unwrap();
        let e = err_text(ckpt::save(tmp.path(), &fx.manifest(200 + i as u64), &model, &[], 1));
        assert!(e.contains("non-finite") && e.contains(&fx.layout.params[0].name) && e.contains("older ones are kept"), "{e}");
    }
    fx.params[5] = 0.0;
    fx.m[7] = f32::NAN;
    let model = ckpt::named_from_layout(&fx.layout, &fx.params).unwrap();
    let optim = vec![NamedTensor { name: "adamw.m".into(), shape: vec![fx.layout.total], data: &fx.m }];
    let e = err_text(ckpt::save(tmp.path(), &fx.manifest(300), &model, &optim, 1));
    assert!(e.contains("adamw.m") && e.contains("optimizer.safetensors"), "{e}");
    // The one good checkpoint (keep 1) is still there and loads.
    assert_eq!(step_names(tmp.path()), ["step_00000100"]);
    ckpt::load(&good).unwrap();
}

/// The newest checkpoint that verifies is chosen; damaged and incomplete
/// newer ones are passed over.
#[test]
fn load_newest_good_falls_back_past_damaged_and_incomplete_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    assert!(ckpt::load_newest_good(run).unwrap().is_none());
    let fx = Fixture::new(preset("tiny"));
    for step in [100, 200, 300] {
        fx.save(run, step, 5);
    }
    let file = run.join("checkpoints/step_00000300/model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    let at = data_start(&bytes) + 40;
    bytes[at] ^= 0x10;
    fs::write(&file, &bytes).unwrap();
    fs::remove_file(run.join("checkpoints/step_00000200/manifest.json")).unwrap();
    assert_eq!(ckpt::load_newest_good(run).unwrap().unwrap().manifest.step, 100);
    // None usable: an error listing each reason.
    fs::remove_file(run.join("checkpoints/step_00000100/optimizer.safetensors")).unwrap();
    let e = err_text(ckpt::load_newest_good(run));
    assert!(e.contains("no usable checkpoint") && e.contains("step_00000300") && e.contains("damaged") && e.contains("incomplete"), "{e}");
}

/// A kill in the middle of pruning (a deletion) must not leave litter that
/// is never cleaned: incomplete older step folders and `*.pruned.tmp`
/// leftovers go at the next save, and so do older `*.shards` staging
/// folders of killed sharded saves; newer ones stay.
#[test]
fn prune_removes_incomplete_older_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    let fx = Fixture::new(preset("tiny"));
    fx.save(run, 100, 2);
    fs::create_dir_all(run.join("checkpoints/step_00000050")).unwrap();
    fs::write(run.join("checkpoints/step_00000050/optimizer.safetensors"), b"half deleted").unwrap();
    fs::create_dir_all(run.join("checkpoints/step_00000040.pruned.tmp")).unwrap();
    fs::create_dir_all(run.join("checkpoints/step_00000900")).unwrap();
    // Shard staging of a save killed before publishing (ckpt/train_state.rs).
    fs::create_dir_all(run.join("checkpoints/step_00000150.shards")).unwrap();
    fs::create_dir_all(run.join("checkpoints/step_00000950.shards")).unwrap();
    fx.save(run, 200, 2);
    assert_eq!(step_names(run), ["step_00000100", "step_00000200", "step_00000900", "step_00000950.shards"]);
    fx.save(run, 300, 2);
    assert_eq!(step_names(run), ["step_00000200", "step_00000300", "step_00000900", "step_00000950.shards"]);
}

/// A full disk is reported in words, not as Rust debug output.
#[test]
fn write_errors_are_plain_words() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let data = [1.0f32; 4];
    let t = ferrotron::ckpt::tensors::OutTensor {
        name: "x".into(),
        shape: vec![4],
        dtype: Dtype::F32,
        values: ferrotron::ckpt::tensors::OutValues::F32(Box::new(|| std::borrow::Cow::Borrowed(&data[..]))),
    };
    let e = err_text(ferrotron::ckpt::tensors::write(Path::new("/dev/full"), &[t], None));
    assert!(e.contains("No space left on device") && !e.contains("IoError") && !e.contains("Os {"), "{e}");
}
