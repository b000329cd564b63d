//! Hugging Face `config.json` ⇄ `ModelConfig`, for the two families
//! ferrotron can exchange with HF: `GPT2LMHeadModel` and `LlamaForCausalLM`.
//!
//! Import reads HF's field names with HF's own defaults for missing keys (so
//! we build the same model `from_pretrained` would), and refuses features
//! ferrotron's decoder does not implement instead of silently dropping them.
//! Llama 3.1 / 3.2 configs (`rope_scaling` of type `llama3`, tied
//! embeddings) map to the `model.rope_*` keys and come back out the same way.

use super::tensors::Dtype;
use crate::backend::{Llama3Scaling, Rope};
use crate::config::{Mlp, ModelConfig, Norm, Positions};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Which HF architecture a config corresponds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Gpt2,
    Llama,
}

/// The HF family of a ferrotron config; mixed configs (e.g. rmsnorm with
/// learned positions) have no HF equivalent and are an error.
pub fn family_of(cfg: &ModelConfig) -> Result<Family> {
    let gpt2 = cfg.norm == Norm::Layernorm && cfg.mlp == Mlp::Gelu && cfg.positions == Positions::Learned;
    let llama = cfg.norm == Norm::Rmsnorm && cfg.mlp == Mlp::Swiglu && cfg.positions == Positions::Rope;
    if gpt2 && cfg.bias && cfg.n_kv_heads == cfg.n_heads {
        return Ok(Family::Gpt2);
    }
    if llama && !cfg.bias {
        return Ok(Family::Llama);
    }
    bail!(
        "this model (norm={:?}, mlp={:?}, positions={:?}, bias={}, n_kv_heads={}, n_heads={}) has no Hugging Face equivalent: \
         GPT2LMHeadModel needs layernorm + gelu + learned positions + bias with n_kv_heads = n_heads; \
         LlamaForCausalLM needs rmsnorm + swiglu + rope without bias",
        cfg.norm, cfg.mlp, cfg.positions, cfg.bias, cfg.n_kv_heads, cfg.n_heads
    )
}

/// An f32 as the JSON number with the same shortest decimal form, so 1e-5
/// is written as 1e-05 and not as 9.999999747378752e-06 (what `as f64` gives).
fn num(x: f32) -> Value {
    json!(x.to_string().parse::<f64>().unwrap_or(x as f64))
}

/// ferrotron tokenizes with GPT-2 BPE, whose `<|endoftext|>` (50256) is
/// both BOS and EOS; a smaller vocabulary has no such token, and naming one
/// outside the vocabulary makes transformers warn.
const GPT2_EOT: usize = 50256;

/// The HF `config.json` for `cfg`.
pub fn to_hf_json(cfg: &ModelConfig, dtype: Dtype) -> Result<Value> {
    let eot = if cfg.vocab_size > GPT2_EOT { json!(GPT2_EOT) } else { Value::Null };
    let mut v = match family_of(cfg)? {
        Family::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_seq_len,
            "n_ctx": cfg.max_seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            // ferrotron's GELU is the tanh approximation, as in GPT-2.
            "activation_function": "gelu_new",
            "layer_norm_epsilon": num(cfg.norm_eps),
            "initializer_range": num(cfg.init_std),
            "tie_word_embeddings": cfg.tied_embeddings,
            // ferrotron trains without dropout; keep fine-tuning in HF the same.
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": true,
            "use_cache": true,
            // transformers >= 4.56 reads `dtype`; older versions `torch_dtype`.
            "dtype": dtype.torch_name(),
            "torch_dtype": dtype.torch_name(),
        }),
        Family::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim(),
            "hidden_act": "silu",
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": num(cfg.norm_eps),
            "rope_theta": num(cfg.rope_theta),
            "rope_scaling": rope_scaling_json(cfg),
            "attention_bias": false,
            "mlp_bias": false,
            "attention_dropout": 0.0,
            "initializer_range": num(cfg.init_std),
            "tie_word_embeddings": cfg.tied_embeddings,
            "use_cache": true,
            // transformers >= 4.56 reads `dtype`; older versions `torch_dtype`.
            "dtype": dtype.torch_name(),
            "torch_dtype": dtype.torch_name(),
        }),
    };
    v["bos_token_id"] = eot.clone();
    v["eos_token_id"] = eot;
    Ok(v)
}

/// Llama 3 scaling as transformers writes it (`rope_scaling`, read by
/// transformers 4 and 5 alike), or null.
fn rope_scaling_json(cfg: &ModelConfig) -> Value {
    if cfg.rope_scaling_factor <= 0.0 {
        return Value::Null;
    }
    json!({
        "rope_type": "llama3",
        "factor": num(cfg.rope_scaling_factor),
        "low_freq_factor": num(cfg.rope_low_freq_factor),
        "high_freq_factor": num(cfg.rope_high_freq_factor),
        "original_max_position_embeddings": cfg.rope_original_max_seq,
    })
}

