//! CUDA backend (being built on branch `cuda`; merged when its parity tests pass).

use anyhow::{bail, Result};

pub struct CudaBackend;

impl CudaBackend {
    pub fn new(_device: usize) -> Result<Self> {
        bail!("this build of ferrotron has no CUDA backend yet; use --set device=cpu")
    }
}
