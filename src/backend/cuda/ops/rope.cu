// Rotary embedding in place on the q and k heads of qkv (HF Llama
// rotate_half: element i pairs with i + D/2). The D/2 inverse frequencies
// come from the host (`Rope::inv_freq`, the table the CPU backend uses too:
// theta^(-2i/D), with Llama 3 scaling where configured); the angle is the
// fp32 product pos*inv_freq, as Hugging Face computes it.
// `dir` = +1 rotates (forward), -1 applies the inverse rotation (backward).
//
// One thread owns V consecutive pair indices i of one token row and walks
// ROPE_HEADS heads with them: the cos/sin of its V angles are computed once
// and reused for every head (the old one-thread-per-pair kernel recomputed
// them per head, with three 64-bit divisions per pair, and ran at ~0.6 TB/s
// on llama-1b). With bf16 and V = 4 each half-row access is one 8-byte load.

#define ROPE_HEADS 8

template <int V, bool BF16X4>
__device__ __forceinline__ void rope_load(const void* p, int dt, i64 at, float (&x)[V]) {
    if (BF16X4) {
        uint2 u = *reinterpret_cast<const uint2*>((const __nv_bfloat16*)p + at);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
        float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
        x[0] = a.x; x[1] = a.y; x[2] = b.x; x[3] = b.y;
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) x[k] = ld(p, dt, at + k);
    }
}

template <int V, bool BF16X4>
__device__ __forceinline__ void rope_store(void* p, int dt, i64 at, const float (&x)[V]) {
    if (BF16X4) {
        *reinterpret_cast<uint2*>((__nv_bfloat16*)p + at) = pack_bf16x4(make_float4(x[0], x[1], x[2], x[3]));
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) st(p, dt, at + k, x[k]);
    }
}

// Threads: rows * chunks * groups, groups = half / V (fastest), chunks =
// ceil(heads_qk / ROPE_HEADS).
template <int V, bool BF16X4>
__device__ __forceinline__ void rope_body(void* qkv, int dt, i64 rows, int seq, int heads_qk, int width, int d,
                                          const float* __restrict__ inv_freq, float dir) {
    const int half = d / 2, groups = half / V, chunks = (heads_qk + ROPE_HEADS - 1) / ROPE_HEADS;
    GRID_LOOP(idx, rows * chunks * groups) {
        const int g = (int)(idx % groups);
        const i64 rest = idx / groups;
        const int chunk = (int)(rest % chunks);
        const i64 row = rest / chunks;
        const float pos = (float)(row % seq);
        float c[V], s[V];
#pragma unroll
        for (int k = 0; k < V; k++) {
            const int i = g * V + k;
            sincosf(__fmul_rn(pos, inv_freq[i]), &s[k], &c[k]);
            s[k] *= dir;
        }
        // Every head's loads first, then the rotations and stores: in one
        // loop each head's loads would wait for the previous head's stores
        // (same buffer, so the compiler keeps their order), one DRAM round
        // trip per head.
        const int h0 = chunk * ROPE_HEADS, nh = min(heads_qk - h0, ROPE_HEADS);
        float x1[ROPE_HEADS][V], x2[ROPE_HEADS][V];
#pragma unroll
        for (int j = 0; j < ROPE_HEADS; j++) {
            if (j >= nh) break;
            const i64 at = row * width + (i64)(h0 + j) * d + g * V;
            rope_load<V, BF16X4>(qkv, dt, at, x1[j]);
            rope_load<V, BF16X4>(qkv, dt, at + half, x2[j]);
        }
#pragma unroll
        for (int j = 0; j < ROPE_HEADS; j++) {
            if (j >= nh) break;
            const i64 at = row * width + (i64)(h0 + j) * d + g * V;
            float y1[V], y2[V];
#pragma unroll
            for (int k = 0; k < V; k++) {
                y1[k] = x1[j][k] * c[k] - x2[j][k] * s[k];
                y2[k] = x2[j][k] * c[k] + x1[j][k] * s[k];
            }
            rope_store<V, BF16X4>(qkv, dt, at, y1);
            rope_store<V, BF16X4>(qkv, dt, at + half, y2);
        }
    }
}

// Any dtype, any even d.
extern "C" __global__ void rope_k(void* qkv, int dt, i64 rows, int seq, int heads_qk, int width, int d,
                                  const float* inv_freq, float dir) {
    rope_body<1, false>(qkv, dt, rows, seq, heads_qk, width, d, inv_freq, dir);
}

// bf16, d a multiple of 8, qkv 8-byte aligned (the caller checks).
extern "C" __global__ void rope_bf16x4_k(void* qkv, int dt, i64 rows, int seq, int heads_qk, int width, int d,
                                         const float* inv_freq, float dir) {
    rope_body<4, true>(qkv, dt, rows, seq, heads_qk, width, d, inv_freq, dir);
}
