#!/usr/bin/env python3
"""Generates the tokenizer exactness fixtures under tests/fixtures/tokenizers/ (run once).

1. A seeded, deterministic adversarial corpus (corpus.jsonl.gz, one JSON string a line):
   CJK, emoji (ZWJ sequences, skin tones, flags, keycaps), combining marks in NFC and NFD
   (reordering, composition exclusions, singletons, Hangul jamo), long no-space runs, digits of
   many scripts, mixed scripts, whitespace runs, invalid-looking escapes, special-token
   look-alikes, very long words, random code points, and random mixtures of all of these.
2. Every ShareGPT and MT-bench chat of tests/fixtures/traces as messages (chats.jsonl.gz).
3. Per model (<model>/ids.jsonl.gz): Hugging Face `tokenizers` ids of every corpus string
   (add_special_tokens=False, and =True for the first 2,000), and for every chat the text
   rendered by `transformers` apply_chat_template(tokenize=False, add_generation_prompt=True)
   with its ids (add_special_tokens=False).

Usage (versions as recorded in tests/fixtures/PROVENANCE.md):
  python3 -m venv /tmp/hfvenv
  /tmp/hfvenv/bin/pip install tokenizers==0.23.3 transformers==5.23.0 jinja2==3.1.6
  HF_HUB_OFFLINE=1 /tmp/hfvenv/bin/python tests/tools/gen-tokenizer-fixtures.py \
      qwen3=target/models/Qwen3-0.6B llama3=target/models/Llama-3
"""

import gzip
import json
import random
import sys
import unicodedata
from pathlib import Path

SEED = 20260514
N_CORPUS = 21_000
N_WITH_SPECIALS = 2_000

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/tokenizers"

CJK = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3),
       (0x20000, 0x2A6DF), (0xFF01, 0xFF5E)]
CJK_PUNCT = "，。、；：？！「」『』（）【】《》〈〉…—～・　"
EMOJI = ["😀", "😂", "🥲", "🤖", "🚀", "🔥", "❤️", "✨", "🎉", "🙏", "👍", "👋", "🧑‍💻", "🏳️‍🌈",
         "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🧔‍♂️", "🐻‍❄️", "😶‍🌫️", "❤️‍🔥", "☺", "☺️", "#️⃣", "1️⃣", "*️⃣",
         "🇯🇵", "🇺🇸", "🇪🇺", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "©️", "™", "↔️", "🫶🏿", "🤌🏻"]
SKIN = ["\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
HANDS = ["👍", "👋", "🙌", "👏", "🤝", "🫱", "🧑", "👩", "🏃", "🚴"]
LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
ACCENTED = "àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝœßøđłŁĳǅǈ"
COMBINING = [chr(c) for c in range(0x0300, 0x0370)] + ["\u0483", "\u0591", "\u05B0", "\u0610",
             "\u064B", "\u0670", "\u093C", "\u094D", "\u0E31", "\u0E48", "\u1AB0", "\u1DC0",
             "\u20D0", "\u20E3", "\uFE20", "\u302A", "\u3099", "\u309A"]
NFC_TRAPS = [
    "e\u0301", "a\u0323\u0302", "a\u0302\u0323", "o\u031B\u0303", "u\u0308\u0301",
    "\u212B", "\u2126", "\u212A", "A\u030A", "\u1E9B\u0323", "\u0958", "\u0915\u093C",
    "\u09DC", "\u0DDA", "\u0F73", "\u1100\u1161\u11A8", "\u1100\u1161", "\uAC00\u11A8",
    "\u0344", "\u0340", "\u0374", "\u037E", "\u0387", "\u1F71", "\u2000", "\u2001",
    "\uF900", "\uFA10", "\u2F800", "\U0002F800", "\u00C5\u0301", "\u0041\u0301\u0331",
    "\u05D0\u05B7\u05BC", "\u0627\u0653", "\u0648\u0654", "\u0CBF\u0CD5", "\u0B47\u0B3E",
    "\u1025\u102E", "\u3046\u3099", "\u30AB\u3099", "\u30FD\u3099", "ﬁ", "ﬀ", "½", "²", "ℌ",
]
SCRIPTS = {
    "cyrillic": (0x0410, 0x044F), "greek": (0x0391, 0x03C9), "arabic": (0x0621, 0x064A),
    "hebrew": (0x05D0, 0x05EA), "thai": (0x0E01, 0x0E4E), "devanagari": (0x0904, 0x0939),
    "georgian": (0x10D0, 0x10FA), "armenian": (0x0531, 0x0556), "ethiopic": (0x1200, 0x1248),
    "tamil": (0x0B85, 0x0BB9), "bengali": (0x0985, 0x09B9), "khmer": (0x1780, 0x17B3),
    "cherokee": (0x13A0, 0x13F4), "math": (0x1D400, 0x1D7FF), "runic": (0x16A0, 0x16EA),
}
DIGITS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "০১২৩৪৫৬৭৮৯", "０１２３４５６７８９",
          "๐๑๒๓๔๕๖๗๘๙", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "⁰¹²³⁴⁵⁶⁷⁸⁹", "₀₁₂₃₄₅₆₇₈₉", "ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ", "①②③④⑤⑥⑦⑧⑨"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00A0", "\u3000", "\u2028", "\u2029", "\u200B",
              "\u2009", "\u202F", "\u205F", "\u000B", "\u000C", "\u0085", "\u1680", " \n", "\n ",
              "\t\n", "\n\n\n", "    ", "\t\t"]
