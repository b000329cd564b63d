//! Speed of the host side of an offloaded step, measured piece by piece on
//! this machine: the copy bandwidth of all threads (the ceiling), and the
//! AdamW / 8-bit AdamW kernels and the bf16 image rounding (apart, and
//! written by the 8-bit kernel in the same pass) in ns per
//! parameter and GB/s of memory moved, for every instruction-set variant
//! the CPU has (`isa`; the fastest is what runs). Work runs on a pool of
//! cores − 1 threads, as the offloaded optimizer's does. Ignored by default:
//! it measures, it does not check. The last line (`SUMMARY ...`) is the
//! one to report:
//!
//!   cargo test --release --test offload_host_speed -- --ignored --nocapture
//!
//! (`FERROTRON_BENCH_THREADS=N` picks another pool size,
//! `FERROTRON_CPU_ISA=avx2` caps the variants as it does for training.)

use ferrotron::backend::cpu::{adamw::adamw_with, adamw8bit::adamw8bit_with, bf16::round_to_bf16_with, isa::Isa};
use ferrotron::backend::{AdamWArgs, QUANT_BLOCK};
use rayon::prelude::*;
use std::time::Instant;

const N: usize = 1 << 25; // 32M values: 128 MB per fp32 tensor
/// Parameters of llama3-8b, to turn ns/param into seconds per step.
const PARAMS_8B: f64 = 8.03e9;
/// Bytes moved per parameter: p read+write, g read, m and v read+write.
const ADAMW_BYTES: usize = 28;
/// p read+write, g read, the two codes read+write (absmax: 1/32 B, left out).
const ADAMW8BIT_BYTES: usize = 16;
/// f32 read, bf16 written.
const BF16_BYTES: usize = 6;

/// CPU seconds used by this process so far (all threads).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The fastest of `reps` runs: wall seconds, and CPU seconds per thread
/// (on a busy machine the wall time includes waiting for a core; the CPU
/// time is what the work itself costs).
fn best_of<F: FnMut()>(reps: usize, mut f: F) -> (f64, f64) {
    let threads = rayon::current_num_threads() as f64;
    (0..reps)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds());
            f();
            (t.elapsed().as_secs_f64(), (cpu_seconds() - c) / threads)
        })
        .fold((f64::INFINITY, f64::INFINITY), |(w, c), (w1, c1)| (w.min(w1), c.min(c1)))
}

fn args(step: u64) -> AdamWArgs {
    AdamWArgs { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 1.0 }
}

/// Seconds per parameter → "X ns/param (Y GB/s)".
fn rate(seconds: f64, bytes_per_param: usize) -> String {
    format!("{:.3} ns/param ({:.1} GB/s)", seconds * 1e9 / N as f64, (bytes_per_param * N) as f64 / seconds / 1e9)
}

/// Wall rate and CPU time per thread.
fn rates((wall, cpu): (f64, f64), bytes_per_param: usize) -> String {
    format!("{} [cpu {:.3} ns/param per thread]", rate(wall, bytes_per_param), cpu * 1e9 / N as f64)
}

fn pool_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::env::var("FERROTRON_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or((cores - 1).max(1))
}

#[test]
#[ignore]
fn host_pieces_speed() {
    let threads = pool_threads();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| measure(threads));
}

/// The CPU's model name (Linux), to read the numbers against.
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let line = info.lines().find(|l| l.starts_with("model name"));
    line.and_then(|l| l.split(':').nth(1)).map_or("unknown".into(), |m| m.trim().to_string())
}

fn measure(threads: usize) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("cpu: {} ({cores} logical cores), variants: {:?}", cpu_model(), Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>());
    let src: Vec<f32> = (0..N).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let mut dst = vec![0.0f32; N];
    let (copy, _) = best_of(5, || {
        dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&mut dst);
    });
    println!("copy, {threads} threads: {:.1} GB/s (read + write; the ceiling)", (8 * N) as f64 / copy / 1e9);
    let g: Vec<f32> = src.iter().map(|x| x * 0.01 - 0.003).collect();
    let mut p = src.clone();
    let (mut m, mut v) = (vec![0.0f32; N], vec![0.0f32; N]);
    let (mut mc, mut vc) = (vec![0u8; N], vec![0u8; N]);
    let (mut ma, mut va) = (vec![0.0f32; N / QUANT_BLOCK], vec![0.0f32; N / QUANT_BLOCK]);
    let mut image = vec![0u16; N];
    let mut step = 0;
    let mut last = (0.0, 0.0, 0.0, 0.0);
    // Up to the variant that runs (FERROTRON_CPU_ISA may cap it).
    for isa in Isa::available().into_iter().filter(|&isa| isa <= Isa::best()) {
        let t_adamw = best_of(5, || {
            step += 1;
            adamw_with(isa, &mut p, &g, &mut m, &mut v, &args(step));
        });
        let t_8bit = best_of(5, || {
            step += 1;
            adamw8bit_with(isa, &mut p, &g, &mut mc, &mut vc, &mut ma, &mut va, &args(step), None);
        });
        let t_fused = best_of(5, || {
            step += 1;
            adamw8bit_with(isa, &mut p, &g, &mut mc, &mut vc, &mut ma, &mut va, &args(step), Some(&mut image));
        });
        let t_bf16 = best_of(5, || round_to_bf16_with(isa, &mut image, &p));
        let name = isa.name();
        println!("{name:>8}: adamw {}", rates(t_adamw, ADAMW_BYTES));
        println!("{name:>8}: adamw8bit {}", rates(t_8bit, ADAMW8BIT_BYTES));
        println!("{name:>8}: bf16 image {}", rates(t_bf16, BF16_BYTES));
        println!("{name:>8}: adamw8bit writing the image in the same pass {}", rates(t_fused, ADAMW8BIT_BYTES + 2));
        last = (t_adamw.0, t_8bit.0, t_bf16.0, t_fused.0);
    }
    let (t_adamw, t_8bit, t_bf16, t_fused) = last;
    let per_param = |t: f64| t / N as f64;
    println!(
        "SUMMARY threads={threads} isa={} copy={:.1}GB/s adamw8bit={} adamw={} bf16_image={} adamw8bit_fused_image={} | llama3-8b host step: adamw8bit+image {:.2} s (fused {:.2} s), adamw+image {:.2} s",
        Isa::best().name(),
        (8 * N) as f64 / copy / 1e9,
        rate(t_8bit, ADAMW8BIT_BYTES),
        rate(t_adamw, ADAMW_BYTES),
        rate(t_bf16, BF16_BYTES),
        rate(t_fused, ADAMW8BIT_BYTES + 2),
        (per_param(t_8bit) + per_param(t_bf16)) * PARAMS_8B,
        per_param(t_fused) * PARAMS_8B,
        (per_param(t_adamw) + per_param(t_bf16)) * PARAMS_8B,
    );
}
