//! Tests of the CPU reference backend: every op's forward against a naive,
//! independent f64 reference, and every backward against central finite
//! differences of the backend's own forward.
//!
//! Gradient-check method: L = Σ out ⊙ R for a fixed random R (so dout = R),
//! analytic gradients from the backward op, numeric ones from
//! (L(x+ε) - L(x-ε)) / (2ε) per input element, L summed in f64.
//!
//! Tolerances of the gradient check (|analytic - fd| ≤ FD_ATOL + FD_RTOL·|fd|),
//! with ε = 1e-2 on O(1) inputs:
//! - truncation error of central differences is ε²/6·|f'''| ≈ 2e-5·|f'''|;
//!   f''' is O(1..10) for these smooth ops → ≤ 2e-4 (and 0 for linear ops);
//! - the forward runs in f32, so L carries roundoff ≈ 1e-7 · Σ|out·R|
//!   (≈ 1e-5 for the few hundred outputs used here); dividing by 2ε = 0.02
//!   amplifies it to ≈ 5e-4 absolute.
//!
//! Measured worst error over all checks here: 1.1e-4 (attention, T=17), so
//! the bound has a ~20x margin. A wrong formula shows up as an O(0.1..1)
//! error (each op's backward was mutated once to confirm the check fails).

use ferrotron::backend::cpu::{matmul, CpuBackend};
use ferrotron::backend::{AdamWArgs, AttnShape, Backend, BufId, DType, Llama3Scaling, Rope, View, IGNORE};

const FD_EPS: f32 = 1e-2;
const FD_ATOL: f64 = 2e-3;
const FD_RTOL: f64 = 1e-2;

// ---------------------------------------------------------------- helpers

/// splitmix64 + Box-Muller: a tiny deterministic RNG (no extra dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

fn put(be: &mut CpuBackend, data: &[f32]) -> View {
    let v = View::whole(be.alloc(data.len(), DType::F32).unwrap(), data.len());
    be.upload(v, data).unwrap();
    v
}

fn put_u32(be: &mut CpuBackend, data: &[u32]) -> View {
    let v = View::whole(be.alloc(data.len(), DType::U32).unwrap(), data.len());
    be.upload_u32(v, data).unwrap();
    v
}

fn zeros(be: &mut CpuBackend, n: usize) -> View {
    View::whole(be.alloc(n, DType::Compute).unwrap(), n)
}

fn get(be: &CpuBackend, v: View) -> Vec<f32> {
    be.slice(v).to_vec()
}

fn dot64(a: &[f32], r: &[f32]) -> f64 {
    assert_eq!(a.len(), r.len());
    a.iter().zip(r).map(|(&a, &r)| a as f64 * r as f64).sum()
}

fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a - b).collect()
}

/// Central differences of `f` with respect to every element of every input.
fn fd_grads(xs: &[Vec<f32>], f: impl Fn(&[Vec<f32>]) -> f64) -> Vec<Vec<f64>> {
    let mut xs = xs.to_vec();
    let mut grads = Vec::new();
    for i in 0..xs.len() {
        let mut g = vec![0.0; xs[i].len()];
        for (j, gj) in g.iter_mut().enumerate() {
            let x0 = xs[i][j];
            let (xp, xm) = (x0 + FD_EPS, x0 - FD_EPS);
            xs[i][j] = xp;
            let fp = f(&xs);
            xs[i][j] = xm;
            let fm = f(&xs);
            xs[i][j] = x0;
            // Divide by the step actually taken after f32 rounding.
            *gj = (fp - fm) / (xp as f64 - xm as f64);
        }
        grads.push(g);
    }
    grads
}

fn assert_grad(name: &str, analytic: &[f32], fd: &[f64]) {
    assert_eq!(analytic.len(), fd.len(), "{name}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&a, &n)) in analytic.iter().zip(fd).enumerate() {
        let excess = (a as f64 - n).abs() - (FD_ATOL + FD_RTOL * n.abs());
        if excess > worst.0 || i == 0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(worst.0 <= 0.0, "{name}: gradient mismatch at {i}: analytic {} vs finite difference {}", analytic[i], fd[i]);
}

fn assert_close(name: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= atol + rtol * w.abs(), "{name}[{i}]: got {g}, want {w}");
    }
}

/// Forward-check tolerance vs f64 references: f32 arithmetic over sums of
/// at most a few hundred O(1) terms stays well within 1e-5 relative.
const FWD_ATOL: f64 = 1e-5;
const FWD_RTOL: f64 = 1e-5;

// ---------------------------------------------------------------- embedding

