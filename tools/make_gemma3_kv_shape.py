#!/usr/bin/env python3
"""Writes a random Gemma 3 model with Gemma 3 270M's KV-cache shape (18 layers, 1 KV head of 256, a global layer
in every 6, window 512, 32,768 positions) but a tiny hidden size and the test fixture's 1,000-token vocabulary,
for measuring KV bytes per sequence without the real weights (tests/unit/engine/kv_layer_groups_test.cpp,
QUANTSERVE_GEMMA3_KV_SHAPE). Only numpy: safetensors is a JSON header and raw little-endian arrays.

    python3 tools/make_gemma3_kv_shape.py /tmp/gemma3-270m-kv-shape
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

LAYERS, KV_HEADS, HEADS, HEAD_DIM = 18, 1, 4, 256
HIDDEN, INTERMEDIATE, VOCAB = 64, 128, 1000
WINDOW, PATTERN, POSITIONS = 512, 6, 32768


def main(out_dir):
    fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models", "gemma3")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(fixture, "config.json")) as f:
        config = json.load(f)
    layer_types = ["full_attention" if (l + 1) % PATTERN == 0 else "sliding_attention" for l in range(LAYERS)]
    config.update({
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "query_pre_attn_scalar": HEAD_DIM, "sliding_window": WINDOW, "_sliding_window_pattern": PATTERN,
        "layer_types": layer_types, "max_position_embeddings": POSITIONS, "vocab_size": VOCAB,
    })
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(fixture, name), os.path.join(out_dir, name))

    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            tensors[p + norm + ".weight"] = (HIDDEN,)
        tensors[p + "self_attn.q_proj.weight"] = (HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = (HIDDEN, HEADS * HEAD_DIM)
        tensors[p + "self_attn.q_norm.weight"] = (HEAD_DIM,)
        tensors[p + "self_attn.k_norm.weight"] = (HEAD_DIM,)
        tensors[p + "mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape in sorted(tensors.items()):
        data = (rng.standard_normal(shape) * 0.05).astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)
    print(f"wrote {out_dir}: {LAYERS} layers ({layer_types.count('full_attention')} global), window {WINDOW}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma3-270m-kv-shape")
