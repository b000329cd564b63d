//! Launch shapes and path choices shared by the row-wise kernels (the
//! norms, SwiGLU).

use super::super::memory::{Dev, Elem};
use cudarc::driver::LaunchConfig;

/// Warp-per-row kernels: 8 rows per 256-thread block.
pub(super) fn rows_cfg(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// 2-D launch for row-wise elementwise kernels: 256-thread blocks over up
/// to 16 column tiles, rows strided over at most 4096 block rows.
pub(super) fn rows_cols_cfg(rows: usize, cols: usize) -> LaunchConfig {
    let x = cols.div_ceil(256).clamp(1, 16) as u32;
    let y = rows.clamp(1, 4096) as u32;
    LaunchConfig { grid_dim: (x, y, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The bf16 norm kernels (layernorm.cu, rmsnorm.cu) apply: bf16
/// 16-byte-aligned activations, fp32 weights and statistics, rows of a
/// multiple of 8 up to `max_c` (what a lane keeps in registers).
pub(super) fn norm_vector_path(acts: &[Dev], f32s: &[Dev], c: usize, max_c: usize) -> bool {
    acts.iter().all(Dev::is_bf16x8) && f32s.iter().all(|d| d.elem == Elem::F32) && c.is_multiple_of(8) && c <= max_c
}

/// Widest row the block-per-row bf16 norm kernels take: one thread per 8
/// columns, at most 512 threads (their `__launch_bounds__`: 128 registers a
/// thread; the LayerNorm backward needs more than the 64 that 1024 threads
/// would leave, and 1024 failed to launch at c = 8192). Llama 3 8B's 4096
/// fits; wider rows take the general kernels.
pub(super) const NORM_COLS_MAX_C: usize = 8 * 512;

/// Threads of a block-per-row norm kernel: c/8, rounded up to a warp.
fn norm_cols_threads(c: usize) -> u32 {
    ((c / 8).div_ceil(32) * 32).max(32) as u32
}

/// Block-per-row norm forward (`*_fwd_bf16_k`): blocks walk the rows
/// `gridDim.x` apart; as many blocks as fill the SMs (2048 threads, at most
/// 32 blocks each).
pub(super) fn norm_cols_fwd_cfg(n: usize, c: usize, sms: u32) -> LaunchConfig {
    let threads = norm_cols_threads(c);
    let per_sm = (2048 / threads).clamp(1, 32);
    let blocks = (n as u32).clamp(1, sms * per_sm);
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Block-per-row norm backward (`*_bwd_bf16_k`): (rows per block, blocks,
/// launch). About 1024 threads per SM: each block writes one row of column
/// partials, so more blocks would cost more partial traffic than the
/// occupancy buys.
pub(super) fn norm_cols_bwd_plan(n: usize, c: usize, sms: u32) -> (usize, usize, LaunchConfig) {
    let threads = norm_cols_threads(c);
    let target = (sms * (1024 / threads).max(1)) as usize;
    let rpb = n.div_ceil(target).max(1);
    let blocks = n.div_ceil(rpb).max(1);
    (rpb, blocks, LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// Column-partial kernels: (32 columns) x (row chunks), chunks <= 256.
pub(super) fn colsum_plan(n: usize, c: usize) -> (usize, usize, LaunchConfig) {
    let rpc = n.div_ceil(256).max(64);
    let chunks = n.div_ceil(rpc).max(1);
    (rpc, chunks, LaunchConfig { grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 })
}
