//! DeepSpeed-Ulysses sequence parallelism: the attention step of a group of
//! P ranks that each hold S/P tokens of the same sequences.
//!
//! Everything but attention (embeddings, norms, MLP, head, loss) runs on a
//! rank's own tokens, unchanged. Attention, per block:
//!
//! ```text
//! forward   qkv  [B, S/P, (H + 2·KV)·D]  --to_heads-->  [B, S, (H/P + 2·KVp)·D]
//!           rope (global positions: row % S), attention kernels (unchanged)
//!           out  [B, S, H/P·D]           --to_tokens--> [B, S/P, H·D]
//! backward  dout [B, S/P, H·D]           --to_heads-->  [B, S, H/P·D]
//!           attention backward, inverse rope
//!           dqkv [B, S, (H/P + 2·KVp)·D] --to_tokens--> [B, S/P, (H + 2·KV)·D]
//! ```
//!
//! Rank j of the group owns query heads `[j·H/P, (j+1)·H/P)` and KVp =
//! max(KV/P, 1) kv heads from `j·KV/P` (rounded down). With fewer kv heads
//! than ranks (KV divides P) each kv head goes to the P/KV ranks whose query
//! heads read it (DeepSpeed ALST's replication) and the backward sums their
//! gradients. Query heads must divide among the ranks (uneven head shards
//! are refused; [`check`] names the group sizes that work).
//!
//! Each transform is one all-to-all between two layout passes of the
//! backend's `copy_strided` (a few launches per transform, not one per
//! row): a column block per destination rank into the send buffer, and the
//! token slices of the received chunks into place (skipped when B = 1,
//! where the received chunks already are the sequence in order).
//!
//! Memory per rank and block: the gathered q, k, v and attention output
//! (the same element counts as the rank's own, S·(H/P)·D vs (S/P)·H·D, more
//! with kv replication) are kept for the backward beside the model's own
//! buffers; the log-sum-exp lives in the model's (B·(H/P)·S = B·H·(S/P)).
//! With whole-block checkpointing one block's worth is kept and the
//! re-run always runs attention.

use crate::backend::{strided_len, AttnShape, Backend, BufId, DType, View};
use crate::config::{ModelConfig, TrainConfig};
use crate::dist::{Comm, Elem};
use crate::model::{Attention, Recompute};
use anyhow::{bail, ensure, Result};

/// One column block moved per destination rank: `cols` values from column
/// `local` of a token row to column `head` of the head-sharded row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub local: usize,
    pub head: usize,
    pub cols: usize,
    /// Summed into place on the way back (replicated kv heads).
    pub sum: bool,
}

/// Refuses what Ulysses does not run, saying which values work: `sp` must
/// divide the world, the query heads and `seq_len`; kv heads must be a
/// multiple or a divisor of `sp`.
pub fn check(m: &ModelConfig, sp: usize, world: usize, seq_len: usize) -> Result<()> {
    if sp <= 1 {
        return Ok(());
    }
    let (h, kv) = (m.n_heads, m.n_kv_heads);
    let works: Vec<String> = (2..=h).filter(|&p| h.is_multiple_of(p) && (kv.is_multiple_of(p) || p.is_multiple_of(kv))).map(|p| p.to_string()).collect();
    let works = if works.is_empty() { "none above 1".to_string() } else { works.join(", ") };
    if !world.is_multiple_of(sp) {
        bail!("dist.sp = {sp} must divide the number of ranks ({world}): launch a multiple of {sp} ranks (data-parallel groups × sp)");
    }
    if !h.is_multiple_of(sp) {
        bail!("dist.sp = {sp} does not divide model.n_heads = {h} (uneven head shards are not supported); values of dist.sp that work for this model: {works}");
    }
    if !kv.is_multiple_of(sp) && !sp.is_multiple_of(kv) {
        bail!("dist.sp = {sp} and model.n_kv_heads = {kv}: kv heads must be a multiple of dist.sp or divide it (each kv head then goes to dist.sp / n_kv_heads ranks); values of dist.sp that work for this model: {works}");
    }
    if !seq_len.is_multiple_of(sp) {
        bail!("train.seq_len = {seq_len} is not divisible by dist.sp = {sp}: each rank holds seq_len / sp tokens; use a multiple of {sp}");
    }
    Ok(())
}

