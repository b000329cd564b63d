"""Torch SDPA (flash and cuDNN backends, bf16, causal) forward / backward TFLOP/s at the
shapes of the ferrotron attention micro-benchmark (tests/cuda_ops.rs,
`attention_bench`): B=8, H=12, D=64 for T = 1024 .. 16384, and D=128, H=6.

FLOP convention (causal, as FlashAttention reports): forward 2*B*H*T^2*D,
backward 2.5x forward. Backward time = median(fwd+bwd) - median(fwd), both
timed with CUDA events, median of `reps` runs after a warm-up. Each
backend is timed; the best per column is what ferrotron is compared with
(cuDNN is often faster than flash on Hopper).
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| backend | D | B | H | T | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d, h, ts in [(64, 12, [1024, 2048, 4096, 8192, 16384]), (128, 6, [1024, 4096, 16384])]:
        for t in ts:
            b = 8
            q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            do = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
            reps = 15 if t <= 4096 else 5
            fl = 2.0 * b * h * t * t * d
            for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
                try:
                    with sdpa_kernel(backend):
                        def fwd():
                            with torch.no_grad():
                                F.scaled_dot_product_attention(q, k, v, is_causal=True)

                        def fwdbwd():
                            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                            torch.autograd.grad(o, (q, k, v), do)

                        tf = median_ms(fwd, reps)
                        tfb = median_ms(fwdbwd, reps)
                except RuntimeError as e:
                    print(f"| {name} | {d} | {b} | {h} | {t} | unavailable: {str(e).splitlines()[0][:80]} |||||", flush=True)
                    continue
                tb = tfb - tf
                print(f"| {name} | {d} | {b} | {h} | {t} | {tf:.3f} | {fl / tf / 1e9:.1f} | {tb:.3f} | {2.5 * fl / tb / 1e9:.1f} |", flush=True)
            del q, k, v, do
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
