"""The table of bench/gpu_grad_bf16.sh's llama3-8b runs: one `bench train`
JSON line per setting in OUT/<name>.json, printed as a Markdown table
(measured peak against `ferrotron info`'s estimate, speed, losses).

Usage: python3 bench/grad_bf16_table.py OUT
"""
import json
import pathlib
import sys

SETTINGS = ["lean_fp32", "lean_bf16", "keepattn_bf16", "recompute_bf16"]


def last_json(path):
    if not path.exists():
        return None
    lines = [l for l in path.read_text().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main(out):
    print("| llama3-8b 1x4096, 8-bit AdamW, stage 3, logits 1024 | peak GB (measured) | info estimate GB | peak - estimate | tok/s | median step ms | losses |")
    print("|---|---|---|---|---|---|---|")
    for name in SETTINGS:
        r = last_json(out / f"{name}.json")
        if r is None:
            print(f"| {name} | failed (see {name}.err) | | | | | |")
            continue
        peak, est = r["peak_mem_bytes"] / 1e9, r["estimate_bytes"] / 1e9
        losses = ", ".join(f"{x:.4f}" for x in r["losses"])
        print(f"| {name} | {peak:.2f} | {est:.2f} | {peak - est:+.2f} | {r['tokens_per_s']:,.0f} | {r['median_step_ms']:.1f} | {losses} |")
    print("\nPyTorch + bitsandbytes AdamW8bit, 1x4096 with per-block checkpointing (bench/results/gpu_2026-12-02c.md): 80.8 GB, 6,063 tok/s.")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
