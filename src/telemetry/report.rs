//! The text of `ferrotron info`: model shape, parameters, FLOPs per token
//! and the memory estimate, as aligned two-column tables.

use super::flops::{attention_flops_per_token, flops_per_token, matmul_params};
use super::memory::{estimate, optimizer_groups, param_counts, padding_params, MemoryEstimate};
use crate::optim::GroupPlan;
use crate::config::{Config, Mlp, ModelConfig, Norm, Positions};
use crate::model::layout::{ParamKind, ParamLayout};
use std::fmt::Write;

/// Width of the label column, so every table lines up with the others.
const LABEL_W: usize = 34;
/// Width of the value column (right-aligned).
const VALUE_W: usize = 14;

pub fn format_info(cfg: &Config) -> String {
    let mut out = String::new();
    let m = &cfg.model;
    let _ = writeln!(out, "ferrotron info · preset {} · device {} · optimizer {}", m.preset, cfg.device, cfg.optimizer.name);
    out.push('\n');
    model_section(&mut out, m);
    params_section(&mut out, cfg);
    flops_section(&mut out, cfg);
    memory_section(&mut out, cfg);
    optimizer_section(&mut out, cfg);
    out
}

fn heading(out: &mut String, title: &str) {
    let _ = writeln!(out, "{title}");
}

fn row(out: &mut String, label: &str, value: &str, note: &str) {
    let line = format!("  {label:<LABEL_W$}{value:>VALUE_W$}  {note}");
    let _ = writeln!(out, "{}", line.trim_end());
}

fn rule(out: &mut String) {
    let _ = writeln!(out, "  {}", "─".repeat(LABEL_W + VALUE_W));
}

fn model_section(out: &mut String, m: &ModelConfig) {
    heading(out, "Model");
    let _ = writeln!(
        out,
        "  {} layers · d_model {} · {} heads ({} kv, head_dim {}) · d_ff {}",
        m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_dim(), m.d_ff
    );
    let pad = m.padded_vocab() - m.vocab_size;
    let padding = if pad > 0 { format!(" (+{pad} padding rows in the embedding and head: {} = a multiple of {})", m.padded_vocab(), m.vocab_multiple) } else { String::new() };
    let _ = writeln!(out, "  vocab {}{padding} · max_seq_len {}", m.vocab_size, m.max_seq_len);
    if m.padded_ff() > m.d_ff {
        let _ = writeln!(out, "  d_ff padded to {} in memory (a multiple of {}; zero units)", m.padded_ff(), m.ffn_multiple);
    }
    let norm = if m.norm == Norm::Layernorm { "layernorm" } else { "rmsnorm" };
    let mlp = if m.mlp == Mlp::Gelu { "gelu MLP" } else { "swiglu MLP" };
    let pos = if m.positions == Positions::Learned { "learned positions" } else { "rotary positions" };
    let tied = if m.tied_embeddings { "tied embeddings" } else { "untied embeddings" };
    let bias = if m.bias { "biases" } else { "no biases" };
    let _ = writeln!(out, "  {norm} · {mlp} · {pos} · {tied} · {bias}\n");
}

fn kind_label(kind: ParamKind, tied: bool) -> &'static str {
    match kind {
        ParamKind::Embedding if tied => "embedding wte (also the head)",
        ParamKind::Embedding => "embedding wte",
        ParamKind::Position => "positions wpe",
        ParamKind::Matrix => "attention + MLP matrices",
        ParamKind::Bias => "linear biases",
        ParamKind::Norm => "norm weights (+ biases)",
        ParamKind::Head => "output head lm_head",
    }
}

fn params_section(out: &mut String, cfg: &Config) {
    let counts = param_counts(cfg);
    let total: usize = counts.iter().map(|c| c.1).sum();
    heading(out, "Parameters");
    for (kind, n) in &counts {
        let share = format!("{:5.1}%", 100.0 * *n as f64 / total as f64);
        row(out, kind_label(*kind, cfg.model.tied_embeddings), &human_count(*n as f64), &share);
    }
    rule(out);
    let pad = padding_params(cfg);
    let note = if pad > 0 { format!("{} (+{} padding in memory)", group_digits(total as u64), group_digits(pad as u64)) } else { group_digits(total as u64) };
    row(out, "total", &human_count(total as f64), &note);
    out.push('\n');
}

