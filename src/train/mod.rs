//! Training: the loop, schedules (incl. AutoLRS), the run folder, sampling.

pub mod autolrs;
pub mod bench;
pub mod bench_optim;
pub mod checkpoint_offload;
pub mod checkpointing;
pub mod export;
pub mod export_offload;
pub mod generate;
pub mod guard;
pub mod heartbeat;
pub mod init_from;
mod inject;
pub mod lr_source;
pub mod offload_step;
pub mod preflight;
pub mod run_dir;
pub mod sample;
pub mod schedule;
pub mod snapshot;
pub mod trainer;
