//! ZeRO on the GPU at world size 1 (skipped without one): stage 3 (units
//! gathered and freed, gradients through per-unit buffers) and NCCL as the
//! communicator give the losses of the plain run.
//!
//! At world size 1 the same kernels see the same fp32 values (a gathered
//! unit is a copy of the shard; its bf16 shadow is made from it the same
//! way), so the losses should agree to the bit; the bound allows for
//! nothing more than run-to-run noise of the GPU kernels.

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

#[test]
fn zero3_and_nccl_at_world_one_match_the_plain_run() {
    if let Err(e) = CudaBackend::new(0) {
        println!("skipping: no CUDA device ({e:#})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = losses(tmp.path(), "plain", &[]);
    assert_same("zero3", &plain, &losses(tmp.path(), "zero3", &["dist.zero_stage=3"]));
    // NCCL at world size 1 needs a rendezvous address.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::env::set_var("MASTER_ADDR", "127.0.0.1");
    std::env::set_var("MASTER_PORT", port.to_string());
    assert_same("nccl-zero3", &plain, &losses(tmp.path(), "nccl", &["dist.zero_stage=3", "dist.backend=nccl"]));
    assert_same("nccl-zero1", &plain, &losses(tmp.path(), "nccl1", &["dist.zero_stage=1", "dist.backend=nccl"]));
}