#[test]
fn embedding_forward_and_gradients() {
    let (seq, c, vocab) = (3, 4, 5);
    let tokens = [1u32, 4, 1, 0, 4, 4]; // repeats exercise accumulation
    let mut rng = Rng(1);
    let (wte, wpe, r) = (rng.vec(vocab * c), rng.vec(seq * c), rng.vec(tokens.len() * c));
    let fwd = |xs: &[Vec<f32>]| {
        let mut be = CpuBackend::new();
        let (t, e, p, o) = (put_u32(&mut be, &tokens), put(&mut be, &xs[0]), put(&mut be, &xs[1]), zeros(&mut be, r.len()));
        be.embed_fwd(o, t, e, Some(p), seq, c).unwrap();
        get(&be, o)
    };
    let out = fwd(&[wte.clone(), wpe.clone()]);
    for (n, &tok) in tokens.iter().enumerate() {
        for j in 0..c {
            assert_eq!(out[n * c + j], wte[tok as usize * c + j] + wpe[(n % seq) * c + j]);
        }
    }
    let mut be = CpuBackend::new();
    let (g0e, g0p) = (rng.vec(vocab * c), rng.vec(seq * c));
    let (t, dout, de, dp) = (put_u32(&mut be, &tokens), put(&mut be, &r), put(&mut be, &g0e), put(&mut be, &g0p));
    be.embed_bwd(de, Some(dp), dout, t, seq, c).unwrap();
    let fd = fd_grads(&[wte, wpe], |xs| dot64(&fwd(xs), &r));
    assert_grad("dwte", &sub(&get(&be, de), &g0e), &fd[0]);
    assert_grad("dwpe", &sub(&get(&be, dp), &g0p), &fd[1]);
}

// ---------------------------------------------------------------- matmul

fn naive_matmul(a: impl Fn(usize, usize) -> f32, b: impl Fn(usize, usize) -> f32, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|l| a(i, l) as f64 * b(l, j) as f64).sum();
        }
    }
    c
}

#[test]
fn linear_forward_matches_triple_loop() {
    // m = 130 spans three 64-row parallel blocks, the last one partial.
    let (m, k, n) = (130, 33, 17);
    let mut rng = Rng(2);
    let (x, w, b) = (rng.vec(m * k), rng.vec(n * k), rng.vec(n));
    let mut be = CpuBackend::new();
    let (xv, wv, bv, o1, o2) = (put(&mut be, &x), put(&mut be, &w), put(&mut be, &b), zeros(&mut be, m * n), zeros(&mut be, m * n));
    be.linear_fwd(o1, xv, wv, None, m, k, n).unwrap();
    be.linear_fwd(o2, xv, wv, Some(bv), m, k, n).unwrap();
    let want = naive_matmul(|i, l| x[i * k + l], |l, j| w[j * k + l], m, k, n);
    assert_close("linear no bias", &get(&be, o1), &want, 1e-4, 1e-5);
    let with_b: Vec<f64> = want.iter().enumerate().map(|(i, v)| v + b[i % n] as f64).collect();
    assert_close("linear bias", &get(&be, o2), &with_b, 1e-4, 1e-5);
}

#[test]
fn linear_gradients() {
    let (m, k, n) = (5, 7, 3);
    let mut rng = Rng(3);
    let (x, w, b, r) = (rng.vec(m * k), rng.vec(n * k), rng.vec(n), rng.vec(m * n));
    let fwd = |xs: &[Vec<f32>]| {
        let mut be = CpuBackend::new();
        let (xv, wv, bv, o) = (put(&mut be, &xs[0]), put(&mut be, &xs[1]), put(&mut be, &xs[2]), zeros(&mut be, m * n));
        be.linear_fwd(o, xv, wv, Some(bv), m, k, n).unwrap();
        dot64(&get(&be, o), &r)
    };
    let mut be = CpuBackend::new();
    let (g0w, g0b) = (rng.vec(n * k), rng.vec(n));
    // dinp starts as NaN: it must be overwritten, never read.
    let (dx, dw, db) = (put(&mut be, &vec![f32::NAN; m * k]), put(&mut be, &g0w), put(&mut be, &g0b));
    let (dy, xv, wv) = (put(&mut be, &r), put(&mut be, &x), put(&mut be, &w));
    be.linear_bwd(dx, dw, Some(db), dy, xv, wv, m, k, n).unwrap();
    let fd = fd_grads(&[x, w, b], fwd);
    assert_grad("linear dinp", &get(&be, dx), &fd[0]);
    assert_grad("linear dw", &sub(&get(&be, dw), &g0w), &fd[1]);
    assert_grad("linear dbias", &sub(&get(&be, db), &g0b), &fd[2]);
}

