//! Ulysses sequence parallelism (`dist.sp`) on the CPU backend.
//!
//! - The layout transforms around the all-to-alls (`to_heads`,
//!   `to_tokens`) on real ranks (threads over the TCP communicator) against
//!   a direct reference built from the global tensor, including kv heads
//!   replicated to several ranks (kv < sp) and summed back.
//! - The Ulysses attention step (rotary + attention forward and backward)
//!   against the local attention step on whole sequences.
//! - Whole training runs (`ferrotron launch`): sp = 2 and 4 (and 2 data-
//!   parallel groups of sp 2) against sp = 1 at the same global batch, for
//!   a GPT-2-style model (learned positions) and a Llama-style one (RoPE,
//!   GQA with 2 kv heads, fewer than sp = 4), at ZeRO 0 and 3: per-step
//!   losses and final weights.
//! - Refusals with messages that say what works.
//! - On a GPU (skips without one): Ulysses through NCCL at world size 1
//!   against local attention.
//!
//! Tolerances. The transforms move values only: exact equality (the
//! replicated kv gradients are summed from small dyadic values, exact in
//! fp32). The attention step runs the same per-head kernel math on the
//! same values, so it is expected bit-identical; bound 1e-6 relative. Whole
//! runs: the gradients of each sequence are summed from per-rank partial
//! sums (token slices) instead of within one process, a different float
//! summation order, so losses and weights agree to rounding, not bit for
//! bit. Measured: losses within 1.1e-7 relative and weights within 2e-6
//! absolute over 6 steps (the attention step alone: error 0). The bounds (2e-5
//! relative on losses, 1e-4 absolute on weights of order 0.02–1, those of
//! tests/zero.rs) leave room for rounding to grow while catching a wrong
//! position, a misplaced head or a missing kv-gradient sum, which move
//! losses at the 1e-2 level.

use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::{AttnShape, Backend, DType, View};
#[path = "common/runs.rs"]
mod runs;

use runs::{losses, weights};
use ferrotron::config::{ModelConfig, Positions};
use ferrotron::dist::WorldInfo;
use ferrotron::model::{Attention, LocalAttention, Recompute};
use ferrotron::parallel::ulysses::{self, qkv_segs, to_heads, to_tokens, Exchange, Ulysses};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/ranks.rs"]
mod ranks;
use ports::free_port;
use ranks::ranks;

// ---- helpers ---------------------------------------------------------------

/// Small dyadic values (k/8, |k| < 512): sums of a few are exact in fp32.
fn dyadic(n: usize, salt: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let z = (i as u64 * 2_654_435_761 + salt * 40_503).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            ((z % 1023) as f32 - 511.0) / 8.0
        })
        .collect()
}

fn put(b: &mut CpuBackend, x: &[f32]) -> View {
    let v = View::whole(b.alloc(x.len(), DType::Compute).unwrap(), x.len());
    b.upload(v, x).unwrap();
    v
}

fn get(b: &mut CpuBackend, v: View) -> Vec<f32> {
    let mut x = vec![0.0; v.len];
    b.download(v, &mut x).unwrap();
    x
}

/// Rows `[lo, hi)` of every sequence of `x [batch, seq, w]`.
fn token_slice(x: &[f32], batch: usize, seq: usize, w: usize, lo: usize, hi: usize) -> Vec<f32> {
    (0..batch).flat_map(|b| x[(b * seq + lo) * w..(b * seq + hi) * w].iter().copied()).collect()
}

/// Rank j's query heads and kv heads (first, count), straight from the
/// rule in the module docs.
fn owned(h: usize, kv: usize, p: usize, j: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let hp = h / p;
    let kvp = (kv / p).max(1);
    let first = j * kv / p;
    (j * hp..(j + 1) * hp, first..first + kvp)
}

