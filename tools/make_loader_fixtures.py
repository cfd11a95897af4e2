#!/usr/bin/env python3
"""Writes the loader's test fixtures under tests/fixtures/loader/ (tiny safetensors, sharded and GGUF models).

Needs numpy, safetensors and gguf (pip). Every value is chosen to be exact in its stored type (small integers
times powers of two), so the C++ tests can compare the loader's output with the references recorded here
bit for bit. Run from anywhere: python3 tools/make_loader_fixtures.py
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file
import gguf

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "loader")


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# A tiny byte-level BPE: the 256 byte tokens, two merges, and one special token.
TOKENS = [bytes_to_unicode()[b] for b in range(256)] + ["Ġt", "he", "<|endoftext|>"]
MERGES = ["Ġ t", "h e"]
EOS = len(TOKENS) - 1
VOCAB = len(TOKENS)   # 259
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def pattern(shape, scale, period=15, offset=7):
    """Deterministic small integers in [-offset, period - offset) times `scale`: exact in F16/BF16."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    k = (i * 7 + 3 + (i // 32) * 5) % period - offset   # the (i // 32) term makes rows differ
    return (k.astype(np.float32) * np.float32(scale)).reshape(shape)


def write_tokenizer(d):
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(TOKENS)}, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")


def llama_config(hidden, heads, kv_heads, ff, layers=1):
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "intermediate_size": ff, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": True, "hidden_act": "silu", "bos_token_id": EOS, "eos_token_id": EOS}


def make_safetensors(expect):
    """tiny_st/: one model.safetensors with F32, F16, BF16 (and an I64 the loader must refuse by name)."""
    d = os.path.join(OUT, "tiny_st")
    os.makedirs(d, exist_ok=True)
    hidden = 16
    embed = pattern((VOCAB, hidden), 0.0625)
    q = pattern((hidden, hidden), 0.125)
    norm = pattern((hidden,), 0.5) + np.float32(1.0)
    bf16 = (embed.view(np.uint32) >> 16).astype(np.uint16)   # exact: the values have few mantissa bits
    assert np.array_equal((bf16.astype(np.uint32) << 16).view(np.float32), embed)
    tensors = {
        "model.embed_tokens.weight": bf16,
        "model.layers.0.self_attn.q_proj.weight": q.astype(np.float16),
        "model.norm.weight": norm,
        "model.rotary_emb.position_ids": np.arange(4, dtype=np.int64),
    }
    # safetensors.numpy has no bfloat16: write the raw bits as U16, then relabel the header's dtype.
    path = os.path.join(d, "model.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["model.embed_tokens.weight"]["dtype"] = "BF16"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n:])

    config = llama_config(hidden, 2, 1, 32)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHAT_TEMPLATE, "eos_token": "<|endoftext|>"}, f)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [EOS, 0]}, f)
    write_tokenizer(d)
    expect["tiny_st"] = {
        "tensors": {
            "model.embed_tokens.weight": {"dtype": "BF16", "shape": [VOCAB, hidden], "first": embed.ravel()[:8].tolist(),
                                          "sum": float(embed.astype(np.float64).sum())},
            "model.layers.0.self_attn.q_proj.weight": {"dtype": "F16", "shape": [hidden, hidden],
                                                       "first": q.ravel()[:8].tolist(), "sum": float(q.astype(np.float64).sum())},
            "model.norm.weight": {"dtype": "F32", "shape": [hidden], "first": norm[:8].tolist(),
                                  "sum": float(norm.astype(np.float64).sum())},
        },
        "unsupported": ["model.rotary_emb.position_ids"],
    }


def make_sharded(expect):
    """sharded/: the same kind of model split over two shards with a model.safetensors.index.json."""
    d = os.path.join(OUT, "sharded")
    os.makedirs(d, exist_ok=True)
    hidden = 16
    shard1 = {"model.embed_tokens.weight": pattern((VOCAB, hidden), 0.25).astype(np.float16)}
    shard2 = {"model.norm.weight": pattern((hidden,), 0.5), "model.layers.0.input_layernorm.weight": pattern((hidden,), 0.25)}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for name, tensors in zip(names, [shard1, shard2]):
        save_file(tensors, os.path.join(d, name), metadata={"format": "pt"})
        weight_map.update({t: name for t in tensors})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(llama_config(hidden, 2, 2, 32), f, indent=1)
    write_tokenizer(d)
    expect["sharded"] = {"tensors": {n: {"shape": list(t.shape), "first": t.astype(np.float32).ravel()[:4].tolist()}
                                     for s in (shard1, shard2) for n, t in s.items()},
                         "shards": names}


