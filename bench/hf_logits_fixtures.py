#!/usr/bin/env python3
"""Writes Hugging Face checkpoints made by transformers itself (random init,
small GPT-2 and GQA Llama shapes) plus the logits PyTorch computes for fixed
tokens, in fp32 and under bf16 autocast. tests/cuda_model.rs imports the
checkpoints into ferrotron and compares its logits.

    python3 bench/hf_logits_fixtures.py OUT_DIR
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def fixture(model, out, vocab, batch=2, seq=96):
    torch.manual_seed(0)
    model = model.cuda().eval()
    model.save_pretrained(out, safe_serialization=True)
    tokens = torch.randint(0, vocab, (batch, seq), device="cuda")
    with torch.no_grad():
        fp32 = model(input_ids=tokens).logits.float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(input_ids=tokens).logits.float()
    save_file({
        "tokens": tokens.float().flatten().cpu().contiguous(),
        "shape": torch.tensor([batch, seq], dtype=torch.float32),
        "logits_fp32": fp32.flatten().cpu().contiguous(),
        "logits_bf16": bf16.flatten().cpu().contiguous(),
    }, os.path.join(out, "logits.safetensors"))


def main():
    root = sys.argv[1]
    torch.manual_seed(1)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_positions=128, n_embd=256, n_layer=3, n_head=4,
                                      resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    fixture(gpt2, os.path.join(root, "gpt2"), 1000)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=3,
                                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
                                         rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False))
    fixture(llama, os.path.join(root, "llama"), 1000)
    print("fixtures written to", root)


if __name__ == "__main__":
    main()
