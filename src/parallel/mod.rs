//! Parallelism built on the communicator: ZeRO stages 0–3 over the
//! data-parallel group (`zero`), with the ownership it needs (`partition`).

pub mod offload;
pub mod partition;
pub mod zero;

pub use partition::Partition;
