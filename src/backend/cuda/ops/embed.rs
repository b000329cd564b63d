//! Token (+ learned position) embedding, forward and backward.

use super::super::device::CudaBackend;
use super::super::kernels::{kernel, KernelFile};
use super::super::memory::Elem;
use crate::backend::View;
use anyhow::{bail, ensure, Result};
use cudarc::driver::LaunchConfig;

pub(in crate::backend::cuda) const FILE: KernelFile = KernelFile { name: "embed", source: include_str!("embed.cu") };

kernel! {
    /// One block per row; `wpe` 0 = no position embedding.
    struct EmbedFwd(FILE, embed_fwd_k) {
        out: u64, dto: i32, tok: u64, wte: u64, dtw: i32, wpe: u64, dtp: i32, seq: i32, c: i32, vocab: u32,
    }
    /// fp32 atomics into an F32 `dwte`, one block per row.
    struct EmbedBwdWte(FILE, embed_bwd_wte_k) { dwte: u64, dout: u64, dtd: i32, tok: u64, c: i32, vocab: u32 }
    /// Any dtype of `dwte` (used for bf16): one 256-thread block per row,
    /// the first row of each token sums its rows in fp32 shared memory
    /// (`c` floats) and rounds into `dwte` once.
    struct EmbedBwdWteRows(FILE, embed_bwd_wte_rows_k) { dwte: u64, dtw: i32, dout: u64, dtd: i32, tok: u64, rows: i64, c: i32, vocab: u32 }
    /// Each position's sum over the batch, in row order.
    struct EmbedBwdWpe(FILE, embed_bwd_wpe_k) { dwpe: u64, dtp: i32, dout: u64, dtd: i32, seq: i32, c: i32, rows: i64 }
}

impl CudaBackend {
    pub(in crate::backend::cuda) fn embed_fwd(&mut self, out: View, tokens: View, wte: View, wpe: Option<View>, seq: usize, c: usize) -> Result<()> {
        self.begin()?;
        let rows = tokens.len;
        ensure!(out.len == rows * c && wte.len.is_multiple_of(c), "embed_fwd: out {} != tokens {} * c {}", out.len, rows, c);
        let t = self.dev(tokens)?;
        ensure!(t.elem == Elem::U32, "embed_fwd: tokens must be a U32 buffer");
        let w = self.dev(wte)?;
        let p = match wpe {
            Some(v) => {
                ensure!(v.len >= seq * c, "embed_fwd: wpe has {} values, needs seq*c = {}", v.len, seq * c);
                Some(self.dev(v)?)
            }
            None => None,
        };
        let o = self.out(out)?;
        if rows == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (pp, pd) = p.map_or((0, 0), |p| (p.ptr, p.dt()));
        let k = EmbedFwd { out: o.ptr, dto: o.dt(), tok: t.ptr, wte: w.ptr, dtw: w.dt(), wpe: pp, dtp: pd, seq: seq as i32, c: c as i32, vocab: (wte.len / c) as u32 };
        self.launch(cfg, k)
    }

    pub(in crate::backend::cuda) fn embed_bwd(&mut self, dwte: View, dwpe: Option<View>, dout: View, tokens: View, seq: usize, c: usize) -> Result<()> {
        self.begin()?;
        let rows = tokens.len;
        ensure!(dout.len == rows * c && dwte.len.is_multiple_of(c), "embed_bwd: dout {} != tokens {} * c {}", dout.len, rows, c);
        let (t, g) = (self.dev(tokens)?, self.dev(dout)?);
        ensure!(t.elem == Elem::U32, "embed_bwd: tokens must be a U32 buffer");
        let w = self.out(dwte)?;
        if !matches!(w.elem, Elem::F32 | Elem::Bf16) {
            bail!("embed_bwd: dwte must be an F32 or bf16 buffer, got {:?}", w.elem);
        }
        if rows == 0 {
            return Ok(());
        }
        let vocab = (dwte.len / c) as u32;
        if w.elem == Elem::F32 {
            let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            self.launch(cfg, EmbedBwdWte { dwte: w.ptr, dout: g.ptr, dtd: g.dt(), tok: t.ptr, c: c as i32, vocab })?;
        } else {
            // bf16 gradients (train.grad_dtype = bf16): bf16 atomics would
            // round every row's addition, so each token's rows are summed in
            // fp32 by one block and rounded into the gradient once.
            let smem = c * 4;
            ensure!(smem + 2048 <= self.max_smem as usize, "embed_bwd: a bf16 dwte row of {c} values does not fit the block's shared memory ({} bytes); use train.grad_dtype = fp32", self.max_smem);
            let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 };
            self.launch(cfg, EmbedBwdWteRows { dwte: w.ptr, dtw: w.dt(), dout: g.ptr, dtd: g.dt(), tok: t.ptr, rows: rows as i64, c: c as i32, vocab })?;
        }
        if let Some(pv) = dwpe {
            ensure!(pv.len >= seq * c, "embed_bwd: dwpe has {} values, needs seq*c = {}", pv.len, seq * c);
            let p = self.out(pv)?;
            let cfg = self.grid(seq * c);
            self.launch(cfg, EmbedBwdWpe { dwpe: p.ptr, dtp: p.dt(), dout: g.ptr, dtd: g.dt(), seq: seq as i32, c: c as i32, rows: rows as i64 })?;
        }
        Ok(())
    }
}
