"""Generate the committed test fixtures under tests/fixtures/.

Run from the repository root:

    /usr/bin/python3 scripts/make_fixtures.py

Requires Debian's `python3-torch` (torch 1.13) and `python3-numpy`; nothing else. There is no
`transformers`, `safetensors` or `tokenizers` here on purpose: the byte-level BPE tokenizer, its
trainer, the GPT-2 model and the safetensors writer are all written out below, so the fixtures are an
independent reference for the TypeScript implementation, not a copy of its output.

The output is deterministic (fixed seeds, one thread, deterministic torch algorithms): running the
script twice produces byte-identical files.

What it writes:
  tests/fixtures/gpt2_tiny/        config.json, model.safetensors, tokenizer.json,
                                   tokenizer_config.json, expected.json  (gelu_new, eps 1e-5)
  tests/fixtures/gpt2_tiny_gelu/   the same files for a second model (exact gelu, n_inner, eps 1e-6)
  tests/fixtures/dtypes.safetensors, dtypes.json   F32/F16/BF16/I64 decoding cases
  tests/fixtures/tokenizer_cases.json              text -> ids for pre-tokenizer edge cases

All fixture texts are printable ASCII (plus \\t, \\n, \\r), so the GPT-2 pre-tokenization regex is
written with exact ASCII equivalents of \\p{L}, \\p{N} and \\s (Python's `re` has no \\p{..}).
Prompts are never empty: the first completion token would have no prefix to condition on.
"""

import json
import math
import os
import re
import struct

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures")

EOS = "<|endoftext|>"
N_MERGES = 60

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# ---------------------------------------------------------------------------------------------------
# Tokenizer: GPT-2 byte-level BPE
# ---------------------------------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode char table (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {v: k for k, v in BYTE_ENCODER.items()}

# GPT-2 pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Exact for ASCII input: \p{L} = [A-Za-z], \p{N} = [0-9], \s = the six ASCII White_Space chars.
# (Python's own \s would also match \x1c-\x1f, which Unicode White_Space does not; hence spelt out.)
_WS = " \\t\\n\\r\\x0b\\x0c"
PAT = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^" + _WS + r"A-Za-z0-9]+"
    r"|[" + _WS + r"]+(?![^" + _WS + r"])|[" + _WS + r"]+"
)


def check_ascii(text):
    for ch in text:
        if not (0x20 <= ord(ch) <= 0x7E or ch in "\t\n\r"):
            raise ValueError(f"Cannot tokenize fixture text as it must be printable ASCII: {text!r}")


def pre_tokenize(text):
    """Split text into GPT-2 pre-tokens, each mapped to its byte-level unicode string."""
    check_ascii(text)
    return ["".join(BYTE_ENCODER[b] for b in piece.encode("utf-8")) for piece in PAT.findall(text)]


def train_bpe(corpus, n_merges):
    """Learn merges by the classic BPE loop: merge the most frequent adjacent pair, repeat.

    Ties are broken by the lexicographically smallest pair. A pair whose concatenation is already a
    token is skipped so that every merge adds exactly one new vocab entry.
    """
    counts = {}
    for w in pre_tokenize(corpus):
        counts[w] = counts.get(w, 0) + 1
    words = [(list(w), c) for w, c in sorted(counts.items())]
    known = set(BYTE_ENCODER.values())
    merges = []
    while len(merges) < n_merges:
        pairs = {}
        for syms, c in words:
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        best = None
        for pair, c in sorted(pairs.items()):
            if pair[0] + pair[1] in known:
                continue
            if best is None or c > pairs[best]:
                best = pair
        if best is None:
            raise RuntimeError(f"Cannot learn {n_merges} merges: corpus ran out after {len(merges)}")
        merges.append(best)
        known.add(best[0] + best[1])
        for i, (syms, c) in enumerate(words):
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and (syms[j], syms[j + 1]) == best:
                    out.append(syms[j] + syms[j + 1])
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            words[i] = (out, c)
    return merges


def bpe(token, ranks):
    """GPT-2 encoder.py's bpe(): repeatedly merge the lowest-rank bigram, all occurrences at once."""
    word = tuple(token)
    if len(word) < 2:
        return list(word)
    while True:
        pairs = set(zip(word, word[1:]))
        bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if bigram not in ranks:
            break
        first, second = bigram
        new_word, i = [], 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new_word.extend(word[i:])
                break
            new_word.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
        if len(word) == 1:
            break
    return list(word)