/// Reads typed fields of one config.json with HF defaults and errors that
/// name the file and the key.
struct Fields<'a> {
    v: &'a Value,
    origin: &'a Path,
}

impl Fields<'_> {
    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => match x.as_u64() {
                Some(n) => Ok(n as usize),
                None => bail!("{}: `{key}` should be a non-negative integer, got {x}", self.origin.display()),
            },
        }
    }
    fn f32(&self, key: &str, default: f32) -> Result<f32> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => match x.as_f64() {
                Some(n) => Ok(n as f32),
                None => bail!("{}: `{key}` should be a number, got {x}", self.origin.display()),
            },
        }
    }
    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => match x.as_bool() {
                Some(b) => Ok(b),
                None => bail!("{}: `{key}` should be true or false, got {x}", self.origin.display()),
            },
        }
    }
    fn str(&self, key: &str, default: &str) -> Result<String> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(x) => bail!("{}: `{key}` should be a string, got {x}", self.origin.display()),
        }
    }
    /// Error unless `key` is absent, null or `ok`.
    fn refuse_unless(&self, key: &str, ok: &Value, why: &str) -> Result<()> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(x) if x == ok => Ok(()),
            Some(x) => bail!("{}: `{key}` = {x} is not supported: {why}", self.origin.display()),
        }
    }
}

/// Build a `ModelConfig` from a parsed HF `config.json` (`origin` is its path).
pub fn from_hf_json(v: &Value, origin: &Path) -> Result<ModelConfig> {
    let f = Fields { v, origin };
    let model_type = f.str("model_type", "")?;
    let cfg = match model_type.as_str() {
        "gpt2" => gpt2_from(&f)?,
        "llama" => llama_from(&f)?,
        "" => bail!("{}: no `model_type`; is this a Hugging Face config.json?", origin.display()),
        other => bail!(
            "{}: model_type `{other}` is not supported; ferrotron imports `gpt2` (GPT2LMHeadModel) and `llama` (LlamaForCausalLM)",
            origin.display()
        ),
    };
    check_shape(&cfg, origin)?;
    Ok(cfg)
}

fn gpt2_from(f: &Fields) -> Result<ModelConfig> {
    let act = f.str("activation_function", "gelu_new")?;
    if act != "gelu_new" && act != "gelu_pytorch_tanh" {
        bail!(
            "{}: activation_function `{act}` is not supported; ferrotron's GPT-2 MLP uses the tanh GELU (`gelu_new`)",
            f.origin.display()
        );
    }
    f.refuse_unless("scale_attn_by_inverse_layer_idx", &json!(false), "ferrotron scales attention by 1/sqrt(head_dim) only")?;
    f.refuse_unless("scale_attn_weights", &json!(true), "ferrotron always scales attention by 1/sqrt(head_dim)")?;
    f.refuse_unless("add_cross_attention", &json!(false), "ferrotron is decoder-only")?;
    let d_model = f.usize("n_embd", 768)?;
    let n_heads = f.usize("n_head", 12)?;
    Ok(ModelConfig {
        preset: "gpt2-124m".into(),
        vocab_size: f.usize("vocab_size", 50257)?,
        vocab_multiple: ModelConfig::default().vocab_multiple,
        ffn_multiple: ModelConfig::default().ffn_multiple,
        d_model,
        n_layers: f.usize("n_layer", 12)?,
        n_heads,
        n_kv_heads: n_heads,
        d_ff: f.usize("n_inner", 4 * d_model)?,
        max_seq_len: f.usize("n_positions", 1024)?,
        norm: Norm::Layernorm,
        mlp: Mlp::Gelu,
        positions: Positions::Learned,
        tied_embeddings: f.bool("tie_word_embeddings", true)?,
        bias: true,
        norm_eps: f.f32("layer_norm_epsilon", 1e-5)?,
        rope_theta: ModelConfig::default().rope_theta,
        init_std: f.f32("initializer_range", 0.02)?,
        init_from: String::new(),
        ..ModelConfig::default()
    })
}