/// Rank j's head-sharded rows `[batch, seq, (Hp + 2·KVp)·D]` of the global
/// q, k, v rows `x [batch, seq, (H + 2·KV)·D]`.
fn reference_heads(x: &[f32], rows: usize, h: usize, kv: usize, d: usize, p: usize, j: usize) -> Vec<f32> {
    let w = (h + 2 * kv) * d;
    let (qs, ks) = owned(h, kv, p, j);
    let mut out = Vec::new();
    for r in 0..rows {
        let row = &x[r * w..(r + 1) * w];
        for q in qs.clone() {
            out.extend_from_slice(&row[q * d..(q + 1) * d]);
        }
        for part in [h, h + kv] {
            for k in ks.clone() {
                out.extend_from_slice(&row[(part + k) * d..(part + k + 1) * d]);
            }
        }
    }
    out
}

fn exchange(b: &mut CpuBackend, len: usize) -> Exchange {
    let send = View::whole(b.alloc(len, DType::Compute).unwrap(), len);
    let recv = View::whole(b.alloc(len, DType::Compute).unwrap(), len);
    Exchange { send, recv }
}

/// to_heads against the reference, then to_tokens of independent values
/// per rank against sums over the ranks that own each head.
fn transforms(p: usize, h: usize, kv: usize, batch: usize) {
    let (d, s) = (2, 3);
    let seq = p * s;
    let w = (h + 2 * kv) * d;
    let (hp, kvp) = (h / p, (kv / p).max(1));
    let wh = (hp + 2 * kvp) * d;
    let global = dyadic(batch * seq * w, 1);
    // Each rank j's head-sharded gradient: independent values.
    let grads: Vec<Vec<f32>> = (0..p).map(|j| dyadic(batch * seq * wh, 100 + j as u64)).collect();
    let results = ranks(p, |r, mut comm| {
        let mut b = CpuBackend::new();
        let x = exchange(&mut b, batch * seq * wh);
        let local = put(&mut b, &token_slice(&global, batch, seq, w, r * s, (r + 1) * s));
        let heads = put(&mut b, &vec![0.0; batch * seq * wh]);
        let segs = qkv_segs(h, kv, d, p);
        to_heads(&mut b, &mut comm, &x, local, heads, &segs, batch, s).unwrap();
        let got_heads = get(&mut b, heads);
        let g = put(&mut b, &grads[r]);
        let back = put(&mut b, &vec![7.0; batch * s * w]);
        to_tokens(&mut b, &mut comm, &x, g, back, &segs, batch, s).unwrap();
        (got_heads, get(&mut b, back))
    });
    for (r, (got_heads, back)) in results.into_iter().enumerate() {
        assert_eq!(got_heads, reference_heads(&global, batch * seq, h, kv, d, p, r), "to_heads p={p} h={h} kv={kv} batch={batch} rank {r}");
        // Reference of to_tokens: every rank's row block of this rank's
        // tokens, its heads summed into the global columns.
        let mut want = vec![0.0f32; batch * s * w];
        for (j, grad) in grads.iter().enumerate() {
            let (qs, ks) = owned(h, kv, p, j);
            let rows = token_slice(grad, batch, seq, wh, r * s, (r + 1) * s);
            for t in 0..batch * s {
                let src = &rows[t * wh..(t + 1) * wh];
                let dst = &mut want[t * w..(t + 1) * w];
                let cols = qs.clone().map(|q| q * d).chain([h, h + kv].into_iter().flat_map(|part| ks.clone().map(move |k| (part + k) * d)));
                for (i, col) in cols.enumerate() {
                    for e in 0..d {
                        dst[col + e] += src[i * d + e];
                    }
                }
            }
        }
        assert_eq!(back, want, "to_tokens p={p} h={h} kv={kv} batch={batch} rank {r}");
    }
}

#[test]
fn transforms_match_direct_reference() {
    for (p, h, kv) in [(2, 4, 4), (2, 4, 2), (4, 4, 4), (4, 8, 2), (4, 4, 1), (2, 6, 1), (4, 8, 8)] {
        for batch in [1, 3] {
            transforms(p, h, kv, batch);
        }
    }
}

// ---- the attention step ---------------------------------------------------

fn model_cfg(h: usize, kv: usize, d: usize) -> ModelConfig {
    ModelConfig { d_model: h * d, n_heads: h, n_kv_heads: kv, n_layers: 2, max_seq_len: 64, positions: Positions::Rope, ..Default::default() }
}

