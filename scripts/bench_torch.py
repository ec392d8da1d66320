"""PyTorch side of `deno task bench`: the same GPT-2 work as scripts/bench_model.ts, timed the same way.

    /usr/bin/python3 scripts/bench_torch.py '{"n_layer": 4, "n_embd": 256, ...}'

Prints one JSON object: tokens/s for forward scoring, forward+backward, cached generation, and the
process's peak resident memory. Requires Debian's python3-torch. Plain torch (no transformers): the
model is GPT-2 as in scripts/make_fixtures.py, with a KV cache for generation.
"""

import json
import math
import os
import sys
import time

import torch

torch.set_num_threads(os.cpu_count() or 1)


class Gpt2(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        C, V, P, L = c["n_embd"], c["vocab_size"], c["n_positions"], c["n_layer"]
        g = torch.Generator().manual_seed(0)
        w = lambda *s: torch.nn.Parameter(torch.randn(*s, generator=g) * 0.02)
        z = lambda *s: torch.nn.Parameter(torch.zeros(*s))
        o = lambda *s: torch.nn.Parameter(torch.ones(*s))
        self.wte, self.wpe = w(V, C), w(P, C)
        self.blocks = torch.nn.ParameterList()
        for _ in range(L):
            for p in (o(C), z(C), w(C, 3 * C), z(3 * C), w(C, C), z(C), o(C), z(C), w(C, 4 * C), z(4 * C), w(4 * C, C), z(C)):
                self.blocks.append(p)
        self.lnf_w, self.lnf_b = o(C), z(C)

    def forward(self, ids, pos, cache=None):
        c = self.c
        B, T = ids.shape
        C, H = c["n_embd"], c["n_head"]
        D = C // H
        x = self.wte[ids] + self.wpe[pos]
        new_cache = []
        for i in range(c["n_layer"]):
            l1w, l1b, aw, ab, pw, pb, l2w, l2b, fw, fb, qw, qb = self.blocks[i * 12 : (i + 1) * 12]
            h = torch.nn.functional.layer_norm(x, (C,), l1w, l1b, 1e-5)
            q, k, v = (h @ aw + ab).split(C, dim=2)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
            if cache is not None:
                k = torch.cat([cache[i][0], k], 2)
                v = torch.cat([cache[i][1], v], 2)
            new_cache.append((k, v))
            S = k.shape[2]
            att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + (y @ pw + pb)
            h = torch.nn.functional.layer_norm(x, (C,), l2w, l2b, 1e-5)
            x = x + (torch.nn.functional.gelu(h @ fw + fb, approximate="tanh") @ qw + qb)
        return torch.nn.functional.layer_norm(x, (C,), self.lnf_w, self.lnf_b, 1e-5), new_cache


def completion_logp(model, ids, n_prompt):
    B, T = ids.shape
    pos = torch.arange(T).expand(B, T)
    hidden, _ = model(ids, pos)
    h = hidden[:, n_prompt - 1 : T - 1]  # positions predicting the completion
    logits = h @ model.wte.T
    logp = logits.log_softmax(-1).gather(-1, ids[:, n_prompt:].unsqueeze(-1)).squeeze(-1)
    return logp.sum(-1)


def timed(fn, min_seconds, min_iters=2):
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    c = json.loads(sys.argv[1])
    model = Gpt2(c)
    B, T, n_prompt = c["batch"], c["seq_len"], c["prompt_len"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, c["vocab_size"], (B, T), generator=g)
    out = {}
    with torch.no_grad():
        out["forward_s"] = timed(lambda: completion_logp(model, ids, n_prompt), c["min_seconds"])

    def step():
        model.zero_grad(set_to_none=True)
        completion_logp(model, ids, n_prompt).sum().backward()

    out["train_s"] = timed(step, c["min_seconds"])
    gen_prompt = ids[:, : c["gen_prompt_len"]]

    def gen():
        with torch.no_grad():
            P = gen_prompt.shape[1]
            hidden, cache = model(gen_prompt, torch.arange(P).expand(B, P))
            for t in range(c["gen_tokens"]):
                nxt = (hidden[:, -1] @ model.wte.T).argmax(-1, keepdim=True)
                if t < c["gen_tokens"] - 1:  # as in generate.ts: no forward after the last token
                    hidden, cache = model(nxt, torch.full((B, 1), P + t), cache)

    out["generate_s"] = timed(gen, c["min_seconds"], 1)
    out["peak_rss_mb"] = peak_rss_mb()
    out["threads"] = torch.get_num_threads()
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