/// What the backward recomputes under sequence parallelism: as
/// `Recompute::of`, except that whole-block checkpointing never keeps the
/// attention output (the re-run must refill the gathered state anyway).
pub fn recompute(t: &TrainConfig, sp: usize) -> Recompute {
    match Recompute::of(t) {
        Recompute::Layers { .. } if sp > 1 => Recompute::Layers { keep_attention: false },
        r => r,
    }
}

/// The head-sharded widths of rank `j`'s part: query heads `H/P`, kv heads
/// KVp and the first kv head.
fn heads_of(h: usize, kv: usize, p: usize, j: usize) -> (usize, usize, usize) {
    (h / p, (kv / p).max(1), j * kv / p)
}

/// The column blocks of q, k, v rows for each destination rank.
pub fn qkv_segs(h: usize, kv: usize, d: usize, p: usize) -> Vec<Vec<Seg>> {
    let sum = kv < p;
    (0..p)
        .map(|j| {
            let (hp, kvp, first) = heads_of(h, kv, p, j);
            vec![
                Seg { local: j * hp * d, head: 0, cols: hp * d, sum: false },
                Seg { local: (h + first) * d, head: hp * d, cols: kvp * d, sum },
                Seg { local: (h + kv + first) * d, head: (hp + kvp) * d, cols: kvp * d, sum },
            ]
        })
        .collect()
}

/// The column blocks of attention-output rows (query heads only).
pub fn out_segs(h: usize, d: usize, p: usize) -> Vec<Vec<Seg>> {
    (0..p).map(|j| vec![Seg { local: j * (h / p) * d, head: 0, cols: (h / p) * d, sum: false }]).collect()
}

/// Row widths (local, head-sharded) of a segment table.
fn widths(segs: &[Vec<Seg>]) -> (usize, usize) {
    let all = segs.iter().flatten();
    let local = all.clone().map(|s| s.local + s.cols).max().unwrap_or(0);
    (local, all.map(|s| s.head + s.cols).max().unwrap_or(0))
}

/// Scratch of the transforms: send and receive buffers of `len` values.
pub struct Exchange {
    pub send: View,
    pub recv: View,
}

/// Token-sharded `local [batch·s, Wl]` (this rank's `s` tokens of each
/// sequence) → head-sharded `heads [batch, P·s, Wh]` (every position of
/// this rank's heads) over the group `comm`. `segs[j]`: the blocks bound
/// for rank j; Wl and Wh are the row widths they imply.
#[allow(clippy::too_many_arguments)]
pub fn to_heads<B: Backend>(b: &mut B, comm: &mut dyn Comm<B>, x: &Exchange, local: View, heads: View, segs: &[Vec<Seg>], batch: usize, s: usize) -> Result<()> {
    let p = comm.world();
    let (wl, wh) = widths(segs);
    let rows = batch * s;
    let chunk = rows * wh;
    ensure!(segs.len() == p && local.len == rows * wl && heads.len == p * chunk, "to_heads: {} values and {} for {p} ranks of {rows} rows ({wl} / {wh} wide)", local.len, heads.len);
    let (send, recv) = (x.send.sub(0, p * chunk), x.recv.sub(0, p * chunk));
    for (j, segs) in segs.iter().enumerate() {
        for g in segs {
            b.copy_strided(send.sub(j * chunk + g.head, strided_len(rows, g.cols, wh)), wh, local.sub(g.local, strided_len(rows, g.cols, wl)), wl, rows, g.cols, false)?;
        }
    }
    if batch == 1 {
        // The chunks arrive in token order: they are the sequence.
        return comm.all_to_all(b, send, heads, Elem::F32);
    }
    comm.all_to_all(b, send, recv, Elem::F32)?;
    // recv [i][batch][s][Wh] (token slice i) → heads [batch][i·s + t][Wh].
    let (run, full) = (s * wh, p * s * wh);
    for i in 0..p {
        b.copy_strided(heads.sub(i * run, strided_len(batch, run, full)), full, recv.sub(i * chunk, chunk), run, batch, run, false)?;
    }
    Ok(())
}

