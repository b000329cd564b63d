// Host harness for tools/adamw8bit_emu/run.sh: the previous and the current
// 8-bit AdamW kernels (included as old_body.cu / new_body.cu) on the same
// state, compared bit for bit.
#include "cuda_emu.h"
#include <cstdio>
#include <random>
#undef __shared__
#define __shared__ static
thread_local dim3e threadIdx, blockIdx;
dim3e blockDim, gridDim;
std::barrier<>* block_bar;
std::vector<std::barrier<>*> warp_bars;
std::vector<float> shfl;
namespace old_k {
#include "old_body.cu"
}
namespace new_k {
#include "new_body.cu"
}

template <class F> void launch(unsigned grid, unsigned block, F body) {
    gridDim = {grid, 1, 1}; blockDim = {block, 1, 1};
    shfl.assign(block, 0.0f);
    for (unsigned b = 0; b < grid; b++) {
        std::barrier<> bb(block); block_bar = &bb;
        std::vector<std::barrier<>*> wb; for (unsigned w = 0; w < block / 32; w++) wb.push_back(new std::barrier<>(32));
        warp_bars = wb;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; t++) ts.emplace_back([=] { threadIdx = {t, 0, 0}; blockIdx = {b, 0, 0}; body(); });
        for (auto& t : ts) t.join();
        for (auto* p : wb) delete p;
    }
}

std::vector<float> make_maps() {
    std::vector<float> out(1024, INFINITY);
    for (int sgn = 1; sgn >= 0; sgn--) {
        std::vector<double> codes;
        for (int i = 0; i < 7; i++) {
            int n = sgn ? (1 << i) : (1 << (i + 1));
            double scale = pow(10.0, i - 6), step = 0.9 / n;
            for (int k = 0; k < n; k++) { double mid = 0.1 + (k + 0.5) * step; codes.push_back(scale * mid); if (sgn) codes.push_back(-scale * mid); }
        }
        codes.push_back(0.0); codes.push_back(1.0);
        std::sort(codes.begin(), codes.end());
        float* m = &out[sgn ? 0 : 256];
        for (int k = 0; k < 256; k++) m[k] = (float)codes[k];
        float* t = &out[sgn ? 512 : 768];
        for (int k = 0; k < 255; k++) t[k] = 0.5f * (m[k] + m[k + 1]);
    }
    return out;
}

int main(int argc, char** argv) {
    auto maps = make_maps();
    std::mt19937_64 rng(42);
    std::normal_distribution<float> nd(0, 1);
    int fails = 0;
    for (long n : {1L, 100L, 255L, 256L, 257L, 1357L, 4096L, 10243L, 40 * 256L + 77}) {
      for (int aligned : {0, 1}) for (int bf16 : {0, 1}) {
        long nb = (n + 255) / 256;
        std::vector<float> p(n), ma(nb), va(nb); std::vector<unsigned char> mc(n), vc(n);
        for (auto& x : p) x = nd(rng);
        for (auto& x : mc) x = rng(); for (auto& x : vc) x = rng();
        for (long b = 0; b < nb; b++) { ma[b] = fabsf(nd(rng)) * 0.1f; va[b] = fabsf(nd(rng)) * 0.1f; }
        if (n > 300) { ma[1] = 0.0f; va[1] = 0.0f; }  // a zeroed block (fresh state)
        auto p2 = p; auto ma2 = ma, va2 = va; auto mc2 = mc, vc2 = vc;
        std::vector<__nv_bfloat16> sh(n), sh2(n);
        for (int step = 1; step <= 4; step++) {
            std::vector<float> g(n); for (long i = 0; i < n; i++) g[i] = (i % 7 == 0) ? 0.0f : nd(rng);
            if (n > 5) g[5] = NAN * 0 + (step == 3 ? INFINITY : g[5]);
            std::vector<__nv_bfloat16> gb(n); for (long i = 0; i < n; i++) gb[i] = __float2bfloat16_rn(g[i]);
            const void* gp = bf16 ? (const void*)gb.data() : (const void*)g.data();
            float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f;
            float bc1 = 1.0f - powf(b1, step), bc2 = 1.0f - powf(b2, step);
            old_k::AdamArgs a{lr, b1, b2, 1e-8f, 0.1f, 0.8f, lr / bc1, sqrtf(bc2)};
            new_k::AdamArgs a2{lr, b1, b2, 1e-8f, 0.1f, 0.8f, lr / bc1, sqrtf(bc2)};
            float decay = 1.0f - lr * 0.1f;
            unsigned g_old = (unsigned)std::min(nb, 3L);
            launch(g_old, 256, [&] { old_k::adamw8bit_k(p.data(), gp, bf16, mc.data(), vc.data(), ma.data(), va.data(), sh.data(), maps.data(), n, a, decay); });
            unsigned g_new = (unsigned)std::min((nb + 7) / 8, 2L);
            launch(g_new, 256, [&] { new_k::adamw8bit_k(p2.data(), gp, bf16, mc2.data(), vc2.data(), ma2.data(), va2.data(), sh2.data(), maps.data(), n, a2, decay, aligned); });
        }
        bool same = memcmp(p.data(), p2.data(), 4 * n) == 0 && memcmp(ma.data(), ma2.data(), 4 * nb) == 0 && memcmp(va.data(), va2.data(), 4 * nb) == 0
                    && mc == mc2 && vc == vc2 && memcmp(sh.data(), sh2.data(), 2 * n) == 0;
        long dm = 0, dv = 0; for (long i = 0; i < n; i++) { dm += mc[i] != mc2[i]; dv += vc[i] != vc2[i]; }
        printf("n=%ld aligned=%d bf16=%d: %s (m codes differ %ld, v codes %ld)\n", n, aligned, bf16, same ? "bit-identical" : "DIFFERENT", dm, dv);
        fails += !same;
      }
    }
    printf("%d failures\n", fails);
    return fails != 0;
}
