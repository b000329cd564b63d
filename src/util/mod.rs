//! Small shared utilities.

pub mod atomic;
pub mod rng;
pub mod time;
