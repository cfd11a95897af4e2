#!/usr/bin/env python3
"""Reference token ids from Hugging Face `tokenizers` for the C++ tokenizer tests.

Writes, under tests/fixtures/tokenizer/:
  smollm2/tokenizer.json   SmolLM2-135M-Instruct's tokenizer, rebuilt from the GGUF's metadata
  smollm2/cases.json       reference ids for every test string (add_special_tokens=False)
  tiny/cases.json          the same for the tiny GPT-2-regex tokenizer in tests/fixtures/models/
                           (trained by tools/make_fixtures.py; that file is the tokenizer under test)
  llama3/tokenizer.json    the tiny vocabulary with Llama 3's pre-tokenizer (Split on its regex, then
                           ByteLevel without regex) and ignore_merges, as Llama 3's tokenizer.json has them
  llama3/cases.json        reference ids for it
  qwen2/tokenizer.json     Qwen2's pre-tokenizer and normalizer (transformers' Qwen2Converter: NFC, then Split on
                           Qwen's regex, then ByteLevel without regex) over a byte-level BPE of 3,000 tokens trained
                           here on the test strings (with GPT-2's split, so digit runs have merges too)
  qwen2/cases.json         reference ids for it, on the test strings plus QWEN_HARD (NFC-sensitive text, digit
                           runs, whitespace runs); each case whose text NFC changes also holds "normalized"
  gemma3/cases.json        reference ids for Gemma 3's SentencePiece tokenizer as transformers builds it from
                           models/gemma-3-270m-q4_k_m.gguf (scripts/setup.sh --extra-models); the test reads the
                           tokenizer from that GGUF and skips itself when the file is absent

Each cases.json holds: "encode": [{text, ids, ids_no_special?}], "decode": [{ids, text, text_skip_special}].
The strings are generated deterministically (fixed seed), so rerunning gives identical files.

Usage: python3 tools/make_tokenizer_fixtures.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf] [--only NAME ...]
Needs: tokenizers, gguf, numpy (not needed by the tests, which read only the committed JSON).
"""
import argparse
import hashlib
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
TINY = ROOT / "tests" / "fixtures" / "models" / "tokenizer.json"


# ---------------------------------------------------------------------------------------------------------
# SmolLM2's tokenizer from the GGUF.
#
# Pre-tokenizer choice: SmolLM2 (the cosmo2 tokenizer) splits every digit on its own and then applies the
# GPT-2 ByteLevel regex: its tokenizer.json has Sequence[Digits(individual_digits=true),
# ByteLevel(add_prefix_space=false, use_regex=true)], and llama.cpp's "smollm" pre-tokenizer is the same
# ("\p{N}" then the GPT-2 regex). transformers' GGUF converter does not know "smollm" and would fall back to
# plain GPT-2 splitting (numbers as runs of digits), which is not what the model was trained on, so we build
# the tokenizers.Tokenizer ourselves. Control tokens (token_type 3) become special added tokens, as both
# the original tokenizer.json and transformers' converter have them.
# ---------------------------------------------------------------------------------------------------------
def build_smollm2(gguf_path: Path) -> Tokenizer:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def field(name):
        f = reader.fields[name]
        return f

    def strings(name):
        f = field(name)
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(name):
        f = field(name)
        return [int(f.parts[i][0]) for i in f.data]

    def string(name):
        f = field(name)
        return bytes(f.parts[f.data[0]]).decode("utf-8")

    assert string("tokenizer.ggml.model") == "gpt2", string("tokenizer.ggml.model")
    assert string("tokenizer.ggml.pre") == "smollm", string("tokenizer.ggml.pre")
    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in strings("tokenizer.ggml.merges")]
    token_type = ints("tokenizer.ggml.token_type")

    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, token_type) if ty == 3]
    tok.add_special_tokens(control)
    for t in control:
        assert tok.token_to_id(t.content) == vocab[t.content]
    return tok


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def build_llama3_style(tiny_path: Path) -> Tokenizer:
    from tokenizers import Regex

    spec = json.loads(tiny_path.read_text())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=spec["model"]["vocab"], merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t["content"], special=True, normalized=False) for t in spec["added_tokens"]])
    return tok


