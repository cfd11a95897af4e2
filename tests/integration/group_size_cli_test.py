#!/usr/bin/env python3
"""--group-size through the local commands on a tiny fixture: perplexity --compare-to fp32, bench over two
precisions and inspect load int8-weight-only (and int8 where the CPU has AVX-512 VNNI, W8A8 groups' kernel) in
groups of 32 and the others per row (and say so in their JSON, inspect with the model's shape); a single load it
cannot apply to (generate --precision int8-mixed, --group-size 64) is refused with a sentence and a non-zero exit,
by flag and by QUANTSERVE_GROUP_SIZE alike."""
import argparse
import json
import tempfile

from cli_run import run  # noqa: E402 (tests/integration, this script's directory)

FIXTURE = "tests/fixtures/models/llama_untied"
TEXT = "/usr/share/common-licenses/GPL-3"
# What int8 (W8A8) gets from auto or 32: groups where the CPU has the VNNI kernel of W8A8 by groups.
VNNI = any("avx512_vnni" in line.split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
INT8_GROUPS = 32 if VNNI else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    b = ap.parse_args().binary
    model = ["--model", FIXTURE, "--device", "cpu", "--threads", "1"]

    r = json.loads(run(b, ["perplexity"] + model + ["--precision", "int8-weight-only", "--group-size", "32",
                                                    "--compare-to", "fp32", "--file", TEXT, "--max-tokens", "64",
                                                    "--context", "32", "--stride", "32", "--json"]).stdout)
    assert r["group_size"] == 32 and r["compare_to"]["precision"] == "fp32", r
    assert r["compare_to"]["top1_agreement"] > 0.5, r

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run(b, ["bench"] + model + ["--precisions", "fp32,int8-weight-only", "--batch", "1", "--prompt-tokens",
                                    "8", "--new-tokens", "4", "--output", out.name],
            env={"QUANTSERVE_GROUP_SIZE": "32"})
        groups = {e["precision"]: e["group_size"] for e in json.load(open(out.name))["results"]}
    assert groups == {"fp32": 0, "int8-weight-only": 32}, groups

    insp = json.loads(run(b, ["inspect"] + model + ["--precisions", "int8-mixed,int8-weight-only", "--group-size",
                                                    "32", "--json"]).stdout)
    groups = {p["precision"]: p["group_size"] for p in insp["precisions"]}
    assert groups == {"int8-mixed": 0, "int8-weight-only": 32}, groups
    # The shape a KV budget is sized from, as the fixture's config.json gives it.
    config = json.load(open(FIXTURE + "/config.json"))
    assert insp["shape"] == {"vocab_size": config["vocab_size"], "hidden_size": config["hidden_size"],
                             "num_layers": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
                             "num_kv_heads": config["num_key_value_heads"], "head_dim": config["head_dim"],
                             "intermediate_size": config["intermediate_size"],
                             "max_positions": config["max_position_embeddings"], "sliding_window": 0}, insp["shape"]

    # The default (auto): groups of 32 for int8-weight-only on the CPU (the fixture's in-features are whole groups)
    # and for int8 / int8-smooth where the CPU has VNNI, per row for the rest, by flag, by QUANTSERVE_GROUP_SIZE and
    # by omission alike.
    for extra, env in [([], None), (["--group-size", "auto"], None), ([], {"QUANTSERVE_GROUP_SIZE": "auto"})]:
        insp = json.loads(run(b, ["inspect"] + model + ["--precisions", "int8,int8-mixed,int8-weight-only", "--json"]
                              + extra, env=env).stdout)
        groups = {p["precision"]: p["group_size"] for p in insp["precisions"]}
        assert groups == {"int8": INT8_GROUPS, "int8-mixed": 0, "int8-weight-only": 32}, (extra, env, groups)
    run(b, ["generate"] + model + ["--precision", "int8-mixed", "-n", "2", "hello"])   # auto asks nothing of it

    for args, env, words in [
        (["--precision", "int8-weight-only", "--group-size", "bogus"], None, "--group-size"),
        (["--precision", "int8-mixed", "--group-size", "32"], None, "not to int8-mixed"),
        (["--precision", "int8-weight-only"], {"QUANTSERVE_GROUP_SIZE": "64"}, "--group-size 64 is not built"),
    ]:
        p = run(b, ["generate"] + model + args + ["-n", "2", "hello"], env=env, ok=False)
        assert words in p.stderr, p.stderr
    print("ok")


if __name__ == "__main__":
    main()
