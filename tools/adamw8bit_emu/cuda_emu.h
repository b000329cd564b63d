// Host emulation of the CUDA features the adamw8bit kernels use: one
// std::thread per CUDA thread, barriers for __syncthreads and shuffles.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <barrier>
#include <thread>
#include <vector>
#include <functional>
#include <algorithm>
typedef long long i64;
#define DT_F32 0
#define DT_BF16 1
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)
using std::min;
using std::max;
#define __shared__ static thread_local_shared
struct dim3e { unsigned x, y, z; };
extern thread_local dim3e threadIdx, blockIdx;
extern dim3e blockDim, gridDim;
struct __nv_bfloat16 { uint16_t b; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline __nv_bfloat16 __float2bfloat16_rn(float f) { uint32_t u; memcpy(&u, &f, 4); if ((u & 0x7fffffff) > 0x7f800000) return {uint16_t((u >> 16) | 0x40)}; u += 0x7fff + ((u >> 16) & 1); return {uint16_t(u >> 16)}; }
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = uint32_t(b.b) << 16; float f; memcpy(&f, &u, 4); return f; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
struct float4 { float x, y, z, w; };
struct uchar4 { unsigned char x, y, z, w; };
struct uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
struct float2 { float x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uchar4 make_uchar4(unsigned char a, unsigned char b, unsigned char c, unsigned char d) { return {a, b, c, d}; }
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __log10f(float a) { return log10f(a); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float ld(const void* p, int dt, i64 i) { if (dt == DT_BF16) return __bfloat162float(((const __nv_bfloat16*)p)[i]); return ((const float*)p)[i]; }
// Barriers: one per block (all threads), one per warp (32).
extern std::barrier<>* block_bar;
extern std::vector<std::barrier<>*> warp_bars;
extern std::vector<float> shfl;  // one slot per thread
inline void __syncthreads() { block_bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    int t = threadIdx.x, w = t >> 5;
    shfl[t] = v;
    warp_bars[w]->arrive_and_wait();
    float r = shfl[(t & ~31) | ((t & 31) ^ o)];
    warp_bars[w]->arrive_and_wait();
    return r;
}
inline float warp_max(float v) { for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o)); return v; }