ESCAPES = ["\\u12", "\\u", "\\x", "\\x4", "\\xZZ", "\\uD83D", "\\uD83D\\uDE00", "\\U0001F600",
           "\\n", "\\\\n", "\\t", "\\", "\\\\", "\\0", "\\a", "\\e[31m", "\x1b[0m", "%s", "%d",
           "{0}", "${x}", "&#x1F600;", "&#128512;", "&amp;", "&lt;|im_start|&gt;", "\\\"",
           "\"", "'", "`", "```", "\\N{GREEK SMALL LETTER ALPHA}", "\x00", "\x7f", "\x01",
           "\ufeff", "\ufffd", "\ufffe", "\uffff", "\u200d", "\u200c", "\u200e", "\u200f",
           "\u202e", "\u2066", "\ue000", "\U000F0000", "\U0010FFFD"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>",
           "<tool_call>", "</tool_call>", "<tool_response>", "<|vision_start|>", "<|fim_prefix|>",
           "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|reserved_special_token_7|>", "<|python_tag|>", "<|eom_id|>"]
CONTRACTIONS = ["'s", "'S", "'t", "'T", "'re", "'RE", "'ve", "'m", "'M", "'ll", "'LL", "'d", "'D",
                "’s", "’t", "''", "'x", "'", "n't", "N'T"]
WORDS = ["the", "The", "tokenizer", "Hello", "world", "naïve", "café", "Straße", "İstanbul",
         "ǅemal", "ﬁnance", "x86_64", "printf", "fn", "main", "self", "return", "None", "null",
         "München", "Ελληνικά", "русский", "עברית", "العربية", "हिन्दी", "ไทย", "한국어", "日本語",
         "中文", "Việt", "Nguyễn", "Ångström", "Zürich", "résumé", "façade", "coöperate", "ĳssel"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "—", "–", "«", "»", "„", "“", "”",
        "‘", "’", "¿", "¡", "•", "§", "¶", "†", "€", "£", "¥", "₹", "→", "⇒", "∀", "∑", "√", "∞"]
LONG_WORDS = ["supercalifragilisticexpialidocious", "Donaudampfschifffahrtsgesellschaftskapitän",
              "pneumonoultramicroscopicsilicovolcanoconiosis", "Llanfairpwllgwyngyll",
              "antidisestablishmentarianism", "ThisIsCamelCaseIdentifierNameThatGoesOn",
              "snake_case_identifier_with_many_parts", "https://example.com/a/b/c?q=1&r=2#frag",
              "aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQ=", "0x7fffffffffffffff", "deadbeefcafebabe",
              "αβγδεζηθικλμνξοπρστυφχψω", "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"]


