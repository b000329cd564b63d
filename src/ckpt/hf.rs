//! Import/export between ferrotron's flat parameter buffer and Hugging Face
//! safetensors for `GPT2LMHeadModel` and `LlamaForCausalLM`.
//!
//! One table, [`hf_tensors`], says for every HF tensor where it comes from
//! in our layout; export gathers along it and import scatters along it, so
//! the two directions cannot drift apart. The layout differences:
//! - GPT-2 uses `Conv1D` (`y = x·W + b`, `W` stored `[in, out]`), the
//!   transpose of our `[out, in]` linear weights. `c_attn`'s output columns
//!   are q | k | v, exactly our qkv rows, so a plain transpose maps it.
//! - Llama keeps q, k, v and gate, up as separate matrices; we fuse them by
//!   stacking rows (q|k|v, gate|up), so each HF tensor is a row block of ours.
//!   Our rotary uses HF's rotate_half convention: no q/k permutation.

use crate::util::atomic;
use super::hf_config::{family_of, from_hf_json, to_hf_json, Family};
use super::tensors::{self, shape_str, Dtype, OutTensor, OutValues};
use crate::config::ModelConfig;
use crate::model::layout::{ParamInfo, ParamLayout};
use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// How an HF tensor is obtained from one of our tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Same values, same shape.
    Same,
    /// Our `[r, c]` matrix transposed to `[c, r]` (GPT-2 Conv1D).
    Transposed,
    /// Rows `start..start + count` of our matrix (split of a fused weight).
    Rows { start: usize, count: usize },
    /// The first `count` columns of our matrix (the rest is padding).
    Cols { count: usize },
}

/// One tensor of the HF checkpoint and where it lives in ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfTensor {
    pub hf_name: String,
    pub shape: Vec<usize>,
    pub ours: String,
    pub source: Source,
}

/// Every tensor of the HF checkpoint for `cfg`, in HF's usual order, with
/// shapes. Allocates no parameters, so it also serves to inspect big models.
/// Tied models list no `lm_head.weight` (HF ties it to the embedding).
pub fn hf_tensors(cfg: &ModelConfig, layout: &ParamLayout) -> Result<Vec<HfTensor>> {
    let family = family_of(cfg)?;
    let mut t = Table { layout, out: Vec::new() };
    match family {
        Family::Gpt2 => gpt2_table(cfg, &mut t)?,
        Family::Llama => llama_table(cfg, &mut t)?,
    }
    if !cfg.tied_embeddings {
        t.push("lm_head.weight", "lm_head", vocab_rows(cfg))?;
    }
    Ok(t.out)
}

/// Builds the list, deriving HF shapes from our layout's shapes.
struct Table<'a> {
    layout: &'a ParamLayout,
    out: Vec<HfTensor>,
}

impl Table<'_> {
    fn push(&mut self, hf_name: &str, ours: &str, source: Source) -> Result<()> {
        let info = self.layout.get(ours).ok_or_else(|| anyhow!("the parameter layout has no tensor {ours}"))?;
        let s = &info.shape;
        let shape = match source {
            Source::Same => s.clone(),
            Source::Transposed => vec![s[1], s[0]],
            Source::Rows { count, .. } => vec![count, s[1]],
            Source::Cols { count } => vec![s[0], count],
        };
        self.out.push(HfTensor { hf_name: hf_name.into(), shape, ours: ours.into(), source });
        Ok(())
    }
}

/// The embedding / head rows of the real vocabulary: our tensors carry
/// `vocab_multiple` padding rows that checkpoints elsewhere do not have.
fn vocab_rows(cfg: &ModelConfig) -> Source {
    Source::Rows { start: 0, count: cfg.vocab_size }
}

