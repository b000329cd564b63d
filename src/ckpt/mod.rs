//! Checkpoints and model exchange.
//!
//! - [`tensors`]: safetensors reading/writing with errors that name the file.
//! - [`checkpoint`]: training checkpoints in a run folder (model, optimizer
//!   state, manifest), `latest`, pruning, loading into a `ParamLayout`.
//! - [`async_save`]: two-stage checkpoints: a host copy at the step
//!   boundary, written by a background thread.
//! - [`stream_write`]: checkpoint tensor files in large writes, CRC as
//!   they go out; [`snapshot_buffers`]: reused page-locked host buffers
//!   of stage 1.
//! - [`part_write`] and [`part_read`]: the same tensor files written and
//!   read piece by piece (an offloaded run's checkpoints, unit by unit).
//! - [`checksum`]: per-file CRC-32 in the manifest, finite-values rule;
//!   [`recover`]: the newest checkpoint that verifies (fallback, announced).
//! - [`hf`] and [`hf_config`]: Hugging Face `GPT2LMHeadModel` /
//!   `LlamaForCausalLM` import and export.

pub mod async_save;
pub mod checkpoint;
pub mod checksum;
pub mod hf;
pub mod hf_config;
pub mod part_read;
pub mod part_write;
pub mod recover;
pub mod snapshot_buffers;
pub mod stream_write;
pub mod tensors;
pub mod train_state;

pub use checkpoint::{
    checkpoints_dir, fill_flat, latest, load, load_into_layout, named_from_layout, read_manifest, save, save_with_bytes, save_with_shards,
    step_dir, Loaded, Manifest, NamedBytes, NamedTensor, FORMAT,
};
pub use recover::load_newest_good;
pub use hf::{export, export_with, hf_tensors, import, ExportOptions, HfTensor, Source};
pub use hf_config::{family_of, Family};
pub use tensors::{ByteTensor, Dtype, Tensor};