#[test]
fn gemm_every_transpose_with_beta() {
    let (m, k, n, alpha, beta) = (70, 9, 11, 0.7f32, -0.3f32);
    let mut rng = Rng(4);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (a, b, c0) = (rng.vec(m * k), rng.vec(k * n), rng.vec(m * n));
        let opa = |i: usize, l: usize| if ta { a[l * m + i] } else { a[i * k + l] };
        let opb = |l: usize, j: usize| if tb { b[j * k + l] } else { b[l * n + j] };
        let ab = naive_matmul(opa, opb, m, k, n);
        let want: Vec<f64> = ab.iter().zip(&c0).map(|(p, &c)| alpha as f64 * p + beta as f64 * c as f64).collect();
        let mut be = CpuBackend::new();
        let (av, bv, cv) = (put(&mut be, &a), put(&mut be, &b), put(&mut be, &c0));
        be.gemm(cv, av, bv, m, k, n, ta, tb, alpha, beta).unwrap();
        assert_close(&format!("gemm ta={ta} tb={tb}"), &get(&be, cv), &want, 1e-4, 1e-5);
        // beta = 0: c is write-only (NaNs in it must not leak).
        let nan = put(&mut be, &vec![f32::NAN; m * n]);
        be.gemm(nan, av, bv, m, k, n, ta, tb, 1.0, 0.0).unwrap();
        assert_close("gemm beta=0", &get(&be, nan), &ab, 1e-4, 1e-5);
    }
    // The pure function agrees with the backend (it is what the backend calls).
    let (a, b) = (rng.vec(6), rng.vec(6));
    let mut c = vec![0.0; 4];
    matmul::gemm(&mut c, &a, &b, 2, 3, 2, false, false, 1.0, 0.0);
    assert_close("pure gemm", &c, &naive_matmul(|i, l| a[i * 3 + l], |l, j| b[l * 2 + j], 2, 3, 2), 1e-6, 1e-6);
}

// ---------------------------------------------------------------- norms

#[test]
fn layernorm_forward_and_gradients() {
    let (n, c, eps) = (4, 10, 1e-5f32);
    let mut rng = Rng(5);
    let (x, w, b, r) = (rng.vec(n * c), rng.vec(c), rng.vec(c), rng.vec(n * c));
    let fwd = |xs: &[Vec<f32>], be: &mut CpuBackend| {
        let (xv, wv, bv) = (put(be, &xs[0]), put(be, &xs[1]), put(be, &xs[2]));
        let (o, mu, rs) = (zeros(be, n * c), zeros(be, n), zeros(be, n));
        be.layernorm_fwd(o, mu, rs, xv, wv, bv, n, c, eps).unwrap();
        (o, mu, rs, xv, wv)
    };
    let mut be = CpuBackend::new();
    let (o, mu, rs, xv, wv) = fwd(&[x.clone(), w.clone(), b.clone()], &mut be);
    let mut want = vec![0.0f64; n * c];
    for row in 0..n {
        let xr: Vec<f64> = x[row * c..(row + 1) * c].iter().map(|&v| v as f64).collect();
        let mean = xr.iter().sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            want[row * c + j] = (xr[j] - mean) / (var + eps as f64).sqrt() * w[j] as f64 + b[j] as f64;
        }
        assert!((be.slice(mu)[row] as f64 - mean).abs() < 1e-6);
        assert!((be.slice(rs)[row] as f64 - 1.0 / (var + eps as f64).sqrt()).abs() < 1e-5);
    }
    assert_close("layernorm out", &get(&be, o), &want, FWD_ATOL, FWD_RTOL);

    let (g0x, g0w, g0b) = (rng.vec(n * c), rng.vec(c), rng.vec(c));
    let (dx, dw, db, dy) = (put(&mut be, &g0x), put(&mut be, &g0w), put(&mut be, &g0b), put(&mut be, &r));
    be.layernorm_bwd(dx, dw, db, dy, xv, wv, mu, rs, n, c).unwrap();
    let fd = fd_grads(&[x, w, b], |xs| {
        let mut be = CpuBackend::new();
        let o = fwd(xs, &mut be).0;
        dot64(be.slice(o), &r)
    });
    assert_grad("layernorm dinp", &sub(&get(&be, dx), &g0x), &fd[0]);
    assert_grad("layernorm dw", &sub(&get(&be, dw), &g0w), &fd[1]);
    assert_grad("layernorm db", &sub(&get(&be, db), &g0b), &fd[2]);
}

#[test]
fn layernorm_param_grads_in_one_buffer() {
    // The model hands out dw and db as two views of one flat gradient buffer.
    let (n, c) = (3, 8);
    let mut rng = Rng(6);
    let mut be = CpuBackend::new();
    let (x, w, b, r) = (put(&mut be, &rng.vec(n * c)), put(&mut be, &rng.vec(c)), put(&mut be, &rng.vec(c)), put(&mut be, &rng.vec(n * c)));
    let (o, mu, rs, dx) = (zeros(&mut be, n * c), zeros(&mut be, n), zeros(&mut be, n), zeros(&mut be, n * c));
    be.layernorm_fwd(o, mu, rs, x, w, b, n, c, 1e-5).unwrap();
    let grads = View::whole(be.alloc(2 * c, DType::F32).unwrap(), 2 * c);
    let (dw, db) = (grads.sub(0, c), grads.sub(c, c));
    be.layernorm_bwd(dx, dw, db, r, x, w, mu, rs, n, c).unwrap();
    // db = column sums of dout.
    let rv = get(&be, r);
    for j in 0..c {
        let s: f32 = (0..n).map(|i| rv[i * c + j]).sum();
        assert!((be.slice(db)[j] - s).abs() < 1e-5);
    }
    // Overlapping dw/db views must be refused.
    assert!(be.layernorm_bwd(dx, grads.sub(0, c), grads.sub(1, c), r, x, w, mu, rs, n, c).is_err());
}