fn gaussian(n: usize, salt: u64) -> Vec<f32> {
    dyadic(n, salt).into_iter().map(|x| x / 256.0).collect()
}

fn close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
    println!("{what}: normalized max error {err:.2e}");
    assert!(err <= 1e-6 && got.len() == want.len(), "{what}: error {err:e}");
}

/// Ulysses forward/backward on each rank's slice vs local attention on the
/// whole sequences, with RoPE (positions must be global).
fn attention_step(p: usize, h: usize, kv: usize, batch: usize) {
    let (d, s) = (4, 5);
    let seq = p * s;
    let w = (h + 2 * kv) * d;
    let m = model_cfg(h, kv, d);
    let qkv = gaussian(batch * seq * w, 7);
    let dout = gaussian(batch * seq * h * d, 8);
    let theta = Some(ferrotron::backend::Rope::plain(10000.0));
    // Whole sequences, one process.
    let (want_out, want_dqkv) = {
        let mut b = CpuBackend::new();
        let shape = AttnShape { batch, seq, heads: h, kv_heads: kv, head_dim: d };
        let (x, o, l) = (put(&mut b, &qkv), put(&mut b, &vec![0.0; batch * seq * h * d]), put(&mut b, &vec![0.0; batch * h * seq]));
        let (dy, dx) = (put(&mut b, &dout), put(&mut b, &vec![0.0; batch * seq * w]));
        let mut local = LocalAttention;
        Attention::<CpuBackend>::forward(&mut local, &mut b, 0, x, o, l, shape, theta, true).unwrap();
        Attention::<CpuBackend>::backward(&mut local, &mut b, 0, dx, dy, x, o, l, shape, theta).unwrap();
        (get(&mut b, o), get(&mut b, dx))
    };
    let got = ranks(p, |r, comm| {
        let mut b = CpuBackend::new();
        let mut u = Ulysses::new(&m, Recompute::Off, Box::new(comm)).unwrap();
        let shape = AttnShape { batch, seq: s, heads: h, kv_heads: kv, head_dim: d };
        let x = put(&mut b, &token_slice(&qkv, batch, seq, w, r * s, (r + 1) * s));
        let (o, l) = (put(&mut b, &vec![0.0; batch * s * h * d]), put(&mut b, &vec![0.0; batch * h * s]));
        let (dy, dx) = (put(&mut b, &token_slice(&dout, batch, seq, h * d, r * s, (r + 1) * s)), put(&mut b, &vec![0.0; batch * s * w]));
        assert_eq!(u.pos_offset(s), r * s);
        u.forward(&mut b, 1, x, o, l, shape, theta, true).unwrap();
        u.backward(&mut b, 1, dx, dy, x, o, l, shape, theta).unwrap();
        (get(&mut b, o), get(&mut b, dx))
    });
    for (r, (o, dx)) in got.into_iter().enumerate() {
        close(&o, &token_slice(&want_out, batch, seq, h * d, r * s, (r + 1) * s), &format!("out p={p} h={h} kv={kv} b={batch} rank {r}"));
        close(&dx, &token_slice(&want_dqkv, batch, seq, w, r * s, (r + 1) * s), &format!("dqkv p={p} h={h} kv={kv} b={batch} rank {r}"));
    }
}

#[test]
fn attention_step_matches_local_attention() {
    for (p, h, kv) in [(2, 4, 2), (4, 4, 2), (4, 8, 4), (2, 2, 2)] {
        for batch in [1, 2] {
            attention_step(p, h, kv, batch);
        }
    }
}

// ---- whole runs -------------------------------------------------------------

const GLOBAL_BATCH: usize = 4;
const STEPS: u64 = 6;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrotron")
}