# Qwen2, Qwen2.5 and Qwen3 share this tokenizer.json (transformers' Qwen2Converter writes the same): letters with
# at most one leading non-letter, digits ONE at a time (Llama 3 takes up to three), NFC before any of it.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def qwen2_pre_tokenizer(split=QWEN2_SPLIT):
    from tokenizers import Regex
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])


def build_qwen2_style(corpus) -> Tokenizer:
    from tokenizers import normalizers, trainers
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    # Trained on GPT-2's split (runs of digits, " word"), so the vocabulary holds multi-digit and other pieces that
    # Qwen's split must NOT produce: a wrong split then shows in the ids instead of being hidden by missing merges.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.pre_tokenizer = qwen2_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    return tok


# NFC-sensitive text (composition, singletons such as the Ohm and Angstrom signs, Hangul jamo, composition
# exclusions, reordering of combining marks), digit runs, whitespace runs and newlines around punctuation.
QWEN_HARD = [
    "A\u030a", "\u212b ngstr\u00f6m", "\u2126 ohm", "e\u0301e\u0300e\u0302", "a\u0323\u0302 vs a\u0302\u0323",
    "\u1100\u1161\u11a8 jamo", "\u0915\u093c \u0958", "\u0065\u0301\u0301", "\u00c5\u0301", "ﬁ ﬂ ﬀ",
    "\u1e9b\u0323", "\u0cc6\u0cc2", "q\u0307\u0323", "\u0041\u0308\u0304", "n\u0303o\u0303 combining",
    "\u0301 leading mark", "x\u0301y\u0301z\u0301", "\u3099\u304b\u3099 kana voicing", "\u304b\u309a",
    "0123456789", "31415926535897932384626433", "1 22 333 4444 55555", "x1y22z333", "v2.10.100", "١٢٣٤٥٦",
    "０１２３ fullwidth", "①②③", "2\u00b3 = 8", "$1,234.56", "1e+100", "--99", "a1b2c3d4e5",
    "It's", "IT'S", "it'S", "I'M", "We'Re", "they'VE", "you'LL", "she'D", "don'T", "'S'T'RE'VE'M'LL'D",
    "\n\n\n", "\r\n\r\n", " \n ", "  \n  \n", "a\n\nb", "end.\n\n\nnext", "x  \t  y", "\t\t\n\t",
    "           twelve spaces", "trailing\n   ", "!!!\n\n", "...\r\n", "    def f():\n        return 1\n",
    "你好世界，这是一个测试。", "日本語の文章、句読点。", "한국어 문장입니다.", "混合English和中文123",
    "😀😀😀", "👩🏽‍💻 coder", "🇨🇳🇯🇵🇰🇷", "emoji😀inside", "1️⃣2️⃣3️⃣", "⭐️", "🫠🫡",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>\u212b", "A<|im_end|>\u030a",
]


