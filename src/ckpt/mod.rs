//! Checkpoints and model exchange.
//!
//! - [`tensors`]: safetensors reading/writing with errors that name the file.
//! - [`checkpoint`]: training checkpoints in a run folder (model, optimizer
//!   state, manifest), `latest`, pruning, loading into a `ParamLayout`.
//! - [`hf`] and [`hf_config`]: Hugging Face `GPT2LMHeadModel` /
//!   `LlamaForCausalLM` import and export.

pub mod checkpoint;
pub mod hf;
pub mod hf_config;
pub mod tensors;

pub use checkpoint::{
    checkpoints_dir, fill_flat, latest, load, load_into_layout, named_from_layout, read_manifest, save, save_with_bytes,
    step_dir, Loaded, Manifest, NamedBytes, NamedTensor, FORMAT,
};
pub use hf::{export, export_with, hf_tensors, import, ExportOptions, HfTensor, Source};
pub use hf_config::{family_of, Family};
pub use tensors::{ByteTensor, Dtype, Tensor};
