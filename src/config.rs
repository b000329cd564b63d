//! Typed configuration: presets, TOML files, `--set key=value` overrides and
//! validation with errors that say what to change.
//!
//! Resolution order (later wins): built-in defaults → the preset named by
//! `model.preset` (a full config in `configs/`, compiled into the binary) →
//! the user's `--config FILE` → each `--set key=value`.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use toml::Value;

/// Presets shipped in `configs/`, embedded so the binary works from anywhere.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../configs/tiny.toml")),
    ("tiny-llama", include_str!("../configs/tiny-llama.toml")),
    ("gpt2-124m", include_str!("../configs/gpt2-124m.toml")),
    ("gpt2-350m", include_str!("../configs/gpt2-350m.toml")),
    ("gpt2-774m", include_str!("../configs/gpt2-774m.toml")),
    ("gpt2-1.5b", include_str!("../configs/gpt2-1.5b.toml")),
    ("llama-60m", include_str!("../configs/llama-60m.toml")),
    ("llama-130m", include_str!("../configs/llama-130m.toml")),
    ("llama-350m", include_str!("../configs/llama-350m.toml")),
    ("llama-1b", include_str!("../configs/llama-1b.toml")),
    ("llama3-8b", include_str!("../configs/llama3-8b.toml")),
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `cpu` (fp32 reference) or `cuda` (bf16 mixed precision).
    pub device: String,
    /// Seeds weights, data order and sampling.
    pub seed: u64,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub optimizer: OptimizerConfig,
    pub run: RunConfig,
    pub dist: DistConfig,
    pub debug: DebugConfig,
    pub offload: OffloadConfig,
}

/// Where the optimizer's state and master weights live (ZeRO-Offload /
/// Fuyou style): `none` (on the device), `cpu` (host memory, the step runs
/// on the CPU), `nvme` (files under `path`, streamed through host memory).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OffloadConfig {
    /// `none`, `cpu` or `nvme`.
    pub optimizer: String,
    /// `none` (compute weights stay on the device), `cpu` (they live in
    /// host memory and stream to the device per unit; needs optimizer =
    /// cpu) or `nvme` (they live in the units' files under `path`, bf16 on
    /// CUDA, and are read and uploaded per unit with `prefetch` units read
    /// ahead; needs optimizer = nvme).
    pub params: String,
    /// Folder for the NVMe tier's scratch files (not checkpoints).
    pub path: String,
    /// NVMe tier: units read ahead of the optimizer step, and (params =
    /// nvme) of the passes.
    pub prefetch: usize,
    /// NVMe tier: GB (10^9 bytes) of host memory for units kept resident
    /// (master weights, optimizer state and, with params = nvme on CUDA,
    /// the bf16 image), as the cpu tier keeps them; the other units live
    /// in their files. 0: every unit in its file. Which units: largest
    /// first (parallel::offload::placement).
    pub host_gb: f64,
    /// GB (10^9 bytes) of device memory for units kept ON THE DEVICE:
    /// their fp32 master weights and optimizer state stay there and the
    /// device optimizer steps them (no host copy); the other units are
    /// placed as without it (host_gb, then files). 0: none. Which units:
    /// largest first (parallel::offload::placement). Needs params = none.
    pub gpu_gb: f64,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig { optimizer: "none".into(), params: "none".into(), path: String::new(), prefetch: 2, host_gb: 0.0, gpu_gb: 0.0 }
    }
}

impl OffloadConfig {
    pub fn enabled(&self) -> bool {
        self.optimizer != "none"
    }
    pub fn validate(&self) -> Result<()> {
        if !["none", "cpu", "nvme"].contains(&self.optimizer.as_str()) {
            bail!("offload.optimizer = `{}` is unknown; use none, cpu or nvme", self.optimizer);
        }
        match self.params.as_str() {
            "none" => {}
            "cpu" if self.optimizer == "cpu" => {}
            "cpu" => bail!("offload.params = cpu needs offload.optimizer = cpu (the weights stream from the host copies the cpu tier keeps)"),
            "nvme" if self.optimizer == "nvme" => {}
            "nvme" => bail!("offload.params = nvme needs offload.optimizer = nvme (the weights stream from the state files the nvme tier keeps under offload.path)"),
            other => bail!("offload.params = `{other}` is unknown; use none, cpu or nvme"),
        }
        if self.optimizer == "nvme" && self.path.is_empty() {
            bail!("offload.optimizer = nvme needs offload.path, a folder on a fast local disk for the state files");
        }
        if self.prefetch == 0 {
            bail!("offload.prefetch must be at least 1");
        }
        if !self.host_gb.is_finite() || self.host_gb < 0.0 {
            bail!("offload.host_gb = {} must be a number of GB, 0 or more", self.host_gb);
        }
        if self.host_gb > 0.0 && self.optimizer != "nvme" {
            bail!("offload.host_gb mixes host memory and files and needs offload.optimizer = nvme (the cpu tier keeps every unit in host memory; none keeps them on the device)");
        }
        if !self.gpu_gb.is_finite() || self.gpu_gb < 0.0 {
            bail!("offload.gpu_gb = {} must be a number of GB, 0 or more", self.gpu_gb);
        }
        if self.gpu_gb > 0.0 && !self.enabled() {
            bail!("offload.gpu_gb keeps some units' optimizer on the device and the rest offloaded: it needs offload.optimizer = cpu or nvme (none keeps every unit on the device already)");
        }
        if self.gpu_gb > 0.0 && self.params != "none" {
            bail!("offload.gpu_gb needs offload.params = none (got {}): the units kept on the device are stepped in the device's resident weights, which streamed weights do not have", self.params);
        }
        Ok(())
    }
}

