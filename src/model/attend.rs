//! A block's attention step as a hook, so the model stays single-device:
//! [`LocalAttention`] runs the kernels on this rank's rows; sequence
//! parallelism (`parallel::ulysses`) swaps in an implementation that moves
//! q, k, v to all positions of a slice of heads around the same kernels.

use crate::backend::{AttnShape, Backend, View};
use anyhow::Result;

/// Rotary embedding (when `rope` is `Some`) and causal attention of
/// one block. Shapes and views are this rank's: `qkv` `[B·S, (H+2·KV)·D]`
/// (rotated in place), `out` `[B·S, H·D]`, `lse` `B·H·S` values, `shape`
/// with the rank's `S` tokens per sequence.
pub trait Attention<B: Backend> {
    /// Global position of this rank's first token in each sequence of `seq`
    /// local tokens (learned positions read the table from there).
    fn pos_offset(&self, _seq: usize) -> usize {
        0
    }
    /// Tokens of a whole sequence when each rank holds `seq` of them.
    fn full_seq(&self, seq: usize) -> usize {
        seq
    }
    /// `attend` false: only the rotary step (a checkpointed block re-run
    /// that kept its attention output); an implementation whose attention
    /// state lives elsewhere may run attention anyway.
    #[allow(clippy::too_many_arguments)]
    fn forward(&mut self, b: &mut B, layer: usize, qkv: View, out: View, lse: View, shape: AttnShape, rope: Option<crate::backend::Rope>, attend: bool) -> Result<()>;
    /// `dqkv = …` (overwrite) from `dout`, through the attention and the
    /// inverse rotary step; `qkv`, `out`, `lse` as the forward left them.
    #[allow(clippy::too_many_arguments)]
    fn backward(&mut self, b: &mut B, layer: usize, dqkv: View, dout: View, qkv: View, out: View, lse: View, shape: AttnShape, rope: Option<crate::backend::Rope>) -> Result<()>;
}

/// Attention over the rows this process holds (whole sequences).
pub struct LocalAttention;

impl<B: Backend> Attention<B> for LocalAttention {
    fn forward(&mut self, b: &mut B, _layer: usize, qkv: View, out: View, lse: View, shape: AttnShape, rope: Option<crate::backend::Rope>, attend: bool) -> Result<()> {
        if let Some(rope) = rope {
            b.rope_fwd(qkv, shape, rope)?;
        }
        if attend {
            b.attention_fwd(out, lse, qkv, shape)?;
        }
        Ok(())
    }

    fn backward(&mut self, b: &mut B, _layer: usize, dqkv: View, dout: View, qkv: View, out: View, lse: View, shape: AttnShape, rope: Option<crate::backend::Rope>) -> Result<()> {
        b.attention_bwd(dqkv, dout, qkv, out, lse, shape)?;
        if let Some(rope) = rope {
            b.rope_bwd(dqkv, shape, rope)?;
        }
        Ok(())
    }
}
