//! Moving weights between layouts of one model that differ only in padding
//! (`model.vocab_multiple`: extra embedding/head rows; `model.ffn_multiple`:
//! extra SwiGLU hidden units = extra gate and up rows, extra down-projection
//! columns). Padding entries are zero and stay zero in training (their
//! gradients are zero), so the padded model computes exactly what the
//! unpadded one does.

use super::layout::{ParamInfo, ParamLayout};
use crate::config::{Mlp, ModelConfig};

/// `weights` (in `from`'s layout) in `to`'s layout: every tensor's real
/// block copied, padding zero. Both configs must describe the same model up
/// to their padding multiples.
pub fn repad(from: &ModelConfig, to: &ModelConfig, weights: &[f32]) -> Vec<f32> {
    let (lf, lt) = (ParamLayout::new(from), ParamLayout::new(to));
    let mut out = vec![0.0; lt.total];
    for t in &lt.params {
        let f = lf.must(&t.name);
        let blocks = row_blocks(to, &t.name);
        copy_blocks(&weights[f.offset..f.offset + f.numel()], f, &mut out[t.offset..t.offset + t.numel()], t, blocks);
    }
    out
}

/// SwiGLU's fused up-projection stacks two row blocks, gate then up, each
/// padded on its own; every other tensor is one block.
fn row_blocks(cfg: &ModelConfig, name: &str) -> usize {
    if cfg.mlp == Mlp::Swiglu && (name.ends_with("mlp.fc.w") || name.ends_with("mlp.fc.b")) {
        2
    } else {
        1
    }
}

/// For each of `blocks` stacked row blocks, copies the rows and columns
/// both shapes have (see [`shape2`] for 1-D tensors).
fn copy_blocks(src: &[f32], sf: &ParamInfo, dst: &mut [f32], df: &ParamInfo, blocks: usize) {
    let (src_rows, src_cols) = shape2(sf, blocks);
    let (dst_rows, dst_cols) = shape2(df, blocks);
    let (block_src, block_dst) = (src_rows / blocks, dst_rows / blocks);
    let (rows, cols) = (block_src.min(block_dst), src_cols.min(dst_cols));
    for b in 0..blocks {
        for r in 0..rows {
            let s = (b * block_src + r) * src_cols;
            let d = (b * block_dst + r) * dst_cols;
            dst[d..d + cols].copy_from_slice(&src[s..s + cols]);
        }
    }
}

/// A tensor as `[rows, cols]`: 2-D as is; 1-D as one row, except a blocked
/// (stacked) bias, which is a column of single values.
fn shape2(p: &ParamInfo, blocks: usize) -> (usize, usize) {
    match p.shape.as_slice() {
        [r, c] => (*r, *c),
        [n] if blocks > 1 => (*n, 1),
        _ => (1, p.numel()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(ffn_multiple: usize, vocab_multiple: usize) -> ModelConfig {
        let base = ModelConfig { mlp: Mlp::Swiglu, d_ff: 37, vocab_size: 50, d_model: 16, n_heads: 2, n_kv_heads: 2, n_layers: 1, ..Default::default() };
        ModelConfig { ffn_multiple, vocab_multiple, ..base }
    }

    #[test]
    fn padding_round_trip_keeps_every_real_value_and_zeros_the_rest() {
        let (tight, padded) = (llama(1, 1), llama(16, 64));
        assert_eq!(padded.padded_ff(), 48);
        let n = ParamLayout::new(&tight).total;
        let w: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
        let p = repad(&tight, &padded, &w);
        let lp = ParamLayout::new(&padded);
        // Gate row 0 starts the fused tensor; the up block starts at row 48.
        let fc = lp.must("h.0.mlp.fc.w");
        let lt = ParamLayout::new(&tight);
        let fc_t = lt.must("h.0.mlp.fc.w");
        assert_eq!(p[fc.offset + 48 * 16], w[fc_t.offset + 37 * 16], "up block moved to row 48");
        assert!(p[fc.offset + 37 * 16..fc.offset + 48 * 16].iter().all(|&x| x == 0.0), "gate padding rows zero");
        // Down projection [16, 48]: columns 37.. zero.
        let proj = lp.must("h.0.mlp.proj.w");
        assert!((0..16).all(|r| p[proj.offset + r * 48 + 37..proj.offset + r * 48 + 48].iter().all(|&x| x == 0.0)));
        // Padding carries nothing: the sums of all values agree, and back is exact.
        assert_eq!(p.iter().map(|&x| x as f64).sum::<f64>(), w.iter().map(|&x| x as f64).sum::<f64>());
        assert_eq!(repad(&padded, &tight, &p), w);
    }
}