fn flops_section(out: &mut String, cfg: &Config) {
    let (m, seq) = (&cfg.model, cfg.train.seq_len);
    let n_mm = matmul_params(m);
    heading(out, &format!("Training FLOPs per token (forward + backward, seq_len {seq})"));
    row(out, "matmul  6 · N_matmul", &flop(6.0 * n_mm as f64), &format!("N_matmul = {} (matrices + head)", human_count(n_mm as f64)));
    row(out, "attention  12 · L · H · D · seq", &flop(attention_flops_per_token(m, seq)), "all S² scores");
    rule(out);
    row(out, "total, causal (attention halved)", &flop(flops_per_token(m, seq, true)), "what a causal kernel computes");
    row(out, "total, full attention", &flop(flops_per_token(m, seq, false)), "");
    out.push('\n');
}

fn precision_note(device: &str) -> &'static str {
    match device {
        "cuda" => "fp32 master + bf16 weights, fp32 grads, bf16 activations",
        _ => "fp32 weights, grads and activations",
    }
}

fn memory_section(out: &mut String, cfg: &Config) {
    let est = estimate(cfg);
    let t = &cfg.train;
    let (world, stage) = (cfg.dist.world.max(1), cfg.dist.zero_stage);
    let sp = cfg.dist.sp.max(1);
    let sp_note = if sp > 1 { format!(", Ulysses sp {sp}") } else { String::new() };
    let who = if world > 1 || stage > 0 || sp > 1 { format!("one rank of {world}, ZeRO stage {stage}{sp_note}") } else { "one process".into() };
    let precision = if cfg.offload.enabled() && cfg.device == "cuda" && cfg.offload.gpu_gb > 0.0 {
        "bf16 weights (fp32 master on the host, but for the units offload.gpu_gb keeps here), fp32 grads, bf16 activations"
    } else if cfg.offload.enabled() && cfg.device == "cuda" {
        "bf16 weights (fp32 master on the host), fp32 grads, bf16 activations"
    } else if stage == 3 && cfg.device == "cuda" {
        "fp32 master, bf16 weights only of the units in use, fp32 grads, bf16 activations"
    } else {
        precision_note(&cfg.device)
    };
    // train.grad_dtype = bf16 stores the gradients in 2 bytes on CUDA.
    let precision = if cfg.device == "cuda" && t.grad_dtype == "bf16" { precision.replace("fp32 grads", "bf16 grads") } else { precision.to_string() };
    heading(out, &format!("Memory, {who} ({}: {precision})", cfg.device));
    let sharded = |note: &str| if stage > 0 { note.to_string() } else { String::new() };
    let weights_note = if cfg.offload.params != "none" { "the streamed window: the unit computing and the one uploaded ahead".to_string() } else { sharded(match (stage, world) {
        (3, 1) => "fp32 master, no bf16 copy (units gathered in bf16 when used)",
        (3, _) => "fp32 shard",
        (_, 1) => "all (one process: the shard is the whole model)",
        _ => "all, + fp32 shard",
    }) };
    let weights_note = match crate::parallel::offload::budget::gpu_units(cfg) {
        Ok(g) if g.units > 0 => format!("all, + fp32 master of the {} units offload.gpu_gb keeps here {}", g.units, human_bytes(g.master)),
        _ => weights_note,
    };
    row(out, "weights", &human_bytes(est.weights), &weights_note);
    let grads_note = match (stage, world) {
        (1, 1) => "all (one process: the shard is the whole model)",
        (1, _) => "all, + fp32 shard",
        _ if t.grad_dtype == "bf16" => "the shard (one process: the whole model)",
        _ => "fp32 shard",
    };
    row(out, "gradients", &human_bytes(est.grads), &sharded(grads_note));
    optimizer_row(out, cfg, &est);
    if est.comm_buffers > 0 && cfg.offload.enabled() {
        row(out, "unit gradient buffers", &human_bytes(est.comm_buffers), "the backward unit's gradients and those of the units still being copied to the host");
    } else if est.comm_buffers > 0 {
        let what = match (stage, world) {
            (3, 1) => "the units' gathered bf16 weights at the peak (gradients go straight into the shard)",
            (3, _) => "a unit's gathered weights + gradients at the peak",
            _ => "a unit's gradients before reduce-scatter",
        };
        row(out, "ZeRO unit buffers", &human_bytes(est.comm_buffers), what);
    }
    if est.sp_buffers > 0 {
        row(out, "Ulysses buffers", &human_bytes(est.sp_buffers), "all-to-all send/receive, gathered dqkv and dout");
    }
    let recompute = match crate::parallel::ulysses::recompute(t, sp) {
        crate::model::Recompute::Off => "recompute off",
        crate::model::Recompute::Elementwise => "recompute on (norms, MLP activation)",
        crate::model::Recompute::Layers { keep_attention: true } => "checkpoint_layers on (blocks re-run in backward, attention output kept)",
        crate::model::Recompute::Layers { keep_attention: false } => "checkpoint_layers on (blocks re-run in backward, attention included)",
    };
    let n = t.batch_size * t.seq_len;
    let rows = crate::model::activations::logit_rows(n, t.logits_chunk);
    let logits = if rows < n { format!(", logits {rows} rows at a time") } else { String::new() };
    let share = if sp > 1 { format!(" (this rank: {} tokens of each sequence, attention on all positions of {} of {} heads)", t.seq_len / sp, cfg.model.n_heads / sp, cfg.model.n_heads) } else { String::new() };
    row(out, "activations", &human_bytes(est.activations), &format!("micro-batch {} × {} tokens{share}, {recompute}{logits}", t.batch_size, t.seq_len));
    row(out, "backward scratch", &human_bytes(est.scratch), "activation gradients, projection output, token ids, losses");
    rule(out);
    let note = if est.optimizer_state.is_none() { "without optimizer state" } else { "excl. per-op scratch, cuBLASLt workspace, allocator slack" };
    row(out, "total", &human_bytes(est.total()), note);
    no_shadow_row(out, cfg, &est);
    let gb = cfg.dist.gpu_memory_gb;
    let longest = match crate::telemetry::memory::longest_seq(cfg, (gb * 1e9) as u64) {
        Some(s) => format!("{s} tokens"),
        None => "none".into(),
    };
    let cap = if cfg.model.positions == crate::config::Positions::Learned { format!(", at most model.max_seq_len = {}", cfg.model.max_seq_len) } else { String::new() };
    row(out, "longest sequence per GPU", &longest, &format!("estimate for {gb} GB (dist.gpu_memory_gb): batch 1, these settings, a multiple of {}{cap}", 64 * sp));
    offload_rows(out, cfg);
}

