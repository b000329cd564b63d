//! The ops of the CUDA backend, one file each (or one per family sharing a
//! `.cu` file), each beside its kernels.

pub(super) mod adamw;
pub(super) mod adamw8bit;
pub(super) mod attention;
pub(super) mod axpby;
pub(super) mod elementwise;
pub(super) mod layernorm;
pub(super) mod linear;
pub(super) mod onebit;
