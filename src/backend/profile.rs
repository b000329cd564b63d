//! A backend wrapper that times every op: it forwards each call to the inner
//! backend, synchronizes, and adds the wall time to a per-op total. Used by
//! `ferrotron bench train|optim --profile` to show where a step's time goes.
//! Synchronizing after every op removes overlap between launches, so totals
//! are slightly higher than in an unprofiled step; the split is what matters.

use super::{backend_ops, Adam8Segment, AdamSegment, AdamWArgs, AttnShape, Backend, BufId, DType, LionArgs, Mark, PrecondArgs, Rope, SignArgs, View};
use anyhow::Result;
use std::collections::BTreeMap;
use std::time::Instant;

/// `m×k×n` and which operands are transposed (`Aᵀ`, `Bᵀ`), e.g. "2048x6144x2048 ABᵀ".
fn gemm_shape(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> String {
    format!("{m}x{k}x{n} {}{}", if ta { "Aᵀ" } else { "A" }, if tb { "Bᵀ" } else { "B" })
}

pub struct Profiled<B: Backend> {
    pub inner: B,
    /// op name (matmuls: with their m×k×n) → (calls, total milliseconds)
    totals: BTreeMap<String, (u64, f64)>,
}

impl<B: Backend> Profiled<B> {
    pub fn new(inner: B) -> Self {
        Profiled { inner, totals: BTreeMap::new() }
    }

    pub fn reset(&mut self) {
        self.totals.clear();
    }

    /// (op, calls, total ms), slowest first.
    pub fn report(&self) -> Vec<(String, u64, f64)> {
        let mut rows: Vec<_> = self.totals.iter().map(|(k, (n, ms))| (k.clone(), *n, *ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    fn time_keyed<T>(&mut self, key: String, f: impl FnOnce(&mut B) -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f(&mut self.inner)?;
        self.inner.synchronize()?;
        let entry = self.totals.entry(key).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += start.elapsed().as_secs_f64() * 1e3;
        Ok(out)
    }
}

/// The name an op's time is filed under: its own, except matmuls (by shape)
/// and the upload/download variants and the AdamW segment forms (with their
/// plain op). Arms bind the op's arguments by position.
macro_rules! profile_key {
    (upload_u32 $($a:ident)*) => { "upload".to_string() };
    (upload_u8 $($a:ident)*) => { "upload".to_string() };
    (download_u8 $($a:ident)*) => { "download".to_string() };
    (adamw_segments $($a:ident)*) => { "adamw".to_string() };
    (adamw8bit_segments $($a:ident)*) => { "adamw8bit".to_string() };
    (linear_fwd $out:ident $inp:ident $w:ident $bias:ident $m:ident $k:ident $n:ident) => {
        format!("linear_fwd {}x{}x{}", $m, $k, $n)
    };
    (linear_residual_fwd $out:ident $inp:ident $w:ident $bias:ident $res:ident $m:ident $k:ident $n:ident) => {
        format!("linear_residual_fwd {}x{}x{}", $m, $k, $n)
    };
    (linear_gelu_fwd $pre:ident $act:ident $inp:ident $w:ident $bias:ident $m:ident $k:ident $n:ident) => {
        format!("linear_gelu_fwd {}x{}x{}", $m, $k, $n)
    };
    (linear_gelu_bwd $dpre:ident $dact:ident $dw:ident $dbias:ident $dout:ident $act:ident $w:ident $pre:ident $m:ident $k:ident $n:ident) => {
        format!("linear_gelu_bwd {}x{}x{}", $m, $k, $n)
    };
    (linear_bwd $dinp:ident $dw:ident $dbias:ident $dout:ident $inp:ident $w:ident $m:ident $k:ident $n:ident) => {
        format!("linear_bwd {}x{}x{}", $m, $k, $n)
    };
    (gemm $c:ident $a:ident $b:ident $m:ident $k:ident $n:ident $ta:ident $tb:ident $alpha:ident $beta:ident) => {
        format!("gemm {}", gemm_shape($m, $k, $n, $ta, $tb))
    };
    (gemm_bf16 $c:ident $a:ident $b:ident $m:ident $k:ident $n:ident $ta:ident $tb:ident $alpha:ident $beta:ident) => {
        format!("gemm_bf16 {}", gemm_shape($m, $k, $n, $ta, $tb))
    };
    (gemm_bf16_plus $d:ident $c:ident $a:ident $b:ident $m:ident $k:ident $n:ident $ta:ident $tb:ident $alpha:ident $beta:ident) => {
        format!("gemm_bf16 {} + C", gemm_shape($m, $k, $n, $ta, $tb))
    };
    ($name:ident $($a:ident)*) => { stringify!($name).to_string() };
}

/// Times every op of `backend_ops!`: the call on the inner backend, then a
/// synchronize, filed under [`profile_key!`].
macro_rules! timed_ops {
    ($( $(#[$m:meta])* fn $name:ident(&mut $s:ident $(, $a:ident : $t:ty)* $(,)?) -> $r:ty $(= $body:block)? ; )*) => {
        $(
            #[allow(clippy::too_many_arguments)]
            fn $name(&mut $s $(, $a: $t)*) -> $r {
                $s.time_keyed(profile_key!($name $($a)*), |inner| inner.$name($($a),*))
            }
        )*
    };
}

/// Bookkeeping calls pass straight through; every op is timed.
impl<B: Backend> Backend for Profiled<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
    fn alloc(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        self.inner.alloc(len, dtype)
    }
    fn alloc_for_overwrite(&mut self, len: usize, dtype: DType) -> Result<BufId> {
        self.inner.alloc_for_overwrite(len, dtype)
    }
    fn free(&mut self, buf: BufId) {
        self.inner.free(buf)
    }
    fn synchronize(&mut self) -> Result<()> {
        self.inner.synchronize()
    }
    fn peak_memory_bytes(&self) -> u64 {
        self.inner.peak_memory_bytes()
    }
    fn live_memory_bytes(&self) -> u64 {
        self.inner.live_memory_bytes()
    }
    fn mark(&mut self) -> Result<Mark> {
        self.inner.mark()
    }
    fn elapsed_ms(&mut self, from: Mark, to: Mark) -> Result<f64> {
        self.inner.elapsed_ms(from, to)
    }
    fn clear_marks(&mut self) {
        self.inner.clear_marks()
    }

    backend_ops!(timed_ops);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    /// Each op is filed under its key (matmuls by shape, the upload and
    /// AdamW variants with their plain op), results come through, and
    /// bookkeeping calls are not timed.
    #[test]
    fn files_ops_under_their_keys() -> Result<()> {
        let mut p = Profiled::new(CpuBackend::new());
        let (a, b, c) = (p.alloc(6, DType::F32)?, p.alloc(6, DType::F32)?, p.alloc(4, DType::F32)?);
        let ids = p.alloc(2, DType::U32)?;
        let (av, bv, cv) = (View::whole(a, 6), View::whole(b, 6), View::whole(c, 4));
        p.upload(av, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
        p.upload(bv, &[1.0; 6])?;
        p.upload_u32(View::whole(ids, 2), &[0, 1])?;
        // c[2,2] = a[2,3] · b[2,3]ᵀ
        p.linear_fwd(cv, av, bv, None, 2, 3, 2)?;
        p.gemm(cv, av, bv, 2, 3, 2, false, true, 1.0, 0.0)?;
        let d = View::whole(p.alloc(4, DType::F32)?, 4);
        p.gemm_bf16_plus(d, cv, av, bv, 2, 3, 2, false, true, 1.0, 1.0)?;
        let (m, v) = (p.alloc(6, DType::F32)?, p.alloc(6, DType::F32)?);
        let args = AdamWArgs { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0, step: 1, grad_scale: 1.0 };
        let seg = AdamSegment { param_off: 0, state_off: 0, len: 6, weight_decay: 0.0 };
        p.adamw_segments(a, b, View::whole(m, 6), View::whole(v, 6), &[seg], args)?;
        assert_eq!(p.sum_squares(bv)?, 6.0);
        p.synchronize()?;
        let keys: Vec<(String, u64)> = p.report().into_iter().map(|(k, n, _)| (k, n)).collect();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        let want = [("adamw", 1), ("gemm 2x3x2 ABᵀ", 1), ("gemm_bf16 2x3x2 ABᵀ + C", 1), ("linear_fwd 2x3x2", 1), ("sum_squares", 1), ("upload", 3)];
        assert_eq!(keys_sorted, want.map(|(k, n)| (k.to_string(), n)).to_vec());
        Ok(())
    }
}
