"""PyTorch side of `deno task bench`: the same work as scripts/bench.ts, timed the same way.

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 scripts/bench_torch.py '{"n_layer": 4, "n_embd": 256, ...}'

Prints one JSON object: a DPO optimizer step (reference log-probs cached, sigmoid loss, AdamW, clipping
at 1) with where it spent its time, forward-only reference scoring, greedy generation with a KV cache (batched
and a single request), the sgemm peak of this process, and its peak resident memory. Requires Debian's python3-torch.
Plain torch (no transformers): the model is GPT-2 as in scripts/make_fixtures.py.
"""

import json
import math
import os
import sys
import time

import torch

torch.set_num_threads(os.cpu_count() or 1)


class Gpt2(torch.nn.Module):
    def __init__(self, c, seed=0):
        super().__init__()
        self.c = c
        C, V, P, L = c["n_embd"], c["vocab_size"], c["n_positions"], c["n_layer"]
        g = torch.Generator().manual_seed(seed)
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
    """Summed log-probs of every row's tokens after the prompt, the LM head only where they are predicted."""
    B, T = ids.shape
    hidden, _ = model(ids, torch.arange(T).expand(B, T))
    logits = hidden[:, n_prompt - 1 : T - 1] @ model.wte.T
    return logits.log_softmax(-1).gather(-1, ids[:, n_prompt:].unsqueeze(-1)).squeeze(-1).sum(-1)


def timed(fn, min_seconds, min_iters=2, warmup=1, fastest=False):
    """Seconds per call after the warm-up calls: the mean, or the fastest call (as scripts/bench.ts reports)."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if fastest else sum(times) / len(times)


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sgemm_gflops(n=2048, windows=4, min_seconds=0.5):
    """The peak: the best of a few half-second windows, as scripts/bench.ts measures its own."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / min(timed(lambda: a @ b, min_seconds) for _ in range(windows)) / 1e9


def main():
    c = json.loads(sys.argv[1])
    B, P, N = c["pairs"], c["prompt_len"], c["completion_len"]
    policy, reference = Gpt2(c, 0), Gpt2(c, 1000).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, c["vocab_size"], (B, P), generator=g)
    chosen = torch.randint(0, c["vocab_size"], (B, N), generator=g)
    rejected = torch.randint(0, c["vocab_size"], (B, N), generator=g)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)  # [2B, P+N]
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    with torch.no_grad():
        ref = completion_logp(reference, ids, P)  # cached, as precompute_ref_log_probs does
    opt = torch.optim.AdamW(policy.parameters(), lr=c["learning_rate"], weight_decay=0.0)
    phases = {"forward_s": 0.0, "backward_s": 0.0, "update_s": 0.0}

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logp = completion_logp(policy, ids, P)  # chosen and rejected in one batch
        z = (logp[:B] - logp[B:]) - (ref[:B] - ref[B:])
        loss = -torch.nn.functional.logsigmoid(c["beta"] * z).mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        loss.item()
        t3 = time.perf_counter()
        phases["forward_s"] += t1 - t0
        phases["backward_s"] += t2 - t1
        phases["update_s"] += t3 - t2
        phases["n"] = phases.get("n", 0) + 1

    out["dpo_step_s"] = timed(step, c["min_seconds"], warmup=c["dpo_warmup"], fastest=True)
    n = phases.pop("n")
    out["dpo_phases"] = {k: v / n for k, v in phases.items()}
    del opt

    def score():
        with torch.no_grad():
            completion_logp(reference, ids, P).sum().item()

    out["score_s"] = timed(score, c["min_seconds"], fastest=True)

    def generation(G):
        gen_prompt = torch.randint(0, c["vocab_size"], (G, c["gen_prompt_len"]), generator=g)

        def gen():
            with torch.no_grad():
                L = gen_prompt.shape[1]
                hidden, cache = policy(gen_prompt, torch.arange(L).expand(G, L))
                for t in range(c["gen_tokens"]):
                    nxt = (hidden[:, -1] @ policy.wte.T).argmax(-1, keepdim=True)
                    if t < c["gen_tokens"] - 1:  # as in generate.ts: no forward after the last token
                        hidden, cache = policy(nxt, torch.full((G, 1), L + t), cache)

        return timed(gen, c["min_seconds"], fastest=True)

    out["generate_s"] = generation(c["gen_batch"])
    out["generate1_s"] = generation(1)
    out["peak_rss_mb"] = peak_rss_mb()
    out["sgemm_gflops"] = sgemm_gflops()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