/// Failure injection for tests of fault tolerance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// After this step (0 = never) rank `fail_rank` exits with an error, in
    /// the first attempt only: a run restarted by `launch --max-restarts`
    /// does not fail again.
    pub fail_step: u64,
    pub fail_rank: usize,
    /// Milliseconds every checkpoint write sleeps after its tensor files
    /// are written and before it is published (0 = none): makes the
    /// background write slow enough for tests to kill a run inside it.
    pub ckpt_write_delay_ms: u64,
    /// After this step (0 = never) rank `hang_rank` stops making progress
    /// (sleeps forever, outside any collective), in the first attempt only:
    /// for tests of the launcher's heartbeat watch.
    pub hang_step: u64,
    pub hang_rank: usize,
    /// An offloaded run (`offload.optimizer = cpu | nvme`, `offload.params =
    /// none`) keeps fp32 weights on the device (plus the GEMMs' bf16
    /// shadow) instead of bf16 only: the plain run's arithmetic in the
    /// passes, for tests that separate the host optimizer from bf16
    /// weight rounding.
    pub offload_fp32_weights: bool,
    /// At this step (0 = never) every micro-batch's loss is taken as NaN
    /// (the gradients stay as computed): a bad step on purpose, for tests
    /// of the bad-step guard (`train::inject`).
    pub nan_loss_step: u64,
    /// At this step (0 = never) every gradient is NaN (the gradient scale
    /// is; the loss stays finite): for tests of the bad-step guard.
    pub nan_grads_step: u64,
    /// Milliseconds each write of an NVMe-tier unit file sleeps before it
    /// opens the file (0 = none): makes the writes behind the optimizer
    /// slow enough for tests to find them still pending.
    pub offload_write_delay_ms: u64,
}

/// Several ranks: how they talk and what they shard. The world itself
/// (rank, world size, master address) comes from the launcher's
/// environment (`ferrotron launch`, torchrun, SLURM, Open MPI), not from
/// the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// 0 = data parallel (all-reduce), 1 = optimizer state sharded,
    /// 2 = + gradients, 3 = + parameters (gathered per layer).
    pub zero_stage: u32,
    /// Ulysses sequence-parallel group size (1 = off).
    pub sp: usize,
    /// `auto` (nccl on cuda, tcp on cpu), `nccl` or `tcp`.
    pub backend: String,
    /// Seconds any rendezvous or collective may wait before failing with
    /// the name of the rank it waits for; also the NCCL watchdog's limit
    /// per collective and `launch`'s limit on a rank's heartbeat age.
    pub timeout_s: f64,
    /// For `info`: the number of ranks to estimate per-rank memory for
    /// (0 = 1). Training takes the world from the launcher and refuses a
    /// different non-zero value.
    pub world: usize,
    /// For `info`: GPU memory in GB (10^9 bytes) for its "longest sequence
    /// per GPU" line (default 141, an H200).
    pub gpu_memory_gb: f64,
    /// At the start of a run of several ranks: check the collectives'
    /// results and time a few all-reduces (`dist::self_test`), logging the
    /// bus bandwidth. Ignored on one rank.
    pub self_test: bool,
    /// The bus bandwidth (GB/s) the self-test compares with, warning below
    /// half of it; 0 = the backend's default (NCCL on H200s: 320 GB/s, the
    /// figure measured on 2 of them; TCP: none, not compared).
    pub expected_busbw_gbs: f64,
}