fn llama_from(f: &Fields) -> Result<ModelConfig> {
    let act = f.str("hidden_act", "silu")?;
    if act != "silu" {
        bail!("{}: hidden_act `{act}` is not supported; ferrotron's SwiGLU uses `silu`", f.origin.display());
    }
    let no_bias = "ferrotron's Llama has no biases on linear layers";
    f.refuse_unless("attention_bias", &json!(false), no_bias)?;
    f.refuse_unless("mlp_bias", &json!(false), no_bias)?;
    let rope = rope_of(f)?;
    let d_model = f.usize("hidden_size", 4096)?;
    let n_heads = f.usize("num_attention_heads", 32)?;
    let head_dim = f.usize("head_dim", d_model.checked_div(n_heads).unwrap_or(0))?;
    if n_heads == 0 || head_dim * n_heads != d_model {
        bail!(
            "{}: head_dim = {head_dim} with {n_heads} heads does not equal hidden_size = {d_model}; ferrotron needs head_dim = hidden_size / num_attention_heads",
            f.origin.display()
        );
    }
    Ok(ModelConfig {
        preset: "llama-60m".into(),
        vocab_size: f.usize("vocab_size", 32000)?,
        vocab_multiple: ModelConfig::default().vocab_multiple,
        ffn_multiple: ModelConfig::default().ffn_multiple,
        d_model,
        n_layers: f.usize("num_hidden_layers", 32)?,
        n_heads,
        n_kv_heads: f.usize("num_key_value_heads", n_heads)?,
        d_ff: f.usize("intermediate_size", 11008)?,
        max_seq_len: f.usize("max_position_embeddings", 2048)?,
        norm: Norm::Rmsnorm,
        mlp: Mlp::Swiglu,
        positions: Positions::Rope,
        tied_embeddings: f.bool("tie_word_embeddings", false)?,
        bias: false,
        norm_eps: f.f32("rms_norm_eps", 1e-6)?,
        rope_theta: rope.theta,
        rope_scaling_factor: rope.llama3.map_or(0.0, |s| s.factor),
        rope_low_freq_factor: rope.llama3.map_or(1.0, |s| s.low_freq_factor),
        rope_high_freq_factor: rope.llama3.map_or(4.0, |s| s.high_freq_factor),
        rope_original_max_seq: rope.llama3.map_or(8192, |s| s.original_max_seq),
        init_std: f.f32("initializer_range", 0.02)?,
        init_from: String::new(),
    })
}

/// The rotary embedding. transformers 4 writes a top-level `rope_theta` and
/// `rope_scaling` (null, or `{rope_type | type, factor, ...}`); transformers
/// 5 and later write `rope_parameters: {rope_type, rope_theta, factor, ...}`.
/// Read either; `default` and `llama3` are implemented, other types (linear,
/// dynamic, yarn, ...) are refused rather than ignored.
fn rope_of(f: &Fields) -> Result<Rope> {
    let top_theta = f.f32("rope_theta", 10000.0)?;
    let (params, key) = match (f.v.get("rope_parameters").filter(|p| !p.is_null()), f.v.get("rope_scaling").filter(|p| !p.is_null())) {
        (Some(p), _) => (p, "rope_parameters"),
        (None, Some(p)) => (p, "rope_scaling"),
        (None, None) => return Ok(Rope::plain(top_theta)),
    };
    if !params.is_object() {
        bail!("{}: `{key}` should be an object, got {params}", f.origin.display());
    }
    let sub = Fields { v: params, origin: f.origin };
    let theta = sub.f32("rope_theta", top_theta)?;
    // transformers < 4.45 named the kind `type`.
    let kind = match params.get("rope_type").filter(|t| !t.is_null()) {
        Some(_) => sub.str("rope_type", "default")?,
        None => sub.str("type", "default")?,
    };
    match kind.as_str() {
        "default" => Ok(Rope::plain(theta)),
        "llama3" => {
            let need = |name: &str| -> Result<f32> {
                match params.get(name) {
                    None | Some(Value::Null) => bail!("{}: {key} of rope_type `llama3` needs `{name}`", f.origin.display()),
                    Some(_) => sub.f32(name, 0.0),
                }
            };
            let scaling = Llama3Scaling {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_seq: match params.get("original_max_position_embeddings") {
                    None | Some(Value::Null) => bail!("{}: {key} of rope_type `llama3` needs `original_max_position_embeddings`", f.origin.display()),
                    Some(_) => sub.usize("original_max_position_embeddings", 0)?,
                },
            };
            let ok = scaling.factor > 0.0 && scaling.low_freq_factor > 0.0 && scaling.high_freq_factor > scaling.low_freq_factor && scaling.original_max_seq > 0;
            if !ok {
                bail!(
                    "{}: {key} of rope_type `llama3` needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0, got {params}",
                    f.origin.display()
                );
            }
            Ok(Rope { theta, llama3: Some(scaling) })
        }
        other => bail!(
            "{}: {key}.rope_type `{other}` is not supported: ferrotron implements plain rotary positions and Llama 3 scaling (`llama3`)",
            f.origin.display()
        ),
    }
}

/// The shape checks `ParamLayout` relies on, phrased in HF terms.
fn check_shape(c: &ModelConfig, origin: &Path) -> Result<()> {
    let o = origin.display();
    for (name, v) in [("vocab size", c.vocab_size), ("width", c.d_model), ("layers", c.n_layers), ("heads", c.n_heads), ("kv heads", c.n_kv_heads), ("MLP width", c.d_ff), ("positions", c.max_seq_len)] {
        if v == 0 {
            bail!("{o}: the model's {name} is 0");
        }
    }
    if !c.d_model.is_multiple_of(c.n_heads) {
        bail!("{o}: {} heads do not divide the width {}", c.n_heads, c.d_model);
    }
    if !c.n_heads.is_multiple_of(c.n_kv_heads) {
        bail!("{o}: {} key/value heads do not divide {} attention heads", c.n_kv_heads, c.n_heads);
    }
    Ok(())
}
