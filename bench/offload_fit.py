"""Shapes and host-memory fit for the PyTorch offload competitors
(bench/fsdp2_offload.py, bench/deepspeed_offload.py).

Both keep, per parameter, an fp32 master copy, an fp32 gradient and AdamW's
two fp32 moments in host memory: 16 bytes a parameter (llama3-8b: 128 GB,
more than the one-GPU machine's 128 GiB hold with the OS and the process).
`--layers auto` picks the deepest shape, stepping down in blocks of
LAYER_STEP from the preset's depth, whose estimate fits MemAvailable; the
caller (bench/offload_speed.sh) steps down again if the process dies anyway.
"""
import os

PRESETS = {
    # name: (vocab, d_model, layers, heads, kv_heads, d_ff, rope_theta, tied)
    "llama-1b": (50257, 2048, 24, 32, 32, 5461, 10000.0, False),
    "llama3-8b": (128256, 4096, 32, 32, 8, 14336, 500000.0, False),
}
HOST_BYTES_PER_PARAM = 16  # fp32 master + fp32 grad + AdamW m, v
HOST_OVERHEAD = 10 << 30   # CUDA context, torch and Python, pinned staging, page cache we must leave
LAYER_STEP = 4


def n_params(preset, layers):
    v, c, _, heads, kv, ff, _, tied = PRESETS[preset]
    head_dim = c // heads
    block = 2 * c * c + 2 * c * kv * head_dim + 3 * c * ff + 2 * c
    return v * c * (1 if tied else 2) + layers * block + c


def host_need(preset, layers):
    return HOST_BYTES_PER_PARAM * n_params(preset, layers) + HOST_OVERHEAD


def mem_available():
    """MemAvailable of /proc/meminfo in bytes (None when unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def pick_layers(preset, requested):
    """`requested` layers, or for "auto" the deepest fitting shape. Returns
    (layers, note) where note says why a depth was chosen."""
    full = PRESETS[preset][2]
    if requested != "auto":
        return int(requested), "asked for"
    avail = mem_available()
    if avail is None:
        return full, "MemAvailable unknown: the preset's depth"
    for layers in range(full, 0, -LAYER_STEP):
        if host_need(preset, layers) <= avail:
            return layers, (f"deepest fitting: needs ~{host_need(preset, layers) / 2**30:.1f} GiB of host memory, "
                            f"{avail / 2**30:.1f} GiB available")
    raise SystemExit(f"{preset}: not even {LAYER_STEP} layers fit {avail / 2**30:.1f} GiB of host memory")


def torch_dist_env(port):
    """The environment of a one-process torch.distributed job."""
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0", "NCCL_NVLS_ENABLE": "0"}.items():
        os.environ.setdefault(k, v)