class Tokenizer:
    def __init__(self, merges):
        self.merges = merges
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.vocab = {}
        for b in range(256):
            self.vocab[BYTE_ENCODER[b]] = b
        for a, b in merges:
            self.vocab[a + b] = len(self.vocab)
        self.eos_id = len(self.vocab)
        self.vocab[EOS] = self.eos_id
        self.inv = {i: t for t, i in self.vocab.items()}

    def encode(self, text):
        ids = []
        for piece in pre_tokenize(text):
            ids.extend(self.vocab[t] for t in bpe(piece, self.ranks))
        return ids

    def decode(self, ids):
        text = "".join(self.inv[i] for i in ids if i != self.eos_id)
        return bytes(BYTE_DECODER[c] for c in text).decode("utf-8", errors="replace")

    def to_hf_json(self):
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": self.eos_id,
                    "content": EOS,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": True,
                    "special": True,
                }
            ],
            "normalizer": None,
            "pre_tokenizer": {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            },
            "post_processor": None,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": True,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self.vocab,
                "merges": [f"{a} {b}" for a, b in self.merges],
            },
        }


CORPUS = """\
The cat sat on the mat. The dog sat on the log. A good answer is short and correct.
The model reads the question and then it writes the answer. The answer is the number.
What is 12+7? The answer is 19. What is 3+4? The answer is 7. What is 10+10? The answer is 20.
What is 25-5? The answer is 20. What is 6*7? The answer is 42. What is 100+23? The answer is 123.
She said that the weather is nice today, and we went out to the park to play in the sun.
They're here, it's late, we've got time, I'm sure you'll see what we'd do.
1+1=2 2+2=4 3+3=6 4+4=8 5+5=10 12+7=19 21+21=42 99+1=100
Question: what is the capital of France? Answer: Paris.
Question: what is two plus two? Answer: four.
"""

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

# ---------------------------------------------------------------------------------------------------
# Safetensors (written and read by hand, to the spec)
# ---------------------------------------------------------------------------------------------------

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}


def write_safetensors(path, tensors):
    """tensors: {name: (dtype, shape, little-endian raw bytes)}; laid out in sorted-name order."""
    header = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        n = 1
        for s in shape:
            n *= s
        assert len(raw) == n * DTYPE_SIZE[dtype], name
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Tiny reader for the self-check: {name: (dtype, shape, raw bytes)}."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    base = 8 + n
    out, expected_begin = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = info["data_offsets"]
        assert b == expected_begin, name
        expected_begin = e
        out[name] = (info["dtype"], info["shape"], data[base + b : base + e])
    assert base + expected_begin == len(data)
    return out


def f32_entry(t):
    a = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    return ("F32", list(t.shape), a.tobytes())