def rand_range(rng, ranges, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def gen_cjk(rng):
    parts = []
    for _ in range(rng.randint(1, 4)):
        parts.append(rand_range(rng, CJK, rng.randint(1, 20)))
        if rng.random() < 0.6:
            parts.append(rng.choice(CJK_PUNCT))
        if rng.random() < 0.2:
            parts.append(rng.choice(WORDS + [" ", "123", "\n"]))
    return "".join(parts)


def gen_emoji(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.4:
            parts.append(rng.choice(EMOJI))
        elif r < 0.7:
            parts.append(rng.choice(HANDS) + rng.choice(SKIN))
        elif r < 0.8:
            parts.append(rng.choice(HANDS) + rng.choice(SKIN) + "\u200d" + rng.choice(["💻", "🔬", "🦰", "♂️", "♀️"]))
        elif r < 0.9:
            parts.append(chr(0x1F1E6 + rng.randint(0, 25)) + chr(0x1F1E6 + rng.randint(0, 25)))
        else:
            parts.append(chr(rng.randint(0x1F300, 0x1FAFF)) + rng.choice(["", "\ufe0f", "\ufe0e", "\u200d"]))
        if rng.random() < 0.4:
            parts.append(rng.choice([" ", "", "\n", rng.choice(WORDS), "!", "  "]))
    return "".join(parts)


def gen_combining(rng):
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.35:
            base = rng.choice(LATIN + "αοиא")
            parts.append(base + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4))))
        elif r < 0.6:
            parts.append(rng.choice(NFC_TRAPS))
        elif r < 0.8:
            w = rng.choice(WORDS + [rng.choice(ACCENTED) * 3])
            parts.append(unicodedata.normalize(rng.choice(["NFD", "NFC", "NFKD", "NFKC"]), w))
        else:
            parts.append(rng.choice(COMBINING))  # a mark with no base
        if rng.random() < 0.5:
            parts.append(rng.choice([" ", "", "-", "\n", "."]))
    return "".join(parts)


def gen_nospace(rng):
    r = rng.random()
    n = rng.choice([16, 40, 120]) if rng.random() < 0.97 else rng.choice([600, 3000])
    if r < 0.25:
        return rng.choice("aeiouxyz") * n
    if r < 0.5:
        return "".join(rng.choice(LATIN) for _ in range(n))
    if r < 0.7:
        return (rng.choice(WORDS) * n)[: n * 2]
    if r < 0.85:
        return "".join(rng.choice(PUNCT) for _ in range(n // 4))
    return rand_range(rng, [SCRIPTS[rng.choice(list(SCRIPTS))]], n // 2)


def gen_digits(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.4:
            parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40))))
        elif r < 0.6:
            parts.append(f"{rng.uniform(-1e9, 1e9):.{rng.randint(0, 8)}f}")
        elif r < 0.7:
            parts.append(f"{rng.randint(0, 10**12):,}")
        else:
            d = rng.choice(DIGITS)
            parts.append("".join(rng.choice(d) for _ in range(rng.randint(1, 12))))
        parts.append(rng.choice([" ", "", "x", "-", ".", ",", "\n", "%", "abc", "元", "e10"]))
    return "".join(parts)


def gen_mixed(rng):
    parts = []
    for _ in range(rng.randint(2, 6)):
        name = rng.choice(list(SCRIPTS))
        parts.append(rand_range(rng, [SCRIPTS[name]], rng.randint(1, 8)))
        parts.append(rng.choice([" ", "", "", rng.choice(WORDS), rng.choice(PUNCT), "1"]))
    return "".join(parts)


def gen_whitespace(rng):
    parts = []
    for _ in range(rng.randint(1, 6)):
        parts.append("".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 6))))
        if rng.random() < 0.7:
            parts.append(rng.choice(WORDS + PUNCT + ["1", "🙂", "中"]))
    return "".join(parts)


def gen_escapes(rng):
    parts = []
    for _ in range(rng.randint(1, 10)):
        parts.append(rng.choice(ESCAPES))
        if rng.random() < 0.5:
            parts.append(rng.choice(WORDS + [" ", "", "1F600", "{", "}", "\n"]))
    return "".join(parts)


