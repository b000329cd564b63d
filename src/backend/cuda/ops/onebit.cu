// 1-bit compression for 1-bit Adam's compressed all-reduce (CPU twin:
// backend/cpu/onebit.rs). Sign bits are packed eight to a byte, least
// significant bit first (bit j of byte i <-> x[8i + j], 1 = x >= 0); one
// scale per block of `block` values (a multiple of 8; the last block may be
// shorter): scale = sqrt(sum x^2 / n) with an fp64 sum.

// One thread block per compression block (grid-stride over blocks): each
// thread packs whole bytes and adds their squares; the block reduces them.
extern "C" __global__ void sign_compress_k(unsigned char* bits, float* scales, const float* x, i64 n, i64 block) {
    __shared__ double tmp[32];
    const i64 nblocks = (n + block - 1) / block;
    for (i64 k = blockIdx.x; k < nblocks; k += gridDim.x) {
        const i64 start = k * block;
        const i64 len = min(block, n - start);
        const i64 nbytes = (len + 7) / 8;
        double acc = 0.0;
        for (i64 byte = threadIdx.x; byte < nbytes; byte += blockDim.x) {
            unsigned char packed = 0;
            for (int j = 0; j < 8; j++) {
                const i64 i = 8 * byte + j;
                if (i < len) {
                    const float v = x[start + i];
                    acc += (double)v * (double)v;
                    if (v >= 0.0f) packed |= (unsigned char)(1u << j);
                }
            }
            bits[start / 8 + byte] = packed;
        }
        // Block reduction of acc (blockDim.x a multiple of 32).
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        acc = warp_sum_d(acc);
        if (lane == 0) tmp[warp] = acc;
        __syncthreads();
        if (warp == 0) {
            double r = lane < (int)(blockDim.x >> 5) ? tmp[lane] : 0.0;
            r = warp_sum_d(r);
            if (lane == 0) scales[k] = (float)sqrt(r / (double)len);
        }
        __syncthreads();
    }
}

// out[i] = alpha * d_i + beta * out[i], d_i = +-scales[i / block]; with
// beta == 0 out is not read. _rn intrinsics: no FMA contraction, the same
// bits as the CPU reference (and as axpby).
extern "C" __global__ void sign_decompress_k(float* out, const unsigned char* bits, const float* scales, i64 n, i64 block,
                                             float alpha, float beta) {
    GRID_LOOP(i, n) {
        const float s = scales[i / block];
        const float d = ((bits[i >> 3] >> (i & 7)) & 1) ? s : -s;
        out[i] = beta == 0.0f ? __fmul_rn(alpha, d) : __fadd_rn(__fmul_rn(alpha, d), __fmul_rn(beta, out[i]));
    }
}
