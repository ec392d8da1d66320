"""Generate the Llama-family and LoRA test fixtures under tests/fixtures/.

Run from the repository root, after scripts/make_fixtures.py has written tests/fixtures/gpt2_tiny/:

    /usr/bin/python3 scripts/make_llama_fixtures.py

Requires Debian's `python3-torch` (torch 1.13) and `python3-numpy`; nothing else (no `transformers`,
`safetensors`, `tokenizers` or `peft`). The byte-level BPE, its trainer, the safetensors writer/reader and
GPT-2 are imported from scripts/make_fixtures.py (its main() only runs as a script), and the DPO preference
pairs from scripts/make_dpo_fixtures.py. The Llama/Qwen2 forward pass, RoPE and its scalings, and LoRA are
written out below from the architecture, following Hugging Face's LlamaForCausalLM / Qwen2ForCausalLM and
PEFT's LoRA semantics, so the fixtures are an independent reference for the TypeScript implementation.

The output is deterministic (fixed seeds, one thread, deterministic torch algorithms): running the script
twice produces byte-identical files.

What it writes:
  tests/fixtures/llama_tiny/         llama, GQA 4/2 heads, no rope scaling, tied embeddings, weights in
                                     two shards + model.safetensors.index.json
  tests/fixtures/llama_tiny_llama3/  llama, 4 heads / 1 kv head, explicit head_dim 16, "llama3" rope
                                     scaling, untied lm_head
  tests/fixtures/qwen2_tiny/         qwen2 (q/k/v biases), GQA 4/2, "yarn" rope scaling (legacy "type"
                                     key), tied, generation_config.json with eos [<|im_end|>, <|endoftext|>]
  each with config.json, tokenizer.json, tokenizer_config.json (ChatML template) and expected.json
  tests/fixtures/lora/llama_tiny/    PEFT adapter (adapter_config.json, adapter_model.safetensors) for
                                     llama_tiny, plus expected.json
  tests/fixtures/lora/gpt2_tiny/     PEFT adapter for gpt2_tiny (Conv1D, fan_in_fan_out), plus expected.json

Everything is computed in float64 from the float32 weights exactly as stored. A completion's log-prob is
the SUM of log p over its tokens and one final terminator: the sequence is prompt_ids + completion_ids +
[eos] (eos = <|endoftext|> = 316), and for the chat check prompt_ids + answer_ids + [<|im_end|> = 318].
"""

import json
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (sets one thread and deterministic algorithms on import)
import make_dpo_fixtures as dpo  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures")
GPT2_DIR = os.path.join(OUT, "gpt2_tiny")

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# make_fixtures' cases plus one long sequence (past both scaled models' original_max_position_embeddings).
CASES = mf.CASES + [
    {
        "prompt": "Question: what is two plus two? Answer: four. What is 12+7? The answer is",
        "completion": " 19. What is 3+4? The answer is 7.",
    }
]
LOGITS_CASES = [1, 4]
GREEDY_STEPS = 12
CHAT_MESSAGES = [
    {"role": "system", "content": "Answer with the number."},
    {"role": "user", "content": "What is 12+7?"},
]
CHAT_ANSWER = "The answer is 19."
GRAD_DIGITS = 8  # large gradient / weight arrays: 8 significant digits (float32 tests need far fewer)

# ---------------------------------------------------------------------------------------------------
# Tokenizer: make_fixtures' BPE plus two added special tokens, split out before BPE (as HF does)
# ---------------------------------------------------------------------------------------------------


class ChatTokenizer(mf.Tokenizer):
    """The 316-token BPE + <|endoftext|> (316), with <|im_start|> (317) and <|im_end|> (318) as added
    special tokens that live only in tokenizer.json's added_tokens (not in the BPE model's vocab, as in
    Qwen2's tokenizer.json). encode() first splits the text on every added token (leftmost, longest
    first), then BPE-encodes the pieces in between independently."""

    def __init__(self, merges):
        super().__init__(merges)
        assert self.eos_id == 316
        self.added = {mf.EOS: self.eos_id, IM_START: self.eos_id + 1, IM_END: self.eos_id + 2}
        self.inv = dict(self.inv)
        self.inv[self.added[IM_START]] = IM_START
        self.inv[self.added[IM_END]] = IM_END
        self.n_tokens = len(self.inv)
        by_len = sorted(self.added, key=lambda t: (-len(t), t))
        self.special_re = re.compile("|".join(re.escape(t) for t in by_len))

    def encode(self, text):
        ids, pos = [], 0
        for m in self.special_re.finditer(text):
            ids.extend(super().encode(text[pos : m.start()]))
            ids.append(self.added[m.group(0)])
            pos = m.end()
        ids.extend(super().encode(text[pos:]))
        return ids

    def decode(self, ids):
        """Byte-level decode with added tokens emitted verbatim (skip_special_tokens=False)."""
        out, chunk = [], []
        specials = set(self.added.values())
        for i in ids + [None]:
            if i is None or i in specials:
                if chunk:
                    raw = bytes(mf.BYTE_DECODER[c] for c in "".join(self.inv[j] for j in chunk))
                    out.append(raw.decode("utf-8", errors="replace"))
                    chunk = []
                if i is not None:
                    out.append(self.inv[i])
            else:
                chunk.append(i)
        return "".join(out)

    def to_hf_json(self):
        out = super().to_hf_json()
        for content in (IM_START, IM_END):
            out["added_tokens"].append(
                {
                    "id": self.added[content],
                    "content": content,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            )
        return out


def tokenizer_config(m, tok):
    def entry(content, normalized):
        return {
            "content": content,
            "lstrip": False,
            "normalized": normalized,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    return {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": None,
        "eos_token": mf.EOS,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": m["max_position_embeddings"],
        "additional_special_tokens": [IM_START, IM_END],
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tok.added[mf.EOS]): entry(mf.EOS, True),
            str(tok.added[IM_START]): entry(IM_START, False),
            str(tok.added[IM_END]): entry(IM_END, False),
        },
    }