def gen_special(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        tok = rng.choice(SPECIAL)
        r = rng.random()
        if r < 0.5:
            parts.append(tok)
        elif r < 0.6:
            parts.append(tok[: rng.randint(1, len(tok) - 1)])  # a prefix
        elif r < 0.7:
            parts.append(tok[rng.randint(1, len(tok) - 1):])  # a suffix
        elif r < 0.8:
            parts.append(tok.upper())
        elif r < 0.9:
            i = rng.randint(1, len(tok) - 1)
            parts.append(tok[:i] + rng.choice(SPECIAL) + tok[i:])  # nested
        else:
            parts.append(tok.replace("|", rng.choice(["｜", " |", "||"])))
        parts.append(rng.choice(["", "", " ", "\n", rng.choice(WORDS), "user\n", "assistant"]))
    return "".join(parts)


def gen_long_words(rng):
    parts = []
    for _ in range(rng.randint(1, 3)):
        w = rng.choice(LONG_WORDS)
        parts.append(w * rng.randint(1, 3))
        parts.append(rng.choice([" ", "", "-", "_", "\n"]))
    return "".join(parts)


def gen_contractions(rng):
    parts = []
    for _ in range(rng.randint(1, 10)):
        parts.append(rng.choice(WORDS + ["I", "don", "we", "THEY", "x"]))
        parts.append(rng.choice(CONTRACTIONS))
        parts.append(rng.choice([" ", "", "  ", "\n", "'"]))
    return "".join(parts)


def gen_random_codepoints(rng):
    out = []
    for _ in range(rng.randint(1, 16)):
        cp = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xFFFF),
                         rng.randint(0x10000, 0x10FFFF)])
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


GENERATORS = [gen_cjk, gen_emoji, gen_combining, gen_nospace, gen_digits, gen_mixed,
              gen_whitespace, gen_escapes, gen_special, gen_long_words, gen_contractions,
              gen_random_codepoints]


def corpus():
    rng = random.Random(SEED)
    out = [""]  # the empty string too
    while len(out) < N_CORPUS:
        if rng.random() < 0.75:
            out.append(rng.choice(GENERATORS)(rng))
        else:  # a mixture of several kinds
            out.append("".join(rng.choice(GENERATORS)(rng) for _ in range(2)))
    return out


def chats():
    out = []
    share = json.loads((ROOT / "tests/fixtures/traces/sharegpt/ShareGPT_V3_filtered_500.json").read_text())
    for c in share:
        msgs = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                for t in c["conversations"]]
        out.append({"id": "sharegpt-" + c["id"], "messages": msgs})
    for line in (ROOT / "tests/fixtures/traces/mt_bench/question.jsonl").read_text().splitlines():
        q = json.loads(line)
        t1, t2 = q["turns"][0], q["turns"][1]
        out.append({"id": f"mtbench-{q['question_id']}-1", "messages": [{"role": "user", "content": t1}]})
        out.append({"id": f"mtbench-{q['question_id']}-2", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": t1},
            {"role": "assistant", "content": "Here is my answer to: " + t1[:300]},
            {"role": "user", "content": t2}]})
    return out


def write_jsonl_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same input gives the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode())


def main():
    import tokenizers
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    models = dict(a.split("=", 1) for a in sys.argv[1:])
    texts = corpus()
    convs = chats()
    write_jsonl_gz(OUT / "corpus.jsonl.gz", [{"_meta": {"seed": SEED, "n": len(texts),
                   "python": sys.version.split()[0], "generator": "tests/tools/gen-tokenizer-fixtures.py"}}] + texts)
    write_jsonl_gz(OUT / "chats.jsonl.gz", convs)
    for name, d in models.items():
        tok = Tokenizer.from_file(str(Path(d) / "tokenizer.json"))
        hf = AutoTokenizer.from_pretrained(d)
        plain = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        special = [e.ids for e in tok.encode_batch(texts[:N_WITH_SPECIALS], add_special_tokens=True)]
        rows = [{"_meta": {"model": name, "tokenizers": tokenizers.__version__,
                           "transformers": transformers.__version__}}]
        for i, ids in enumerate(plain):
            row = {"i": i, "ids": ids}
            if i < N_WITH_SPECIALS:
                row["ids_special"] = special[i]
            rows.append(row)
        for c in convs:
            text = hf.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True)
            rows.append({"chat": c["id"], "text": text, "ids": tok.encode(text, add_special_tokens=False).ids})
        write_jsonl_gz(OUT / name / "ids.jsonl.gz", rows)
        print(name, len(plain), "strings,", len(convs), "chats")


if __name__ == "__main__":
    main()
