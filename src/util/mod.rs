//! Small shared utilities.

pub mod atomic;
pub mod rng;
pub mod time;
pub mod lock;
pub mod meminfo;
pub mod stdout;