fn args(name: &str, llama: bool, batch: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into()];
    let mut set = |kv: String| {
        a.push("--set".into());
        a.push(kv);
    };
    if llama {
        // RoPE, RMSNorm, SwiGLU, untied; GQA 4 heads / 2 kv heads.
        for kv in ["model.preset=tiny-llama", "model.n_heads=4", "model.n_kv_heads=2"] {
            set(kv.into());
        }
    } else {
        for kv in ["model.preset=tiny", "model.n_heads=4", "model.n_kv_heads=4"] {
            set(kv.into());
        }
    }
    for kv in [
        "model.d_model=64",
        "model.n_layers=2",
        "model.d_ff=128",
        "train.seq_len=32",
        "train.eval_every=0",
        "train.eval_batches=1",
        "train.samples=0",
        "train.warmup_steps=2",
        "train.schedule=constant",
        "train.ckpt_every=0",
        "run.progress=false",
    ] {
        set(kv.into());
    }
    set(format!("run.name={name}"));
    set(format!("train.batch_size={batch}"));
    set(format!("train.steps={STEPS}"));
    for kv in extra {
        set(kv.to_string());
    }
    a
}

fn run(dir: &Path, world: usize, args: &[String]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir);
    if world > 1 {
        cmd.args(["launch", "--nproc-per-node", &world.to_string()]);
    }
    cmd.args(args).output().expect("ferrotron runs")
}

fn run_ok(dir: &Path, world: usize, args: &[String]) -> PathBuf {
    let out = run(dir, world, args);
    assert!(out.status.success(), "{args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let name = args.iter().find_map(|a| a.strip_prefix("run.name=")).unwrap();
    dir.join("runs").join(name)
}


fn same_run(base: &Path, other: &Path, what: &str) {
    let (a, b) = (losses(base), losses(other));
    assert_eq!(a.len(), STEPS as usize, "{what}: baseline steps");
    assert_eq!(b.len(), a.len(), "{what}: steps");
    let worst = a.iter().zip(&b).map(|(x, y)| ((x - y) / x).abs()).fold(0.0, f64::max);
    println!("{what}: losses {b:?}, worst relative difference {worst:.2e}");
    assert!(worst <= 2e-5, "{what}: losses {b:?} vs {a:?}");
    let (wa, wb) = (weights(base), weights(other));
    assert_eq!(wa.len(), wb.len());
    let mut worst_w = 0f32;
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        worst_w = ta.iter().zip(tb).map(|(x, y)| (x - y).abs()).fold(worst_w, f32::max);
    }
    println!("{what}: weights worst absolute difference {worst_w:.2e}");
    assert!(worst_w <= 1e-4, "{what}: weights differ by {worst_w}");
}

/// sp = 2 and 4 (and data parallel 2 × sp 2) vs sp = 1 at one global batch,
/// ZeRO 0 and 3.
fn sp_matches_single(llama: bool) {
    let dir = tempfile::tempdir().unwrap();
    let tag = if llama { "llama" } else { "gpt2" };
    let base = run_ok(dir.path(), 1, &args(&format!("{tag}-sp1"), llama, GLOBAL_BATCH, &[]));
    let l = losses(&base);
    assert!(l[STEPS as usize - 1] < l[0] - 0.3, "{tag}: the baseline trains ({l:?})");
    for (world, sp, stage) in [(2, 2, 0), (2, 2, 3), (4, 4, 0), (4, 4, 3), (4, 2, 1)] {
        let name = format!("{tag}-w{world}-sp{sp}-z{stage}");
        let batch = GLOBAL_BATCH * sp / world;
        let run = run_ok(dir.path(), world, &args(&name, llama, batch, &[&format!("dist.sp={sp}"), &format!("dist.zero_stage={stage}")]));
        same_run(&base, &run, &name);
    }
}

#[test]
fn gpt2_learned_positions_sp_matches_single_process() {
    sp_matches_single(false);
}

#[test]
fn llama_rope_gqa_sp_matches_single_process() {
    sp_matches_single(true);
}

