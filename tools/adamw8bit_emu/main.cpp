// Host harness for tools/adamw8bit_emu/run.sh: the previous 8-bit AdamW
// kernel (old_body.cu, one tensor per launch) and the current one
// (new_body.cu: one tensor, or a segment table; with and without the
// prefetching loop) on the same state, compared bit for bit.
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

// quant_bins::starts (optim/quant_bins.rs), for one map's thresholds.
std::vector<unsigned char> bin_starts(const float* thr) {
    const int bins = 3073; const unsigned lo_top = 104u << 7;
    std::vector<unsigned char> out(2 * bins);
    auto f = [](unsigned b) { float x; memcpy(&x, &b, 4); return x; };
    for (int neg = 0; neg < 2; neg++) for (int i = 0; i < bins; i++) {
        unsigned lo = i == 0 ? 0 : (lo_top + i) << 16, hi = i == bins - 1 ? 0x7f800000u : ((lo_top + i + 1) << 16) - 1;
        float a = neg ? -f(hi) : f(lo), b = neg ? -f(lo) : f(hi);
        int start = 0, inside = 0;
        for (int k = 0; k < 255; k++) { start += thr[k] < a; inside += a <= thr[k] && thr[k] < b; }
        if (inside > 1) { printf("bin %d holds %d thresholds\n", i, inside); exit(2); }
        out[neg * bins + i] = (unsigned char)start;
    }
    return out;
}

// The kernel's table: maps and thresholds, then both maps' bin starts.
std::vector<uint4> device_table(const std::vector<float>& maps) {
    std::vector<unsigned char> bytes(4 * 1024);
    memcpy(bytes.data(), maps.data(), 4 * 1024);
    for (int m : {512, 768}) { auto s = bin_starts(&maps[m]); bytes.insert(bytes.end(), s.begin(), s.end()); }
    std::vector<uint4> out((bytes.size() + 15) / 16);
    memcpy(out.data(), bytes.data(), bytes.size());
    return out;
}

std::mt19937_64 rng(42);
std::normal_distribution<float> nd(0, 1);

// One tensor layout: tensors at param offsets with gaps, codes packed.
struct Case {
    std::vector<long> lens, poff, coff, boff;
    long np = 0, nc = 0, nb = 0;
};

Case layout(const std::vector<long>& lens, bool aligned) {
    Case c; c.lens = lens;
    for (size_t k = 0; k < lens.size(); k++) {
        c.poff.push_back(c.np); c.coff.push_back(c.nc); c.boff.push_back(c.nb);
        c.np += lens[k] + (aligned ? (4 - lens[k] % 4) % 4 + 4 : k + 1);
        c.nc += lens[k] + (aligned ? (4 - lens[k] % 4) % 4 : 1);
        c.nb += (lens[k] + 255) / 256;
    }
    return c;
}