/// One CUDA process without ZeRO keeps a bf16 copy of every weight (the
/// matmuls' operands); ZeRO stage 3 in the same single process keeps only
/// the fp32 master and gathers each unit into bf16 when it is used. Shows
/// that total beside this one.
fn no_shadow_row(out: &mut String, cfg: &Config, est: &MemoryEstimate) {
    if cfg.device != "cuda" || cfg.offload.enabled() || cfg.dist.world.max(1) > 1 || cfg.dist.zero_stage == 3 {
        return;
    }
    let mut s3 = cfg.clone();
    s3.dist.zero_stage = 3;
    let lean = estimate(&s3).total();
    let saved = est.total().saturating_sub(lean);
    row(out, "with dist.zero_stage = 3", &human_bytes(lean), &format!("same process, no bf16 copy of every weight: {} less", human_bytes(saved)));
}

/// Host and disk bytes of `offload.optimizer = cpu | nvme`, and which
/// units each tier holds (`offload.host_gb` splits the nvme tier).
fn offload_rows(out: &mut String, cfg: &Config) {
    if !cfg.offload.enabled() {
        return;
    }
    match crate::parallel::offload::budget::offload_bytes(cfg) {
        Ok(b) => {
            let tier = &cfg.offload.optimizer;
            let streamed = cfg.offload.params == "nvme";
            let pool = format!("{} gradient buffers {}", crate::parallel::offload::POOL_BUFFERS, human_bytes(b.host_pool));
            let images = if b.host_images > 0 { format!(" + kept bf16 images {}", human_bytes(b.host_images)) } else { String::new() };
            let reads = if b.host_reads > 0 { format!(" + the passes' weight buffers {}", human_bytes(b.host_reads)) } else { String::new() };
            let resident = if b.host_units > 0 { format!("fp32 master + optimizer state of {} units {} + ", b.host_units, human_bytes(b.host_resident())) } else { String::new() };
            let window = if b.disk_units > 0 { format!("optimizer read-ahead / write-behind window {} + ", human_bytes(b.host_window)) } else { String::new() };
            row(out, &format!("host (offload.optimizer = {tier})"), &human_bytes(b.host), &format!("{resident}{window}{pool}{images}{reads}"));
            if b.host_init > b.host {
                row(out, "host at start-up", &human_bytes(b.host_init), "the peak: a padded model's initial fp32 weights, made whole before the units take them over");
            }
            if b.disk > 0 {
                let image = if streamed && cfg.device == "cuda" { "bf16 image + " } else { "" };
                row(out, "disk (offload.path)", &human_bytes(b.disk), &format!("{image}fp32 master + optimizer state files of {} units under {}", b.disk_units, cfg.offload.path));
            }
            placement_row(out, cfg, &b);
        }
        Err(e) => row(out, "offload", "unknown", &e.to_string()),
    }
}