fn gpt2_table(cfg: &ModelConfig, t: &mut Table) -> Result<()> {
    use Source::{Same, Transposed};
    t.push("transformer.wte.weight", "wte", vocab_rows(cfg))?;
    t.push("transformer.wpe.weight", "wpe", Same)?;
    for l in 0..cfg.n_layers {
        let (h, p) = (format!("transformer.h.{l}"), format!("h.{l}"));
        for (hf, ours, src) in [
            ("ln_1.weight", "ln1.w", Same),
            ("ln_1.bias", "ln1.b", Same),
            ("attn.c_attn.weight", "attn.qkv.w", Transposed),
            ("attn.c_attn.bias", "attn.qkv.b", Same),
            ("attn.c_proj.weight", "attn.proj.w", Transposed),
            ("attn.c_proj.bias", "attn.proj.b", Same),
            ("ln_2.weight", "ln2.w", Same),
            ("ln_2.bias", "ln2.b", Same),
            ("mlp.c_fc.weight", "mlp.fc.w", Transposed),
            ("mlp.c_fc.bias", "mlp.fc.b", Same),
            ("mlp.c_proj.weight", "mlp.proj.w", Transposed),
            ("mlp.c_proj.bias", "mlp.proj.b", Same),
        ] {
            t.push(&format!("{h}.{hf}"), &format!("{p}.{ours}"), src)?;
        }
    }
    t.push("transformer.ln_f.weight", "ln_f.w", Same)?;
    t.push("transformer.ln_f.bias", "ln_f.b", Same)
}

fn llama_table(cfg: &ModelConfig, t: &mut Table) -> Result<()> {
    use Source::{Cols, Rows, Same};
    let d = cfg.head_dim();
    let (q, kv, f, fp) = (cfg.n_heads * d, cfg.n_kv_heads * d, cfg.d_ff, cfg.padded_ff());
    t.push("model.embed_tokens.weight", "wte", vocab_rows(cfg))?;
    for l in 0..cfg.n_layers {
        let (h, p) = (format!("model.layers.{l}"), format!("h.{l}"));
        for (hf, ours, src) in [
            ("input_layernorm.weight", "ln1.w", Same),
            ("self_attn.q_proj.weight", "attn.qkv.w", Rows { start: 0, count: q }),
            ("self_attn.k_proj.weight", "attn.qkv.w", Rows { start: q, count: kv }),
            ("self_attn.v_proj.weight", "attn.qkv.w", Rows { start: q + kv, count: kv }),
            ("self_attn.o_proj.weight", "attn.proj.w", Same),
            ("post_attention_layernorm.weight", "ln2.w", Same),
            ("mlp.gate_proj.weight", "mlp.fc.w", Rows { start: 0, count: f }),
            ("mlp.up_proj.weight", "mlp.fc.w", Rows { start: fp, count: f }),
            ("mlp.down_proj.weight", "mlp.proj.w", Cols { count: f }),
        ] {
            t.push(&format!("{h}.{hf}"), &format!("{p}.{ours}"), src)?;
        }
    }
    t.push("model.norm.weight", "ln_f.w", Same)
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = src[i * cols + j];
        }
    }
    out
}

/// The HF tensor's values, taken from `ours`, the values of our tensor
/// `info`.
fn gather(spec: &HfTensor, info: &ParamInfo, ours: &[f32]) -> Vec<f32> {
    match spec.source {
        Source::Same => ours.to_vec(),
        Source::Transposed => transpose(ours, info.shape[0], info.shape[1]),
        Source::Rows { start, count } => {
            let cols = info.shape[1];
            ours[start * cols..(start + count) * cols].to_vec()
        }
        Source::Cols { count } => ours.chunks(info.shape[1]).flat_map(|row| &row[..count]).copied().collect(),
    }
}

/// Write the HF tensor's values (already shape-checked) into our buffer.
fn scatter(spec: &HfTensor, info: &ParamInfo, params: &mut [f32], values: &[f32]) {
    let ours = &mut params[info.offset..info.offset + info.numel()];
    match spec.source {
        Source::Same => ours.copy_from_slice(values),
        Source::Transposed => ours.copy_from_slice(&transpose(values, info.shape[1], info.shape[0])),
        Source::Rows { start, count } => {
            let cols = info.shape[1];
            ours[start * cols..(start + count) * cols].copy_from_slice(values);
        }
        Source::Cols { count } => {
            for (row, vals) in ours.chunks_mut(info.shape[1]).zip(values.chunks(count)) {
                row[..count].copy_from_slice(vals);
            }
        }
    }
}

