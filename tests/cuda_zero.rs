//! ZeRO on the GPU at world size 1 (skipped without one): stage 3 (units
//! gathered in bf16 and freed; at world 1 a gather is a conversion, no
//! collective and no prefetch, and the gradients go straight into the
//! shard, no per-unit buffer, no reduce-scatter) and NCCL as the
//! communicator against the plain run. NCCL's asynchronous collectives on
//! one GPU: tests/dist_nccl.rs.
//!
//! Stages 0–2 run the same kernels on the same fp32 master weights (their
//! bf16 shadows made the same way), so their losses agree to the bit; the
//! 1e-5 bound allows nothing more than run-to-run noise of GPU kernels.
//!
//! Stage 3 gathers bf16 weights: matmuls read bf16 in both runs (the plain
//! run through its bf16 shadow), but norms and embeddings read bf16 where
//! the plain run reads its fp32 master. So: with bf16-representable
//! weights the two are bit-identical (loss and every gradient, tested
//! below on one forward and backward); over a training run, once the
//! weights leave the bf16 grid, the curves differ by that rounding of
//! norm weights and embeddings (bound below, with its measurement).

use ferrotron::backend::cuda::CudaBackend;
use ferrotron::config;
use ferrotron::train::trainer::train;

fn losses(dir: &std::path::Path, name: &str, extra: &[&str]) -> Vec<f32> {
    let mut sets: Vec<String> = [
        "device=cuda", "model.preset=tiny-llama", "train.steps=10", "train.batch_size=8", "train.seq_len=64", "train.eval_every=0",
        "train.ckpt_every=0", "train.samples=0", "optimizer.lr=1e-3", "run.progress=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("run.dir=\"{}\"", dir.display()));
    sets.push(format!("run.name={name}"));
    sets.extend(extra.iter().map(|s| s.to_string()));
    train(&config::load(None, &sets).unwrap(), None).unwrap().losses
}

fn assert_same(name: &str, a: &[f32], b: &[f32]) {
    println!("{name}: {a:?}\n{:>width$} {b:?}", "", width = name.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{name}: step {} {y} vs plain {x}", i + 1);
    }
}

/// Round to the nearest bf16 (ties to even), as the GPU's conversion does.
fn bf16_round(x: f32) -> f32 {
    let bits = x.to_bits();
    f32::from_bits((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

/// One forward and backward with bf16-representable weights: stage 3 over
/// NCCL (bf16 gathers; gradients in the shard) gives the plain
/// stage-0 run's loss and every gradient bit for bit.
/// Stage 3's curve vs the plain run's. Step 1 (the initial weights, not
/// bf16-rounded here): only the embeddings differ, rounded to bf16 (2^-9
/// relative each, random signs), 1e-3 relative. Later steps: the norm
/// weights, near 1 where bf16's spacing is 2^-7, move by ~lr = 1e-3 per
/// step, so stage 3 sees them rounded by up to 0.4% while the plain run
/// sees the fp32 values; the loss follows at the 1e-3 level, hence
/// BF16_CURVE = 5e-3. ESTIMATED, not yet measured on a GPU (the test
/// prints both curves: tighten to ~2× the measured gap). A wrong shard or
/// a stale gather moves the loss by far more (1e-2 and up).
fn assert_close_bf16(name: &str, a: &[f32], b: &[f32]) {
    println!("{name}: {a:?}\n{:>width$} {b:?}", "", width = name.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let bound = if i == 0 { 1e-3 } else { BF16_CURVE };
        assert!((x - y).abs() <= bound * x.abs(), "{name}: step {} {y} vs plain {x} (bound {bound} relative)", i + 1);
    }
}

/// See [`assert_close_bf16`].
const BF16_CURVE: f32 = 5e-3;

#[test]
fn zero3_bf16_gathers_equal_the_plain_bf16_shadow_bit_for_bit() {
    use ferrotron::backend::{Backend, View};
    use ferrotron::dist::{NcclComm, SoloComm, WorldInfo};
    use ferrotron::model::{init::init_weights, layout::ParamLayout, Model, Recompute};
    use ferrotron::parallel::zero::Zero;
    let mut b = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => return println!("skipping: no CUDA device ({e:#})"),
    };
    let cfg = config::load(None, &["device=cuda".into(), "model.preset=tiny-llama".into()]).unwrap().model;
    let layout = ParamLayout::new(&cfg);
    let weights: Vec<f32> = init_weights(&cfg, &layout, 7).into_iter().map(bf16_round).collect();
    let tokens: Vec<u32> = (0..8 * 64).map(|i| (i * 7919 % cfg.vocab_size) as u32).collect();
    let targets: Vec<u32> = tokens.iter().map(|t| (t + 1) % cfg.vocab_size as u32).collect();
    let run = |stage: u32, comm: Box<dyn ferrotron::dist::Comm<CudaBackend>>, b: &mut CudaBackend| {
        let mut zero = Zero::new(b, &cfg, &layout, stage, comm, false, &weights).unwrap();
        let mut model = Model::new_bare(&cfg, Recompute::Off);
        zero.reduce_during_backward(true);
        let loss = model.forward_backward_in(b, &mut zero, &tokens, &targets, 8, 64, 1.0 / tokens.len() as f32).unwrap();
        zero.finish_grads(b).unwrap();
        let mut grads = vec![0.0f32; layout.total];
        b.download(View::whole(zero.shard_grads, layout.total), &mut grads).unwrap();
        (loss, grads, zero.take_peak_gathered())
    };
    let (plain_loss, plain_grads, _) = run(0, Box::new(SoloComm), &mut b);
    let nccl = NcclComm::connect(&WorldInfo::single(), std::time::Duration::from_secs(60), &mut b).expect("NCCL on one GPU");
    let (loss, grads, gathered) = run(3, Box::new(nccl), &mut b);
    assert_eq!(gathered, 1, "stage 3 at world 1 holds one unit at a time (no prefetch)");
    assert_eq!(loss.to_bits(), plain_loss.to_bits(), "loss {loss} vs plain {plain_loss}");
    let differ = grads.iter().zip(&plain_grads).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} gradients differ from the plain run", grads.len());
    println!("stage 3 (bf16 gathers, NCCL) = plain: loss {loss} and {} gradients bit for bit", grads.len());
}

#[test]
fn zero3_and_nccl_at_world_one_match_the_plain_run() {
    if let Err(e) = CudaBackend::new(0) {
        println!("skipping: no CUDA device ({e:#})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = losses(tmp.path(), "plain", &[]);
    assert_same("zero2", &plain, &losses(tmp.path(), "zero2", &["dist.zero_stage=2"]));
    assert_close_bf16("zero3", &plain, &losses(tmp.path(), "zero3", &["dist.zero_stage=3"]));
    // NCCL at world size 1 needs a rendezvous address.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::env::set_var("MASTER_ADDR", "127.0.0.1");
    std::env::set_var("MASTER_PORT", port.to_string());
    assert_close_bf16("nccl-zero3", &plain, &losses(tmp.path(), "nccl", &["dist.zero_stage=3", "dist.backend=nccl"]));
    assert_same("nccl-zero0", &plain, &losses(tmp.path(), "nccl0", &["dist.zero_stage=0", "dist.backend=nccl"]));
    assert_same("nccl-zero1", &plain, &losses(tmp.path(), "nccl1", &["dist.zero_stage=1", "dist.backend=nccl"]));
}
