#!/usr/bin/env python3
"""`quantserve perplexity --method llama.cpp --save-ids` on a tiny fixture: llama.cpp's chunks (whole chunks of
--context, the second half of each scored, the remainder dropped) in the JSON, the saved ids scored again through
--ids-file to the same figure, BOS put in each chunk's first place when the tokenizer adds one (a copy of the
fixture with add_bos_token), the default method unchanged and named, --kv-cache-dtype fp16 scoring with an fp16
cache (named in the JSON, close to the fp32 cache's figure but not equal, the --compare-to reference kept in fp32),
and bad values refused with a sentence."""
import argparse
import json
import os
import shutil
import tempfile

from cli_run import run  # noqa: E402 (tests/integration, this script's directory)

FIXTURE = "tests/fixtures/models/llama_untied"
TEXT = "/usr/share/common-licenses/GPL-3"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    b = ap.parse_args().binary
    common = ["perplexity", "--device", "cpu", "--threads", "1", "--context", "32", "--json"]

    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.json")
        # 70 tokens in chunks of 32: two chunks, 6 tokens dropped, 32 - 1 - 16 = 15 scored in each.
        r = json.loads(run(b, common + ["--model", FIXTURE, "--method", "llama.cpp", "--file", TEXT, "--max-tokens",
                                        "70", "--save-ids", ids_path]).stdout)
        assert (r["method"], r["windows"], r["predicted_tokens"], r["dropped_tokens"]) == ("llama.cpp", 2, 30, 6), r
        assert r["chunk_first_token"] is None, r   # the fixture's tokenizer adds no BOS
        ids = json.load(open(ids_path))
        assert len(ids) == 70 and all(isinstance(i, int) for i in ids), ids
        again = json.loads(run(b, common + ["--model", FIXTURE, "--method", "llama.cpp", "--ids-file",
                                            ids_path]).stdout)
        assert again["perplexity"] == r["perplexity"], (again, r)

        # The same model with a tokenizer that adds BOS: BOS first in the text and in each chunk's first place.
        bos_model = os.path.join(tmp, "llama_untied_bos")
        shutil.copytree(FIXTURE, bos_model)
        tc_path = os.path.join(bos_model, "tokenizer_config.json")
        tc = json.load(open(tc_path))
        tc["add_bos_token"] = True
        json.dump(tc, open(tc_path, "w"))
        with_bos = json.loads(run(b, common + ["--model", bos_model, "--method", "llama.cpp", "--ids-file",
                                               ids_path]).stdout)
        assert with_bos["chunk_first_token"] == 0, with_bos   # <|endoftext|>, the fixture's bos_token
        assert with_bos["predicted_tokens"] == 30 and with_bos["perplexity"] != r["perplexity"], (with_bos, r)

        hf = json.loads(run(b, common + ["--model", FIXTURE, "--ids-file", ids_path]).stdout)
        assert (hf["method"], hf["stride"], hf["predicted_tokens"]) == ("sliding-window", 16, 69), hf
        assert hf["kv_cache_dtype"] == "fp32", hf

        # fp16 K/V round every cached key and value: a small change, never none, on 69 scored positions.
        kv16 = json.loads(run(b, common + ["--model", FIXTURE, "--ids-file", ids_path, "--kv-cache-dtype", "fp16",
                                           "--compare-to", "fp32"]).stdout)
        assert kv16["kv_cache_dtype"] == "fp16", kv16
        assert kv16["perplexity"] != hf["perplexity"], (kv16, hf)
        assert abs(kv16["perplexity"] / hf["perplexity"] - 1) < 1e-2, (kv16, hf)
        assert kv16["compare_to"]["perplexity"] == hf["perplexity"], (kv16, hf)   # the reference's cache is fp32
        assert kv16["compare_to"]["top1_agreement"] > 0.9, kv16
        # The change comes with its paired error: the same Δ the two perplexities give, an error above 0 and
        # below the perplexity's own (the pairing removes the text's spread).
        cmp = kv16["compare_to"]
        assert abs(cmp["delta_perplexity_percent"] - 100 * (kv16["perplexity"] / hf["perplexity"] - 1)) < 1e-6, kv16
        assert 0 < cmp["delta_perplexity_percent_stderr"] < 100 * kv16["perplexity_stderr"] / kv16["perplexity"], kv16
        assert hf["perplexity_stderr"] > 0 and hf["nll_stderr"] > 0, hf
        # bf16 (8 bits) and int8 (a scale per token and head) K/V: named in the result, a change, and a small one.
        for name in ("bf16", "int8"):
            kv = json.loads(run(b, common + ["--model", FIXTURE, "--ids-file", ids_path, "--kv-cache-dtype", name,
                                             "--compare-to", "fp32"]).stdout)
            assert kv["kv_cache_dtype"] == name, kv
            assert kv["perplexity"] != hf["perplexity"], (name, kv, hf)
            assert abs(kv["perplexity"] / hf["perplexity"] - 1) < 2e-2, (name, kv, hf)
            assert kv["compare_to"]["top1_agreement"] > 0.9, (name, kv)

        # --save-nll: one NLL per scored position, whose mean is the run's mean NLL.
        nll_path = os.path.join(tmp, "nll.json")
        again = json.loads(run(b, common + ["--model", FIXTURE, "--ids-file", ids_path, "--save-nll",
                                            nll_path]).stdout)
        nll = json.load(open(nll_path))
        assert len(nll) == again["predicted_tokens"] == 69, (len(nll), again)
        assert abs(sum(nll) / len(nll) - again["mean_nll"]) < 1e-9, (sum(nll) / len(nll), again)

    for args, words in [
        (["--method", "llama.cpp", "--stride", "8"], "--stride does not apply to --method llama.cpp"),
        (["--method", "llamacpp"], "unknown perplexity method 'llamacpp'"),
        (["--context", "1"], "--context must be at least 2"),
        (["--method", "llama.cpp", "--max-tokens", "20"], "no token to score"),
        (["--kv-cache-dtype", "q4"], "--kv-cache-dtype 'q4' is not one of: fp32, fp16, bf16, int8"),
        (["--save-nll", "/nonexistent-dir/nll.json"], "cannot write '/nonexistent-dir/nll.json'"),
    ]:
        p = run(b, ["perplexity", "--model", FIXTURE, "--device", "cpu", "--file", TEXT] + args, ok=False)
        assert words in p.stderr, p.stderr
    print("ok")


if __name__ == "__main__":
    main()
