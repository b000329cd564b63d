#!/usr/bin/env python3
"""Llama 3's tokenizer as a Hugging Face `tokenizer.json`, made from Meta's
own tiktoken file (`tokenizer.model`: one "base64-bytes rank" line per token,
128,000 of them) — the file that `ferrotron prepare --tokenizer` and
`generate` read. Only the standard library is needed.

Why a conversion: Meta's published `tokenizer.json` (9 MB) is too large for
the public-source snapshots this project can reach; the 2.2 MB tiktoken file
is in Meta's `meta-llama/llama-models` repository (see bench/assets_llama3.md
for its commit and sha256). The Hugging Face file is itself a conversion of
it, built the same way:
  - vocabulary: every byte string, spelled with GPT-2's byte→character map,
    keeps its tiktoken rank as its id; the 256 special tokens follow at
    128000-128255 (Llama 3.1 / 3.2 names: <|begin_of_text|> = 128000,
    <|end_of_text|> = 128001, <|eot_id|> = 128009, ...);
  - merges: for each multi-byte token, every split into two tokens of the
    vocabulary, ordered by the rank of the token they make (then by the
    ranks of the two parts), so that applying the lowest merge first is
    tiktoken's "merge the lowest-ranked adjacent pair" rule;
  - pre-tokenizer: Meta's regex (Isolated split), then byte-level mapping;
    `ignore_merges`: a whole pre-token found in the vocabulary is one token,
    as in tiktoken; post-processor: <|begin_of_text|> before each text.

usage:
  llama3_tokenizer.py convert TOKENIZER_MODEL OUT_DIR   # writes tokenizer.json + tokenizer_config.json
  llama3_tokenizer.py check TOKENIZER_MODEL FERROTRON CORPUS.jsonl [MAX_DOCS]
      # ferrotron's ids for each document (prepare --tokenizer OUT_DIR) equal
      # tiktoken's (the library Meta's reference code uses), id for id
"""
import base64
import json
import os
import subprocess
import sys
import tempfile

# Meta's pre-tokenizer pattern (models/llama3/tokenizer.py, `pat_str`).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
N_BASE = 128000
N_SPECIAL = 256
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def special_names():
    """Names of ids 128000..128255 as the Llama 3.1 / 3.2 text models'
    tokenizer files have them (Llama 3.0 named 128004, 128005, 128008 and
    128010 reserved tokens; the ids that matter, BOS 128000, EOS 128001,
    header 128006/128007 and eot 128009, are the same)."""
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + N_SPECIAL - len(named))]
    return named + reserved


def load_ranks(path):
    """bytes -> rank from a tiktoken file; the ranks must be 0..n-1."""
    ranks = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                sys.exit(f"{path}:{line_no}: expected 'base64 rank', got {line[:60]!r}")
            ranks[base64.b64decode(parts[0])] = int(parts[1])
    if sorted(ranks.values()) != list(range(len(ranks))):
        sys.exit(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def byte_chars():
    """GPT-2's reversible byte -> printable character map: bytes that are
    printable Latin-1 stand for themselves, the other 68 take the characters
    from U+0100 on, in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merges_of(ranks):
    """(left, right) byte pairs, lowest merged rank first."""
    out = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        out.extend((rank, l, r) for l, r in splits)
    out.sort(key=lambda m: m[0])  # stable: the order within a token stays
    return [(l, r) for _, l, r in out]


def tokenizer_json(ranks):
    chars = byte_chars()
    spell = lambda b: "".join(chars[x] for x in b)
    vocab = {spell(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    merges = [f"{spell(l)} {spell(r)}" for l, r in merges_of(ranks)]
    added = [{"id": N_BASE + i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, name in enumerate(special_names())]
    bos_piece = {"SpecialToken": {"id": BOS, "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {BOS: {"id": BOS, "ids": [N_BASE], "tokens": [BOS]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def tokenizer_config():
    # A base model's: documents end with <|end_of_text|> (an instruct
    # model's file names <|eot_id|> as eos_token instead).
    return {"bos_token": BOS, "eos_token": EOS, "model_max_length": 131072,
            "model_input_names": ["input_ids", "attention_mask"], "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": True}


def convert(model_path, out_dir):
    ranks = load_ranks(model_path)
    if len(ranks) != N_BASE:
        sys.exit(f"{model_path}: {len(ranks)} tokens, Llama 3 has {N_BASE}")
    tj = tokenizer_json(ranks)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, indent=2)
    print(f"{out_dir}/tokenizer.json: {len(tj['model']['vocab'])} tokens + {len(tj['added_tokens'])} special, "
          f"{len(tj['model']['merges'])} merges", file=sys.stderr)


def read_shard(path):
    """Token ids of one ferrotron shard (32-byte header, little-endian ids)."""
    import struct
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] != b"FTRNTOK\0":
            sys.exit(f"{path}: not a ferrotron token shard")
        width, count = struct.unpack("<I", head[12:16])[0], struct.unpack("<Q", head[24:32])[0]
        data = f.read()
    fmt = {2: "H", 4: "I"}[width]
    return list(struct.unpack(f"<{count}{fmt}", data[:count * width]))


def check(model_path, ferrotron, corpus, max_docs):
    """Every document of CORPUS (.jsonl, "text") through `ferrotron prepare`
    with the converted tokenizer, against tiktoken with Meta's pattern:
    BOS + ids + EOS per document, id for id. Exits 1 on the first difference."""
    import tiktoken
    ranks = load_ranks(model_path)
    specials = {name: N_BASE + i for i, name in enumerate(special_names())}
    enc = tiktoken.Encoding(name="llama3", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][:max_docs]
    with tempfile.TemporaryDirectory() as tmp:
        convert(model_path, os.path.join(tmp, "tok"))
        docs = os.path.join(tmp, "docs.jsonl")  # read in line order: shard order = document order
        with open(docs, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        out = os.path.join(tmp, "data")
        subprocess.run([ferrotron, "prepare", "--input", docs, "--out", out, "--tokenizer", os.path.join(tmp, "tok"),
                        "--val-fraction", "0"], check=True, stdout=subprocess.DEVNULL)
        shards = sorted(p for p in os.listdir(out) if p.endswith(".bin"))
        got = [t for p in shards for t in read_shard(os.path.join(out, p))]
    at = 0
    for d, t in enumerate(texts):
        want = [N_BASE] + enc.encode(t, disallowed_special=()) + [N_BASE + 1]
        if got[at:at + len(want)] != want:
            i = next((k for k, (g, w) in enumerate(zip(got[at:], want)) if g != w), len(want))
            sys.exit(f"document {d}, token {i}: ferrotron {got[at + max(0, i - 4):at + i + 4]} "
                     f"tiktoken {want[max(0, i - 4):i + 4]}; text near it: {t[:200]!r}")
        at += len(want)
    if at != len(got):
        sys.exit(f"ferrotron made {len(got)} tokens, tiktoken {at}")
    print(f"{len(texts)} documents, {at} tokens: ferrotron's ids equal tiktoken's", file=sys.stderr)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "convert":
        convert(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (5, 6) and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) == 6 else 10**9)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