impl DistConfig {
    pub fn validate(&self) -> Result<()> {
        if self.zero_stage > 3 {
            bail!("dist.zero_stage = {} is not a ZeRO stage; use 0 (data parallel), 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ parameters)", self.zero_stage);
        }
        if self.sp == 0 {
            bail!("dist.sp must be at least 1 (1 = no sequence parallelism)");
        }
        if !["auto", "nccl", "tcp"].contains(&self.backend.as_str()) {
            bail!("dist.backend = `{}` is unknown; use auto (nccl on cuda, tcp on cpu), nccl or tcp", self.backend);
        }
        if !(self.gpu_memory_gb > 0.0 && self.gpu_memory_gb.is_finite()) {
            bail!("dist.gpu_memory_gb must be a positive number of GB, got {}", self.gpu_memory_gb);
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            bail!("dist.timeout_s must be a positive number of seconds, got {}", self.timeout_s);
        }
        if !(self.expected_busbw_gbs >= 0.0 && self.expected_busbw_gbs.is_finite()) {
            bail!("dist.expected_busbw_gbs must be a bandwidth in GB/s (0 = the backend's default), got {}", self.expected_busbw_gbs);
        }
        Ok(())
    }
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { zero_stage: 0, sp: 1, backend: "auto".into(), timeout_s: 60.0, world: 0, gpu_memory_gb: 141.0, self_test: true, expected_busbw_gbs: 0.0 }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Layernorm,
    Rmsnorm,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mlp {
    Gelu,
    Swiglu,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    Learned,
    Rope,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Name of the preset this config starts from (see `configs/`).
    pub preset: String,
    pub vocab_size: usize,
    /// The embedding and output-head rows are padded to a multiple of this
    /// (zero rows that never become tokens; their logits are ignored): the
    /// head matmul runs several times faster on a GPU at 50304 than at
    /// GPT-2's 50257. 1 = no padding. Exports and imports keep `vocab_size`.
    pub vocab_multiple: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); must divide `n_heads`.
    pub n_kv_heads: usize,
    /// Hidden width of the MLP (per branch for SwiGLU).
    pub d_ff: usize,
    /// A SwiGLU MLP's hidden width is padded to a multiple of this inside
    /// the model (zero gate/up rows and down-projection columns, which stay
    /// zero: exact): llama-1b's 5461 otherwise costs padded copies around
    /// every MLP matmul and rules out vector loads in the SwiGLU kernels.
    /// 1 = no padding. GELU MLPs are not padded. Exports and imports keep `d_ff`.
    pub ffn_multiple: usize,
    /// Longest sequence the model supports (size of learned positions).
    pub max_seq_len: usize,
    pub norm: Norm,
    pub mlp: Mlp,
    pub positions: Positions,
    pub tied_embeddings: bool,
    /// Biases on linear layers and norms (GPT-2 yes, Llama no).
    pub bias: bool,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// Llama 3 rotary scaling (`rope_scaling` with `rope_type: "llama3"` in
    /// a Hugging Face config): the factor long wavelengths are slowed down
    /// by; 0 = no scaling. The next three keys apply only when it is > 0.
    pub rope_scaling_factor: f32,
    /// Wavelengths above `rope_original_max_seq / rope_low_freq_factor`
    /// are divided by the factor.
    pub rope_low_freq_factor: f32,
    /// Wavelengths below `rope_original_max_seq / rope_high_freq_factor`
    /// are kept; the band between is interpolated.
    pub rope_high_freq_factor: f32,
    /// The context length the model was pre-trained with before scaling.
    pub rope_original_max_seq: usize,
    pub init_std: f32,
    /// A Hugging Face checkpoint (folder with `config.json` and
    /// `model.safetensors`, GPT2LMHeadModel or LlamaForCausalLM) to start
    /// from instead of random weights; its `config.json` sets the shape.
    pub init_from: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
    /// `cosine` (linear warmup then cosine to min_lr), `wsd`
    /// (warmup-stable-decay), `constant`, or `autolrs` (found while
    /// training, see [`AutoLrsConfig`]).
    pub schedule: String,
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `optimizer.lr`.
    pub min_lr_ratio: f32,
    /// For `wsd`: fraction of the steps spent in the final decay.
    pub decay_fraction: f32,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f32,
    /// Storage of the gradient buffers: `fp32` (4 bytes per parameter) or
    /// `bf16` (2: the weight-gradient GEMMs write bf16, the norm, bias and
    /// embedding gradients are summed in fp32 and rounded once per
    /// micro-batch; the precision PyTorch autocast's gradients have for
    /// one micro-batch, less with `grad_accum > 1`, each micro-batch
    /// rounding its sum again). bf16: AdamW or 8-bit AdamW in one process,
    /// no offload (see [`GRAD_DTYPES`] and `Config::validate`).
    pub grad_dtype: String,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_every: u64,
    /// Micro-batches per evaluation.
    pub eval_batches: usize,
    /// Save a checkpoint every N steps (0 = only at the end).
    pub ckpt_every: u64,
    /// Keep the newest K checkpoints.
    pub keep_ckpts: usize,
    /// Two-stage checkpoints: the step boundary only copies the state to
    /// host memory, a background thread writes it while training goes on
    /// (at most one write in flight). false = write before the next step.
    pub async_checkpoint: bool,
    /// Samples generated at the end of the run.
    pub samples: usize,
    pub sample_tokens: usize,
    /// Recompute norms and MLP activations in backward (saves memory).
    pub recompute: bool,
    /// Activation checkpointing: keep only each block's input and re-run
    /// the block's forward in backward (one extra forward pass, ~1/3 more
    /// compute; saved activations shrink to N·C per layer plus one block's
    /// worth). Implies `recompute`.
    pub checkpoint_layers: bool,
    /// With `checkpoint_layers`: also keep each block's attention output and
    /// log-sum-exp, so the re-run skips attention (most of the forward at
    /// long sequences) for N·H·D activations more per layer. false = the
    /// least memory.
    pub checkpoint_keep_attention: bool,
    /// Token rows of the output head and loss computed at once: the N×V
    /// logits exist only one chunk at a time (memory chunk·V instead of
    /// N·V, the largest activation of a long sequence). 0 = all rows at
    /// once; else a multiple of 64.
    pub logits_chunk: usize,
    /// Stop the run at the first evaluation whose validation loss is at
    /// most this (time-to-result runs); 0 = off.
    pub stop_at_val_loss: f32,
    /// `schedule = "autolrs"`: the search's settings.
    pub autolrs: AutoLrsConfig,
    /// A step whose loss or gradient norm is not finite is skipped (not
    /// applied); after this many skipped steps in a row the run stops
    /// (see `train::guard`). At least 1.
    pub max_bad_steps: u64,
    /// Also skip a step whose loss is more than this many standard
    /// deviations above the mean of the recent applied steps (llm.c's
    /// z-score outlier rule); 0 = off.
    pub skip_spike_z: f32,
}

/// AutoLRS (Jin et al. 2021): after warmup, training runs in stages of
/// `tau` steps; before each stage, `trials` learning rates chosen by
/// Bayesian optimization (a Gaussian process over log lr) are each trained
/// `tau_prime` steps from the same saved state, an exponential
/// a·e^(bt) + c fitted to each short loss curve predicts the loss at the
/// stage's end, the state is restored exactly and the stage trains at the
/// best predicted lr. `tau` and `tau_prime` double each stage (`tau` up
/// to `max_tau`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AutoLrsConfig {
    /// Steps of the first stage; 0 = (steps after warmup) / 7, so three
    /// doubling stages (τ, 2τ, 4τ) cover the run.
    pub tau: u64,
    /// Steps of each trial in the first stage (≪ tau); 0 = tau / 10, at
    /// least 5 (or tau / 2 when tau < 10) so the curve fit has points.
    pub tau_prime: u64,
    /// Learning rates tried per stage (the first is the current one).
    pub trials: usize,
    /// Largest stage; 0 = no cap.
    pub max_tau: u64,
    /// Search range of the lr; 0 = `optimizer.lr` / 10 and × 3.
    pub min_lr: f32,
    pub max_lr: f32,
}

