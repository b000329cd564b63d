// y = a*x + b*y: momentum buffers, Nesterov mixes, decoupled decay plus an
// update, Newton-Schulz combinations. With b == 0, y is not read (NaNs in it
// are overwritten), as the trait requires.
// Explicit _rn intrinsics: NVRTC would otherwise contract a*x + b*y into an
// FMA; without contraction the result is bit-identical to the CPU reference.

__device__ __forceinline__ float axpby_one(float x, float y, float a, float b) {
    return b == 0.0f ? __fmul_rn(a, x) : __fadd_rn(__fmul_rn(a, x), __fmul_rn(b, y));
}

// Generic: fp32 or bf16 buffers, any alignment.
extern "C" __global__ void axpby_k(void* y, int dty, const void* x, int dtx, i64 n, float a, float b) {
    GRID_LOOP(i, n) {
        float yi = b == 0.0f ? 0.0f : ld(y, dty, i);
        st(y, dty, i, axpby_one(ld(x, dtx, i), yi, a, b));
    }
}

// Vectorized: both fp32 and 16-byte aligned; n4 = n/4, the host runs the
// tail with axpby_k.
extern "C" __global__ void axpby_vec4_k(float4* y, const float4* x, i64 n4, float a, float b) {
    GRID_LOOP(i, n4) {
        float4 xi = x[i];
        float4 yi = b == 0.0f ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : y[i];
        yi.x = axpby_one(xi.x, yi.x, a, b);
        yi.y = axpby_one(xi.y, yi.y, a, b);
        yi.z = axpby_one(xi.z, yi.z, a, b);
        yi.w = axpby_one(xi.w, yi.w, a, b);
        y[i] = yi;
    }
}

// Muon's momentum and Nesterov mix in one pass (were three axpby calls), with
// c = (1 - mu) * grad_scale:  m = c*g + mu*m;  u = mu*m + c*g. Each term is
// rounded as axpby_one rounds it, so m and u are bit-identical to the three
// calls. partial[blockIdx.x] = the block's fp64 sum of u^2 (the Frobenius
// norm Newton-Schulz normalizes by), summed on the host like sum_squares.
extern "C" __global__ void muon_momentum_k(float* m, float* u, const void* g, int dtg, i64 n, float c, float mu, double* partial) {
    double acc = 0.0;
    GRID_LOOP(i, n) {
        float gi = ld(g, dtg, i);
        float cg = axpby_one(gi, 0.0f, c, 0.0f);
        float mi = axpby_one(gi, m[i], c, mu);
        float ui = axpby_one(mi, cg, mu, 1.0f);
        m[i] = mi;
        u[i] = ui;
        acc += (double)ui * ui;
    }
    block_sum_to(partial, acc);
}