#[test]
fn rmsnorm_forward_and_gradients() {
    let (n, c, eps) = (4, 10, 1e-6f32);
    let mut rng = Rng(7);
    let (x, w, r) = (rng.vec(n * c), rng.vec(c), rng.vec(n * c));
    let fwd = |xs: &[Vec<f32>], be: &mut CpuBackend| {
        let (xv, wv, o, rs) = (put(be, &xs[0]), put(be, &xs[1]), zeros(be, n * c), zeros(be, n));
        be.rmsnorm_fwd(o, rs, xv, wv, n, c, eps).unwrap();
        (o, rs, xv, wv)
    };
    let mut be = CpuBackend::new();
    let (o, rs, xv, wv) = fwd(&[x.clone(), w.clone()], &mut be);
    let mut want = vec![0.0f64; n * c];
    for row in 0..n {
        let xr = &x[row * c..(row + 1) * c];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            want[row * c + j] = xr[j] as f64 / (ms + eps as f64).sqrt() * w[j] as f64;
        }
    }
    assert_close("rmsnorm out", &get(&be, o), &want, FWD_ATOL, FWD_RTOL);

    let (g0x, g0w) = (rng.vec(n * c), rng.vec(c));
    let (dx, dw, dy) = (put(&mut be, &g0x), put(&mut be, &g0w), put(&mut be, &r));
    be.rmsnorm_bwd(dx, dw, dy, xv, wv, rs, n, c).unwrap();
    let fd = fd_grads(&[x, w], |xs| {
        let mut be = CpuBackend::new();
        let o = fwd(xs, &mut be).0;
        dot64(be.slice(o), &r)
    });
    assert_grad("rmsnorm dinp", &sub(&get(&be, dx), &g0x), &fd[0]);
    assert_grad("rmsnorm dw", &sub(&get(&be, dw), &g0w), &fd[1]);
}

// ---------------------------------------------------------------- activations

/// Checks an elementwise-style op: forward vs `reference`, backward vs FD.
/// `fwd(be, out, inp)` and `bwd(be, dinp, inp, dout)` wrap the backend calls.
fn check_activation(
    name: &str,
    x: Vec<f32>,
    out_len: usize,
    reference: impl Fn(&[f32]) -> Vec<f64>,
    fwd: impl Fn(&mut CpuBackend, View, View),
    bwd: impl Fn(&mut CpuBackend, View, View, View),
) {
    let r = Rng(8).vec(out_len);
    let run = |x: &[f32]| {
        let mut be = CpuBackend::new();
        let (xv, o) = (put(&mut be, x), zeros(&mut be, out_len));
        fwd(&mut be, o, xv);
        get(&be, o)
    };
    assert_close(&format!("{name} fwd"), &run(&x), &reference(&x), FWD_ATOL, FWD_RTOL);
    let mut be = CpuBackend::new();
    let (xv, dy, dx) = (put(&mut be, &x), put(&mut be, &r), put(&mut be, &vec![f32::NAN; x.len()]));
    bwd(&mut be, dx, xv, dy);
    let fd = fd_grads(&[x], |xs| dot64(&run(&xs[0]), &r));
    assert_grad(&format!("{name} dinp"), &get(&be, dx), &fd[0]);
}

#[test]
fn gelu_forward_and_gradient() {
    let x: Vec<f32> = Rng(9).vec(64).iter().map(|v| 2.0 * v).collect();
    let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
    assert!((gelu(1.0) - 0.841_192).abs() < 1e-6); // gelu_new(1) as computed by PyTorch
    check_activation(
        "gelu",
        x,
        64,
        |x| x.iter().map(|&v| gelu(v as f64)).collect(),
        |be, o, x| be.gelu_fwd(o, x).unwrap(),
        |be, dx, x, dy| be.gelu_bwd(dx, x, dy).unwrap(),
    );
}

#[test]
fn swiglu_forward_and_gradient() {
    let (n, f) = (3, 5);
    let x: Vec<f32> = Rng(10).vec(n * 2 * f).iter().map(|v| 2.0 * v).collect();
    let reference = |x: &[f32]| {
        let mut out = vec![0.0; n * f];
        for row in 0..n {
            for i in 0..f {
                let (g, u) = (x[row * 2 * f + i] as f64, x[row * 2 * f + f + i] as f64);
                out[row * f + i] = g / (1.0 + (-g).exp()) * u;
            }
        }
        out
    };
    check_activation(
        "swiglu",
        x,
        n * f,
        reference,
        |be, o, x| be.swiglu_fwd(o, x, n, f).unwrap(),
        |be, dx, x, dy| be.swiglu_bwd(dx, x, dy, n, f).unwrap(),
    );
}

// ---------------------------------------------------------------- rope

