//! SwiGLU: rows `[gate (F) | up (F)]` -> `silu(gate) · up`, forward and
//! backward; 8 bf16 values per thread where every operand allows.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::rows::rows_cols_cfg;
use crate::backend::View;
use anyhow::{ensure, Result};

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "swiglu", source: include_str!("swiglu.cu") };

kernel! {
    struct SwigluFwd(FILE, swiglu_fwd_k) { out: u64, dto: i32, inp: u64, dti: i32, n: i64, f: i64 }
    struct SwigluBwd(FILE, swiglu_bwd_k) { dinp: u64, dtdi: i32, inp: u64, dti: i32, dout: u64, dtdo: i32, n: i64, f: i64 }
    struct SwigluFwdBf16x8(FILE, swiglu_fwd_bf16x8_k) { out: u64, inp: u64, n: i64, f: i64 }
    struct SwigluBwdBf16x8(FILE, swiglu_bwd_bf16x8_k) { dinp: u64, inp: u64, dout: u64, n: i64, f: i64 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn swiglu_fwd(&mut self, out: View, inp: View, n: usize, f: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * 2 * f && out.len == n * f, "swiglu_fwd: views do not match n={n} f={f}");
        let x = self.dev(inp)?;
        let o = self.out(out)?;
        let (ni, fi) = (n as i64, f as i64);
        if f.is_multiple_of(8) && o.is_bf16x8() && x.is_bf16x8() {
            return self.launch(rows_cols_cfg(n, f / 8), SwigluFwdBf16x8 { out: o.ptr, inp: x.ptr, n: ni, f: fi });
        }
        self.launch(rows_cols_cfg(n, f), SwigluFwd { out: o.ptr, dto: o.dt(), inp: x.ptr, dti: x.dt(), n: ni, f: fi })
    }

    pub(in crate::backend::cuda) fn swiglu_bwd(&mut self, dinp: View, inp: View, dout: View, n: usize, f: usize) -> Result<()> {
        self.begin()?;
        ensure!(inp.len == n * 2 * f && dinp.len == n * 2 * f && dout.len == n * f, "swiglu_bwd: views do not match n={n} f={f}");
        let (x, g) = (self.dev(inp)?, self.dev(dout)?);
        let d = self.out(dinp)?;
        let (ni, fi) = (n as i64, f as i64);
        if f.is_multiple_of(8) && d.is_bf16x8() && x.is_bf16x8() && g.is_bf16x8() {
            return self.launch(rows_cols_cfg(n, f / 8), SwigluBwdBf16x8 { dinp: d.ptr, inp: x.ptr, dout: g.ptr, n: ni, f: fi });
        }
        let k = SwigluBwd { dinp: d.ptr, dtdi: d.dt(), inp: x.ptr, dti: x.dt(), dout: g.ptr, dtdo: g.dt(), n: ni, f: fi };
        self.launch(rows_cols_cfg(n, f), k)
    }
}
