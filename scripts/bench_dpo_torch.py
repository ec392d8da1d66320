"""PyTorch side of `deno task bench:dpo`: the same DPO step as scripts/bench_dpo.ts, timed the same way.

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 scripts/bench_dpo_torch.py '{"n_layer": 4, "n_embd": 256, ...}'

Prints one JSON object: seconds per optimizer step and peak resident memory, with the reference
log-probs computed once ("cached") and every step ("uncached"), in that order in this process. The
model is the plain-torch GPT-2 of scripts/bench_torch.py.
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import Gpt2, completion_logp, peak_rss_mb  # noqa: E402


def reference_model(c):
    """A second model with weights of its own (bench_torch's Gpt2 always draws with seed 0)."""
    model = Gpt2(c)
    g = torch.Generator().manual_seed(1000)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02, generator=g)
    return model.requires_grad_(False)


def main():
    c = json.loads(sys.argv[1])
    policy, reference = Gpt2(c), reference_model(c)
    B, P, N = c["pairs"], c["prompt_len"], c["completion_len"]
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, c["vocab_size"], (B, P), generator=g)
    chosen = torch.randint(0, c["vocab_size"], (B, N), generator=g)
    rejected = torch.randint(0, c["vocab_size"], (B, N), generator=g)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)  # [2B, P+N]

    def ref_logps():
        with torch.no_grad():
            return completion_logp(reference, ids, P)

    out = {}
    for mode in ("cached", "uncached"):
        opt = torch.optim.AdamW(policy.parameters(), lr=c["learning_rate"], weight_decay=0.0)
        cached = ref_logps() if mode == "cached" else None

        def step():
            ref = cached if cached is not None else ref_logps()
            opt.zero_grad(set_to_none=True)
            logp = completion_logp(policy, ids, P)  # chosen and rejected in one batch
            z = (logp[:B] - logp[B:]) - (ref[:B] - ref[B:])
            loss = -torch.nn.functional.logsigmoid(c["beta"] * z).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            return loss.item()

        step()  # warm-up
        n, start = 0, time.perf_counter()
        while n < c["min_iters"] or time.perf_counter() - start < c["min_seconds"]:
            step()
            n += 1
        out[mode] = {"step_s": (time.perf_counter() - start) / n, "peak_rss_mb": peak_rss_mb()}
        del opt
    out["threads"] = torch.get_num_threads()
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