# ---------------------------------------------------------------------------------------------------------
# Test strings.
# ---------------------------------------------------------------------------------------------------------
HAND = [
    "", " ", "  ", "   ", "\n", "\n\n", "\t", " \t\n ", "a", "A", "hello", "Hello world", "Hello world!",
    "Hello  world", "Hello   world  ", "hello ", "hello  ", "  leading spaces", "trailing spaces   ",
    "line one\nline two\n", "line one\n\nline three", "tabs\tand\t\tmore tabs", "\tindented\n\t\tdeeper",
    "mixed \t \n whitespace \r\n windows\r\n", "carriage\rreturn", "form\x0cfeed\x0bvertical",
    # contractions
    "it's", "don't", "we're", "they've", "I'm", "we'll", "he'd", "IT'S", "DON'T", "He'S here", "I'M", "WE'LL",
    "'s 't 're 've 'm 'll 'd", "''s", "'", "''", "rock'n'roll", "o'clock", "y'all'd've", "It's John's book.",
    "'tis the season", "can't won't shouldn't", "’s curly apostrophe", "the cat’s toy",
    # digits
    "0", "7", "42", "123", "1234", "12345", "3.14159", "1,000,000", "2024-01-15", "12:30:45",
    "12345678901234567890", "0x1F4A9", "1e-10", "-42", "+1 (555) 123-4567", "v1.2.3", "abc123def456",
    "room 101", "   99 bottles", "version 2.0.1-beta", "١٢٣ Arabic-Indic digits", "Ⅻ roman numeral",
    "½ fraction ¾", "²³ superscripts", "call 911now",
    # unicode
    "café", "naïve résumé", "Ünïcödé", "straße", "Ελληνικά", "Привет, мир!", "שלום עולם", "مرحبا بالعالم",
    "नमस्ते दुनिया", "สวัสดีชาวโลก", "こんにちは世界", "你好，世界！", "中文字符测试", "안녕하세요 세계",
    "日本語とEnglishの混在", "Ḽơᶉëᶆ ȋṕšᶙṁ", "ℌ𝔢𝔩𝔩𝔬 𝔴𝔬𝔯𝔩𝔡", "𝕳𝖊𝖑𝖑𝖔", "e\u0301 combining acute",
    "zero\u200bwidth\u200bspace", "non\u00a0breaking\u00a0space", "ideographic\u3000space", "em\u2003space",
    "nel\u0085char", "line\u2028separator", "mongolian\u180evowel", "soft\u00adhyphen", "\ufeffBOM start",
    # which characters count as whitespace (Onig's \s is Unicode White_Space)
    " \u0085x", "a \u0085\u0085 b", "a \u00a0b", "a\u00a0\u00a0b", "a \u3000b", " \u180ex", "x \u2028 y",
    "\u200b \u200bz", "a \u1680b", "a \u2009\u200ab", "a \u202f\u205fb", "tab\t\u00a0x", "\x1c\x1d\x1e\x1f sep",
    # emoji
    "😀", "😀😃😄", "I love 🍕 and 🍣!", "👍🏽", "👨‍👩‍👧‍👦 family", "🇺🇸🇯🇵 flags", "❤️", "✨ sparkles ✨",
    "🤖 robots 🤖🤖", "emoji at end 🎉", " 🎉 spaced 🎉 ", "🏳️‍🌈", "a😀b", "😀a😀", "🙂🙃🙂🙃🙂🙃",
    # code
    "def foo(x):\n    return x * 2\n", "int main() { return 0; }", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if x == 1 and y != 2:\n        pass", "const f = (a, b) => a + b;", "#include <stdio.h>", "SELECT * FROM t WHERE id = 42;",
    "<div class=\"x\">text</div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "$ ls -la | grep foo",
    "x = y ** 2 // 3 % 4", "a->b->c", "std::vector<int> v{1, 2, 3};", "    four spaces\n        eight spaces",
    "path/to/file.txt", "https://example.com/path?q=1&r=2#frag", "user@example.com", "C:\\Windows\\System32",
    "~~~ ``` *** ___ ---", "!!!???...", "@#$%^&*()_+-=[]{}|;:,.<>/?", "printf(\"%d\\n\", x);",
    # special-token look-alikes and embedded special tokens
    "<|endoftext|>", "<|endoftext|><|endoftext|>", "Hello<|endoftext|>world", "Hello <|endoftext|> world",
    "end.<|endoftext|>", "<|endoftext|>start", "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|im_end|>", "<|im_start|><|im_end|>", "text<|im_end|>text", "<|endoftext", "|endoftext|>",
    "<|endoftext|  >", "<|ENDOFTEXT|>", "<| endoftext |>", "<<|endoftext|>>", "<|im_start|>😀<|im_end|>",
    "<repo_name>quantserve<file_sep>main.cpp", "<gh_stars>100", "<jupyter_code>print(1)",
]

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "The", "THE", "don't", "it's", "I'll",
         "42", "3.14", "1000000", "café", "über", "naïve", "日本", "中文", "한국어", "Москва", "Ελλάδα", "😀", "🎉",
         "👍🏽", "def", "return", "x+y", "a[i]", "foo()", "{}", "//", "#", "...", "—", "–", "«quoted»", "“smart”",
         "<|endoftext|>", "<|im_start|>", "<|im_end|>", "'s", "'S", "'ve", "'re", "'d", "'ll", "'m", "'t", "\t",
         "\n", "  ", "   ", "\n\n", " \n", "0", "007", "2^32", "π", "∑", "√2", "∞", "©", "™", "€100", "$5",
         "¥", "£", "%", "@user", "#tag", "ÅÄÖ", "ß", "ﬁ", "Ⅷ", "①", "𝟘𝟙", "ǅ", "İ", "ı", "ſ"]

