//! Training: the loop, schedules, the run folder, sampling.

pub mod bench;
pub mod bench_optim;
pub mod export;
pub mod generate;
pub mod guard;
pub mod init_from;
pub mod preflight;
pub mod run_dir;
pub mod sample;
pub mod schedule;
pub mod trainer;
