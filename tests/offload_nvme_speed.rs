//! Speed of the NVMe tier's host side alone, on this machine's disk: an
//! offload of a preset's shape (8-bit AdamW, every unit in a file under
//! `FERROTRON_NVME_SPEED_PATH`, default /tmp) stepped with made-up
//! gradients — no forward or backward, so a step's wall time is the
//! offload's: reading each unit, stepping it, writing it back. Prints each
//! step's milliseconds and its offload fields. Ignored by default: it
//! measures, it does not check.
//!
//!   FERROTRON_NVME_SPEED_PRESET=llama-1b cargo test --release --test offload_nvme_speed -- --ignored --nocapture
//!
//! (default preset llama-350m, 4 steps; `FERROTRON_NVME_SPEED_STEPS=N`).

use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::Backend;
use ferrotron::config;
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::Unit;
use ferrotron::parallel::offload::Offload;
use ferrotron::parallel::zero::Zero;
use std::time::Instant;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[test]
#[ignore]
fn nvme_tier_step_speed() {
    let preset = env("FERROTRON_NVME_SPEED_PRESET", "llama-350m");
    let steps: usize = env("FERROTRON_NVME_SPEED_STEPS", "4").parse().unwrap();
    let scratch = tempfile::tempdir_in(env("FERROTRON_NVME_SPEED_PATH", "/tmp")).unwrap();
    let sets: Vec<String> = [
        format!("model.preset={preset}"),
        "optimizer.name=adamw8bit".into(),
        "offload.optimizer=nvme".into(),
        "train.grad_clip=0".into(),
        format!("offload.path=\"{}\"", scratch.path().display()),
    ]
    .into();
    let c = config::load(None, &sets).unwrap();
    let layout = ParamLayout::new(&c.model);
    let weights = init_weights(&c.model, &layout, 1);
    let mut b = CpuBackend::new();
    let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
    let t = Instant::now();
    let mut off = Offload::new_owned(&c, &layout, weights).unwrap();
    println!("{preset}: {} parameters, build {:.0} ms", layout.total, t.elapsed().as_secs_f64() * 1e3);
    let units = Unit::all(c.model.n_layers);
    for step in 0..steps {
        let t = Instant::now();
        off.begin_step(1e-4, 0.0).unwrap();
        for &u in units.iter().rev() {
            off.fetch_grads(&mut b, u).unwrap();
            let v = off.device_grads(u).unwrap();
            b.fill(v, 1e-3 * (step + 1) as f32).unwrap();
            off.grads_done(&mut b, &mut zero, u).unwrap();
        }
        off.finish(&mut b, &mut zero, 0.0).unwrap();
        println!("STEP {step} {:.0} ms {:?}", t.elapsed().as_secs_f64() * 1e3, off.times());
    }
}
