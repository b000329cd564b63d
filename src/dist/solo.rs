//! The communicator of a world of one: every collective is the identity.
//! A single process runs the same distributed code path with it.

use super::comm::{Comm, Elem};
use crate::backend::{Backend, View};
use anyhow::{ensure, Result};

#[derive(Default)]
pub struct SoloComm;

impl<B: Backend> Comm<B> for SoloComm {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn kind(&self) -> &'static str {
        "solo"
    }
    fn all_reduce_sum(&mut self, _: &mut B, _: View) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&mut self, _: &mut B, full: View, counts: &[usize]) -> Result<()> {
        ensure!(counts == [full.len], "reduce_scatter: counts {counts:?} do not cut {} elements for one rank", full.len);
        Ok(())
    }
    fn all_gather(&mut self, _: &mut B, full: View, counts: &[usize], _: Elem) -> Result<()> {
        ensure!(counts == [full.len], "all_gather: counts {counts:?} do not cut {} elements for one rank", full.len);
        Ok(())
    }
    fn broadcast(&mut self, _: &mut B, _: View, root: usize, _: Elem) -> Result<()> {
        ensure!(root == 0, "broadcast from rank {root} in a world of one");
        Ok(())
    }
    fn all_to_all(&mut self, b: &mut B, send: View, recv: View, elem: Elem) -> Result<()> {
        ensure!(send.len == recv.len, "all_to_all: send has {} elements, recv {}", send.len, recv.len);
        match elem {
            Elem::F32 => b.copy(recv, send),
            Elem::U8 => {
                let mut host = vec![0u8; send.len];
                b.download_u8(send, &mut host)?;
                b.upload_u8(recv, &host)
            }
        }
    }
    fn all_reduce_host(&mut self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
    fn bytes_sent(&self) -> u64 {
        0
    }
    fn all_reduce_bytes(&self, _: usize, _: Elem) -> u64 {
        0
    }
}