/// Which tier holds the units: the device their compute weights (all, or
/// a window when streamed), host memory and files their master weights
/// and optimizer state.
fn placement_row(out: &mut String, cfg: &Config, b: &crate::parallel::offload::budget::OffloadBytes) {
    let on_gpu = crate::parallel::offload::budget::gpu_units(cfg).unwrap_or_default();
    let units = b.host_units + b.disk_units + on_gpu.units;
    let tier = |n: usize, p: u64, bytes: u64| format!("{n} units, {} params, {}", human_count(p as f64), human_bytes(bytes));
    let master = if on_gpu.units > 0 { format!(" + master + optimizer state of {}", tier(on_gpu.units, on_gpu.params, on_gpu.bytes())) } else { String::new() };
    let gpu = match cfg.offload.params.as_str() {
        "none" => format!("GPU {units} units' compute weights{master}"),
        _ => "GPU a window of streamed weights".to_string(),
    };
    let host = tier(b.host_units, b.host_params, b.host_resident() + b.host_images);
    let disk = tier(b.disk_units, b.disk_params, b.disk);
    let mut budgets = vec![];
    if cfg.offload.gpu_gb > 0.0 {
        budgets.push(format!("gpu_gb = {}", cfg.offload.gpu_gb));
    }
    if cfg.offload.host_gb > 0.0 {
        budgets.push(format!("host_gb = {}", cfg.offload.host_gb));
    }
    let label = if budgets.is_empty() { "placement".to_string() } else { format!("placement ({})", budgets.join(", ")) };
    row(out, &label, "", &format!("{gpu} · host {host} · disk {disk}"));
}

fn optimizer_row(out: &mut String, cfg: &Config, est: &MemoryEstimate) {
    let name = &cfg.optimizer.name;
    match est.optimizer_state {
        Some(bytes) => row(out, "optimizer state", &human_bytes(bytes), &format!("{name}, {} B/param (groups below)", per_param(bytes as f64 / est.params.max(1) as f64))),
        None => row(out, "optimizer state", "unknown", &format!("{name}: settings do not fit the model (see below)")),
    }
}

/// Bytes per parameter: "8" when whole, else three decimals ("2.032").
fn per_param(x: f64) -> String {
    let r = (x * 1000.0).round() / 1000.0;
    if r.fract() == 0.0 { format!("{r:.0}") } else { format!("{r:.3}") }
}