impl Default for AutoLrsConfig {
    fn default() -> Self {
        AutoLrsConfig { tau: 0, tau_prime: 0, trials: 5, max_tau: 0, min_lr: 0.0, max_lr: 0.0 }
    }
}

impl AutoLrsConfig {
    /// The search range `[min, max]` for a peak lr of `lr`.
    pub fn range(&self, lr: f32) -> (f32, f32) {
        let lo = if self.min_lr > 0.0 { self.min_lr } else { lr / 10.0 };
        let hi = if self.max_lr > 0.0 { self.max_lr } else { lr * 3.0 };
        (lo, hi)
    }

    /// τ and τ' of the first stage for a run of `steps` after warmup.
    pub fn first_stage(&self, steps: u64) -> (u64, u64) {
        let tau = if self.tau > 0 { self.tau } else { (steps / 7).max(2) };
        // τ/10, but at least 5 points (or half the stage) for the fit.
        let tau_prime = if self.tau_prime > 0 { self.tau_prime } else { (tau / 10).max(5.min(tau / 2)).max(1) };
        (tau, tau_prime)
    }

    /// `steps`: the run's steps after warmup.
    pub fn validate(&self, lr: f32, steps: u64) -> Result<()> {
        let (tau, tau_prime) = self.first_stage(steps);
        if tau < 2 || tau_prime >= tau {
            bail!("train.autolrs needs tau >= 2 and 1 <= tau_prime < tau (trials much shorter than a stage), got tau = {tau}, tau_prime = {tau_prime} (0 = automatic)");
        }
        if self.trials == 0 {
            bail!("train.autolrs.trials must be at least 1 (learning rates tried per stage)");
        }
        if self.max_tau != 0 && self.max_tau < tau {
            bail!("train.autolrs.max_tau = {} is below tau = {}; use 0 (no cap) or at least tau", self.max_tau, self.tau);
        }
        if lr <= 0.0 && (self.min_lr <= 0.0 || self.max_lr <= 0.0) {
            bail!("train.schedule = autolrs searches around optimizer.lr, which is 0; set optimizer.lr > 0 or both train.autolrs.min_lr and max_lr");
        }
        let (lo, hi) = self.range(lr);
        if !(lo > 0.0 && lo < hi && hi.is_finite()) {
            bail!("train.autolrs: the lr range [{lo}, {hi}] must satisfy 0 < min_lr < max_lr");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A folder of shards written by `ferrotron prepare`, or `builtin`.
    pub path: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// One of `OPTIMIZERS`. Choosing one also applies its paper defaults
    /// (see `optimizer_defaults`) before your own settings.
    pub name: String,
    /// Peak learning rate. Matrix optimizers: the rate of the matrix update.
    /// 0 is legal: every step leaves the parameters unchanged (optimizer
    /// state still advances), which is useful for checks.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Learning rate of the tensors a matrix optimizer (muon, cosmos,
    /// apollo, apollo_mini, frugal) hands to AdamW (embeddings, head, norms,
    /// biases); follows the schedule like `lr`. 0 = same as `lr`.
    pub adamw_lr: f32,
    /// Projection rank: APOLLO (256, capped at each matrix's smaller side),
    /// APOLLO-Mini (1), COSMOS basis (64, capped at each matrix's input side).
    pub rank: usize,
    /// Steps between refreshes: APOLLO's random projection, FRUGAL's
    /// state-full subset.
    pub update_every: u64,
    /// APOLLO: gradient scale factor α (1; APOLLO-Mini 128, applied as
    /// sqrt). FRUGAL: learning-rate factor of the state-free signSGD part.
    pub scale: f32,
    /// FRUGAL: fraction of matrix parameters with AdamW state, in (0, 1].
    pub rho: f32,
    /// Muon: Nesterov momentum coefficient μ.
    pub momentum: f32,
    /// 1-bit Adam: dense Adam steps before the variance is frozen and the
    /// momentum is communicated 1-bit compressed. 0 = 20% of train.steps
    /// but at least train.warmup_steps (resolved when the config loads and
    /// saved with the run).
    pub freeze_step: u64,
    /// Parameter groups: which tensors get which settings, overriding the
    /// defaults (see [`GroupRule`]); the first rule naming a tensor applies.
    pub groups: Vec<GroupRule>,
}

/// One `[[optimizer.groups]]` entry.
///
/// Defaults without rules: matrix optimizers update the attention/MLP
/// weight matrices and hand everything else to AdamW; weight decay on
/// matrices, embeddings and the head, none on norms and biases.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupRule {
    /// Shown by `ferrotron info`; empty = `groups[i]`.
    pub name: String,
    /// Glob patterns (`*` any run of characters, `?` one) over tensor
    /// names such as `h.3.attn.qkv.w` (`ferrotron info` lists them).
    pub tensors: Vec<String>,
    /// Weight decay of these tensors instead of the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f32>,
    /// `adamw`: a matrix optimizer hands these tensors to its AdamW part;
    /// the optimizer's own name: it updates these (2-D) tensors itself.
    /// Empty: the default placement.
    pub optimizer: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Parent folder of run folders.
    pub dir: String,
    /// Run folder name under `dir`; empty = `<preset>-<timestamp>`.
    pub name: String,
    /// Print a progress bar (off when not a terminal or in tests).
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device: "cpu".into(),
            seed: 1337,
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            data: DataConfig::default(),
            optimizer: OptimizerConfig::default(),
            run: RunConfig::default(),
            dist: DistConfig::default(),
            debug: DebugConfig::default(),
            offload: OffloadConfig::default(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            preset: "tiny".into(),
            vocab_size: 256,
            vocab_multiple: 64,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 4,
            d_ff: 512,
            ffn_multiple: 64,
            max_seq_len: 256,
            norm: Norm::Layernorm,
            mlp: Mlp::Gelu,
            positions: Positions::Learned,
            tied_embeddings: true,
            bias: true,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling_factor: 0.0,
            rope_low_freq_factor: 1.0,
            rope_high_freq_factor: 4.0,
            rope_original_max_seq: 8192,
            init_std: 0.02,
            init_from: String::new(),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 100,
            batch_size: 8,
            seq_len: 128,
            grad_accum: 1,
            schedule: "cosine".into(),
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            decay_fraction: 0.2,
            grad_clip: 1.0,
            grad_dtype: "fp32".into(),
            eval_every: 50,
            eval_batches: 4,
            ckpt_every: 0,
            keep_ckpts: 2,
            async_checkpoint: true,
            samples: 0,
            sample_tokens: 64,
            recompute: false,
            checkpoint_layers: false,
            checkpoint_keep_attention: true,
            logits_chunk: 8192,
            stop_at_val_loss: 0.0,
            autolrs: AutoLrsConfig::default(),
            max_bad_steps: 10,
            skip_spike_z: 0.0,
        }
    }
}

