#!/usr/bin/env python3
"""Makes the small Hugging Face fixtures under tests/fixtures/hf/ with
transformers and tokenizers themselves, so CI compares ferrotron against
transformers without needing torch (tests/hf_fixtures.rs reads them).

    python3 tools/make_hf_fixtures.py [OUT_DIR]     # default tests/fixtures/hf

Needs torch (the CPU build is enough), transformers, tokenizers, safetensors.
Everything is seeded; rerunning with the same library versions rewrites the
same files (versions are recorded in manifest.json).

What it writes (hidden 64, 2 layers, small vocabularies; a few hundred KB):
  tokenizer/      a byte-level BPE tokenizer.json trained here on a built-in
                  text, with Llama 3's pre-tokenizer regex and BOS template,
                  plus tokenizer_config.json (bos/eos) and reference
                  encodings (encodings.json)
  gpt2/           GPT2LMHeadModel, random, fp16 weights, one file
  llama-gqa/      LlamaForCausalLM, random, 4 heads / 2 kv heads (head
                  size 16), untied, bf16, one file
  llama32/        Llama 3.2 style: GQA 2/1 (head size 32), tied embeddings,
                  llama3 rope scaling, bf16, sharded (index + 2 files),
                  vocabulary = the tokenizer's (300 ids), trained 300 steps
                  on the built-in text, with the tokenizer's files
Each model folder also has reference.safetensors: the tokens, transformers'
fp32 logits for them (computed from the stored, rounded weights) and, for
the Llama models, the rotary inverse frequencies; llama32 also greedy.json:
transformers' greedy generation from a prompt.
"""
import json
import os
import sys

import torch
import transformers
import tokenizers
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

# Llama 3's pre-tokenizer split pattern (needs look-ahead: fancy-regex in Rust).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
VOCAB = 300  # 256 byte tokens + 42 merges + BOS + EOS

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Once upon a time there was a little model that learned to count: 1, 2, 3, 42, 1234.",
    "Tokenizers split text into pieces; the pieces become ids, and the ids become vectors.",
    "She said: \"it's the rope, isn't it?\" and he'd agreed. We'll see; they're sure.",
    "Ein kleiner Text auf Deutsch, und un peu de français, y un poco de español.",
    "Numbers like 3.14159 and 2026 and symbols like <tag> & {brace} [bracket] matter too.",
]
ENCODE_SAMPLES = [
    "The cat sat on the mat.",
    "it's 2026: numbers 12345, café, 日本語, emoji 🎉",
    "  leading spaces\nand\r\nnew lines\t\ttabs",
    "literal <|end_of_text|> stays text",
    "",
]


def make_tokenizer(out):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens([BOS, EOS])
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]),
    ])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "model_max_length": 256,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    # What transformers' tokenizer(text) gives (BOS first), special-token
    # text encoded as plain text (split_special_tokens=True), and decode.
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"),
                                                bos_token=BOS, eos_token=EOS, split_special_tokens=True)
    encodings = []
    for text in ENCODE_SAMPLES:
        ids = fast(text)["input_ids"]
        encodings.append({"text": text, "ids": ids, "decoded": fast.decode(ids)})
    with open(os.path.join(out, "encodings.json"), "w") as f:
        json.dump({"bos_id": bos, "eos_id": tok.token_to_id(EOS), "vocab_size": VOCAB, "encodings": encodings},
                  f, indent=1, ensure_ascii=False)
    return fast


def rounded(model, dtype):
    """The model with its weights rounded to `dtype` and back to fp32: what
    is stored is exactly what the fp32 reference logits are computed from."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    return model.eval()


def train_briefly(model, fast, steps=300, device="cpu"):
    """A few hundred AdamW steps on the corpus, so the model predicts it
    with clear margins: greedy generation then tests something readable
    ("The cat sat" -> " on the mat. ...") and no near-tie decides a token.
    Returns the model on the CPU."""
    ids = []
    for text in CORPUS:
        ids += fast(text)["input_ids"] + [fast.convert_tokens_to_ids(EOS)]
    data = torch.tensor(ids, device=device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        start = torch.randint(0, len(data) - 65, (8,))  # on the CPU generator: same draws on any device
        batch = torch.stack([data[s:s + 65] for s in start.tolist()])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {steps} steps on {device}, last loss {loss.item():.3f}")
    return model.cpu().eval()


def save_model(model, out, dtype, tokens, max_shard_size=None):
    """Saves `model` in `dtype`, loads it back with from_pretrained in fp32
    (fresh fp32 rotary tables, as a user would) and records that model's
    logits for `tokens`. Returns the reloaded model."""
    model.to(dtype).save_pretrained(out, safe_serialization=True,
                                    **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float()
    ref = {"tokens": tokens.to(torch.int64).contiguous(), "logits": logits.contiguous()}
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is not None:
        ref["inv_freq"] = rotary.inv_freq.float().contiguous()  # the rotary frequencies transformers uses
    save_file(ref, os.path.join(out, "reference.safetensors"))
    return model


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf")
    root = os.path.normpath(root)
    torch.manual_seed(0)
    fast = make_tokenizer(os.path.join(root, "tokenizer"))
    batch, seq = 2, 16

    torch.manual_seed(1)
    gpt2 = rounded(GPT2LMHeadModel(GPT2Config(
        vocab_size=260, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)), torch.float16)
    save_model(gpt2, os.path.join(root, "gpt2"), torch.float16, torch.randint(0, 260, (batch, seq)))

    torch.manual_seed(2)
    gqa = rounded(LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)), torch.bfloat16)
    save_model(gqa, os.path.join(root, "llama-gqa"), torch.bfloat16, torch.randint(0, 256, (batch, seq)))

    # Llama 3.2 style. original_max_position_embeddings is small so that, over
    # the fixture's 24-48 positions, pairs of all three bands (kept, smoothly
    # interpolated, divided by the factor) turn by noticeably different angles.
    torch.manual_seed(3)
    bos, eos = fast.convert_tokens_to_ids(BOS), fast.convert_tokens_to_ids(EOS)
    l32cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos)
    l32 = rounded(train_briefly(LlamaForCausalLM(l32cfg), fast), torch.bfloat16)
    out = os.path.join(root, "llama32")
    tokens = torch.randint(0, VOCAB, (1, 3 * seq))
    l32 = save_model(l32, out, torch.bfloat16, tokens, max_shard_size="100KB")
    fast.save_pretrained(out)  # the checkpoint's own tokenizer, as on the Hub

    prompt = "The cat sat"
    ids = fast(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        # No stop token: the full 16 greedy tokens, compared id for id.
        gen = l32.generate(ids, do_sample=False, max_new_tokens=16, min_new_tokens=0, eos_token_id=None,
                           pad_token_id=eos, attention_mask=torch.ones_like(ids))
        logits = l32(input_ids=gen).logits[0]
    new = gen[0, ids.shape[1]:].tolist()
    # Margins between the top two logits at each greedy step (printed, recorded).
    steps = logits[ids.shape[1] - 1:-1]
    top2 = steps.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    with open(os.path.join(out, "greedy.json"), "w") as f:
        json.dump({"prompt": prompt, "prompt_ids": ids[0].tolist(), "new_ids": new,
                   "min_margin": min(margins), "text": fast.decode(new)}, f, indent=1, ensure_ascii=False)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "tokenizers": tokenizers.__version__, "made_by": "tools/make_hf_fixtures.py"}, f, indent=1)
    print("greedy margins", [round(m, 3) for m in margins])
    print("fixtures written to", root)


if __name__ == "__main__":
    main()
