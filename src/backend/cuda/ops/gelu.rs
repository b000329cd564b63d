//! GELU (tanh approximation), forward and backward: 8 bf16 values per
//! thread where every operand allows, the general kernel for the rest.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::bf16x8_groups;
use crate::backend::View;
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "gelu", source: include_str!("gelu.cu") };

kernel! {
    struct GeluFwd(FILE, gelu_fwd_k) { out: u64, dto: i32, inp: u64, dti: i32, n: i64 }
    struct GeluBwd(FILE, gelu_bwd_k) { dinp: u64, dtdi: i32, inp: u64, dti: i32, dout: u64, dtdo: i32, n: i64 }
    struct GeluFwdBf16x8(FILE, gelu_fwd_bf16x8_k) { out: u64, inp: u64, n8: i64 }
    struct GeluBwdBf16x8(FILE, gelu_bwd_bf16x8_k) { dinp: u64, inp: u64, dout: u64, n8: i64 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn gelu_fwd(&mut self, out: View, inp: View) -> Result<()> {
        self.begin()?;
        ensure!(out.len == inp.len, "gelu_fwd: lengths differ");
        let x = self.dev(inp)?;
        let o = self.out(out)?;
        let n8 = bf16x8_groups(&[o, x]);
        if n8 > 0 {
            self.launch(self.grid(n8), GeluFwdBf16x8 { out: o.ptr, inp: x.ptr, n8: n8 as i64 })?;
        }
        let (done, rest) = (8 * n8, o.len - 8 * n8);
        if rest == 0 {
            return Ok(());
        }
        let cfg = self.grid(rest);
        self.launch(cfg, GeluFwd { out: o.at(done), dto: o.dt(), inp: x.at(done), dti: x.dt(), n: rest as i64 })
    }

    pub(in crate::backend::cuda) fn gelu_bwd(&mut self, dinp: View, inp: View, dout: View) -> Result<()> {
        self.begin()?;
        ensure!(dinp.len == inp.len && inp.len == dout.len, "gelu_bwd: lengths differ");
        let (x, g) = (self.dev(inp)?, self.dev(dout)?);
        let d = self.out(dinp)?;
        let n8 = bf16x8_groups(&[d, x, g]);
        if n8 > 0 {
            self.launch(self.grid(n8), GeluBwdBf16x8 { dinp: d.ptr, inp: x.ptr, dout: g.ptr, n8: n8 as i64 })?;
        }
        let (done, rest) = (8 * n8, d.len - 8 * n8);
        if rest == 0 {
            return Ok(());
        }
        let cfg = self.grid(rest);
        self.launch(cfg, GeluBwd { dinp: d.at(done), dtdi: d.dt(), inp: x.at(done), dti: x.dt(), dout: g.at(done), dtdo: g.dt(), n: rest as i64 })
    }
}