def render_chatml(messages, add_generation_prompt):
    """CHAT_TEMPLATE, evaluated by hand."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

MODELS = [
    {
        "dir": "llama_tiny",
        "model_type": "llama",
        "seed": 4321,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": None,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "sharded": True,
        "grad_names": [
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
        ],
    },
    {
        "dir": "llama_tiny_llama3",
        "model_type": "llama",
        "seed": 8765,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "intermediate_size": 40,
        "max_position_embeddings": 64,
        "rope_theta": 100.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "sharded": False,
        "grad_names": [
            "model.embed_tokens.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "lm_head.weight",
        ],
    },
    {
        "dir": "qwen2_tiny",
        "model_type": "qwen2",
        "seed": 2468,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": None,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        # Not 1e6: with head_dim 8 and original_max_position_embeddings 16, theta 1e6 gives the correction
        # range [0, 1] and the ramp [0, 1, 1, 1] -- no dimension in between, and the same ramp with or
        # without floor/ceil or with max_position_embeddings in place of the original. Theta 10 gives
        # range [0, 2] and ramp [0, 0.5, 1, 1], which tells those apart.
        "rope_theta": 10.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "sharded": False,
        "grad_names": [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
        ],
    },
]


def round_up(n, k):
    return (n + k - 1) // k * k


def hf_config(m, tok):
    V = round_up(tok.n_tokens, 8)
    common = {
        "vocab_size": V,
        "hidden_size": m["hidden_size"],
        "intermediate_size": m["intermediate_size"],
        "num_hidden_layers": 2,
        "num_attention_heads": m["num_attention_heads"],
        "num_key_value_heads": m["num_key_value_heads"],
    }
    if m["head_dim"] is not None:
        common["head_dim"] = m["head_dim"]
    common.update(
        {
            "hidden_act": "silu",
            "max_position_embeddings": m["max_position_embeddings"],
            "initializer_range": 0.2,
            "rms_norm_eps": m["rms_norm_eps"],
            "rope_theta": m["rope_theta"],
            "rope_scaling": m["rope_scaling"],
            "attention_dropout": 0.0,
        }
    )
    if m["model_type"] == "llama":
        cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **common}
        cfg.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    else:
        cfg = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **common}
        cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": 2})
    cfg.update(
        {
            "use_cache": True,
            "bos_token_id": None,
            "eos_token_id": tok.eos_id,
            "tie_word_embeddings": m["tie_word_embeddings"],
            "torch_dtype": "float32",
        }
    )
    return cfg


def dims(cfg):
    C, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or C // H
    return C, H, Hkv, D


def has_qkv_bias(cfg):
    return cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)


def init_params(cfg, seed):
    """Random float32 weights with HF LlamaForCausalLM / Qwen2ForCausalLM names and nn.Linear shapes."""
    g = torch.Generator().manual_seed(seed)
    C, H, Hkv, D = dims(cfg)
    V, F = cfg["vocab_size"], cfg["intermediate_size"]

    def mat(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * 0.2

    def bias(n):
        return torch.randn(n, generator=g, dtype=torch.float32) * 0.1

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g, dtype=torch.float32)

    p = {"model.embed_tokens.weight": mat(V, C)}
    for i in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{i}."
        p[h + "input_layernorm.weight"] = norm(C)
        p[h + "self_attn.q_proj.weight"] = mat(H * D, C)
        p[h + "self_attn.k_proj.weight"] = mat(Hkv * D, C)
        p[h + "self_attn.v_proj.weight"] = mat(Hkv * D, C)
        if has_qkv_bias(cfg):
            p[h + "self_attn.q_proj.bias"] = bias(H * D)
            p[h + "self_attn.k_proj.bias"] = bias(Hkv * D)
            p[h + "self_attn.v_proj.bias"] = bias(Hkv * D)
        p[h + "self_attn.o_proj.weight"] = mat(C, H * D)
        p[h + "post_attention_layernorm.weight"] = norm(C)
        p[h + "mlp.gate_proj.weight"] = mat(F, C)
        p[h + "mlp.up_proj.weight"] = mat(F, C)
        p[h + "mlp.down_proj.weight"] = mat(C, F)
    p["model.norm.weight"] = norm(C)
    if not cfg["tie_word_embeddings"]:
        p["lm_head.weight"] = mat(V, C)
    return p


# ---------------------------------------------------------------------------------------------------
# RoPE and its scalings (float64, from the formulas)
# ---------------------------------------------------------------------------------------------------


def rope_parameters(cfg):
    """(inv_freq [D/2] float64, attention_factor, info dict for expected.json)."""
    _, _, _, D = dims(cfg)
    theta = float(cfg["rope_theta"])
    j = torch.arange(0, D // 2, dtype=torch.float64)
    inv = 1.0 / theta ** (2 * j / D)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    info = {"rope_type": kind, "head_dim": D, "rope_theta": theta, "inv_freq_default": inv.tolist()}
    attention_factor = 1.0
    if kind == "default":
        pass
    elif kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        out, regimes = [], []
        for f in inv.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < orig / hi:
                out.append(f)
                regimes.append("unchanged")
            elif wavelen > orig / lo:
                out.append(f / factor)
                regimes.append("divided")
            else:
                smooth = (orig / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
                regimes.append("smoothed")
        inv = torch.tensor(out, dtype=torch.float64)
        info["regimes"] = regimes
    elif kind == "yarn":
        factor = rs["factor"]
        orig = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        beta_fast = rs.get("beta_fast") or 32
        beta_slow = rs.get("beta_slow") or 1
        attention_factor = rs.get("attention_factor")
        if attention_factor is None:
            attention_factor = 0.1 * math.log(factor) + 1.0

        def corr_dim(rotations):
            return D * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), D - 1)
        hi_r = high + 0.001 if low == high else high
        ramp = ((j - low) / (hi_r - low)).clamp(0, 1)
        extrapolation = 1 - ramp
        inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
        info.update({"correction_range": [low, high], "ramp": ramp.tolist()})
    else:
        raise ValueError(f"Cannot compute RoPE as rope_type is unsupported: current value is {kind!r}")
    info["inv_freq"] = inv.tolist()
    info["attention_factor"] = attention_factor
    return inv, attention_factor, info


def rope_cos_sin(cfg, T):
    inv, af, _ = rope_parameters(cfg)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # [T, D/2]
    emb = torch.cat([angles, angles], dim=-1)  # [T, D]
    return emb.cos() * af, emb.sin() * af


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def check_rope_convention(cfg, T=40):
    """rotate_half RoPE == Meta's complex rotation of the pairs (j, j + D/2) by angle pos * inv_freq[j]."""
    _, _, _, D = dims(cfg)
    inv, af, _ = rope_parameters(cfg)
    cos, sin = rope_cos_sin(cfg, T)
    q = torch.randn(T, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    hf = q * cos + rotate_half(q) * sin
    z = torch.complex(q[:, : D // 2], q[:, D // 2 :])
    rot = z * torch.polar(torch.full((T, D // 2), af, dtype=torch.float64), torch.arange(T)[:, None] * inv)
    assert (torch.cat([rot.real, rot.imag], dim=-1) - hf).abs().max().item() < 1e-12


# ---------------------------------------------------------------------------------------------------
# Llama / Qwen2 forward, from scratch
# ---------------------------------------------------------------------------------------------------


def forward(p, cfg, ids, lora=None):
    """Logits [T, V] for one sequence (positions 0..T-1); computes in the dtype of the parameters.

    lora: None or {"scaling": s, "modules": {module name: (A [r, in], B [out, r])}}; a targeted linear
    computes x W^T (+ b) + (x A^T B^T) * s (PEFT's LoRA forward, dropout 0)."""
    C, H, Hkv, D = dims(cfg)
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    idx = torch.tensor(ids, dtype=torch.long)
    dtype = p["model.embed_tokens.weight"].dtype

    def rms(x, name):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * p[name + ".weight"]

    def linear(x, name):
        y = x @ p[name + ".weight"].T
        if name + ".bias" in p:
            y = y + p[name + ".bias"]
        if lora is not None and name in lora["modules"]:
            A, B = lora["modules"][name]
            y = y + (x @ A.T @ B.T) * lora["scaling"]
        return y

    cos, sin = rope_cos_sin(cfg, T)
    cos, sin = cos.to(dtype), sin.to(dtype)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    x = p["model.embed_tokens.weight"][idx]  # [T, C]
    for i in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{i}."
        a = rms(x, h + "input_layernorm")
        q = linear(a, h + "self_attn.q_proj").view(T, H, D).transpose(0, 1)  # [H, T, D]
        k = linear(a, h + "self_attn.k_proj").view(T, Hkv, D).transpose(0, 1)  # [Hkv, T, D]
        v = linear(a, h + "self_attn.v_proj").view(T, Hkv, D).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA (HF repeat_kv): query head hq reads kv head hq // (H / Hkv).
        k = k.repeat_interleave(H // Hkv, dim=0)
        v = v.repeat_interleave(H // Hkv, dim=0)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # [H, T, T]
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(T, H * D)
        x = x + linear(y, h + "self_attn.o_proj")
        m = rms(x, h + "post_attention_layernorm")
        gate = linear(m, h + "mlp.gate_proj")
        x = x + linear(gate * torch.sigmoid(gate) * linear(m, h + "mlp.up_proj"), h + "mlp.down_proj")
    x = rms(x, "model.norm")
    head = p["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else p["lm_head.weight"]
    return x @ head.T


def completion_logps(p, cfg, input_ids, n_prompt, lora=None):
    """log p(token_t | tokens_<t) for t = n_prompt .. T-1, and the logits."""
    logits = forward(p, cfg, input_ids, lora)
    logp = logits.log_softmax(-1)
    pos = torch.arange(n_prompt - 1, len(input_ids) - 1)
    tgt = torch.tensor(input_ids[n_prompt:], dtype=torch.long)
    return logp[pos, tgt], logits


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def to64(p32, grad=False):
    return {k: v.to(torch.float64).requires_grad_(grad) for k, v in p32.items()}


def tensor_json(t, digits=GRAD_DIGITS):
    t = t.detach()
    return {"shape": list(t.shape), "values": [mf.sig(x, digits) for x in t.reshape(-1).tolist()]}


def encode_checked(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text, text
    return ids


def check_round_trip(path, tensors):
    back = dpo.load_f32(path)
    assert sorted(back) == sorted(tensors), path
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    return back


def write_json_like_hf(path, obj):
    """HF's index files and PEFT's adapter_config.json: indent 2, sorted keys."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_weights(d, p32, sharded):
    """model.safetensors, or two shards + model.safetensors.index.json; returns the weights read back."""
    for fname in os.listdir(d):
        if fname.endswith(".safetensors") or fname.endswith(".safetensors.index.json"):
            os.remove(os.path.join(d, fname))
    if not sharded:
        path = os.path.join(d, "model.safetensors")
        mf.write_safetensors(path, {k: mf.f32_entry(v) for k, v in p32.items()})
        return check_round_trip(path, p32)
    names = sorted(p32)
    first = [n for n in names if n == "model.embed_tokens.weight" or n.startswith("model.layers.0.")]
    shards = [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", [n for n in names if n not in first]),
    ]
    weight_map, total, back = {}, 0, {}
    for fname, members in shards:
        entries = {n: mf.f32_entry(p32[n]) for n in members}
        mf.write_safetensors(os.path.join(d, fname), entries)
        back.update(check_round_trip(os.path.join(d, fname), {n: p32[n] for n in members}))
        for n in members:
            weight_map[n] = fname
            total += len(entries[n][2])
    write_json_like_hf(
        os.path.join(d, "model.safetensors.index.json"), {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    assert sorted(back) == names
    return back


def score_cases(tok, cfg, p64, lora=None, cases=CASES, logits_cases=()):
    """Per-case dicts as in gpt2_tiny/expected.json, the summed log-prob (a graph), and logits entries."""
    out, total, logits_out = [], None, []
    for ci, c in enumerate(cases):
        pids, cids = encode_checked(tok, c["prompt"]), encode_checked(tok, c["completion"])
        input_ids = pids + cids + [tok.eos_id]
        assert len(input_ids) <= cfg["max_position_embeddings"], len(input_ids)
        lps, logits = completion_logps(p64, cfg, input_ids, len(pids), lora)
        s = lps.sum()
        total = s if total is None else total + s
        n = len(cids) + 1
        out.append(
            {
                "prompt": c["prompt"],
                "completion": c["completion"],
                "prompt_ids": pids,
                "completion_ids": cids,
                "input_ids": input_ids,
                "n_tokens": n,
                "token_logps": lps.detach().tolist(),
                "logp_sum": s.item(),
                "logp_mean": s.item() / n,
            }
        )
        if ci in logits_cases:
            logits_out.append((ci, input_ids, logits.detach()))
    return out, total, logits_out


# ---------------------------------------------------------------------------------------------------
# Model fixtures
# ---------------------------------------------------------------------------------------------------


def print_rope(name, info):
    inv = info["inv_freq"]
    print(f"  {name}: rope_type {info['rope_type']}, head_dim {info['head_dim']}, theta {info['rope_theta']:g}")
    if "regimes" in info:
        for jj, (f0, f, r) in enumerate(zip(info["inv_freq_default"], inv, info["regimes"])):
            print(f"    j={jj}: wavelen {2 * math.pi / f0:8.2f} -> {r:9s} inv_freq {f0:.6g} -> {f:.6g}")
        assert set(info["regimes"]) == {"unchanged", "smoothed", "divided"}, "llama3 rope: not all three regimes"
    if "ramp" in info:
        low, high = info["correction_range"]
        af = info["attention_factor"]
        print(f"    yarn correction range [{low}, {high}], ramp {info['ramp']}, attention_factor {af:.6f}")
        assert any(0 < r < 1 for r in info["ramp"]), "yarn ramp has no dimension strictly between 0 and 1"
        assert 0 in info["ramp"] and 1 in info["ramp"]


def yarn_alternatives(cfg):
    """The ramp a wrong reading of yarn would give (no floor/ceil; max_position_embeddings as original)."""
    rs = cfg["rope_scaling"]
    _, _, _, D = dims(cfg)
    theta = cfg["rope_theta"]

    def ramp(orig, truncate):
        def cd(rot):
            return D * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = cd(32), cd(1)
        if truncate:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, D - 1)
        return [round(min(max((jj - lo) / (hi - lo), 0), 1), 4) for jj in range(D // 2)]

    return {
        "no_truncate": ramp(rs["original_max_position_embeddings"], False),
        "max_position_embeddings": ramp(cfg["max_position_embeddings"], True),
    }


def make_chat(tok, cfg, p64):
    prompt_text = render_chatml(CHAT_MESSAGES, True)
    full_text = render_chatml(CHAT_MESSAGES + [{"role": "assistant", "content": CHAT_ANSWER}], False)
    assert full_text == prompt_text + CHAT_ANSWER + IM_END + "\n"
    prompt_ids = encode_checked(tok, prompt_text)
    answer_ids = encode_checked(tok, CHAT_ANSWER)
    full_ids = encode_checked(tok, full_text)
    end = tok.added[IM_END]
    assert full_ids == prompt_ids + answer_ids + [end] + tok.encode("\n")
    assert prompt_ids.count(tok.added[IM_START]) == 3 and prompt_ids.count(end) == 2
    input_ids = prompt_ids + answer_ids + [end]
    assert len(input_ids) <= cfg["max_position_embeddings"]
    with torch.no_grad():
        lps, _ = completion_logps(p64, cfg, input_ids, len(prompt_ids))
    n = len(answer_ids) + 1
    return {
        "description": (
            "messages rendered with tokenizer_config.json's chat_template and add_generation_prompt true "
            "give 'text' and its 'ids' (added tokens split out before BPE). The answer is scored with "
            "<|im_end|> as the terminator: input_ids = ids + answer_ids + [end_token_id], token_logps over "
            "positions len(ids)..T-1. full_text / full_ids: the conversation with the answer appended as an "
            "assistant message (add_generation_prompt false), = text + answer + '<|im_end|>' + '\\n'."
        ),
        "messages": CHAT_MESSAGES,
        "add_generation_prompt": True,
        "text": prompt_text,
        "ids": prompt_ids,
        "answer": CHAT_ANSWER,
        "answer_ids": answer_ids,
        "full_text": full_text,
        "full_ids": full_ids,
        "end_token_id": end,
        "input_ids": input_ids,
        "n_tokens": n,
        "token_logps": lps.tolist(),
        "logp_sum": lps.sum().item(),
        "logp_mean": lps.sum().item() / n,
    }


def make_model(m, tok):
    d = os.path.join(OUT, m["dir"])
    os.makedirs(d, exist_ok=True)
    mf.dump_json(os.path.join(d, "config.json"), hf_config(m, tok))
    mf.dump_json(os.path.join(d, "tokenizer.json"), tok.to_hf_json())
    mf.dump_json(os.path.join(d, "tokenizer_config.json"), tokenizer_config(m, tok))
    gen_path = os.path.join(d, "generation_config.json")
    if m["model_type"] == "qwen2":
        mf.dump_json(gen_path, {"eos_token_id": [tok.added[IM_END], tok.eos_id], "pad_token_id": tok.eos_id})
    elif os.path.exists(gen_path):
        os.remove(gen_path)
    with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)  # everything below runs from the config as written

    p32 = save_weights(d, init_params(cfg, m["seed"]), m["sharded"])
    _, _, rope_info = rope_parameters(cfg)
    print_rope(m["dir"], rope_info)
    check_rope_convention(cfg)
    if rope_info["rope_type"] == "yarn":
        alt = yarn_alternatives(cfg)
        print(
            f"    (misreadings would give: no floor/ceil {alt['no_truncate']}, "
            f"max_position_embeddings {alt['max_position_embeddings']})"
        )
        assert rope_info["ramp"] not in alt.values()

    p64 = to64(p32, grad=True)
    cases, total, logit_rows = score_cases(tok, cfg, p64, logits_cases=LOGITS_CASES)
    longest = max(len(c["input_ids"]) for c in cases)
    orig = (cfg["rope_scaling"] or {}).get("original_max_position_embeddings")
    print(f"  {m['dir']}: {len(cases)} cases, longest {longest} tokens (original_max_position_embeddings {orig})")
    if orig is not None:
        assert longest > orig

    logits_out = []
    for ci, input_ids, l64 in logit_rows:
        with torch.no_grad():
            l32 = forward(p32, cfg, input_ids).to(torch.float64)
        err = (l64 - l32).abs().max().item()
        assert err < 1e-4, f"float32 logits differ by {err}"
        print(f"  {m['dir']} case {ci}: T={len(input_ids)} float32 vs float64 max |dlogit| = {err:.2e}")
        logits_out.append(
            {
                "case_index": ci,
                "shape": list(l64.shape),
                "values": [[mf.sig(x, 7) for x in row] for row in l64.tolist()],
            }
        )

    total.backward()
    grads = {}
    for name in m["grad_names"]:
        grads[name] = tensor_json(p64[name].grad)
    # Finite-difference spot check on two entries.
    with torch.no_grad():
        for name in (m["grad_names"][1], m["grad_names"][2]):
            h = 1e-6
            plus, minus = to64(p32), to64(p32)
            plus[name].view(-1)[5] += h
            minus[name].view(-1)[5] -= h
            up = score_cases(tok, cfg, plus)[1]
            down = score_cases(tok, cfg, minus)[1]
            fd = (up - down).item() / (2 * h)
            ad = p64[name].grad.view(-1)[5].item()
            assert abs(fd - ad) < 1e-5 * max(1.0, abs(ad)), (name, fd, ad)

    greedy = []
    never = {tok.eos_id, tok.added[IM_START], tok.added[IM_END]} | set(range(tok.n_tokens, cfg["vocab_size"]))
    with torch.no_grad():
        for prompt in mf.GREEDY_PROMPTS:
            ids = encode_checked(tok, prompt)
            new, gaps = [], []
            for _ in range(GREEDY_STEPS):
                last = forward(p64, cfg, ids + new)[-1]
                top2 = torch.topk(last, 2).values
                gaps.append((top2[0] - top2[1]).item())
                new.append(int(last.argmax().item()))
            print(f"  {m['dir']} greedy {prompt!r}: {tok.decode(new)!r}, min top-2 logit gap {min(gaps):.2e}")
            assert min(gaps) > 1e-3, "greedy choice too close to a tie to be a robust fixture"
            assert not (set(new) & never), "greedy generated a special or padding token"
            greedy.append(
                {"prompt": prompt, "prompt_ids": ids, "generated_ids": new, "min_top2_logit_gap": mf.sig(min(gaps), 6)}
            )

    chat = make_chat(tok, cfg, to64(p32))
    print(f"  {m['dir']} chat: {len(chat['input_ids'])} tokens, answer logp {chat['logp_sum']:.6f}")

    expected = {
        "description": (
            "Reference values from scripts/make_llama_fixtures.py (float64 torch, weights as stored). "
            "token_logps[j] = log_softmax(logits[t-1])[input_ids[t]] for t = len(prompt_ids) + j, covering the "
            "completion tokens and the final eos. logits: full [T, vocab_size] logits, 7 significant digits. "
            "grads = d(sum over cases of logp_sum)/d(param), flattened row-major, "
            f"{GRAD_DIGITS} significant digits. greedy: argmax over all vocab_size logits, 12 steps, no stop "
            "on eos. rope: the inverse frequencies [head_dim/2] after rope_scaling, and the factor cos and sin "
            "are multiplied by."
            + (
                " Yarn uses rope_scaling.original_max_position_embeddings for the correction range (current "
                "transformers; older releases used max_position_embeddings). rope_theta is 10, not 1e6: with "
                "head_dim 8 and original_max_position_embeddings 16, theta 1e6 gives the ramp [0, 1, 1, 1], "
                "which no dimension falls strictly inside."
                if rope_info["rope_type"] == "yarn"
                else ""
            )
        ),
        "eos_token_id": tok.eos_id,
        "vocab_size": cfg["vocab_size"],
        "rope": rope_info,
        "cases": cases,
        "logits": logits_out,
        "greedy": greedy,
        "grads": grads,
        "chat": chat,
    }
    mf.dump_json(os.path.join(d, "expected.json"), expected)
    return cfg, p32


# ---------------------------------------------------------------------------------------------------
# LoRA (PEFT layout)
# ---------------------------------------------------------------------------------------------------


def adapter_config(base, r, alpha, targets, fan_in_fan_out):
    """adapter_config.json with the keys PEFT's LoraConfig saves."""
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


def init_lora(modules, r, seed):
    """{module: (A [r, in], B [out, r])} float32, std 0.2 both (B nonzero so the adapter matters)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (n_in, n_out) in modules.items():
        A = torch.randn(r, n_in, generator=g, dtype=torch.float32) * 0.2
        B = torch.randn(n_out, r, generator=g, dtype=torch.float32) * 0.2
        out[name] = (A, B)
    return out


def peft_name(module, ab):
    return f"base_model.model.{module}.lora_{ab}.weight"


def save_adapter(d, cfg_json, lora32):
    os.makedirs(d, exist_ok=True)
    write_json_like_hf(os.path.join(d, "adapter_config.json"), cfg_json)
    tensors = {}
    for module, (A, B) in lora32.items():
        tensors[peft_name(module, "A")] = A
        tensors[peft_name(module, "B")] = B
    path = os.path.join(d, "adapter_model.safetensors")
    mf.write_safetensors(path, {k: mf.f32_entry(v) for k, v in tensors.items()})
    back = check_round_trip(path, tensors)
    return {m: (back[peft_name(m, "A")], back[peft_name(m, "B")]) for m in lora32}


def lora64(lora32, grad):
    return {
        m: (A.to(torch.float64).requires_grad_(grad), B.to(torch.float64).requires_grad_(grad))
        for m, (A, B) in lora32.items()
    }


def lora_expected(tok, score_fn, lora32, scaling, base_cases, merged, adapter_meta, layer0):
    """expected.json of an adapter. score_fn(lora or None, prompt_ids, completion_ids) -> token log-probs
    (completion + eos) with the float64 adapter {module: (A, B)} applied, or with the adapter disabled.
    base_cases: the base fixture's cases, whose texts are scored here too."""
    lo = lora64(lora32, grad=True)
    cases, total = [], None
    for base in base_cases:
        c = {"prompt": base["prompt"], "completion": base["completion"]}
        pids, cids = encode_checked(tok, c["prompt"]), encode_checked(tok, c["completion"])
        assert pids == base["prompt_ids"] and cids == base["completion_ids"]
        lps = score_fn(lo, pids, cids)
        with torch.no_grad():
            base_lps = score_fn(None, pids, cids)
        assert abs(base_lps.sum().item() - base["logp_sum"]) < 1e-10, "adapter-off score differs from the base fixture"
        s = lps.sum()
        total = s if total is None else total + s
        n = len(cids) + 1
        cases.append(
            {
                "prompt": c["prompt"],
                "completion": c["completion"],
                "prompt_ids": pids,
                "completion_ids": cids,
                "input_ids": pids + cids + [tok.eos_id],
                "n_tokens": n,
                "token_logps": lps.detach().tolist(),
                "logp_sum": s.item(),
                "logp_mean": s.item() / n,
                "base_logp_sum": base_lps.sum().item(),
            }
        )
        assert abs(s.item() - base_lps.sum().item()) > 0.05, "the adapter barely changes this case"
    layer0_params = [(peft_name(m, ab), lo[m][0 if ab == "A" else 1]) for m in layer0 for ab in ("A", "B")]
    gs = torch.autograd.grad(total, [t for _, t in layer0_params])
    grads = {name: tensor_json(g) for (name, _), g in zip(layer0_params, gs)}

    # Finite-difference spot check on one A and one B entry.
    with torch.no_grad():
        for which in (0, 1):
            module = layer0[-1]
            h = 1e-6
            vals = []
            for sign in (1, -1):
                pert = lora64(lora32, grad=False)
                pert[module][which].view(-1)[3] += sign * h
                vals.append(sum(score_fn(pert, q["prompt_ids"], q["completion_ids"]).sum() for q in cases).item())
            fd = (vals[0] - vals[1]) / (2 * h)
            ad = grads[peft_name(module, "AB"[which])]["values"][3]
            assert abs(fd - ad) < 1e-5 * max(1.0, abs(ad)), (module, which, fd, ad)

    # DPO: policy = base + adapter, reference = base with the adapter disabled.
    beta = 0.1
    lo = lora64(lora32, grad=True)
    pairs, losses = [], []
    for pr in dpo.PAIRS:
        pids = encode_checked(tok, pr["prompt"])
        cids, rids = encode_checked(tok, pr["chosen"]), encode_checked(tok, pr["rejected"])
        pc, pj = score_fn(lo, pids, cids).sum(), score_fn(lo, pids, rids).sum()
        with torch.no_grad():
            rc, rj = score_fn(None, pids, cids).sum().item(), score_fn(None, pids, rids).sum().item()
        z = (pc - pj) - (rc - rj)
        loss = -torch.nn.functional.logsigmoid(beta * z)
        losses.append(loss)
        pairs.append(
            {
                "prompt": pr["prompt"],
                "chosen": pr["chosen"],
                "rejected": pr["rejected"],
                "prompt_ids": pids,
                "chosen_ids": cids,
                "rejected_ids": rids,
                "chosen_len": len(cids) + 1,
                "rejected_len": len(rids) + 1,
                "policy_chosen_logp": pc.item(),
                "policy_rejected_logp": pj.item(),
                "ref_chosen_logp": rc,
                "ref_rejected_logp": rj,
                "z": z.item(),
                "loss": loss.item(),
            }
        )
        assert abs(-dpo.log_sigmoid(beta * z.item()) - loss.item()) < 1e-12
    mean_loss = torch.stack(losses).mean()
    gs = torch.autograd.grad(mean_loss, [lo[m][0 if ab == "A" else 1] for m in layer0 for ab in ("A", "B")])
    dpo_grads = {peft_name(m, ab): tensor_json(g) for (m, ab), g in zip([(m, ab) for m in layer0 for ab in "AB"], gs)}
    print(f"  lora/{adapter_meta['base'].split('/')[-1]}: dpo loss {mean_loss.item():.6f} (ln 2 = {math.log(2):.6f})")
    assert abs(mean_loss.item() - math.log(2)) > 1e-3

    return {
        "description": (
            "Reference values from scripts/make_llama_fixtures.py (float64 torch, base weights and adapter as "
            "stored). The adapter is applied PEFT's way to every targeted module: y = base(x) + (x A^T B^T) * "
            "scaling, scaling = lora_alpha / r. cases: as in the base model's expected.json, with the adapter "
            "on; base_logp_sum is the same sequence with the adapter disabled (equals the base fixture). "
            "grads = d(sum over cases of logp_sum)/d(tensor) for every lora_A / lora_B of layer 0, by PEFT "
            f"tensor name, flattened row-major, {GRAD_DIGITS} significant digits. merged: base weight + delta "
            "in the base checkpoint's layout and name (nn.Linear [out, in]: delta = B @ A * scaling; GPT-2 "
            "Conv1D [in, out] with fan_in_fan_out: delta = (B @ A)^T * scaling). dpo: the five pairs of "
            "make_dpo_fixtures.py, POLICY = base + adapter, REF = base with the adapter disabled, sigmoid loss, "
            "z = (pc - pr) - (rc - rr), loss = batch mean of -logsigmoid(beta * z); log-probs are sums over the "
            "completion tokens + eos; grads of that loss w.r.t. the layer-0 LoRA tensors."
        ),
        "base": adapter_meta["base"],
        "adapter": {
            "r": adapter_meta["r"],
            "lora_alpha": adapter_meta["lora_alpha"],
            "scaling": scaling,
            "target_modules": adapter_meta["target_modules"],
            "fan_in_fan_out": adapter_meta["fan_in_fan_out"],
            "lora_tensors": sorted(peft_name(m, ab) for m in lora32 for ab in "AB"),
        },
        "eos_token_id": tok.eos_id,
        "cases": cases,
        "grads": grads,
        "merged": merged,
        "dpo": {
            "loss_type": "sigmoid",
            "beta": beta,
            "pairs": pairs,
            "loss": mean_loss.item(),
            "grads": dpo_grads,
        },
    }


def make_lora_llama(tok, cfg, p32):
    r, alpha, targets = 4, 8, ["q_proj", "v_proj", "up_proj", "down_proj"]
    scaling = alpha / r
    C, H, Hkv, D = dims(cfg)
    F = cfg["intermediate_size"]
    shapes = {"q_proj": (C, H * D), "v_proj": (C, Hkv * D), "up_proj": (C, F), "down_proj": (F, C)}
    parent = {"q_proj": "self_attn", "v_proj": "self_attn", "up_proj": "mlp", "down_proj": "mlp"}
    modules = {}
    for i in range(cfg["num_hidden_layers"]):
        for t in targets:
            modules[f"model.layers.{i}.{parent[t]}.{t}"] = shapes[t]
    d = os.path.join(OUT, "lora", "llama_tiny")
    meta = {"base": "tests/fixtures/llama_tiny", "r": r, "lora_alpha": alpha, "target_modules": targets}
    meta["fan_in_fan_out"] = False
    lora32 = save_adapter(d, adapter_config(meta["base"], r, alpha, targets, False), init_lora(modules, r, 97531))
    p64 = to64(p32)

    def score_fn(lo, pids, cids):
        lora = None if lo is None else {"scaling": scaling, "modules": lo}
        return completion_logps(p64, cfg, pids + cids + [tok.eos_id], len(pids), lora)[0]

    # Cross-check: the LoRA forward equals the forward of the merged weights.
    merged_p = dict(p64)
    for m, (A, B) in lora64(lora32, False).items():
        merged_p[m + ".weight"] = p64[m + ".weight"] + B @ A * scaling
    with torch.no_grad():
        ids = tok.encode(CASES[-1]["prompt"])
        a = forward(p64, cfg, ids, {"scaling": scaling, "modules": lora64(lora32, False)})
        b = forward(merged_p, cfg, ids)
        assert (a - b).abs().max().item() < 1e-10
    merged = {
        n: tensor_json(merged_p[n])
        for n in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")
    }

    with open(os.path.join(OUT, "llama_tiny", "expected.json"), encoding="utf-8") as f:
        base_cases = json.load(f)["cases"]
    layer0 = [m for m in modules if m.startswith("model.layers.0.")]
    expected = lora_expected(tok, score_fn, lora32, scaling, base_cases, merged, meta, layer0)
    mf.dump_json(os.path.join(d, "expected.json"), expected)


def make_lora_gpt2():
    tok = dpo.load_tokenizer(os.path.join(GPT2_DIR, "tokenizer.json"))
    with open(os.path.join(GPT2_DIR, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    p32 = dpo.load_f32(os.path.join(GPT2_DIR, "model.safetensors"))
    p64 = to64(p32)
    r, alpha, targets = 2, 3, ["c_attn", "c_proj"]
    scaling = alpha / r
    modules = {}
    for i in range(cfg["n_layer"]):
        for sub in ("attn.c_attn", "attn.c_proj", "mlp.c_proj"):  # "c_proj" matches attn's and mlp's
            name = f"transformer.h.{i}.{sub}"
            n_in, n_out = p32[name + ".weight"].shape  # Conv1D stores [in, out]
            modules[name] = (n_in, n_out)
    d = os.path.join(OUT, "lora", "gpt2_tiny")
    meta = {"base": "tests/fixtures/gpt2_tiny", "r": r, "lora_alpha": alpha, "target_modules": targets}
    meta["fan_in_fan_out"] = True
    lora32 = save_adapter(d, adapter_config(meta["base"], r, alpha, targets, True), init_lora(modules, r, 86420))

    def merge(lo):
        q = dict(p64)
        if lo is not None:
            for m, (A, B) in lo.items():
                q[m + ".weight"] = p64[m + ".weight"] + (B @ A).T * scaling
        return q

    def score_fn(lo, pids, cids):
        return mf.completion_logps(merge(lo), cfg, pids + cids + [tok.eos_id], len(pids))[0]

    # Cross-check the merged Conv1D weight against PEFT's unmerged forward, x W + b + (x A^T B^T) * s.
    g = torch.Generator().manual_seed(1)
    lo = lora64(lora32, False)
    q = merge(lo)
    for m, (A, B) in lo.items():
        x = torch.randn(5, A.shape[1], generator=g, dtype=torch.float64)
        unmerged = x @ p64[m + ".weight"] + p64[m + ".bias"] + (x @ A.T @ B.T) * scaling
        assert (unmerged - (x @ q[m + ".weight"] + p64[m + ".bias"])).abs().max().item() < 1e-12
    merged = {
        n: tensor_json(q[n]) for n in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight")
    }

    with open(os.path.join(GPT2_DIR, "expected.json"), encoding="utf-8") as f:
        base_cases = json.load(f)["cases"]
    layer0 = [m for m in modules if m.startswith("transformer.h.0.")]
    expected = lora_expected(tok, score_fn, lora32, scaling, base_cases, merged, meta, layer0)
    mf.dump_json(os.path.join(d, "expected.json"), expected)


def main():
    tok = ChatTokenizer(mf.train_bpe(mf.CORPUS, mf.N_MERGES))
    gpt2_tok = dpo.load_tokenizer(os.path.join(GPT2_DIR, "tokenizer.json"))
    assert gpt2_tok.merges == tok.merges, "run scripts/make_fixtures.py first"
    print(f"tokenizer: {tok.n_tokens} tokens ({len(tok.merges)} merges + {len(tok.added)} added)")
    built = {}
    for m in MODELS:
        built[m["dir"]] = make_model(m, tok)
    make_lora_llama(tok, *built["llama_tiny"])
    make_lora_gpt2()
    print("wrote", os.path.relpath(OUT, ROOT))


if __name__ == "__main__":
    main()
