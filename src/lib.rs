//! ferrotron: a Rust engine for training transformer language models when
//! memory and scale are the limit. See README.md and shared/DESIGN.md.

pub mod algoperf;
pub mod backend;
pub mod ckpt;
pub mod config;
pub mod data;
pub mod dist;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod telemetry;
pub mod train;
pub mod util;
