#!/usr/bin/env python3
"""Generate quantserve's conformance fixtures under tests/fixtures/models/.

What it makes (all committed; CI does NOT run this script and has no
Python ML stack -- the C++ tests read only the committed files):

  tests/fixtures/models/tokenizer.json, vocab.json, merges.txt
      A tiny byte-level BPE tokenizer (GPT-2 style: ByteLevel pre-tokenizer
      with the GPT-2 regex, ByteLevel decoder, ~1000 tokens including the 256
      byte tokens, "<|endoftext|>" = id 0), trained deterministically on the
      plain-text licences in /usr/share/common-licenses/.

  tests/fixtures/models/<name>/  for name in
      gpt2, gpt_neox, gpt_neox_seq, llama, llama_untied
      config.json, model.safetensors (fp32), generation_config.json,
      tokenizer.json (+ vocab.json, merges.txt), tokenizer_config.json,
      reference.json -- transformers' fp32 reference outputs (full logits of
      4 sequences, 3 greedy continuations, a perplexity). Schema: see
      write_reference() below.

Tiny random-initialised models with a fixed seed; weights are scaled up
from the default init (see WEIGHT_SCALE) so that greedy decoding does not
hinge on near-ties between logits.

Usage:  python3 tools/make_fixtures.py [--tokenizer-only]
Re-running regenerates everything bit-identically on the same machine and
library versions (fixed seeds, deterministic algorithms, single thread).
Needs: torch, transformers, tokenizers, safetensors, numpy.
"""

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

# Determinism before importing torch / tokenizers.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "models"
LICENSES = Path("/usr/share/common-licenses")
# Real files only (GPL, LGPL, GFDL are symlinks to versioned files).
CORPUS_FILES = [
    "Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.2", "GFDL-1.3",
    "GPL-1", "GPL-2", "GPL-3", "LGPL-2", "LGPL-2.1", "LGPL-3",
    "MPL-1.1", "MPL-2.0",
]
VOCAB_SIZE = 1000
EOS = "<|endoftext|>"
SEED = 1234


# --------------------------------------------------------------------------
# 1. tokenizer
# --------------------------------------------------------------------------
def corpus_texts():
    texts = []
    for name in CORPUS_FILES:
        p = LICENSES / name
        texts.append(p.read_text(encoding="utf-8"))
    return texts


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())  # no unk: byte-level covers every input
    # add_prefix_space=False, use_regex=True == GPT-2's pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS],  # first => id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer, length=len(CORPUS_FILES))
    assert tok.token_to_id(EOS) == 0, tok.token_to_id(EOS)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()

    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"), pretty=True)
    # vocab.json + merges.txt in the GPT-2 layout.
    tok.model.save(str(OUT))
    # Round-trip sanity: byte-level BPE must be lossless.
    for s in ["The quick brown fox jumped over the lazy dog.",
              "héllo wörld — ünïcode ✓ 日本語 🙂", "  two  spaces\n\ttab"]:
        ids = tok.encode(s).ids
        assert tok.decode(ids) == s, (s, tok.decode(ids))
    print(f"tokenizer: vocab {tok.get_vocab_size()}, "
          f"sha256 {hashlib.sha256((OUT / 'tokenizer.json').read_bytes()).hexdigest()[:16]}")
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-only", action="store_true")
    args = ap.parse_args()
    make_tokenizer()
    if args.tokenizer_only:
        return
    make_models()


if __name__ == "__main__":
    main()
