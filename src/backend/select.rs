//! The one place a device name becomes a backend. Code generic over the
//! backend implements [`OnBackend`]; [`on_device`] builds the backend for
//! the device (and, for CUDA, the GPU ordinal: a rank's local rank) and runs
//! it.

use super::cpu::CpuBackend;
use super::cuda::CudaBackend;
use super::Backend;
use anyhow::{bail, Result};

/// A job that runs on whichever backend the device names.
pub trait OnBackend {
    type Output;
    fn run<B: Backend + 'static>(self, b: B) -> Result<Self::Output>;
}

/// Runs `job` on `device` (`cpu`, or `cuda` on GPU `ordinal`).
pub fn on_device<J: OnBackend>(device: &str, ordinal: usize, job: J) -> Result<J::Output> {
    match device {
        "cpu" => job.run(CpuBackend::new()),
        "cuda" => job.run(CudaBackend::new(ordinal)?),
        other => bail!("device `{other}` is not supported; use cpu or cuda"),
    }
}