/// How [`export_with`] writes a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// Element type of the written tensors (`F32` or `Bf16`).
    pub dtype: Dtype,
    /// Largest safetensors file in bytes: a bigger model is split into
    /// `model-0000i-of-0000n.safetensors` files plus
    /// `model.safetensors.index.json`, as transformers' `save_pretrained`
    /// does. 0 = always one `model.safetensors`.
    pub max_shard_bytes: u64,
    /// `bos_token_id` / `eos_token_id` for config.json (a number, a list as
    /// Llama 3 writes, or null); `None` = the defaults of [`to_hf_json`].
    pub token_ids: Option<(serde_json::Value, serde_json::Value)>,
}

impl ExportOptions {
    pub fn new(dtype: Dtype) -> ExportOptions {
        ExportOptions { dtype, max_shard_bytes: 0, token_ids: None }
    }
}

/// Write `model.safetensors` and `config.json` into `dir` so that
/// `transformers.AutoModelForCausalLM.from_pretrained(dir)` loads the model.
/// Each file is written atomically.
pub fn export(dir: &Path, cfg: &ModelConfig, layout: &ParamLayout, params: &[f32], dtype: Dtype) -> Result<()> {
    export_with(dir, cfg, layout, params, &ExportOptions::new(dtype))
}

/// [`export`] with a choice of sharding and token ids. Safetensors files of
/// an earlier export into `dir` that this one does not replace (a single
/// file after a sharded export, or shards after a single file) are removed,
/// so transformers cannot load stale weights.
pub fn export_with(dir: &Path, cfg: &ModelConfig, layout: &ParamLayout, params: &[f32], opts: &ExportOptions) -> Result<()> {
    if params.len() != layout.total {
        bail!("export: the parameter buffer has {} values but the layout has {}", params.len(), layout.total);
    }
    export_from(dir, cfg, layout, &|info| Ok(Cow::Borrowed(&params[info.offset..info.offset + info.numel()])), opts)
}

/// Our tensor `info`'s values, whole, as an export reads them.
pub type TensorSource<'a> = dyn Fn(&ParamInfo) -> Result<Cow<'a, [f32]>> + 'a;