impl TrainConfig {
    /// The storage of the gradient buffers `train.grad_dtype` names.
    pub fn grad_buffer_dtype(&self) -> crate::backend::DType {
        if self.grad_dtype == "bf16" { crate::backend::DType::Bf16 } else { crate::backend::DType::F32 }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { path: "builtin".into() }
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            name: "adamw".into(),
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            adamw_lr: 0.0,
            rank: 256,
            update_every: 200,
            scale: 1.0,
            rho: 0.25,
            momentum: 0.95,
            freeze_step: 0,
            groups: Vec::new(),
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { dir: "runs".into(), name: String::new(), progress: true }
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Rows of the embedding and the output head: `vocab_size` rounded up
    /// to a multiple of `vocab_multiple`.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(self.vocab_multiple.max(1)) * self.vocab_multiple.max(1)
    }

    /// The MLP hidden width inside the model: `d_ff`, rounded up to a
    /// multiple of `ffn_multiple` for SwiGLU.
    pub fn padded_ff(&self) -> usize {
        match self.mlp {
            Mlp::Swiglu => self.d_ff.div_ceil(self.ffn_multiple.max(1)) * self.ffn_multiple.max(1),
            Mlp::Gelu => self.d_ff,
        }
    }

    /// The rotary embedding of this model (base and Llama 3 scaling).
    pub fn rope(&self) -> crate::backend::Rope {
        let llama3 = (self.rope_scaling_factor > 0.0).then_some(crate::backend::Llama3Scaling {
            factor: self.rope_scaling_factor,
            low_freq_factor: self.rope_low_freq_factor,
            high_freq_factor: self.rope_high_freq_factor,
            original_max_seq: self.rope_original_max_seq,
        });
        crate::backend::Rope { theta: self.rope_theta, llama3 }
    }

    /// The same model without padding (what checkpoints elsewhere hold).
    pub fn unpadded(&self) -> ModelConfig {
        ModelConfig { vocab_multiple: 1, ffn_multiple: 1, ..self.clone() }
    }
}

/// Build a config from an optional file and `key=value` overrides.
pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config> {
    let mut user = Value::Table(Default::default());
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        user = text
            .parse::<Value>()
            .map_err(|e| anyhow!("config file {} is not valid TOML: {e}", path.display()))?;
    }
    for kv in overrides {
        apply_override(&mut user, kv)?;
    }
    resolve(user)
}

/// Parse a full TOML document (e.g. a run's saved `config.toml`).
pub fn from_toml_str(text: &str, origin: &str) -> Result<Config> {
    let user = text.parse::<Value>().map_err(|e| anyhow!("{origin} is not valid TOML: {e}"))?;
    resolve(user)
}

/// The config a run folder saved (`config.toml`, every key written out).
/// Runs saved before `model.vocab_multiple` / `model.ffn_multiple` existed
/// did not pad: a missing key there means 1, not today's default.
pub fn from_run_toml(text: &str, origin: &str) -> Result<Config> {
    let mut saved = text.parse::<Value>().map_err(|e| anyhow!("{origin} is not valid TOML: {e}"))?;
    if let Some(model) = saved.get_mut("model").and_then(|m| m.as_table_mut()) {
        model.entry("vocab_multiple").or_insert(Value::Integer(1));
        model.entry("ffn_multiple").or_insert(Value::Integer(1));
    }
    resolve(saved)
}