/// The inverse of [`to_heads`]: head-sharded `heads [batch, P·s, Wh]` →
/// token-sharded `local [batch·s, Wl]`. Blocks marked `sum` are added up
/// over the ranks that hold copies of them (`local` is zeroed first).
#[allow(clippy::too_many_arguments)]
pub fn to_tokens<B: Backend>(b: &mut B, comm: &mut dyn Comm<B>, x: &Exchange, heads: View, local: View, segs: &[Vec<Seg>], batch: usize, s: usize) -> Result<()> {
    let p = comm.world();
    let (wl, wh) = widths(segs);
    let rows = batch * s;
    let chunk = rows * wh;
    ensure!(segs.len() == p && local.len == rows * wl && heads.len == p * chunk, "to_tokens: {} values and {} for {p} ranks of {rows} rows ({wl} / {wh} wide)", heads.len, local.len);
    let (send, recv) = (x.send.sub(0, p * chunk), x.recv.sub(0, p * chunk));
    if batch == 1 {
        comm.all_to_all(b, heads, recv, Elem::F32)?;
    } else {
        let (run, full) = (s * wh, p * s * wh);
        for i in 0..p {
            b.copy_strided(send.sub(i * chunk, chunk), run, heads.sub(i * run, strided_len(batch, run, full)), full, batch, run, false)?;
        }
        comm.all_to_all(b, send, recv, Elem::F32)?;
    }
    // recv [j][rows][Wh] (head group j) → columns of local.
    if segs.iter().flatten().any(|g| g.sum) {
        b.fill(local, 0.0)?;
    }
    for (j, segs) in segs.iter().enumerate() {
        for g in segs {
            b.copy_strided(local.sub(g.local, strided_len(rows, g.cols, wl)), wl, recv.sub(j * chunk + g.head, strided_len(rows, g.cols, wh)), wh, rows, g.cols, g.sum)?;
        }
    }
    Ok(())
}

/// Buffers for one micro-batch shape.
struct Bufs {
    batch: usize,
    seq: usize,
    /// Per kept block: gathered q, k, v (after rope) and attention output.
    qkv: Vec<View>,
    out: Vec<View>,
    /// Backward scratch: gathered dout and dqkv.
    dout: View,
    dqkv: View,
    x: Exchange,
    ids: Vec<BufId>,
}

/// The Ulysses attention step of one rank (see the module docs).
pub struct Ulysses<B: Backend> {
    /// The sequence-parallel group (P ranks holding the same sequences).
    pub comm: Box<dyn Comm<B>>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Blocks whose attention state is kept (1 with whole-block checkpointing).
    slots: usize,
    qkv_segs: Vec<Vec<Seg>>,
    out_segs: Vec<Vec<Seg>>,
    bufs: Option<Bufs>,
}

impl<B: Backend> Ulysses<B> {
    /// `comm`: the group, P = its world (validated by [`check`] with seq
    /// checked per call).
    pub fn new(m: &ModelConfig, recompute: Recompute, comm: Box<dyn Comm<B>>) -> Result<Self> {
        let p = comm.world();
        let (h, kv, d) = (m.n_heads, m.n_kv_heads, m.head_dim());
        check(m, p, p, p)?;
        let slots = if matches!(recompute, Recompute::Layers { .. }) { 1 } else { m.n_layers };
        Ok(Ulysses { heads: h, kv_heads: kv, head_dim: d, slots, qkv_segs: qkv_segs(h, kv, d, p), out_segs: out_segs(h, d, p), comm, bufs: None })
    }

    fn p(&self) -> usize {
        self.comm.world()
    }

    /// The head-sharded attention shape for `batch` sequences.
    fn shape(&self, batch: usize, seq: usize) -> AttnShape {
        let (hp, kvp, _) = heads_of(self.heads, self.kv_heads, self.p(), 0);
        AttnShape { batch, seq: seq * self.p(), heads: hp, kv_heads: kvp, head_dim: self.head_dim }
    }