/// [`export_with`] reading each of our tensors from `source` when its file
/// is written (an offloaded run's units, one at a time) instead of from a
/// flat buffer of the whole model. A failed read fails the export before
/// the file it belongs to is published.
pub fn export_from<'a>(dir: &Path, cfg: &ModelConfig, layout: &ParamLayout, source: &TensorSource<'a>, opts: &ExportOptions) -> Result<()> {
    // The writer asks for values without a way to fail: the first error
    // waits here and fails the file's write.
    let failed: std::cell::RefCell<Option<anyhow::Error>> = Default::default();
    let failed = &failed;
    let checked = |written: Result<()>| written.and_then(|()| failed.borrow_mut().take().map_or(Ok(()), Err));
    let dtype = opts.dtype;
    let specs = hf_tensors(cfg, layout)?;
    let mut config = to_hf_json(cfg, dtype)?;
    if let Some((bos, eos)) = &opts.token_ids {
        config["bos_token_id"] = bos.clone();
        config["eos_token_id"] = eos.clone();
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out: Vec<OutTensor> = specs
        .iter()
        .map(|spec| {
            let info = layout.must(&spec.ours);
            OutTensor {
                name: spec.hf_name.clone(),
                shape: spec.shape.clone(),
                dtype,
                values: OutValues::F32(Box::new(move || match source(info) {
                    Ok(ours) => Cow::Owned(gather(spec, info, &ours)),
                    Err(e) => {
                        failed.borrow_mut().get_or_insert(e);
                        Cow::Owned(vec![0.0; spec.shape.iter().product()])
                    }
                })),
            }
        })
        .collect();
    let bytes = |t: &OutTensor| (t.shape.iter().product::<usize>() * dtype_bytes(dtype)) as u64;
    let groups = shard_groups(&out.iter().map(bytes).collect::<Vec<_>>(), opts.max_shard_bytes);
    let n = groups.len();
    let names: Vec<String> = match n {
        0 | 1 => vec!["model.safetensors".into()],
        _ => (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).chain(["model.safetensors.index.json".into()]).collect(),
    };
    let stale = stale_weight_files(dir, &names)?;
    // transformers refuses safetensors without `format` metadata.
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    if n <= 1 {
        atomic::write_file_with(&dir.join("model.safetensors"), |tmp| checked(tensors::write(tmp, &out, Some(meta))))?;
    } else {
        let mut weight_map = serde_json::Map::new();
        let mut total = 0u64;
        for (range, name) in groups.iter().zip(&names) {
            let part = &out[range.clone()];
            for t in part {
                weight_map.insert(t.name.clone(), serde_json::Value::String(name.clone()));
                total += bytes(t);
            }
            atomic::write_file_with(&dir.join(name), |tmp| checked(tensors::write(tmp, part, Some(meta.clone()))))?;
        }
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let text = serde_json::to_vec_pretty(&index).context("cannot serialize the safetensors index")?;
        atomic::write_file(&dir.join("model.safetensors.index.json"), &text)?;
    }
    for f in stale {
        std::fs::remove_file(&f).with_context(|| format!("cannot remove the earlier export's {}", f.display()))?;
    }
    let json = serde_json::to_vec_pretty(&config).context("cannot serialize config.json")?;
    atomic::write_file(&dir.join("config.json"), &json)
}

fn dtype_bytes(dtype: Dtype) -> usize {
    match dtype {
        Dtype::F32 => 4,
        Dtype::Bf16 => 2,
        Dtype::U8 => 1,
    }
}

/// Consecutive runs of tensors whose bytes stay within `max` per run (a
/// tensor larger than `max` gets a run of its own); one run when `max` is 0.
fn shard_groups(sizes: &[u64], max: u64) -> Vec<std::ops::Range<usize>> {
    if max == 0 || sizes.iter().sum::<u64>() <= max {
        return std::iter::once(0..sizes.len()).collect();
    }
    let (mut groups, mut start, mut fill) = (Vec::new(), 0, 0u64);
    for (i, &b) in sizes.iter().enumerate() {
        if i > start && fill + b > max {
            groups.push(start..i);
            (start, fill) = (i, 0);
        }
        fill += b;
    }
    groups.push(start..sizes.len());
    groups
}

/// Weight files in `dir` (`model.safetensors`, its index, shards named
/// `model-*-of-*.safetensors`) that an export writing `new` would leave
/// behind from an earlier one.
fn stale_weight_files(dir: &Path, new: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let shard = name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors");
        let weights = shard || name == "model.safetensors" || name == "model.safetensors.index.json";
        if weights && !new.contains(&name) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Read an HF model directory (or its `.safetensors` file, with
/// `config.json` beside it): the ModelConfig and the flat parameters in
/// `ParamLayout::new(&cfg)` order. Accepts F32/BF16/F16 tensors, single-file
/// and sharded (`model.safetensors.index.json`) checkpoints.
pub fn import(dir_or_file: &Path) -> Result<(ModelConfig, Vec<f32>)> {
    let (config_path, files) = locate(dir_or_file)?;
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {} (an HF model needs its config.json)", config_path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", config_path.display()))?;
    let cfg = from_hf_json(&json, &config_path)?;
    let layout = ParamLayout::new(&cfg);
    let specs = hf_tensors(&cfg, &layout)?;
    let mut params = vec![0.0f32; layout.total];
    let mut filled = vec![false; specs.len()];
    for file in &files {
        import_file(file, &cfg, &layout, &specs, &mut params, &mut filled)?;
    }
    if let Some(i) = filled.iter().position(|f| !f) {
        bail!(
            "{}: tensor {} (shape {}) is missing",
            files_label(&files),
            specs[i].hf_name,
            shape_str(&specs[i].shape)
        );
    }
    Ok((cfg, params))
}

/// The config.json and the safetensors files of an HF model path.
fn locate(dir_or_file: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    if dir_or_file.is_file() {
        let dir = dir_or_file.parent().unwrap_or(Path::new("."));
        return Ok((dir.join("config.json"), vec![dir_or_file.to_path_buf()]));
    }
    let (single, index) = (dir_or_file.join("model.safetensors"), dir_or_file.join("model.safetensors.index.json"));
    if single.is_file() {
        return Ok((dir_or_file.join("config.json"), vec![single]));
    }
    if index.is_file() {
        return Ok((dir_or_file.join("config.json"), shard_files(&index)?));
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json (only safetensors HF checkpoints are supported)",
        dir_or_file.display()
    )
}

/// The distinct shard files named by a sharded checkpoint's index.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{} is not valid JSON: {e}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no `weight_map` object", index.display()))?;
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn files_label(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        _ => format!("the {} shards beside {}", files.len(), files.first().map(|f| f.display().to_string()).unwrap_or_default()),
    }
}