fn resolve(user: Value) -> Result<Config> {
    check_known_keys(&user)?;
    let preset_name = user
        .get("model")
        .and_then(|m| m.get("preset"))
        .and_then(|p| p.as_str())
        .unwrap_or("tiny")
        .to_string();
    let mut merged = preset_table(&preset_name)?;
    let optimizer = user
        .get("optimizer")
        .and_then(|o| o.get("name"))
        .or_else(|| merged.get("optimizer").and_then(|o| o.get("name")))
        .and_then(|n| n.as_str())
        .unwrap_or("adamw")
        .to_string();
    merge(&mut merged, optimizer_defaults(&optimizer));
    merge(&mut merged, user);
    let mut cfg: Config = merged.try_into().map_err(|e: toml::de::Error| anyhow!("invalid config: {}", e.message()))?;
    if cfg.optimizer.name == "onebit_adam" && cfg.optimizer.freeze_step == 0 {
        // DeepSpeed's guidance: freeze after roughly 15-25% of training;
        // never inside the learning-rate warmup (gradients still grow there,
        // and a variance frozen too small makes the updates blow up).
        cfg.optimizer.freeze_step = (cfg.train.steps / 5).max(cfg.train.warmup_steps).max(1);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The full TOML table of a named preset.
pub fn preset_table(name: &str) -> Result<Value> {
    let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        bail!("unknown preset `{name}` (model.preset); available: {}", names.join(", "));
    };
    let mut table: Value = text.parse().map_err(|e| anyhow!("built-in preset {name} is broken: {e}"))?;
    if let Some(m) = table.get_mut("model").and_then(|m| m.as_table_mut()) {
        m.insert("preset".into(), Value::String(name.into()));
    }
    Ok(table)
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Apply one `section.key=value` override. The value is parsed as a TOML
/// literal (number, bool, quoted string); anything else is taken as a string.
pub fn apply_override(table: &mut Value, kv: &str) -> Result<()> {
    let (key, raw) = kv
        .split_once('=')
        .ok_or_else(|| anyhow!("--set expects key=value, got `{kv}` (e.g. --set train.steps=200)"))?;
    let key = key.trim();
    let raw = raw.trim();
    let literal = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v"),
        Err(_) => None,
    };
    // The value is read as the key's own type: a string key takes the text
    // as it is (`run.name=nan` is the name "nan", not a float), unless it is
    // a quoted TOML string.
    let value = match (expects_string(key), literal) {
        (true, Some(Value::String(s))) => Value::String(s),
        (true, _) | (false, None) => Value::String(raw.to_string()),
        (false, Some(v)) => v,
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for (i, part) in parts.iter().enumerate() {
        let t = cur.as_table_mut().ok_or_else(|| anyhow!("--set {key}: `{}` is not a section", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            t.insert(part.to_string(), value.clone());
            break;
        }
        cur = t.entry(part.to_string()).or_insert_with(|| Value::Table(Default::default()));
    }
    Ok(())
}

/// Whether the default config holds a string at the dotted `key`.
fn expects_string(key: &str) -> bool {
    let mut cur = Value::try_from(Config::default()).expect("default config serializes");
    for part in key.split('.') {
        match cur.get(part) {
            Some(v) => cur = v.clone(),
            None => return false,
        }
    }
    cur.is_str()
}

/// Every valid dotted key, from the default config.
pub fn known_keys() -> Vec<String> {
    let v = Value::try_from(Config::default()).expect("default config serializes");
    let mut out = Vec::new();
    collect_keys(&v, "", &mut out);
    out
}

fn collect_keys(v: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Table(t) = v {
        for (k, child) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if child.is_table() {
                collect_keys(child, &key, out);
            } else {
                out.push(key);
            }
        }
    }
}

fn check_known_keys(user: &Value) -> Result<()> {
    let known = known_keys();
    let mut given = Vec::new();
    collect_keys(user, "", &mut given);
    for key in given {
        if !known.contains(&key) {
            let nearest = known.iter().min_by_key(|k| edit_distance(k, &key)).unwrap();
            bail!("unknown config key `{key}`; did you mean `{nearest}`? (`ferrotron info --keys` lists all keys)");
        }
    }
    Ok(())
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub const OPTIMIZERS: &[&str] = &["adamw", "adamw8bit", "lion", "apollo", "apollo_mini", "frugal", "muon", "cosmos", "onebit_adam"];

/// Each optimizer's paper defaults, applied over the preset (whose
/// `optimizer` values are tuned for AdamW) and under the user's settings.
/// `adamw` and `adamw8bit` keep the preset's values.
/// - lion: betas (0.9, 0.99), lr 10× smaller and weight decay 10× larger
///   than AdamW's usual 1e-3 / 0.01 (Chen et al. 2023).
/// - apollo: rank 256, channel scaling, α = 1, refresh every 200 steps,
///   lr 0.01, eps 1e-6 (APOLLO paper, LLaMA pre-training); apollo_mini:
///   rank 1, tensor scaling, α = 128.
/// - frugal: rho 0.25, T = 200, AdamW lr 1e-3, signSGD at the same lr.
/// - muon: lr 0.02, μ 0.95, wd 0.01; AdamW part lr 3e-4, betas (0.9,
///   0.95) (Keller Jordan's Muon README).
/// - cosmos: rank 64, betas (0.9, 0.999), lr 1e-3 with lr_ratio 0.1 for
///   the matrices (so lr 1e-4 here and adamw_lr 1e-3), wd 0
///   (COSMOS_optim.py defaults).
pub fn optimizer_defaults(name: &str) -> Value {
    let text = match name {
        "lion" => "lr = 1e-4\nbeta1 = 0.9\nbeta2 = 0.99\nweight_decay = 0.1",
        "apollo" => "lr = 1e-2\neps = 1e-6\nrank = 256\nscale = 1.0\nupdate_every = 200",
        "apollo_mini" => "lr = 1e-2\neps = 1e-6\nrank = 1\nscale = 128.0\nupdate_every = 200",
        "frugal" => "lr = 1e-3\nrho = 0.25\nupdate_every = 200\nscale = 1.0",
        "muon" => "lr = 0.02\nmomentum = 0.95\nweight_decay = 0.01\nadamw_lr = 3e-4\nbeta1 = 0.9\nbeta2 = 0.95",
        "cosmos" => "lr = 1e-4\nadamw_lr = 1e-3\nrank = 64\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-8\nweight_decay = 0.0",
        _ => "",
    };
    let mut table = toml::Table::new();
    table.insert("optimizer".into(), Value::Table(text.parse::<toml::Table>().expect("optimizer defaults are valid TOML")));
    Value::Table(table)
}
/// Values of `train.grad_dtype`.
pub const GRAD_DTYPES: &[&str] = &["fp32", "bf16"];

pub const SCHEDULES: &[&str] = &["cosine", "wsd", "constant", "autolrs"];

/// The rotary keys: a positive base, and a Llama 3 scaling whose bands are
/// well defined (the smooth band divides by high - low).
fn check_rope(m: &ModelConfig) -> Result<()> {
    if m.positions == Positions::Rope && !(m.rope_theta > 0.0 && m.rope_theta.is_finite()) {
        bail!("model.rope_theta must be a positive number, got {}", m.rope_theta);
    }
    let f = m.rope_scaling_factor;
    if f == 0.0 {
        return Ok(());
    }
    if !(f > 0.0 && f.is_finite()) {
        bail!("model.rope_scaling_factor must be 0 (no scaling) or a positive number (Llama 3.1: 8, 3.2: 32), got {f}");
    }
    let (lo, hi) = (m.rope_low_freq_factor, m.rope_high_freq_factor);
    if !(lo > 0.0 && lo.is_finite() && hi.is_finite() && hi > lo) {
        bail!("Llama 3 rope scaling needs 0 < model.rope_low_freq_factor < model.rope_high_freq_factor (Llama 3: 1 and 4), got {lo} and {hi}");
    }
    if m.rope_original_max_seq == 0 {
        bail!("model.rope_original_max_seq must be at least 1 with rope scaling (Llama 3: 8192)");
    }
    Ok(())
}

impl OptimizerConfig {
    /// Checks of the optimizer-specific keys that need no model shape (the
    /// rank against matrix sizes is checked by `optim::plan`).
    pub fn validate(&self) -> Result<()> {
        if !(self.adamw_lr >= 0.0 && self.adamw_lr.is_finite()) {
            bail!("optimizer.adamw_lr must be >= 0 (0 = same as optimizer.lr), got {}", self.adamw_lr);
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            bail!("optimizer.eps must be > 0, got {}", self.eps);
        }
        let matrix = ["apollo", "apollo_mini", "cosmos"].contains(&self.name.as_str());
        if matrix && self.rank == 0 {
            bail!("optimizer.rank must be at least 1 for {}", self.name);
        }
        if ["apollo", "apollo_mini", "frugal"].contains(&self.name.as_str()) && self.update_every == 0 {
            bail!("optimizer.update_every must be at least 1 for {}", self.name);
        }
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            bail!("optimizer.scale must be a positive number, got {}", self.scale);
        }
        if !(self.rho > 0.0 && self.rho <= 1.0) {
            bail!("optimizer.rho must be in (0, 1] (fraction of matrix parameters with AdamW state), got {}", self.rho);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("optimizer.momentum must be in [0, 1), got {}", self.momentum);
        }
        Ok(())
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        if !["cpu", "cuda"].contains(&self.device.as_str()) {
            bail!("device = `{}` is not supported; use `cpu` or `cuda`", self.device);
        }
        for (name, v) in [("model.vocab_size", m.vocab_size), ("model.vocab_multiple", m.vocab_multiple), ("model.ffn_multiple", m.ffn_multiple), ("model.d_model", m.d_model), ("model.n_layers", m.n_layers), ("model.n_heads", m.n_heads), ("model.n_kv_heads", m.n_kv_heads), ("model.d_ff", m.d_ff), ("model.max_seq_len", m.max_seq_len), ("train.batch_size", t.batch_size), ("train.seq_len", t.seq_len), ("train.grad_accum", t.grad_accum)] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if !m.d_model.is_multiple_of(m.n_heads) {
            bail!("model.n_heads = {} does not divide model.d_model = {}; pick heads so that d_model / heads is a whole head size", m.n_heads, m.d_model);
        }
        if !m.n_heads.is_multiple_of(m.n_kv_heads) {
            bail!("model.n_kv_heads = {} does not divide model.n_heads = {} (grouped-query attention shares each kv head among n_heads / n_kv_heads query heads)", m.n_kv_heads, m.n_heads);
        }
        if m.positions == Positions::Rope && !m.head_dim().is_multiple_of(2) {
            bail!("rotary positions need an even head size; d_model / n_heads = {}", m.head_dim());
        }
        check_rope(m)?;
        if self.device == "cuda" && !crate::backend::cuda::supports_head_dim(m.head_dim()) {
            bail!(
                "head size d_model / n_heads = {} is not supported by the CUDA attention kernels (1 to {}; the tensor-core kernels take {:?}); use device=cpu, or more model.n_heads",
                m.head_dim(),
                crate::backend::cuda::MAX_HEAD_DIM,
                crate::backend::cuda::HEAD_DIMS
            );
        }
        if !t.logits_chunk.is_multiple_of(64) {
            bail!("train.logits_chunk = {} must be 0 (all rows at once) or a multiple of 64", t.logits_chunk);
        }
        if t.seq_len > m.max_seq_len {
            bail!("train.seq_len = {} exceeds model.max_seq_len = {}; lower train.seq_len or raise model.max_seq_len", t.seq_len, m.max_seq_len);
        }
        if !OPTIMIZERS.contains(&self.optimizer.name.as_str()) {
            bail!("optimizer.name = `{}` is unknown; available: {}", self.optimizer.name, OPTIMIZERS.join(", "));
        }
        if !(self.optimizer.lr >= 0.0 && self.optimizer.lr.is_finite()) {
            bail!("optimizer.lr must be a number >= 0 (0 = weights unchanged), got {}", self.optimizer.lr);
        }
        for (name, b) in [("optimizer.beta1", self.optimizer.beta1), ("optimizer.beta2", self.optimizer.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("{name} must be in [0, 1), got {b}");
            }
        }
        if self.optimizer.weight_decay < 0.0 {
            bail!("optimizer.weight_decay must be >= 0, got {}", self.optimizer.weight_decay);
        }
        self.optimizer.validate()?;
        if self.optimizer.name == "onebit_adam" && self.dist.zero_stage > 1 {
            bail!(
                "optimizer.name = onebit_adam works with dist.zero_stage = 0 or 1, not {}: after its freeze step every rank folds its own full gradient into its momentum, which stages 2 and 3 do not keep",
                self.dist.zero_stage
            );
        }
        crate::optim::groups::check_rules(&crate::model::layout::ParamLayout::new(&self.model), &self.optimizer)?;
        if !SCHEDULES.contains(&t.schedule.as_str()) {
            bail!("train.schedule = `{}` is unknown; available: {}", t.schedule, SCHEDULES.join(", "));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            bail!("train.min_lr_ratio must be in [0, 1], got {}", t.min_lr_ratio);
        }
        if !(0.0..=1.0).contains(&t.decay_fraction) {
            bail!("train.decay_fraction must be in [0, 1], got {}", t.decay_fraction);
        }
        if t.grad_clip < 0.0 {
            bail!("train.grad_clip must be >= 0 (0 turns clipping off), got {}", t.grad_clip);
        }
        self.check_grad_dtype()?;
        if t.steps == 0 {
            bail!("train.steps must be at least 1");
        }
        if t.max_bad_steps == 0 {
            bail!("train.max_bad_steps must be at least 1 (skipped steps in a row before the run stops)");
        }
        if !(t.skip_spike_z >= 0.0 && t.skip_spike_z.is_finite()) {
            bail!("train.skip_spike_z must be >= 0 (0 = off), got {}", t.skip_spike_z);
        }
        if t.keep_ckpts == 0 {
            bail!("train.keep_ckpts must be at least 1");
        }
        if !(t.stop_at_val_loss >= 0.0 && t.stop_at_val_loss.is_finite()) {
            bail!("train.stop_at_val_loss must be >= 0 (0 = off), got {}", t.stop_at_val_loss);
        }
        if t.schedule == "autolrs" {
            t.autolrs.validate(self.optimizer.lr, t.steps.saturating_sub(t.warmup_steps))?;
        }
        self.dist.validate()?;
        self.offload.validate()?;
        if self.offload.enabled() && !["adamw", "adamw8bit"].contains(&self.optimizer.name.as_str()) {
            bail!("offload.optimizer = {} runs AdamW and 8-bit AdamW on the CPU; optimizer.name = {} is not offloadable yet (use adamw or adamw8bit, or offload.optimizer = none)", self.offload.optimizer, self.optimizer.name);
        }
        if self.optimizer.name == "onebit_adam" && t.schedule == "autolrs" {
            bail!(
                "train.schedule = autolrs cannot run with optimizer.name = onebit_adam: after its freeze step 1-bit Adam keeps error-feedback buffers that are not part of its saved state, so AutoLRS' trials could not be undone exactly; use another schedule or optimizer"
            );
        }
        if self.offload.enabled() && t.schedule == "autolrs" {
            bail!(
                "train.schedule = autolrs cannot run with offload.optimizer = {}: its trials save and restore the optimizer state in memory, which an offloaded run keeps on the host or on disk; use another schedule or offload.optimizer = none",
                self.offload.optimizer
            );
        }
        Ok(())
    }

    /// `train.grad_dtype`: a known name, and bf16 only where its kernels
    /// exist (AdamW and 8-bit AdamW read bf16 gradients; one process
    /// without offload: the ZeRO reductions, the offload's gradient copies
    /// and 1-bit Adam's compression are fp32).
    pub fn check_grad_dtype(&self) -> Result<()> {
        // (A world launched without dist.world is refused when the
        // communicator is up, before anything is allocated: trainer.rs.)
        let t = &self.train;
        if !GRAD_DTYPES.contains(&t.grad_dtype.as_str()) {
            bail!("train.grad_dtype = `{}` is unknown; available: {}", t.grad_dtype, GRAD_DTYPES.join(", "));
        }
        if t.grad_dtype != "bf16" {
            return Ok(());
        }
        let allowed = "train.grad_dtype = bf16 runs with optimizer.name = adamw or adamw8bit, in one process (dist.world = 1, dist.sp = 1, any dist.zero_stage) and offload.optimizer = none";
        if !["adamw", "adamw8bit"].contains(&self.optimizer.name.as_str()) {
            bail!("{allowed}; optimizer.name = {} reads fp32 gradients (use train.grad_dtype = fp32)", self.optimizer.name);
        }
        if self.dist.world > 1 || self.dist.sp > 1 {
            bail!("{allowed}; dist.world = {}, dist.sp = {} reduce gradients across ranks in fp32 (use train.grad_dtype = fp32)", self.dist.world, self.dist.sp);
        }
        if self.offload.enabled() {
            bail!("{allowed}; offload.optimizer = {} copies fp32 gradients to the host (use train.grad_dtype = fp32)", self.offload.optimizer);
        }
        Ok(())
    }

    /// The resolved config as TOML (saved in each run folder).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}