# ---------------------------------------------------------------------------------------------------
# GPT-2, from scratch
# ---------------------------------------------------------------------------------------------------


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_exact(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


ACTIVATIONS = {"gelu_new": gelu_new, "gelu": gelu_exact}


def init_params(cfg, seed):
    """Random float32 weights with HF GPT2LMHeadModel tensor names and shapes."""
    g = torch.Generator().manual_seed(seed)
    C, V, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    inner = cfg["n_inner"] if cfg["n_inner"] is not None else 4 * C

    def mat(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * 0.2

    def bias(n):
        return torch.randn(n, generator=g, dtype=torch.float32) * 0.05

    def ln_w(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g, dtype=torch.float32)

    p = {"transformer.wte.weight": mat(V, C), "transformer.wpe.weight": mat(P, C)}
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}."
        p[h + "ln_1.weight"] = ln_w(C)
        p[h + "ln_1.bias"] = bias(C)
        p[h + "attn.c_attn.weight"] = mat(C, 3 * C)
        p[h + "attn.c_attn.bias"] = bias(3 * C)
        p[h + "attn.c_proj.weight"] = mat(C, C)
        p[h + "attn.c_proj.bias"] = bias(C)
        p[h + "ln_2.weight"] = ln_w(C)
        p[h + "ln_2.bias"] = bias(C)
        p[h + "mlp.c_fc.weight"] = mat(C, inner)
        p[h + "mlp.c_fc.bias"] = bias(inner)
        p[h + "mlp.c_proj.weight"] = mat(inner, C)
        p[h + "mlp.c_proj.bias"] = bias(C)
    p["transformer.ln_f.weight"] = ln_w(C)
    p["transformer.ln_f.bias"] = bias(C)
    return p


def forward(p, cfg, ids):
    """Logits [T, V] for one sequence of ids; computes in the dtype of the parameters."""
    C, H = cfg["n_embd"], cfg["n_head"]
    D = C // H
    eps = cfg["layer_norm_epsilon"]
    act = ACTIVATIONS[cfg["activation_function"]]
    T = len(ids)
    idx = torch.tensor(ids, dtype=torch.long)

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as torch LayerNorm
        return (x - mu) / torch.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]

    def conv1d(x, name):  # HF Conv1D: weight [in, out], y = x @ W + b
        return x @ p[name + ".weight"] + p[name + ".bias"]

    x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][torch.arange(T)]  # [T, C]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}."
        qkv = conv1d(ln(x, h + "ln_1"), h + "attn.c_attn")  # [T, 3C]
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(T, H, D).transpose(0, 1)  # [H, T, D]
        k = k.view(T, H, D).transpose(0, 1)
        v = v.view(T, H, D).transpose(0, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # [H, T, T]
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(T, C)  # [T, C]
        x = x + conv1d(y, h + "attn.c_proj")
        m = act(conv1d(ln(x, h + "ln_2"), h + "mlp.c_fc"))  # [T, inner]
        x = x + conv1d(m, h + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ p["transformer.wte.weight"].T  # [T, V], tied head


def completion_logps(p, cfg, input_ids, n_prompt):
    """log p(token_t | tokens_<t) for t = n_prompt .. T-1 (completion tokens and the final eos)."""
    logits = forward(p, cfg, input_ids)
    logp = logits.log_softmax(-1)
    pos = torch.arange(n_prompt - 1, len(input_ids) - 1)
    tgt = torch.tensor(input_ids[n_prompt:], dtype=torch.long)
    return logp[pos, tgt], logits


def sig(x, digits):
    return float(f"{x:.{digits}g}")


CASES = [
    {"prompt": "What is 12+7? The answer is", "completion": " 19."},
    {"prompt": "12+7=", "completion": "19"},
    {"prompt": "The cat sat on the", "completion": ""},
    {"prompt": "Question: what is two plus two?", "completion": " Answer: four."},
    {"prompt": "Hi", "completion": " there"},
    {
        "prompt": "She said that the weather is nice today,",
        "completion": " and we went to the park.",
    },
]
LOGITS_CASES = [1, 5]
GREEDY_PROMPTS = ["The answer is", "Question:"]
GREEDY_STEPS = 12
GRAD_NAMES = [
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.h.0.attn.c_attn.weight",
    "transformer.h.1.mlp.c_fc.bias",
    "transformer.h.1.ln_2.weight",
    "transformer.ln_f.bias",
]

MODELS = [
    {
        "dir": "gpt2_tiny",
        "seed": 1234,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
    },
    {
        "dir": "gpt2_tiny_gelu",
        "seed": 5678,
        "n_embd": 24,
        "n_layer": 2,
        "n_head": 3,
        "n_positions": 48,
        "n_inner": 40,
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-6,
    },
]


def hf_config(m, tok):
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": len(tok.vocab),
        "n_positions": m["n_positions"],
        "n_ctx": m["n_positions"],
        "n_embd": m["n_embd"],
        "n_layer": m["n_layer"],
        "n_head": m["n_head"],
        "n_inner": m["n_inner"],
        "activation_function": m["activation_function"],
        "layer_norm_epsilon": m["layer_norm_epsilon"],
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.2,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": tok.eos_id,
        "eos_token_id": tok.eos_id,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def tokenizer_config(m, tok):
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": m["n_positions"],
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tok.eos_id): {
                "content": EOS,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
    }


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def make_model(m, tok):
    d = os.path.join(OUT, m["dir"])
    os.makedirs(d, exist_ok=True)
    cfg = hf_config(m, tok)
    p32 = init_params(cfg, m["seed"])

    dump_json(os.path.join(d, "config.json"), cfg)
    dump_json(os.path.join(d, "tokenizer.json"), tok.to_hf_json())
    dump_json(os.path.join(d, "tokenizer_config.json"), tokenizer_config(m, tok))
    st_path = os.path.join(d, "model.safetensors")
    write_safetensors(st_path, {k: f32_entry(v) for k, v in p32.items()})

    # Self-check: the file round-trips bit-exactly.
    back = read_safetensors(st_path)
    assert sorted(back) == sorted(p32)
    for k, (dt, shape, raw) in back.items():
        assert dt == "F32" and shape == list(p32[k].shape)
        assert np.array_equal(np.frombuffer(raw, "<f4").reshape(shape), p32[k].numpy()), k

    # Reference numbers: float32 weights promoted to float64.
    p64 = {k: v.to(torch.float64).requires_grad_(True) for k, v in p32.items()}
    cases, total = [], None
    logits_out = []
    for ci, c in enumerate(CASES):
        assert c["prompt"], "prompts must be non-empty"
        pids, cids = tok.encode(c["prompt"]), tok.encode(c["completion"])
        assert tok.decode(pids) == c["prompt"] and tok.decode(cids) == c["completion"]
        input_ids = pids + cids + [tok.eos_id]
        assert len(input_ids) <= cfg["n_positions"]
        lps, logits = completion_logps(p64, cfg, input_ids, len(pids))
        s = lps.sum()
        total = s if total is None else total + s
        token_logps = lps.detach().tolist()
        n = len(cids) + 1
        cases.append(
            {
                "prompt": c["prompt"],
                "completion": c["completion"],
                "prompt_ids": pids,
                "completion_ids": cids,
                "input_ids": input_ids,
                "n_tokens": n,
                "token_logps": token_logps,
                "logp_sum": s.item(),
                "logp_mean": s.item() / n,
            }
        )
        assert abs(sum(token_logps) - s.item()) < 1e-12
        if ci in LOGITS_CASES:
            l64 = logits.detach()
            with torch.no_grad():
                l32 = forward(p32, cfg, input_ids).to(torch.float64)
            err = (l64 - l32).abs().max().item()
            assert err < 1e-4, f"float32 logits differ by {err}"
            print(f"  {m['dir']} case {ci}: T={len(input_ids)} float32 vs float64 max |dlogit| = {err:.2e}")
            logits_out.append(
                {
                    "case_index": ci,
                    "shape": list(l64.shape),
                    "values": [[sig(x, 7) for x in row] for row in l64.tolist()],
                }
            )

    total.backward()
    grads = {}
    for name in GRAD_NAMES:
        gr = p64[name].grad
        grads[name] = {"shape": list(gr.shape), "values": gr.reshape(-1).tolist()}

    greedy = []
    with torch.no_grad():
        for prompt in GREEDY_PROMPTS:
            ids = tok.encode(prompt)
            new, gaps = [], []
            for _ in range(GREEDY_STEPS):
                last = forward(p64, cfg, ids + new)[-1]
                top2 = torch.topk(last, 2).values
                gaps.append((top2[0] - top2[1]).item())
                new.append(int(last.argmax().item()))
            print(f"  {m['dir']} greedy {prompt!r}: min top-2 logit gap {min(gaps):.2e}")
            assert min(gaps) > 1e-3, "greedy choice too close to a tie to be a robust fixture"
            greedy.append(
                {
                    "prompt": prompt,
                    "prompt_ids": ids,
                    "generated_ids": new,
                    "min_top2_logit_gap": sig(min(gaps), 6),
                }
            )

    expected = {
        "description": (
            "Reference values from scripts/make_fixtures.py (float64 torch, weights as stored in "
            "model.safetensors). token_logps[j] = log_softmax(logits[t-1])[input_ids[t]] for "
            "t = len(prompt_ids) + j, covering the completion tokens and the final eos. "
            "grads = d(sum over cases of logp_sum)/d(param), flattened row-major."
        ),
        "eos_token_id": tok.eos_id,
        "cases": cases,
        "logits": logits_out,
        "greedy": greedy,
        "grads": grads,
    }
    dump_json(os.path.join(d, "expected.json"), expected)


# ---------------------------------------------------------------------------------------------------
# dtype decoding fixture
# ---------------------------------------------------------------------------------------------------

DTYPE_VALUES = [1.0, -2.5, 0.1, 10000.0, -1.0e-4, 3.0e-6, 123.456]
I64_VALUES = [[0, 1, -1], [2**40 + 3, -(2**33), 123456789]]


def make_dtypes():
    f32 = torch.tensor(DTYPE_VALUES, dtype=torch.float32)
    f16 = f32.to(torch.float16)
    bf16 = f32.to(torch.bfloat16)
    i64 = torch.tensor(I64_VALUES, dtype=torch.int64)
    tensors = {
        "values_f32": ("F32", [len(DTYPE_VALUES)], f32.numpy().astype("<f4").tobytes()),
        "values_f16": ("F16", [len(DTYPE_VALUES)], f16.numpy().astype("<f2").tobytes()),
        "values_bf16": ("BF16", [len(DTYPE_VALUES)], bf16.view(torch.int16).numpy().astype("<i2").tobytes()),
        "ints_i64": ("I64", list(i64.shape), i64.numpy().astype("<i8").tobytes()),
    }
    path = os.path.join(OUT, "dtypes.safetensors")
    write_safetensors(path, tensors)

    decoded = {
        "values_f32": f32.to(torch.float64).tolist(),
        "values_f16": f16.to(torch.float64).tolist(),
        "values_bf16": bf16.to(torch.float64).tolist(),
        "ints_i64": i64.tolist(),
    }
    # Self-check: decode the raw bits independently of torch's casts.
    back = read_safetensors(path)
    raw = back["values_bf16"][2]
    bf_bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
    assert bf_bits.view(np.float32).astype(np.float64).tolist() == decoded["values_bf16"]
    assert np.frombuffer(back["values_f16"][2], "<f2").astype(np.float64).tolist() == decoded["values_f16"]
    assert np.frombuffer(back["values_f32"][2], "<f4").astype(np.float64).tolist() == decoded["values_f32"]
    assert np.frombuffer(back["ints_i64"][2], "<i8").reshape(2, 3).tolist() == decoded["ints_i64"]

    out = {
        "description": (
            "dtypes.safetensors: the same source values stored as F32, F16 and BF16 (torch's "
            "round-to-nearest-even casts from float32), plus an I64 tensor. 'values' are the exact "
            "numbers the stored bits decode to (float64), row-major nested by shape."
        ),
        "source_values": DTYPE_VALUES,
        "tensors": {
            name: {"dtype": tensors[name][0], "shape": tensors[name][1], "values": decoded[name]}
            for name in sorted(tensors)
        },
    }
    dump_json(os.path.join(OUT, "dtypes.json"), out)


# ---------------------------------------------------------------------------------------------------
# Tokenizer edge cases
# ---------------------------------------------------------------------------------------------------

TOKENIZER_TEXTS = [
    "Hello world",
    " leading space",
    "trailing space ",
    "two  spaces and   three",
    "line one\nline two\n\nend",
    "tabs\tand\r\nwindows",
    "They're here, it's late, we've got time, I'm sure you'll see what we'd do.",
    "don't DON'T 'quoted' it''s",
    "12+7=19 and 100+23=123, 3.14159",
    "symbols: !@#$%^&*()_+-=[]{};:\",.<>/?|~`",
    "   ",
    "",
    "The answer is 42.",
    "question:what is the capital of France?answer:Paris",
]


def make_tokenizer_cases(tok):
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        cases.append({"text": text, "ids": ids, "tokens": [tok.inv[i] for i in ids]})
    dump_json(
        os.path.join(OUT, "tokenizer_cases.json"),
        {
            "description": (
                "Encodings by the reference byte-level BPE of tests/fixtures/gpt2_tiny/tokenizer.json "
                "(both checkpoints share it). No special tokens are added; decode(ids) == text."
            ),
            "eos_token_id": tok.eos_id,
            "cases": cases,
        },
    )


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer(train_bpe(CORPUS, N_MERGES))
    print(f"tokenizer: {len(tok.vocab)} tokens ({len(tok.merges)} merges), eos id {tok.eos_id}")
    make_tokenizer_cases(tok)
    for m in MODELS:
        make_model(m, tok)
    make_dtypes()
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