/// Batch of one sequence (the transforms' direct path), elementwise
/// recompute and whole-block checkpointing under sp = 2.
#[test]
fn sp_with_recompute_and_batch_one() {
    let dir = tempfile::tempdir().unwrap();
    for (tag, extra) in [("plain", None), ("recompute", Some("train.recompute=true")), ("ckpt", Some("train.checkpoint_layers=true"))] {
        for batch in [1, 2] {
            let mut e: Vec<&str> = extra.into_iter().collect();
            let base = run_ok(dir.path(), 1, &args(&format!("{tag}-b{batch}-sp1"), true, batch, &e));
            e.push("dist.sp=2");
            let run = run_ok(dir.path(), 2, &args(&format!("{tag}-b{batch}-sp2"), true, batch, &e));
            same_run(&base, &run, &format!("{tag} batch {batch} sp 2"));
        }
    }
}

// ---- refusals -----------------------------------------------------------------

fn fails_with(world: usize, extra: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), world, &args("refused", false, 1, extra));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{extra:?} should fail");
    for n in needles {
        assert!(text.contains(n), "{extra:?}: expected {n:?} in:\n{text}");
    }
}

#[test]
fn unsupported_settings_are_refused_clearly() {
    // sp must divide the world.
    fails_with(1, &["dist.sp=2"], &["dist.sp = 2 must divide the number of ranks (1)"]);
    // Uneven heads: 4 heads on 3 ranks; the message lists what works.
    fails_with(3, &["dist.sp=3"], &["does not divide model.n_heads = 4", "that work for this model: 2, 4"]);
    // seq_len must split evenly.
    fails_with(2, &["dist.sp=2", "train.seq_len=31"], &["train.seq_len = 31 is not divisible by dist.sp = 2"]);
    // kv heads neither a multiple nor a divisor of sp.
    let err = ulysses::check(&ModelConfig { n_heads: 12, n_kv_heads: 3, d_model: 96, ..Default::default() }, 4, 4, 64).unwrap_err().to_string();
    assert!(err.contains("n_kv_heads = 3") && err.contains("that work for this model: 3, 6, 12"), "{err}");
}

// ---- GPU --------------------------------------------------------------------------

/// Ulysses through NCCL at world size 1 (all-to-all of one rank, the
/// transforms and kernels on the GPU) vs the local attention step on the
/// same GPU: equal up to bf16 rounding of the moved values (none: copies
/// of bf16 stay bf16), so bit-identical is expected; bound 1e-6.
#[test]
fn ulysses_nccl_world_1_on_gpu() {
    use ferrotron::backend::cuda::CudaBackend;
    use ferrotron::dist::NcclComm;
    let mut b = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => return println!("skipping: no CUDA device ({e})"),
    };
    let info = WorldInfo { master_port: free_port(), ..WorldInfo::single() };
    let comm = match NcclComm::connect(&info, Duration::from_secs(30), &mut b) {
        Ok(c) => c,
        Err(e) => return println!("skipping: NCCL unavailable ({e})"),
    };
    let (h, kv, d, batch, seq) = (4, 2, 64, 2, 128);
    let w = (h + 2 * kv) * d;
    let m = model_cfg(h, kv, d);
    let shape = AttnShape { batch, seq, heads: h, kv_heads: kv, head_dim: d };
    let mut u = Ulysses::new(&m, Recompute::Off, Box::new(comm)).unwrap();
    let qkv = gaussian(batch * seq * w, 3);
    let dout = gaussian(batch * seq * h * d, 4);
    let mut results = Vec::new();
    for ulysses in [false, true] {
        let mk = |b: &mut CudaBackend, x: &[f32]| {
            let v = View::whole(b.alloc(x.len(), DType::Compute).unwrap(), x.len());
            b.upload(v, x).unwrap();
            v
        };
        let (x, o, l) = (mk(&mut b, &qkv), mk(&mut b, &vec![0.0; batch * seq * h * d]), View::whole(b.alloc(batch * h * seq, DType::F32).unwrap(), batch * h * seq));
        let (dy, dx) = (mk(&mut b, &dout), mk(&mut b, &vec![0.0; batch * seq * w]));
        let attn: &mut dyn Attention<CudaBackend> = if ulysses { &mut u } else { &mut LocalAttention };
        attn.forward(&mut b, 0, x, o, l, shape, Some(ferrotron::backend::Rope::plain(10000.0)), true).unwrap();
        attn.backward(&mut b, 0, dx, dy, x, o, l, shape, Some(ferrotron::backend::Rope::plain(10000.0))).unwrap();
        let (mut go, mut gx) = (vec![0.0; o.len], vec![0.0; dx.len]);
        b.download(o, &mut go).unwrap();
        b.download(dx, &mut gx).unwrap();
        results.push((go, gx));
    }
    close(&results[1].0, &results[0].0, "nccl world 1: attention output");
    close(&results[1].1, &results[0].1, "nccl world 1: dqkv");
}