/// Hugging Face Llama RoPE, literally: emb = cat(freqs, freqs),
/// x·cos(emb) + rotate_half(x)·sin(emb), rotate_half(x) = cat(-x2, x1),
/// freqs = pos · inv_freq.
fn rope_reference(qkv: &[f32], s: &AttnShape, inv_freq: &[f64]) -> Vec<f64> {
    let (d, half, w) = (s.head_dim, s.head_dim / 2, s.qkv_width());
    let mut out: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
    for row in 0..s.batch * s.seq {
        let pos = (row % s.seq) as f64;
        let emb: Vec<f64> = (0..d).map(|j| pos * inv_freq[j % half]).collect();
        for head in 0..s.heads + s.kv_heads {
            let x = &qkv[row * w + head * d..row * w + (head + 1) * d];
            for j in 0..d {
                let rot = if j < half { -(x[j + half] as f64) } else { x[j - half] as f64 };
                out[row * w + head * d + j] = x[j] as f64 * emb[j].cos() + rot * emb[j].sin();
            }
        }
    }
    out
}

/// transformers' `_compute_llama3_parameters`, in f64, written out from its
/// definition: wavelength = 2π / f; above original / low_freq_factor divide
/// by the factor, below original / high_freq_factor keep, in between mix
/// with smooth = (original / wavelength - low) / (high - low).
fn llama3_reference(theta: f64, d: usize, factor: f64, low: f64, high: f64, original: f64) -> Vec<f64> {
    (0..d / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / d as f64);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < original / high {
                f
            } else if wavelen > original / low {
                f / factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

#[test]
fn rope_forward_inverse_and_gradient() {
    let s = AttnShape { batch: 2, seq: 5, heads: 4, kv_heads: 2, head_dim: 8 };
    let plain = Rope::plain(10000.0);
    let plain_ref: Vec<f64> = (0..4).map(|i| 10000f64.powf(-(2.0 * i as f64) / 8.0)).collect();
    // Llama 3 scaling with a short original context: the 4 pairs of head
    // size 8 (wavelengths 6.3, 63, 628, 6283) fall in all three bands
    // (kept below 100 / 4, divided above 100 / 1).
    let scaled = Rope { theta: 10000.0, llama3: Some(Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_seq: 100 }) };
    let scaled_ref = llama3_reference(10000.0, 8, 8.0, 1.0, 4.0, 100.0);
    for (rope, inv_ref) in [(plain, plain_ref), (scaled, scaled_ref)] {
        let ours = rope.inv_freq(8);
        for (a, b) in ours.iter().zip(&inv_ref) {
            assert!(((*a as f64 - b) / b).abs() < 1e-6, "inv_freq {ours:?} vs {inv_ref:?}");
        }
        let mut rng = Rng(11);
        let (x, r) = (rng.vec(s.batch * s.seq * s.qkv_width()), rng.vec(s.batch * s.seq * s.qkv_width()));
        let fwd = |x: &[f32]| {
            let mut be = CpuBackend::new();
            let v = put(&mut be, x);
            be.rope_fwd(v, s, rope).unwrap();
            get(&be, v)
        };
        let y = fwd(&x);
        assert_close("rope fwd", &y, &rope_reference(&x, &s, &inv_ref), 1e-5, 1e-5);
        // The inverse restores the input (and v heads were never touched).
        let mut be = CpuBackend::new();
        let v = put(&mut be, &y);
        be.rope_bwd(v, s, rope).unwrap();
        assert_close("rope inverse", &get(&be, v), &x.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1e-5, 1e-5);
        // Gradient: rope_bwd applied in place to dqkv = R.
        let dv = put(&mut be, &r);
        be.rope_bwd(dv, s, rope).unwrap();
        let fd = fd_grads(&[x], |xs| dot64(&fwd(&xs[0]), &r));
        assert_grad("rope dqkv", &get(&be, dv), &fd[0]);
    }
    // The three bands are really there: one pair kept, one divided, the rest between.
    let (p, q) = (plain.inv_freq(8), scaled.inv_freq(8));
    assert_eq!(p[0], q[0]);
    assert_eq!(p[3] / 8.0, q[3]);
    assert!(q[1] < p[1] && q[1] > p[1] / 8.0, "{p:?} {q:?}");
}

// ---------------------------------------------------------------- attention

/// softmax(QKᵀ/√D + causal mask)·V in f64; returns (out [N, H·D], lse [B,H,T]).
fn attention_reference(qkv: &[f32], s: &AttnShape) -> (Vec<f64>, Vec<f64>) {
    let (t_len, d, w, h_n) = (s.seq, s.head_dim, s.qkv_width(), s.heads);
    let mut out = vec![0.0; s.batch * t_len * h_n * d];
    let mut lse = vec![0.0; s.batch * h_n * t_len];
    let at = |b: usize, t: usize, col: usize| qkv[(b * t_len + t) * w + col] as f64;
    for b in 0..s.batch {
        for h in 0..h_n {
            let g = h / (h_n / s.kv_heads);
            let (kc, vc) = ((h_n + g) * d, (h_n + s.kv_heads + g) * d);
            for t in 0..t_len {
                let scores: Vec<f64> = (0..t_len)
                    .map(|u| {
                        let qk: f64 = (0..d).map(|j| at(b, t, h * d + j) * at(b, u, kc + j)).sum();
                        if u <= t { qk / (d as f64).sqrt() } else { f64::NEG_INFINITY }
                    })
                    .collect();
                let z: f64 = scores.iter().map(|a| a.exp()).sum();
                lse[(b * h_n + h) * t_len + t] = z.ln();
                for j in 0..d {
                    let o: f64 = (0..t_len).map(|u| scores[u].exp() / z * at(b, u, vc + j)).sum();
                    out[((b * t_len + t) * h_n + h) * d + j] = o;
                }
            }
        }
    }
    (out, lse)
}

fn attn_fwd(be: &mut CpuBackend, qkv: &[f32], s: AttnShape) -> (View, View, View) {
    let x = put(be, qkv);
    let (o, l) = (zeros(be, s.batch * s.seq * s.heads * s.head_dim), zeros(be, s.batch * s.heads * s.seq));
    be.attention_fwd(o, l, x, s).unwrap();
    (o, l, x)
}

const ATTN_SHAPES: [AttnShape; 4] = [
    AttnShape { batch: 2, seq: 1, heads: 4, kv_heads: 2, head_dim: 8 },
    AttnShape { batch: 2, seq: 5, heads: 4, kv_heads: 2, head_dim: 8 },
    AttnShape { batch: 1, seq: 17, heads: 4, kv_heads: 2, head_dim: 4 },
    AttnShape { batch: 2, seq: 5, heads: 2, kv_heads: 2, head_dim: 6 }, // plain MHA
];

#[test]
fn attention_forward_matches_explicit_softmax() {
    for s in ATTN_SHAPES {
        let qkv = Rng(12).vec(s.batch * s.seq * s.qkv_width());
        let mut be = CpuBackend::new();
        let (o, l, _) = attn_fwd(&mut be, &qkv, s);
        let (want_o, want_l) = attention_reference(&qkv, &s);
        assert_close(&format!("attention out {s:?}"), &get(&be, o), &want_o, FWD_ATOL, FWD_RTOL);
        assert_close(&format!("attention lse {s:?}"), &get(&be, l), &want_l, FWD_ATOL, FWD_RTOL);
    }
}

#[test]
fn attention_gradients() {
    for s in ATTN_SHAPES {
        let mut rng = Rng(13);
        let (qkv, r) = (rng.vec(s.batch * s.seq * s.qkv_width()), rng.vec(s.batch * s.seq * s.heads * s.head_dim));
        let mut be = CpuBackend::new();
        let (o, l, x) = attn_fwd(&mut be, &qkv, s);
        let (dy, dx) = (put(&mut be, &r), put(&mut be, &vec![f32::NAN; qkv.len()]));
        be.attention_bwd(dx, dy, x, o, l, s).unwrap();
        let fd = fd_grads(&[qkv], |xs| {
            let mut be = CpuBackend::new();
            let o = attn_fwd(&mut be, &xs[0], s).0;
            dot64(be.slice(o), &r)
        });
        assert_grad(&format!("attention dqkv {s:?}"), &get(&be, dx), &fd[0]);
    }
}

#[test]
fn attention_speed_gpt_small_shape() {
    // B=16, T=128, H=4, D=32: forward + backward should take well under a
    // second on a laptop; the bound is loose because CI cores are shared.
    let s = AttnShape { batch: 16, seq: 128, heads: 4, kv_heads: 4, head_dim: 32 };
    let mut rng = Rng(14);
    let mut be = CpuBackend::new();
    let dy = put(&mut be, &rng.vec(s.batch * s.seq * s.heads * s.head_dim));
    let dx = zeros(&mut be, s.batch * s.seq * s.qkv_width());
    let t0 = std::time::Instant::now();
    let (o, l, x) = attn_fwd(&mut be, &rng.vec(s.batch * s.seq * s.qkv_width()), s);
    be.attention_bwd(dx, dy, x, o, l, s).unwrap();
    let dt = t0.elapsed();
    println!("attention fwd+bwd B=16 T=128 H=4 D=32: {dt:?}");
    assert!(dt.as_secs_f64() < 10.0, "attention too slow: {dt:?}");
}

// ---------------------------------------------------------------- loss

#[test]
fn softmax_xent_forward_gradient_and_ignore() {
    let (n, v, scale) = (4, 7, 0.25f32);
    let mut rng = Rng(15);
    let logits: Vec<f32> = rng.vec(n * v).iter().map(|x| 3.0 * x).collect();
    let targets = [3u32, IGNORE, 0, 6];
    // Reference losses in f64.
    let want: Vec<f64> = (0..n)
        .map(|i| {
            if targets[i] == IGNORE {
                return 0.0;
            }
            let z = &logits[i * v..(i + 1) * v];
            let lse = z.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            lse - z[targets[i] as usize] as f64
        })
        .collect();
    let run = |z: &[f32]| {
        let mut be = CpuBackend::new();
        let (zv, t, l) = (put(&mut be, z), put_u32(&mut be, &targets), zeros(&mut be, n));
        be.softmax_xent(l, None, zv, t, n, v, v, scale).unwrap();
        get(&be, l)
    };
    assert_close("xent losses", &run(&logits), &want, FWD_ATOL, FWD_RTOL);

    // Out-of-place gradient; the logits must be left untouched.
    let mut be = CpuBackend::new();
    let (zv, t, l, dz) = (put(&mut be, &logits), put_u32(&mut be, &targets), zeros(&mut be, n), put(&mut be, &vec![f32::NAN; n * v]));
    be.softmax_xent(l, Some(dz), zv, t, n, v, v, scale).unwrap();
    assert_eq!(get(&be, zv), logits);
    assert_close("xent losses with grad", &get(&be, l), &want, FWD_ATOL, FWD_RTOL);
    let grad = get(&be, dz);
    assert!(grad[v..2 * v].iter().all(|&g| g == 0.0), "ignored row must have zero gradient");
    assert_eq!(get(&be, l)[1], 0.0, "ignored row must have zero loss");
    // d(scale · Σ losses)/dz is exactly what the op writes.
    let fd = fd_grads(std::slice::from_ref(&logits), |xs| scale as f64 * run(&xs[0]).iter().map(|&x| x as f64).sum::<f64>());
    assert_grad("xent dlogits", &grad, &fd[0]);

    // In place (dlogits == logits) gives the same bits.
    be.softmax_xent(l, Some(zv), zv, t, n, v, v, scale).unwrap();
    assert_eq!(get(&be, zv), grad);
}

/// Vocabulary padding: rows 9 wide, 7 classes. The padding columns (filled
/// with large values that would dominate a softmax) change nothing: losses
/// and class gradients equal the unpadded op's, padding gradients are 0, and
/// a target in the padding is an error.
#[test]
fn softmax_xent_ignores_vocabulary_padding() {
    let (n, v, classes, scale) = (4, 9, 7, 0.5f32);
    let mut rng = Rng(17);
    let tight: Vec<f32> = rng.vec(n * classes).iter().map(|x| 3.0 * x).collect();
    let padded: Vec<f32> = (0..n * v).map(|k| if k % v < classes { tight[k / v * classes + k % v] } else { 50.0 }).collect();
    let targets = [2u32, 6, IGNORE, 0];
    let mut be = CpuBackend::new();
    let (t, l1, l2) = (put_u32(&mut be, &targets), zeros(&mut be, n), zeros(&mut be, n));
    let (z1, z2) = (put(&mut be, &tight), put(&mut be, &padded));
    be.softmax_xent(l1, Some(z1), z1, t, n, classes, classes, scale).unwrap();
    be.softmax_xent(l2, Some(z2), z2, t, n, v, classes, scale).unwrap();
    assert_eq!(get(&be, l1), get(&be, l2));
    let (g1, g2) = (get(&be, z1), get(&be, z2));
    for k in 0..n * v {
        let want = if k % v < classes { g1[k / v * classes + k % v] } else { 0.0 };
        assert_eq!(g2[k], want, "dlogits[{k}]");
    }
    let bad = put_u32(&mut be, &[7, 0, 0, 0]);
    let err = be.softmax_xent(l2, None, z2, bad, n, v, classes, 1.0).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary of 7"), "{err}");
    assert!(be.softmax_xent(l2, None, z2, t, n, v, v + 1, 1.0).is_err(), "more classes than columns");
}

// ---------------------------------------------------------------- optimizer

#[test]
fn adamw_matches_pytorch_formula_over_20_steps() {
    // 40000 elements: spans several parallel chunks.
    let len = 40_000;
    let mut rng = Rng(16);
    let p0 = rng.vec(len);
    let (mut p, mut m, mut v): (Vec<f64>, Vec<f64>, Vec<f64>) = (p0.iter().map(|&x| x as f64).collect(), vec![0.0; len], vec![0.0; len]);
    let mut be = CpuBackend::new();
    let (pv, gv, mv, vv) = (put(&mut be, &p0), zeros(&mut be, len), zeros(&mut be, len), zeros(&mut be, len));
    let (lr, b1, b2, eps, wd, gs) = (1e-3f32, 0.9f32, 0.999f32, 1e-8f32, 0.1f32, 0.5f32);
    for step in 1..=20u64 {
        let g: Vec<f32> = rng.vec(len).iter().map(|x| 0.1 * x).collect();
        be.upload(gv, &g).unwrap();
        let args = AdamWArgs { lr, beta1: b1, beta2: b2, eps, weight_decay: wd, step, grad_scale: gs };
        be.adamw(pv, gv, mv, vv, args).unwrap();
        // Scalar reference, PyTorch's AdamW formula, in f64.
        let (lr, b1, b2, eps, wd) = (lr as f64, b1 as f64, b2 as f64, eps as f64, wd as f64);
        let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for i in 0..len {
            let gi = g[i] as f64 * gs as f64;
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
        }
    }
    assert_close("adamw params", &get(&be, pv), &p, 1e-6, 1e-5);
    assert_close("adamw m", &get(&be, mv), &m, 1e-6, 1e-5);
    assert_close("adamw v", &get(&be, vv), &v, 1e-6, 1e-5);
}

// ---------------------------------------------------------------- elementwise

#[test]
fn elementwise_ops_and_sum_squares() {
    let len = 50_000; // several parallel chunks
    let mut rng = Rng(17);
    let (a, b) = (rng.vec(len), rng.vec(len));
    let mut be = CpuBackend::new();
    let (av, bv, o) = (put(&mut be, &a), put(&mut be, &b), zeros(&mut be, len));
    be.add(o, av, bv).unwrap();
    assert!(get(&be, o).iter().zip(a.iter().zip(&b)).all(|(o, (a, b))| *o == a + b));
    be.accumulate(o, av).unwrap();
    assert!(get(&be, o).iter().zip(a.iter().zip(&b)).all(|(o, (a, b))| *o == (a + b) + a));
    be.copy(o, bv).unwrap();
    be.scale(o, -2.0).unwrap();
    assert!(get(&be, o).iter().zip(&b).all(|(o, b)| *o == -2.0 * b));
    let want: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
    let got = be.sum_squares(av).unwrap();
    assert!((got - want).abs() <= 1e-12 * want, "sum_squares {got} vs {want}");
    be.fill(o.sub(10, 5), 3.5).unwrap();
    assert_eq!(&be.slice(o)[9..16], &[-2.0 * b[9], 3.5, 3.5, 3.5, 3.5, 3.5, -2.0 * b[15]]);
    let mut host = vec![0.0; 5];
    be.download(av.sub(100, 5), &mut host).unwrap();
    assert_eq!(host, a[100..105]);
}

// ---------------------------------------------------------------- errors

#[test]
fn bad_views_are_errors() {
    let mut be = CpuBackend::new();
    let f = zeros(&mut be, 16);
    let u = put_u32(&mut be, &[0; 16]);
    let outside = View { buf: f.buf, off: 10, len: 10 };
    assert!(be.fill(outside, 1.0).is_err(), "out of range");
    assert!(be.fill(View { buf: f.buf, off: usize::MAX, len: 2 }, 1.0).is_err(), "offset overflow");
    assert!(be.fill(u, 1.0).is_err(), "u32 buffer as f32");
    assert!(be.fill(View::whole(BufId(999), 1), 1.0).is_err(), "unknown buffer");
    assert!(be.upload(f, &[1.0; 3]).is_err(), "host length mismatch");
    assert!(be.upload_u32(f, &[0; 16]).is_err(), "f32 buffer as u32");
    assert!(be.add(f.sub(0, 8), f.sub(4, 8), f.sub(8, 8)).is_err(), "output overlaps input");
    assert!(be.copy(f.sub(0, 8), f.sub(8, 8)).is_ok(), "disjoint views of one buffer are fine");
    assert!(be.gemm(f, f, f, 4, 4, 4, false, false, 1.0, 0.0).is_err(), "c aliases a");
    assert!(be.linear_fwd(f.sub(0, 4), f.sub(4, 4), f.sub(8, 3), None, 2, 2, 2).is_err(), "wrong length");
    // Token / target ids outside the vocabulary.
    let wte = zeros(&mut be, 3 * 4);
    let bad_tok = put_u32(&mut be, &[0, 3]);
    let out = zeros(&mut be, 8);
    assert!(be.embed_fwd(out, bad_tok, wte, None, 2, 4).is_err(), "token >= vocab");
    let logits = zeros(&mut be, 2 * 3);
    let losses = zeros(&mut be, 2);
    assert!(be.softmax_xent(losses, None, logits, bad_tok, 2, 3, 3, 1.0).is_err(), "target >= vocab");
    // Attention shape that is not a valid GQA grouping.
    let s = AttnShape { batch: 1, seq: 1, heads: 3, kv_heads: 2, head_dim: 2 };
    let (qkv, o, l) = (zeros(&mut be, s.qkv_width()), zeros(&mut be, 6), zeros(&mut be, 3));
    assert!(be.attention_fwd(o, l, qkv, s).is_err(), "heads % kv_heads != 0");
    // A freed buffer is gone.
    be.free(f.buf);
    assert!(be.fill(f, 0.0).is_err(), "freed buffer");
}

// ---------------------------------------------------------------- determinism

#[test]
fn results_do_not_depend_on_thread_count() {
    let run = || {
        let (m, k, n) = (300, 40, 50);
        let s = AttnShape { batch: 3, seq: 9, heads: 4, kv_heads: 2, head_dim: 8 };
        let mut rng = Rng(18);
        let mut be = CpuBackend::new();
        let (x, w, dy) = (put(&mut be, &rng.vec(m * k)), put(&mut be, &rng.vec(n * k)), put(&mut be, &rng.vec(m * n)));
        let (dx, dw, db) = (zeros(&mut be, m * k), zeros(&mut be, n * k), zeros(&mut be, n));
        be.linear_bwd(dx, dw, Some(db), dy, x, w, m, k, n).unwrap();
        let (o, l, q) = attn_fwd(&mut be, &rng.vec(s.batch * s.seq * s.qkv_width()), s);
        let (dout, dq) = (put(&mut be, &rng.vec(s.batch * s.seq * s.heads * s.head_dim)), zeros(&mut be, q.len));
        be.attention_bwd(dq, dout, q, o, l, s).unwrap();
        [dx, dw, db, o, dq].map(|v| get(&be, v))
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
    let many = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(run);
    assert!(one == many, "results differ between 1 and 4 threads");
}