/// Tensors HF files may carry that are not parameters of the model: GPT-2's
/// causal-mask buffers and old Llama rotary caches.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with(".rotary_emb.inv_freq")
}

/// Map every tensor of one safetensors file into `params`.
fn import_file(
    file: &Path,
    cfg: &ModelConfig,
    layout: &ParamLayout,
    specs: &[HfTensor],
    params: &mut [f32],
    filled: &mut [bool],
) -> Result<()> {
    let index: HashMap<&str, usize> = specs.iter().enumerate().map(|(i, s)| (s.hf_name.as_str(), i)).collect();
    // Files saved from the bare GPT2Model / LlamaModel lack the prefix.
    let prefix = match family_of(cfg)? {
        Family::Gpt2 => "transformer.",
        Family::Llama => "model.",
    };
    let bytes = tensors::read_bytes(file)?;
    let st = tensors::parse(file, &bytes)?;
    for (name, view) in st.iter() {
        let found = index.get(name).or_else(|| index.get(format!("{prefix}{name}").as_str()));
        let Some(&i) = found else {
            if is_buffer(name) {
                continue;
            }
            if name == "lm_head.weight" && cfg.tied_embeddings {
                // Tied: HF overwrites it with the embedding; so do we.
                continue;
            }
            bail!("{}: unexpected tensor {name}; the config.json describes a model without it", file.display());
        };
        let spec = &specs[i];
        if view.shape() != spec.shape.as_slice() {
            bail!(
                "{}: tensor {name} has shape {} but config.json implies {}",
                file.display(),
                shape_str(view.shape()),
                shape_str(&spec.shape)
            );
        }
        if filled[i] {
            bail!("{}: tensor {} appears twice", file.display(), spec.hf_name);
        }
        let values = tensors::to_f32(file, name, &view)?;
        scatter(spec, layout.must(&spec.ours), params, &values);
        filled[i] = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shard_groups;

    #[test]
    fn shards_hold_consecutive_tensors_up_to_the_limit() {
        assert_eq!(shard_groups(&[10, 20, 30], 0), vec![0..3]);
        assert_eq!(shard_groups(&[10, 20, 30], 60), vec![0..3]);
        assert_eq!(shard_groups(&[10, 20, 30], 30), vec![0..2, 2..3]);
        // A tensor above the limit gets a shard of its own.
        assert_eq!(shard_groups(&[10, 50, 10, 10], 25), vec![0..1, 1..2, 2..4]);
        assert_eq!(shard_groups(&[], 10), vec![0..0]);
    }
}