def llama_cpp_permute(w, n_head):
    """What llama.cpp's converter does to HF Q/K rows: (head, 2, HD/2) -> (head, HD/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def q4_0_exact(shape, scale):
    """Values Q4_0 stores exactly: each 32-block holds (k - 8) * scale with k in 0..15 and a -8 * scale in it."""
    w = pattern(shape, scale, period=16, offset=8)
    w.reshape(-1, 32)[:, 0] = -8 * scale
    return w


def q4_1_exact(shape, scale, low):
    """Values Q4_1 stores exactly: low + k * scale, k in 0..15, each block spanning the full 0..15 range."""
    w = pattern(shape, scale, period=16, offset=0) + np.float32(low)
    blocks = w.reshape(-1, 32)
    blocks[:, 0] = low
    blocks[:, 1] = low + 15 * scale
    return w


def q8_0_exact(shape, scale):
    """Values Q8_0 stores exactly: k * scale with |k| <= 127 and a 127 * scale in each block."""
    w = pattern(shape, scale, period=255, offset=127)
    w.reshape(-1, 32)[:, 0] = 127 * scale
    return w


def add_tokenizer_metadata(writer, pre):
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(TOKENS)
    writer.add_token_types([3 if i == EOS else 1 for i in range(VOCAB)])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(EOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def add_quantized(writer, name, w, qtype):
    data = gguf.quants.quantize(w, qtype)
    back = gguf.quants.dequantize(data, qtype).reshape(w.shape)
    assert np.array_equal(back, w), f"{name}: {qtype.name} does not store these values exactly"
    writer.add_tensor(name, data, raw_dtype=qtype)


def make_llama_gguf(expect):
    """tiny_llama.gguf: one Llama layer in every tensor type quantserve reads; Q and K as llama.cpp permutes them."""
    hidden, heads, kv_heads, ff = 32, 4, 2, 64
    head_dim = hidden // heads
    Q = gguf.GGMLQuantizationType
    hf = {   # Hugging Face names and layouts: what the loader must give back
        "model.embed_tokens.weight": (q8_0_exact((VOCAB, hidden), 0.0078125), Q.Q8_0),
        "model.layers.0.self_attn.q_proj.weight": (q4_0_exact((heads * head_dim, hidden), 0.25), Q.Q4_0),
        "model.layers.0.self_attn.k_proj.weight": (q4_1_exact((kv_heads * head_dim, hidden), 0.125, -1.0), Q.Q4_1),
        "model.layers.0.self_attn.v_proj.weight": (pattern((kv_heads * head_dim, hidden), 0.5), Q.BF16),
        "model.layers.0.self_attn.o_proj.weight": (pattern((hidden, hidden), 0.25), Q.F16),
        "model.layers.0.mlp.gate_proj.weight": (pattern((ff, hidden), 0.125), Q.F16),
        "model.layers.0.mlp.up_proj.weight": (pattern((ff, hidden), 0.0625), Q.F32),
        "model.layers.0.mlp.down_proj.weight": (pattern((hidden, ff), 0.03125), Q.F32),
        "model.layers.0.input_layernorm.weight": (pattern((hidden,), 0.5) + 1, Q.F32),
        "model.layers.0.post_attention_layernorm.weight": (pattern((hidden,), 0.25) + 1, Q.F32),
        "model.norm.weight": (pattern((hidden,), 0.125) + 1, Q.F32),
    }
    gguf_names = {
        "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "model.layers.0.self_attn.q_proj.weight": "blk.0.attn_q.weight",
        "model.layers.0.self_attn.k_proj.weight": "blk.0.attn_k.weight",
        "model.layers.0.self_attn.v_proj.weight": "blk.0.attn_v.weight",
        "model.layers.0.self_attn.o_proj.weight": "blk.0.attn_output.weight",
        "model.layers.0.mlp.gate_proj.weight": "blk.0.ffn_gate.weight",
        "model.layers.0.mlp.up_proj.weight": "blk.0.ffn_up.weight",
        "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
        "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight",
        "model.layers.0.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
    }
    path = os.path.join(OUT, "tiny_llama.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_array("general.tags", [["nested", "array"], ["of", "strings"]])   # nested arrays parse
    writer.add_float64("general.test_f64", 0.5)
    writer.add_int8("general.test_i8", -3)
    add_tokenizer_metadata(writer, "smollm")
    stored = {}
    for name, (w, qtype) in hf.items():
        data = w
        if name.endswith("q_proj.weight"):
            data = llama_cpp_permute(w, heads)
        elif name.endswith("k_proj.weight"):
            data = llama_cpp_permute(w, kv_heads)
        stored[name] = data
        if qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.BF16):
            add_quantized(writer, gguf_names[name], data, qtype)
        elif qtype == Q.F16:
            writer.add_tensor(gguf_names[name], data.astype(np.float16))
        else:
            writer.add_tensor(gguf_names[name], data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # The round trip the C++ test checks: un-permuting what llama.cpp stored gives the HF rows back.
    def unpermute(w, n_head):
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    q_ref = unpermute(stored["model.layers.0.self_attn.q_proj.weight"], heads)
    k_ref = unpermute(stored["model.layers.0.self_attn.k_proj.weight"], kv_heads)
    assert np.array_equal(q_ref, hf["model.layers.0.self_attn.q_proj.weight"][0])
    assert np.array_equal(k_ref, hf["model.layers.0.self_attn.k_proj.weight"][0])
    assert not np.array_equal(q_ref, stored["model.layers.0.self_attn.q_proj.weight"])
    stored_dtype = {Q.Q8_0: "Q8_0", Q.Q4_0: "Q4_0", Q.Q4_1: "Q4_1", Q.BF16: "BF16", Q.F16: "F16", Q.F32: "F32"}
    expect["tiny_llama.gguf"] = {
        "config": {"hidden": hidden, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "ff": ff,
                   "vocab": VOCAB, "layers": 1, "rope_theta": 100000.0, "eos": EOS},
        "tensors": {n: {"shape": list(w.shape),
                        # Q and K come out un-permuted: in GGUF blocks their rows move as whole blocks and keep
                        # the stored type, other types come out F32; the rest keep their stored type.
                        "dtype": "F32" if (("q_proj" in n or "k_proj" in n) and qt not in (Q.Q8_0, Q.Q4_0, Q.Q4_1))
                                 else stored_dtype[qt],
                        "values": w.ravel().tolist() if ("q_proj" in n or "k_proj" in n or "v_proj" in n) else None,
                        "first": w.ravel()[:16].tolist(), "sum": float(w.astype(np.float64).sum())}
                    for n, (w, qt) in hf.items()},
        # GGUF order (as llama.cpp stores them) for the Q rows, to show the test what un-permuting undoes.
        "q_stored_first_rows": stored["model.layers.0.self_attn.q_proj.weight"][:4, :4].tolist(),
    }


def make_gpt2_gguf(expect):
    """tiny_gpt2.gguf: GPT-2 names and the Conv1D transpose llama.cpp applies (the loader undoes it)."""
    hidden, heads, ctx = 32, 2, 16
    path = os.path.join(OUT, "tiny_gpt2.gguf")
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_block_count(1)
    writer.add_context_length(ctx)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(4 * hidden)
    writer.add_head_count(heads)
    writer.add_layer_norm_eps(1e-5)
    add_tokenizer_metadata(writer, "gpt-2")
    c_attn = pattern((hidden, 3 * hidden), 0.125)   # HF Conv1D layout [in, out]
    writer.add_tensor("token_embd.weight", pattern((VOCAB, hidden), 0.25).astype(np.float16))
    writer.add_tensor("position_embd.weight", pattern((ctx, hidden), 0.5))
    writer.add_tensor("blk.0.attn_qkv.weight", np.ascontiguousarray(c_attn.T))   # as llama.cpp writes it: [out, in]
    writer.add_tensor("blk.0.attn_qkv.bias", pattern((3 * hidden,), 0.25))
    writer.add_tensor("output_norm.weight", pattern((hidden,), 0.5))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expect["tiny_gpt2.gguf"] = {"c_attn": {"name": "transformer.h.0.attn.c_attn.weight", "shape": [hidden, 3 * hidden],
                                           "values": c_attn.ravel().tolist()}}


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    expect = {}
    make_safetensors(expect)
    make_sharded(expect)
    make_llama_gguf(expect)
    make_gpt2_gguf(expect)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expect, f, separators=(",", ":"))
    for dp, _, fns in os.walk(OUT):
        for fn in fns:
            os.chmod(os.path.join(dp, fn), 0o644)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(OUT) for fn in fns)
    print(f"wrote {OUT} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