// ---- memory estimate ----------------------------------------------------------

/// `info`'s per-rank estimate under sp = 2 differs from what a rank
/// allocates exactly as the estimate of sp = 1 on the rank's share of the
/// tokens does (the uncounted backward scratch is the same): the gathered
/// per-block buffers and Ulysses' scratch are counted exactly.
#[test]
fn memory_estimate_counts_ulysses_buffers_exactly() {
    use ferrotron::config::Config;
    use ferrotron::model::Model;
    use ferrotron::telemetry::memory::{activation_count, estimate};
    let counted = |cfg: &Config| {
        let c = activation_count(cfg);
        4 * (c.act + c.fp32) as i64 + estimate(cfg).sp_buffers as i64
    };
    for checkpoint in [false, true] {
        let mut cfg = Config { model: ModelConfig { n_heads: 4, n_kv_heads: 2, d_model: 32, n_layers: 3, d_ff: 64, max_seq_len: 64, positions: Positions::Rope, ..Default::default() }, ..Default::default() };
        cfg.train.batch_size = 2;
        cfg.train.seq_len = 16;
        cfg.train.checkpoint_layers = checkpoint;
        let (batch, seq) = (2, 16);
        let tokens: Vec<u32> = (0..batch * seq).map(|i| (i % 200) as u32).collect();
        // One rank's share without sequence parallelism.
        let mut half = cfg.clone();
        half.train.seq_len = seq / 2;
        let local = {
            let mut b = CpuBackend::new();
            let mut model = Model::new(&mut b, &half.model, ulysses::recompute(&half.train, 1)).unwrap();
            model.forward_backward(&mut b, &tokens[..batch * seq / 2], &tokens[..batch * seq / 2], batch, seq / 2, 1.0).unwrap();
            b.live_memory_bytes() as i64 - counted(&half)
        };
        cfg.dist.sp = 2;
        let lives = ranks(2, |r, comm| {
            let mut b = CpuBackend::new();
            let recompute = ulysses::recompute(&cfg.train, 2);
            let mut model = Model::new(&mut b, &cfg.model, recompute).unwrap();
            let mut u = Ulysses::new(&cfg.model, recompute, Box::new(comm)).unwrap();
            let mine = &tokens[r * batch * seq / 2..(r + 1) * batch * seq / 2];
            model.forward_backward_attn(&mut b, &mut u, mine, mine, batch, seq / 2, 1.0).unwrap();
            b.live_memory_bytes() as i64
        });
        for live in lives {
            assert_eq!(live - counted(&cfg), local, "checkpoint_layers = {checkpoint}");
        }
    }
}

/// The group of consecutive ranks: rank and world within it, its own port.
#[test]
fn group_info_derives_the_sequence_parallel_group() {
    use ferrotron::dist::group_info;
    let world = WorldInfo { rank: 5, world: 8, local_rank: 5, local_world: 8, master_port: 29500, ..WorldInfo::single() };
    let g = group_info(&world, 4).unwrap();
    assert_eq!((g.rank, g.world, g.master_port, g.local_rank), (1, 4, 29502, 5));
    assert_eq!(group_info(&world, 2).unwrap().master_port, 29503);
    assert!(group_info(&world, 3).unwrap_err().to_string().contains("does not divide the world of 8"));
    let high = WorldInfo { master_port: 65535, ..world };
    assert!(group_info(&high, 4).unwrap_err().to_string().contains("MASTER_PORT"));
}
