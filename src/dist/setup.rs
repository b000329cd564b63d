//! Small helpers built on the collectives.

use super::comm::Comm;
use crate::backend::Backend;
use anyhow::{bail, Result};

/// Rank 0's `text` on every rank (at most 4096 bytes), through a host
/// all-reduce: the others contribute zeros.
pub fn share_string<B: Backend>(comm: &mut dyn Comm<B>, text: &str) -> Result<String> {
    const MAX: usize = 4096;
    if comm.world() == 1 {
        return Ok(text.to_string());
    }
    let bytes = text.as_bytes();
    if bytes.len() > MAX {
        bail!("cannot share a text of {} bytes between ranks (at most {MAX})", bytes.len());
    }
    let mut vals = vec![0.0f64; MAX + 1];
    if comm.rank() == 0 {
        vals[0] = bytes.len() as f64;
        for (v, &c) in vals[1..].iter_mut().zip(bytes) {
            *v = c as f64;
        }
    }
    comm.all_reduce_host(&mut vals)?;
    let len = vals[0] as usize;
    let shared: Vec<u8> = vals[1..=len.min(MAX)].iter().map(|&v| v as u8).collect();
    String::from_utf8(shared).map_err(|_| anyhow::anyhow!("rank 0's text arrived damaged"))
}
