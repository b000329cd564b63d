// Rotary embedding in place on the q and k heads of qkv (HF Llama
// rotate_half: element i pairs with i + D/2). Angles are computed in fp32
// exactly as Hugging Face does: inv_freq = 1 / theta^(2i/D), angle = pos*inv_freq.
// `dir` = +1 rotates (forward), -1 applies the inverse rotation (backward).

extern "C" __global__ void rope_k(void* qkv, int dt, i64 rows, int seq, int heads_qk, int width, int d,
                                  float theta, float dir) {
    int half = d / 2;
    GRID_LOOP(idx, rows * heads_qk * half) {
        int i = (int)(idx % half);
        i64 rest = idx / half;
        int h = (int)(rest % heads_qk);
        i64 row = rest / heads_qk;
        float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)d);
        float ang = (float)(row % seq) * inv_freq;
        float c = cosf(ang), s = sinf(ang) * dir;
        i64 base = row * width + (i64)h * d;
        float x1 = ld(qkv, dt, base + i), x2 = ld(qkv, dt, base + i + half);
        st(qkv, dt, base + i, x1 * c - x2 * s);
        st(qkv, dt, base + i + half, x2 * c + x1 * s);
    }
}