    /// (Re)allocates the buffers for `batch` × `seq` local tokens.
    fn ensure(&mut self, b: &mut B, batch: usize, seq: usize) -> Result<()> {
        if matches!(&self.bufs, Some(x) if x.batch == batch && x.seq == seq) {
            return Ok(());
        }
        if let Some(old) = self.bufs.take() {
            old.ids.into_iter().for_each(|id| b.free(id));
        }
        let g = self.shape(batch, seq);
        let n = g.batch * g.seq;
        let (qkv_len, out_len) = (n * g.qkv_width(), n * g.heads * g.head_dim);
        let mut ids = Vec::new();
        let mut get = |len: usize| -> Result<View> {
            let id = b.alloc(len, DType::Compute)?;
            ids.push(id);
            Ok(View::whole(id, len))
        };
        let qkv = (0..self.slots).map(|_| get(qkv_len)).collect::<Result<Vec<_>>>()?;
        let out = (0..self.slots).map(|_| get(out_len)).collect::<Result<Vec<_>>>()?;
        let (dout, dqkv) = (get(out_len)?, get(qkv_len)?);
        let x = Exchange { send: get(qkv_len)?, recv: get(qkv_len)? };
        self.bufs = Some(Bufs { batch, seq, qkv, out, dout, dqkv, x, ids });
        Ok(())
    }

    /// Frees the buffers.
    pub fn free(&mut self, b: &mut B) {
        if let Some(old) = self.bufs.take() {
            old.ids.into_iter().for_each(|id| b.free(id));
        }
    }

    fn check_shape(&self, s: &AttnShape) -> Result<()> {
        ensure!(s.heads == self.heads && s.kv_heads == self.kv_heads && s.head_dim == self.head_dim, "ulysses: attention shape {s:?} is not the model's ({} heads, {} kv heads, head_dim {})", self.heads, self.kv_heads, self.head_dim);
        Ok(())
    }
}

impl<B: Backend> Attention<B> for Ulysses<B> {
    fn pos_offset(&self, seq: usize) -> usize {
        self.comm.rank() * seq
    }

    fn full_seq(&self, seq: usize) -> usize {
        seq * self.p()
    }

    fn forward(&mut self, b: &mut B, layer: usize, qkv: View, out: View, lse: View, shape: AttnShape, rope: Option<crate::backend::Rope>, _attend: bool) -> Result<()> {
        self.check_shape(&shape)?;
        // The gathered state is kept here, not in the model's buffers: the
        // attention always runs (a checkpointed re-run refills it).
        self.ensure(b, shape.batch, shape.seq)?;
        let (g, slot) = (self.shape(shape.batch, shape.seq), layer % self.slots);
        let Ulysses { comm, bufs, qkv_segs, out_segs, .. } = self;
        let bufs = bufs.as_ref().expect("buffers were just made");
        let (gq, go) = (bufs.qkv[slot], bufs.out[slot]);
        to_heads(b, comm.as_mut(), &bufs.x, qkv, gq, qkv_segs, shape.batch, shape.seq)?;
        if let Some(rope) = rope {
            b.rope_fwd(gq, g, rope)?;
        }
        b.attention_fwd(go, lse, gq, g)?;
        to_tokens(b, comm.as_mut(), &bufs.x, go, out, out_segs, shape.batch, shape.seq)
    }

    fn backward(&mut self, b: &mut B, layer: usize, dqkv: View, dout: View, _qkv: View, _out: View, lse: View, shape: AttnShape, rope: Option<crate::backend::Rope>) -> Result<()> {
        self.check_shape(&shape)?;
        let (g, slot) = (self.shape(shape.batch, shape.seq), layer % self.slots);
        let Ulysses { comm, bufs, qkv_segs, out_segs, .. } = self;
        let Some(bufs) = bufs.as_ref().filter(|x| x.batch == shape.batch && x.seq == shape.seq) else {
            bail!("ulysses: backward of a {}×{} batch without its forward", shape.batch, shape.seq);
        };
        let (gq, go) = (bufs.qkv[slot], bufs.out[slot]);
        to_heads(b, comm.as_mut(), &bufs.x, dout, bufs.dout, out_segs, shape.batch, shape.seq)?;
        b.attention_bwd(bufs.dqkv, bufs.dout, gq, go, lse, g)?;
        if let Some(rope) = rope {
            b.rope_bwd(bufs.dqkv, g, rope)?;
        }
        to_tokens(b, comm.as_mut(), &bufs.x, bufs.dqkv, dqkv, qkv_segs, shape.batch, shape.seq)
    }
}