/// Which tensors get which update rule, and the exact state of each group.
fn optimizer_section(out: &mut String, cfg: &Config) {
    let _ = writeln!(out, "\nOptimizer {} · state per group (exact, from the layout)", cfg.optimizer.name);
    let groups = match optimizer_groups(cfg) {
        Ok(g) => g,
        Err(e) => {
            let _ = writeln!(out, "  error: {e:#}");
            return;
        }
    };
    for g in &groups {
        group_rows(out, g);
    }
    rule(out);
    let bytes: u64 = groups.iter().map(|g| g.state_bytes).sum();
    let params: usize = groups.iter().map(|g| g.params).sum();
    row(out, "total optimizer state", &human_bytes(bytes), &format!("{} B, {} B/param", group_digits(bytes), per_param(bytes as f64 / params.max(1) as f64)));
    let ws = crate::optim::workspace_plan(&cfg.optimizer, &ParamLayout::new(&cfg.model)).bytes_on(&cfg.device);
    if ws > 0 {
        row(out, "workspace (scratch, not checkpointed)", &human_bytes(ws), "sized by the largest matrix");
    }
}

fn group_rows(out: &mut String, g: &GroupPlan) {
    let label = format!("{} → {}", g.group, g.rule);
    let _ = writeln!(out, "  {label}");
    row(out, &format!("  {} params, weight decay {}", human_count(g.params as f64), g.weight_decay), &human_bytes(g.state_bytes), &format!("{} B/param", per_param(g.bytes_per_param())));
    let _ = writeln!(out, "    tensors: {}", tensor_summary(&g.tensors));
}

/// Tensor names with layer indices folded: `h.{0-11}.attn.qkv.w, ln_f.w`
/// (a single layer keeps its name: `h.3.mlp.fc.w`).
pub fn tensor_summary(names: &[String]) -> String {
    let mut folded: Vec<(String, Vec<usize>)> = vec![];
    for n in names {
        match split_layer(n) {
            Some((layer, rest)) => match folded.iter_mut().find(|(k, l)| *k == rest && !l.is_empty()) {
                Some((_, layers)) => layers.push(layer),
                None => folded.push((rest.to_string(), vec![layer])),
            },
            None => folded.push((n.clone(), vec![])),
        }
    }
    folded.iter().map(|(rest, layers)| if layers.is_empty() { rest.clone() } else { format!("h.{}.{rest}", layer_set(layers)) }).collect::<Vec<_>>().join(", ")
}

/// `h.3.mlp.fc.w` → (3, "mlp.fc.w").
fn split_layer(name: &str) -> Option<(usize, &str)> {
    let (layer, rest) = name.strip_prefix("h.")?.split_once('.')?;
    Some((layer.parse().ok()?, rest))
}

/// `[3]` → "3", `[0, 1, 2]` → "{0-2}", `[0, 2, 5]` → "{0,2,5}".
fn layer_set(layers: &[usize]) -> String {
    match layers {
        [one] => one.to_string(),
        [first, .., last] if layers.windows(2).all(|w| w[1] == w[0] + 1) => format!("{{{first}-{last}}}"),
        _ => format!("{{{}}}", layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")),
    }
}

/// 124439808 → "124.44M".
pub fn human_count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}B", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e3 => format!("{:.2}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// Binary units, since memory is sized in them: "1.39 GiB", "96.00 MiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("GiB", 1073741824.0), ("MiB", 1048576.0), ("KiB", 1024.0)];
    let x = b as f64;
    match UNITS.iter().find(|(_, size)| x >= *size) {
        Some((unit, size)) => format!("{:.2} {unit}", x / size),
        None => format!("{b} B"),
    }
}

/// FLOPs in decimal units, three decimals: "0.798 GFLOP", "5.243 MFLOP".
fn flop(f: f64) -> String {
    match f {
        f if f >= 1e12 => format!("{:.3} TFLOP", f / 1e12),
        f if f >= 1e9 => format!("{:.3} GFLOP", f / 1e9),
        f => format!("{:.3} MFLOP", f / 1e6),
    }
}

/// 124439808 → "124,439,808".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
