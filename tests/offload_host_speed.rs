//! Speed of the host side of an offloaded step, measured piece by piece on
//! this machine (`cargo test --release --test offload_host_speed --
//! --ignored --nocapture`): memcpy bandwidth (the ceiling), a fresh
//! gradient buffer (page faults), and the AdamW / 8-bit AdamW kernels in
//! GB/s of state moved. Ignored by default: it measures, it does not check.

use ferrotron::backend::cpu::{adamw::adamw, adamw8bit::adamw8bit};
use ferrotron::backend::{AdamWArgs, QUANT_BLOCK};
use std::time::Instant;

const N: usize = 1 << 25; // 32M values: 128 MB per fp32 tensor

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn args(step: u64) -> AdamWArgs {
    AdamWArgs { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 1.0 }
}

#[test]
#[ignore]
fn host_pieces_speed() {
    let threads = rayon::current_num_threads();
    let src: Vec<f32> = (0..N).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let mut dst = vec![0.0f32; N];
    let gb = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    let t = best_of(3, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    println!("memcpy 1 thread: {:.1} GB/s (read + write)", gb(8 * N, t));
    let t = best_of(3, || {
        let v = vec![0.0f32; N];
        std::hint::black_box(&v);
        let mut v = v;
        v.copy_from_slice(&src);
        std::hint::black_box(&v);
    });
    println!("fresh vec + copy (page faults): {:.1} GB/s of the copy ({:.0} ms per 128 MB)", gb(8 * N, t), t * 1e3);
    let (mut p, g) = (src.clone(), src.iter().map(|x| x * 0.01 - 0.003).collect::<Vec<f32>>());
    let (mut m, mut v) = (vec![0.0f32; N], vec![0.0f32; N]);
    let mut step = 0;
    let t = best_of(3, || {
        step += 1;
        adamw(&mut p, &g, &mut m, &mut v, &args(step));
    });
    println!("adamw ({threads} threads): {:.1} GB/s of state (28 B/param), {:.2} ns/param", gb(28 * N, t), t * 1e9 / N as f64);
    let (mut mc, mut vc) = (vec![0u8; N], vec![0u8; N]);
    let (mut ma, mut va) = (vec![0.0f32; N / QUANT_BLOCK], vec![0.0f32; N / QUANT_BLOCK]);
    let t = best_of(3, || {
        step += 1;
        adamw8bit(&mut p, &g, &mut mc, &mut vc, &mut ma, &mut va, &args(step));
    });
    println!("adamw8bit ({threads} threads): {:.1} GB/s of state (14 B/param), {:.2} ns/param", gb(14 * N, t), t * 1e9 / N as f64);
}