SEPARATORS = [" ", " ", " ", "", "  ", "\n", "\t", " \n", "\n\n", "   ", ", ", ". ", "\r\n"]

CHARSETS = [
    "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n", "!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~",
    "éèêëàâäôöûüçñøåæœ", "αβγδεζηθικλμνξοπρστυφχψω", "абвгдежзийклмнопрстуфхцчшщъыьэюя", "的一是不了人我在有他这为之大来以个中上们",
    "あいうえおかきくけこさしすせそ", "가나다라마바사아자차카타파하", "😀😂🥲😍🤔🙈🚀🌍🔥💯", "\u0301\u0308\u200d\ufe0f",
]


def generated(rng: random.Random, count: int):
    out = []
    for _ in range(count // 2):   # word salads
        n = rng.randint(1, 12)
        s = ""
        for i in range(n):
            s += rng.choice(WORDS)
            if i + 1 < n or rng.random() < 0.2:
                s += rng.choice(SEPARATORS)
        if rng.random() < 0.15:
            s = rng.choice(SEPARATORS) + s
        out.append(s)
    for _ in range(count - count // 2):   # random characters from mixed alphabets
        n = rng.randint(1, 40)
        sets = rng.sample(CHARSETS, rng.randint(1, 4))
        out.append("".join(rng.choice(rng.choice(sets)) for _ in range(n)))
    return out


def long_strings(rng: random.Random):
    licences = sorted(Path("/usr/share/common-licenses").glob("*"))
    text = "".join(p.read_text(errors="replace") for p in licences if p.is_file())
    out = []
    for _ in range(12):
        start = rng.randrange(0, max(1, len(text) - 3000))
        out.append(text[start:start + rng.randint(200, 2500)])
    out.append("".join(str(rng.randint(0, 10**12)) + rng.choice(" ,.\n") for _ in range(60)))
    out.append(" ".join(rng.choice(WORDS) for _ in range(400)))
    return out


def test_strings():
    rng = random.Random(1234)
    strings = list(HAND) + generated(rng, 420) + long_strings(rng)
    seen, unique = set(), []
    for s in strings:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


def cases(tok: Tokenizer, strings):
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    encode = []
    for s in strings:
        tok.encode_special_tokens = False
        ids = tok.encode(s, add_special_tokens=False).ids
        case = {"text": s, "ids": ids}
        if tok.normalizer is not None and tok.normalizer.normalize_str(s) != s:
            case["normalized"] = tok.normalizer.normalize_str(s)   # what decode(encode(text)) gives back
        if any(sp in s for sp in specials):
            tok.encode_special_tokens = True
            case["ids_no_special"] = tok.encode(s, add_special_tokens=False).ids
            tok.encode_special_tokens = False
        encode.append(case)

    # Decoding arbitrary id slices: cuts through UTF-8 characters give U+FFFD exactly as HF does.
    rng = random.Random(99)
    decode = []
    pool = [c["ids"] for c in encode if len(c["ids"]) >= 3]
    for _ in range(150):
        ids = rng.choice(pool)
        a = rng.randrange(0, len(ids))
        b = rng.randrange(a + 1, len(ids) + 1)
        sl = ids[a:b]
        if rng.random() < 0.3:
            sl = sl + [rng.choice(list(tok.get_added_tokens_decoder().keys()))] + rng.choice(pool)[:3]
        decode.append({"ids": sl,
                       "text": tok.decode(sl, skip_special_tokens=False),
                       "text_skip_special": tok.decode(sl, skip_special_tokens=True)})
    return {"encode": encode, "decode": decode}


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.2f} MB)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--gemma-gguf", default=str(ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--only", nargs="+", choices=["smollm2", "tiny", "llama3", "qwen2", "gemma3"],
                    help="write only these fixtures (the others need the models setup.sh fetches)")
    args = ap.parse_args()
    only = set(args.only or ["smollm2", "tiny", "llama3", "qwen2", "gemma3"])
    strings = test_strings()
    print(f"{len(strings)} test strings")
    if "qwen2" in only:
        write_qwen2(strings)
    if "smollm2" in only:
        write_smollm2(Path(args.gguf), strings)
    if "tiny" in only:
        write_tiny(strings)
    if "llama3" in only:
        write_llama3(strings)
    if "gemma3" in only:
        write_gemma3(Path(args.gemma_gguf), strings)