int run_case(const Case& c, bool aligned, int bf16, bool segmented, bool prefetch, const std::vector<float>& maps,
             const std::vector<uint4>& table) {
    long np = c.np, nc = c.nc, nb = c.nb;
    std::vector<float> p(np), ma(nb), va(nb); std::vector<unsigned char> mc(nc), vc(nc);
    for (auto& x : p) x = nd(rng);
    for (auto& x : mc) x = rng(); for (auto& x : vc) x = rng();
    for (long b = 0; b < nb; b++) { ma[b] = fabsf(nd(rng)) * 0.1f; va[b] = fabsf(nd(rng)) * 0.1f; }
    if (nb > 1) { ma[1] = 0.0f; va[1] = 0.0f; }  // a zeroed block (fresh state)
    auto p2 = p; auto ma2 = ma, va2 = va; auto mc2 = mc, vc2 = vc;
    std::vector<__nv_bfloat16> sh(np), sh2(np);
    for (int step = 1; step <= 3; step++) {
        std::vector<float> g(np); for (long i = 0; i < np; i++) g[i] = (i % 7 == 0) ? 0.0f : nd(rng);
        if (np > 5 && step == 3) g[5] = INFINITY;
        std::vector<__nv_bfloat16> gb(np); for (long i = 0; i < np; i++) gb[i] = __float2bfloat16_rn(g[i]);
        float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f;
        float bc1 = 1.0f - powf(b1, step), bc2 = 1.0f - powf(b2, step);
        std::vector<new_k::Adam8Seg> segs;
        for (size_t k = 0; k < c.lens.size(); k++) {
            float wd = k % 2 ? 0.1f : 0.0f;
            old_k::AdamArgs a{lr, b1, b2, 1e-8f, wd, 0.8f, lr / bc1, sqrtf(bc2)};
            float decay = 1.0f - lr * wd;
            long n = c.lens[k], o = c.poff[k], co = c.coff[k], bo = c.boff[k];
            const void* gp = bf16 ? (const void*)(gb.data() + o) : (const void*)(g.data() + o);
            unsigned grid = (unsigned)std::min((n + 255) / 256, 3L);
            launch(grid, 256, [&] { old_k::adamw8bit_k(p.data() + o, gp, bf16, mc.data() + co, vc.data() + co, ma.data() + bo, va.data() + bo, sh.data() + o, maps.data(), n, a, decay, aligned); });
            segs.push_back({o, co, bo, n, wd, aligned ? 1 : 0});
        }
        new_k::AdamArgs a2{lr, b1, b2, 1e-8f, 0.0f, 0.8f, lr / bc1, sqrtf(bc2)};
        auto run = [&](const new_k::Adam8Seg* table_ptr, new_k::Adam8Seg one, long blocks, long po, long co, long bo) {
            unsigned grid = (unsigned)std::min((blocks + 7) / 8, 2L);
            launch(grid, 256, [&] {
                auto f = prefetch ? new_k::adamw8bit_prefetch_k : new_k::adamw8bit_plain_k;
                const void* gpo = bf16 ? (const void*)(gb.data() + po) : (const void*)(g.data() + po);
                f(p2.data() + po, gpo, bf16, mc2.data() + co, vc2.data() + co, ma2.data() + bo, va2.data() + bo, sh2.data() + po, table.data(), table_ptr, one, blocks, a2);
            });
        };
        if (segmented) {
            segs.push_back({0, 0, nb, 0, 0.0f, 0});  // sentinel
            run(segs.data(), new_k::Adam8Seg{}, nb, 0, 0, 0);
        } else {
            for (size_t k = 0; k < c.lens.size(); k++) {
                new_k::Adam8Seg one = segs[k]; one.param_off = one.code_off = one.block_off = 0;
                run(nullptr, one, (c.lens[k] + 255) / 256, c.poff[k], c.coff[k], c.boff[k]);
            }
        }
    }
    bool same = memcmp(p.data(), p2.data(), 4 * np) == 0 && memcmp(ma.data(), ma2.data(), 4 * nb) == 0 && memcmp(va.data(), va2.data(), 4 * nb) == 0
                && mc == mc2 && vc == vc2 && memcmp(sh.data(), sh2.data(), 2 * np) == 0;
    long dm = 0, dv = 0; for (long i = 0; i < nc; i++) { dm += mc[i] != mc2[i]; dv += vc[i] != vc2[i]; }
    printf("tensors=%zu first n=%ld aligned=%d bf16=%d segmented=%d prefetch=%d: %s (m codes differ %ld, v codes %ld)\n", c.lens.size(), c.lens[0],
           aligned, bf16, segmented, prefetch, same ? "bit-identical" : "DIFFERENT", dm, dv);
    return !same;
}

int main() {
    auto maps = make_maps();
    auto table = device_table(maps);
    int fails = 0;
    std::vector<std::vector<long>> tensor_sets = {{1}, {255}, {256}, {257}, {1357}, {4096}, {40 * 256 + 77},
                                                  {4096, 64, 1, 255, 256, 257, 1000, 5 * 256 + 77, 12, 6 * 256 + 3}};
    for (auto& lens : tensor_sets)
        for (int aligned : {0, 1}) for (int bf16 : {0, 1}) for (int segmented : {0, 1}) for (int prefetch : {0, 1})
            fails += run_case(layout(lens, aligned), aligned, bf16, segmented, prefetch, maps, table);
    printf("%d failures\n", fails);
    return fails != 0;
}
