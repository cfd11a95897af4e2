#!/usr/bin/env python3
"""Writes tests/fixtures/loader/quant_vectors.gguf: GGUF block test vectors with their reference dequantization.

For each block type the loader reads (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K) the file
holds a tensor "<TYPE>" of random blocks (every quant bit pattern is fair game) whose scales and mins include the
edge cases: zero, negative zero, +-1, the largest half (65504), the smallest subnormal, the largest subnormal
and the smallest normal; and beside it "<TYPE>.expected", the F32 values the `gguf` package's numpy reference
(gguf.quants.dequantize) gives for those bytes. gguf 0.19.0 has no Q8_K; its reference here is ggml's
dequantize_row_q8_K (x = d * q, the float32 d times the int8 q), written out in numpy.
The C++ test (tests/unit/loader/gguf_quants_test.cpp) dequantizes "<TYPE>" and compares bit for bit.

Needs numpy and gguf (pip). Deterministic (seeded). Run from anywhere: python3 tools/make_quant_vectors.py
"""
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "loader", "quant_vectors.gguf")

EDGE_HALVES = [0x0000, 0x8000, 0x3C00, 0xBC00, 0x7BFF, 0xFBFF, 0x0001, 0x03FF, 0x0400]

# Byte offsets of each block's fp16 scale / min fields (ggml-common.h).
HALF_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
BLOCKS = {Q.Q4_0: 8, Q.Q4_1: 8, Q.Q5_0: 8, Q.Q5_1: 8, Q.Q8_0: 8,
          Q.Q2_K: 3, Q.Q3_K: 3, Q.Q4_K: 3, Q.Q5_K: 3, Q.Q6_K: 3, Q.Q8_K: 3}


def random_finite_halves(rng, n):
    """fp16 bit patterns of finite numbers of moderate size (exponent 2^-14 .. 2^0)."""
    sign = rng.integers(0, 2, n) << 15
    exponent = rng.integers(1, 16, n) << 10
    mantissa = rng.integers(0, 1024, n)
    return (sign | exponent | mantissa).astype(np.uint16)


def make_blocks(rng, qtype):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n = BLOCKS[qtype]
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    if qtype == Q.Q8_K:
        # d is a float32 here: the smallest subnormal, a large one (times 127 still finite), random ones.
        d = (rng.standard_normal(n) * 0.01).astype(np.float32)
        d[0], d[1] = np.float32(1e-45), np.float32(-2.5e36)
        raw[:, 0:4] = d.view(np.uint8).reshape(n, 4)
        return raw
    edges = iter(EDGE_HALVES * 4)
    for b in range(n):
        for off in HALF_FIELDS[qtype]:
            # The first blocks take the edge values in turn, the rest random finite scales.
            h = next(edges) if b < 2 else int(random_finite_halves(rng, 1)[0])
            raw[b, off:off + 2] = np.array([h], dtype=np.uint16).view(np.uint8)
    return raw


def reference(raw, qtype):
    if qtype == Q.Q8_K:   # ggml dequantize_row_q8_K: y = x.d * x.qs
        d = raw[:, 0:4].copy().view(np.float32)
        q = raw[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    return gguf.quants.dequantize(raw, qtype).reshape(-1).astype(np.float32)


def main():
    rng = np.random.default_rng(20261202)
    writer = gguf.GGUFWriter(OUT, "quant_vectors")
    for qtype in BLOCKS:
        raw = make_blocks(rng, qtype)
        expected = reference(raw, qtype)
        assert np.all(np.isfinite(expected)), qtype.name
        writer.add_tensor(qtype.name, raw.reshape(1, -1), raw_dtype=qtype)
        writer.add_tensor(qtype.name + ".expected", expected)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