def write_qwen2(strings):
    corpus = list(strings) + QWEN_HARD
    qwen = build_qwen2_style(corpus)
    path = OUT / "qwen2" / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    qwen.save(str(path), pretty=False)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.2f} MB)")
    hard = [s for s in QWEN_HARD if s not in set(strings)]
    result = cases(qwen, list(strings) + hard)
    # The fixture must tell the pre-tokenizer and the normalizer apart: count the strings whose ids change when
    # the text is split as Llama 3 or GPT-2 split it, or not put in NFC.
    from tokenizers import normalizers
    gpt2_split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for what, change in [("Llama 3's split", lambda t: setattr(t, "pre_tokenizer", qwen2_pre_tokenizer(LLAMA3_SPLIT))),
                         ("GPT-2's split", lambda t: setattr(t, "pre_tokenizer", gpt2_split)),
                         ("no NFC", lambda t: setattr(t, "normalizer", normalizers.Sequence([])))]:
        other = Tokenizer.from_str(qwen.to_str())
        change(other)
        differ = sum(other.encode(c["text"], add_special_tokens=False).ids != c["ids"] for c in result["encode"])
        print(f"qwen2: {differ} of {len(result['encode'])} strings tokenize differently with {what}")
    write_json(OUT / "qwen2" / "cases.json", {"tokenizer": "tests/fixtures/tokenizer/qwen2/tokenizer.json", **result})


def write_smollm2(gguf: Path, strings):
    smol = build_smollm2(gguf)
    (OUT / "smollm2").mkdir(parents=True, exist_ok=True)
    smol.save(str(OUT / "smollm2" / "tokenizer.json"), pretty=False)
    print(f"wrote tests/fixtures/tokenizer/smollm2/tokenizer.json "
          f"({(OUT / 'smollm2' / 'tokenizer.json').stat().st_size / 1e6:.2f} MB)")
    write_json(OUT / "smollm2" / "cases.json",
               {"tokenizer": "tests/fixtures/tokenizer/smollm2/tokenizer.json", **cases(smol, strings)})


def write_tiny(strings):
    tiny = Tokenizer.from_file(str(TINY))
    # Fingerprint of what decides the ids (not of the file's formatting): rerun this script when it changes.
    spec = json.loads(TINY.read_text())
    sha = hashlib.sha256(json.dumps([spec["model"], spec["added_tokens"], spec["pre_tokenizer"]],
                                    sort_keys=True).encode()).hexdigest()
    write_json(OUT / "tiny" / "cases.json",
               {"tokenizer": "tests/fixtures/models/tokenizer.json", "tokenizer_content_sha256": sha, **cases(tiny, strings)})


def write_llama3(strings):
    llama3 = build_llama3_style(TINY)
    (OUT / "llama3").mkdir(parents=True, exist_ok=True)
    llama3.save(str(OUT / "llama3" / "tokenizer.json"), pretty=False)
    write_json(OUT / "llama3" / "cases.json",
               {"tokenizer": "tests/fixtures/tokenizer/llama3/tokenizer.json", **cases(llama3, strings)})


def write_gemma3(gemma_path: Path, strings):
    # Gemma 3: transformers' own GGUF tokenizer converter (GemmaTokenizer: Replace " " -> U+2581, BPE with
    # byte fallback, merges recovered from the vocabulary order).
    from transformers import AutoTokenizer
    gemma = AutoTokenizer.from_pretrained(str(gemma_path.parent), gguf_file=gemma_path.name).backend_tokenizer
    write_json(OUT / "gemma3" / "cases.json",
               {"tokenizer": "models/gemma-3-270m-q4_k_m.gguf", **cases(gemma, strings)})


if __name__ == "__main__":
    main()
