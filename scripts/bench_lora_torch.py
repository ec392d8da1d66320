"""PyTorch side of `deno task bench:lora`: the DPO step of scripts/bench_lora.ts, full or with LoRA.

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 scripts/bench_lora_torch.py '{"mode": "lora", "target_modules": ...}'

`mode` "full": a policy, a separate reference and AdamW over every weight. "lora": a frozen base with
LoRA's A and B on the targeted linear layers (PEFT's computation: y = x W + (x A^T) B^T * alpha / r, B
starting at zero), AdamW over A and B only, the reference being the base with the adapter off, scored
under no_grad. Reference log-probs are computed once (cached), as in the trainer. Prints one JSON object:
step time, peak resident memory, trainable parameters and optimizer state. Plain torch (no peft, no
transformers): GPT-2 is scripts/bench_torch.py's (its weights and initialization) with a forward that
routes every linear layer through the adapter; Llama is written out below.
"""

import json
import math
import sys

import torch
import torch.nn.functional as F

from bench_torch import Gpt2, completion_logp, peak_rss_mb, timed


class Lora:
    """A [r, in] and B [out, r] per adapted module, initialized as PEFT does; off, the model is its base."""

    def __init__(self, modules, r, alpha, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.scale, self.enabled, self.pairs = alpha / r, True, {}
        for name, (n_in, n_out) in modules.items():
            bound = 1 / math.sqrt(n_in)
            a = torch.nn.Parameter((torch.rand(r, n_in, generator=g) * 2 - 1) * bound)
            self.pairs[name] = (a, torch.nn.Parameter(torch.zeros(n_out, r)))

    def parameters(self):
        return [p for pair in self.pairs.values() for p in pair]


def targeted(linears, targets):
    """PEFT's matching: every linear layer for 'all-linear', else a name or a dotted suffix of one."""
    if targets == "all-linear":
        return linears
    return {n: s for n, s in linears.items() if any(n == t or n.endswith("." + t) for t in targets)}


class WithLora:
    """`lin`: a linear layer plus the adapter's update when one is attached and enabled."""

    lora = None

    def lin(self, name, x, w, b=None, conv1d=False):
        y = x @ w if conv1d else F.linear(x, w)  # Conv1D stores [in, out], nn.Linear [out, in]
        if b is not None:
            y = y + b
        if self.lora is not None and self.lora.enabled and name in self.lora.pairs:
            a, bb = self.lora.pairs[name]
            y = y + (x @ a.T) @ bb.T * self.lora.scale
        return y


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v with a causal mask, for [B, H, T, D]."""
    T, D = q.shape[2], q.shape[3]
    att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    return att @ v


class Gpt2Lora(WithLora, Gpt2):
    def linears(self):
        C, F4 = self.c["n_embd"], 4 * self.c["n_embd"]
        out = {}
        for i in range(self.c["n_layer"]):
            p = f"transformer.h.{i}"
            out |= {f"{p}.attn.c_attn": (C, 3 * C), f"{p}.attn.c_proj": (C, C), f"{p}.mlp.c_fc": (C, F4), f"{p}.mlp.c_proj": (F4, C)}
        return out

    def forward(self, ids, pos):
        c = self.c
        B, T = ids.shape
        C, H = c["n_embd"], c["n_head"]
        x = self.wte[ids] + self.wpe[pos]
        for i in range(c["n_layer"]):
            l1w, l1b, aw, ab, pw, pb, l2w, l2b, fw, fb, qw, qb = self.blocks[i * 12 : (i + 1) * 12]
            p = f"transformer.h.{i}"
            h = F.layer_norm(x, (C,), l1w, l1b, 1e-5)
            q, k, v = self.lin(f"{p}.attn.c_attn", h, aw, ab, True).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
            x = x + self.lin(f"{p}.attn.c_proj", y, pw, pb, True)
            h = F.layer_norm(x, (C,), l2w, l2b, 1e-5)
            h = F.gelu(self.lin(f"{p}.mlp.c_fc", h, fw, fb, True), approximate="tanh")
            x = x + self.lin(f"{p}.mlp.c_proj", h, qw, qb, True)
        return F.layer_norm(x, (C,), self.lnf_w, self.lnf_b, 1e-5), None


class Llama(WithLora, torch.nn.Module):
    """Llama with grouped-query attention, RoPE, RMSNorm, SwiGLU and tied embeddings; HF's initialization."""

    def __init__(self, c, seed=0):
        super().__init__()
        self.c = c
        C, V, I = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
        H, K = c["num_attention_heads"], c["num_key_value_heads"]
        D = C // H
        g = torch.Generator().manual_seed(seed)
        w = lambda *s: torch.nn.Parameter(torch.randn(*s, generator=g) * 0.02)
        o = lambda *s: torch.nn.Parameter(torch.ones(*s))
        self.wte = w(V, C)  # tied: also the LM head, as completion_logp expects
        self.shapes = {"q_proj": (C, H * D), "k_proj": (C, K * D), "v_proj": (C, K * D), "o_proj": (H * D, C)}
        self.shapes |= {"gate_proj": (C, I), "up_proj": (C, I), "down_proj": (I, C)}
        self.layers = torch.nn.ParameterList()
        for _ in range(c["num_hidden_layers"]):
            self.layers.append(o(C))  # input_layernorm
            for n_in, n_out in self.shapes.values():
                self.layers.append(w(n_out, n_in))
            self.layers.append(o(C))  # post_attention_layernorm
        self.norm = o(C)
        self.inv_freq = 1 / c["rope_theta"] ** (torch.arange(0, D, 2).float() / D)

    def linears(self):
        kind = lambda n: "self_attn" if n[0] in "qkvo" else "mlp"
        L = self.c["num_hidden_layers"]
        return {f"model.layers.{i}.{kind(n)}.{n}": s for i in range(L) for n, s in self.shapes.items()}

    def forward(self, ids, pos):
        c = self.c
        B, T = ids.shape
        H, K = c["num_attention_heads"], c["num_key_value_heads"]
        D = c["hidden_size"] // H
        rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
        angles = pos[..., None].float() * self.inv_freq  # [B, T, D/2]
        cos, sin = (f(torch.cat([angles, angles], -1))[:, None] for f in (torch.cos, torch.sin))  # [B, 1, T, D]
        rope = lambda t: t * cos + torch.cat([-t[..., D // 2 :], t[..., : D // 2]], -1) * sin
        x = self.wte[ids]
        for i in range(c["num_hidden_layers"]):
            n1, wq, wk, wv, wo, wg, wu, wd, n2 = self.layers[i * 9 : (i + 1) * 9]
            p = f"model.layers.{i}"
            h = rms(x, n1)
            heads = lambda t, n: t.view(B, T, n, D).transpose(1, 2)
            q = rope(heads(self.lin(f"{p}.self_attn.q_proj", h, wq), H))  # [B, H, T, D]
            k = rope(heads(self.lin(f"{p}.self_attn.k_proj", h, wk), K))  # [B, K, T, D]
            v = heads(self.lin(f"{p}.self_attn.v_proj", h, wv), K)
            k, v = (t.repeat_interleave(H // K, dim=1) for t in (k, v))  # HF's repeat_kv
            y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, H * D)
            x = x + self.lin(f"{p}.self_attn.o_proj", y, wo)
            h = rms(x, n2)
            gate = F.silu(self.lin(f"{p}.mlp.gate_proj", h, wg))
            x = x + self.lin(f"{p}.mlp.down_proj", gate * self.lin(f"{p}.mlp.up_proj", h, wu), wd)
        return rms(x, self.norm), None


def main():
    c = json.loads(sys.argv[1])
    B, P, N = c["pairs"], c["prompt_len"], c["completion_len"]
    Model = Llama if c.get("model_type") == "llama" else Gpt2Lora
    policy = Model(c, 0)
    if c["mode"] == "full":
        reference, params = Model(c, 1000).requires_grad_(False), list(policy.parameters())
    else:
        policy.requires_grad_(False)
        policy.lora = Lora(targeted(policy.linears(), c["target_modules"]), c["r"], c["lora_alpha"])
        reference, params = None, policy.lora.parameters()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, c["vocab_size"], (B, P), generator=g)
    chosen = torch.randint(0, c["vocab_size"], (B, N), generator=g)
    rejected = torch.randint(0, c["vocab_size"], (B, N), generator=g)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)  # [2B, P+N]

    with torch.no_grad():  # cached, as precompute_ref_log_probs does
        if reference is not None:
            ref = completion_logp(reference, ids, P)
        else:
            policy.lora.enabled = False
            ref = completion_logp(policy, ids, P)
            policy.lora.enabled = True
    opt = torch.optim.AdamW(params, lr=c["learning_rate"], weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        logp = completion_logp(policy, ids, P)  # chosen and rejected in one batch
        z = (logp[:B] - logp[B:]) - (ref[:B] - ref[B:])
        loss = -F.logsigmoid(c["beta"] * z).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()

    step_s = timed(step, c["min_seconds"])
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    print(
        json.dumps(
            {
                "dpo_step_s": step_s,
                "peak_rss_mb": peak_rss_mb(),
                "trainable": sum(p.numel() for p in params),
                "optimizer_mb": sum(t.numel() * t.element_size() for t in state) / 2**20,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
