"""Generate tests/fixtures/optimizer/expected.json: PyTorch reference runs for src/dpo/optimizer.ts.

Run from the repository root:

    /usr/bin/python3 scripts/make_optimizer_fixtures.py

Requires Debian's `python3-torch` (torch 1.13); nothing else. Everything is float64 with fixed seeds, so the
output is deterministic and a rerun gives a byte-identical file.

What it records, for three named parameters `a` [3, 4], `b` [5], `c` [2, 2, 3] and four steps of seeded
gradients (step 2's gradient is large, so clipping triggers there):
  - `torch.optim.AdamW` (lr 1e-2, weight decay 0.1, betas (0.9, 0.999), eps 1e-8) with
    `torch.nn.utils.clip_grad_norm_(max_norm=1.0)` before each step and a `LambdaLR` for each of the
    Hugging Face schedules constant / linear / cosine with warmup (warmup 2, total 4);
  - `torch.optim.SGD` (lr 0.1, momentum 0.9, weight decay 0.01), no clipping, constant lr;
  - per step: the lr the step used, the pre-clip global grad norm, whether clipping scaled the gradients,
    and every parameter after the step; after the last step the optimizer state;
  - a longer schedule table (warmup 3, total 10, steps 0..12) in which linear and cosine differ (with
    warmup 2 and total 4 they coincide) and the cosine lr rises again past the total, as in transformers.

The schedule lambdas are transcribed from transformers' `optimization.py` (transformers is not installed
here); torch's `LambdaLR` applies them, so `lr` of the step with 0-based index s is base * lambda(s).
"""

import json
import math
import os

import torch

OUT = os.path.join("tests", "fixtures", "optimizer", "expected.json")
SHAPES = {"a": [3, 4], "b": [5], "c": [2, 2, 3]}
N_STEPS = 4
BIG_STEP = 2
MAX_NORM = 1.0
WARMUP, TOTAL = 2, 4
ADAMW = {"name": "adamw", "learning_rate": 1e-2, "weight_decay": 0.1, "betas": [0.9, 0.999], "eps": 1e-8}
SGD = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01}


# transformers/optimization.py: _get_{constant,linear,cosine}_schedule_with_warmup_lr_lambda
def constant_lambda(step, warmup):
    if step < warmup:
        return float(step) / float(max(1.0, warmup))
    return 1.0


def linear_lambda(step, warmup, total):
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def cosine_lambda(step, warmup, total, num_cycles=0.5):
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def schedule_lambda(kind, warmup, total):
    if kind == "constant":
        return lambda s: constant_lambda(s, warmup)
    if kind == "linear":
        return lambda s: linear_lambda(s, warmup, total)
    return lambda s: cosine_lambda(s, warmup, total)


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def tensor_json(t):
    return {"shape": list(t.shape), "values": flat(t)}


def initial_values():
    g = torch.Generator().manual_seed(1234)
    return {name: torch.randn(*shape, generator=g, dtype=torch.float64) for name, shape in SHAPES.items()}


def gradients():
    g = torch.Generator().manual_seed(5678)
    steps = []
    for step in range(N_STEPS):
        scale = 2.0 if step == BIG_STEP else 0.1
        steps.append({n: torch.randn(*s, generator=g, dtype=torch.float64) * scale for n, s in SHAPES.items()})
    return steps


def run(opt_config, schedule, max_norm):
    init = initial_values()
    params = {n: torch.nn.Parameter(v.clone()) for n, v in init.items()}
    plist = list(params.values())
    if opt_config["name"] == "adamw":
        opt = torch.optim.AdamW(
            plist,
            lr=opt_config["learning_rate"],
            betas=tuple(opt_config["betas"]),
            eps=opt_config["eps"],
            weight_decay=opt_config["weight_decay"],
        )
    else:
        opt = torch.optim.SGD(
            plist, lr=opt_config["learning_rate"], momentum=opt_config["momentum"],
            weight_decay=opt_config["weight_decay"],
        )
    kind = schedule["type"] if schedule else "constant"
    warmup = schedule["warmup_steps"] if schedule else 0
    total = schedule["total_steps"] if schedule else N_STEPS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_lambda(kind, warmup, total))
    steps = []
    for grads in gradients():
        for n, p in params.items():
            p.grad = grads[n].clone()
        norm = torch.norm(torch.stack([torch.norm(p.grad, 2.0) for p in plist]), 2.0).item()
        clipped = False
        if max_norm is not None:
            clip_norm = torch.nn.utils.clip_grad_norm_(plist, max_norm).item()
            assert clip_norm == norm
            clipped = max_norm / (norm + 1e-6) < 1.0
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        steps.append({
            "lr": lr,
            "grad_norm": norm,
            "clipped": clipped,
            "params": {n: flat(p) for n, p in params.items()},
        })
    state = {}
    for n, p in params.items():
        s = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in s:
                state[f"{key}/{n}"] = tensor_json(s[key])
    name = opt_config["name"] + (f"_{kind}" if schedule else "")
    return {
        "name": name,
        "optimizer": opt_config,
        "schedule": schedule,
        "max_norm": max_norm,
        "steps": steps,
        "state": {"step": N_STEPS, "tensors": state},
    }


def schedule_table(kind, base, warmup, total, n):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_lambda(kind, warmup, total))
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return {"schedule": kind, "base": base, "warmup_steps": warmup, "total_steps": total, "lrs": lrs}


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    runs = [
        run(ADAMW, {"type": kind, "warmup_steps": WARMUP, "total_steps": TOTAL}, MAX_NORM)
        for kind in ("constant", "linear", "cosine")
    ]
    runs.append(run(SGD, None, None))
    out = {
        "params": {n: tensor_json(v) for n, v in initial_values().items()},
        "grads": [{n: tensor_json(g) for n, g in step.items()} for step in gradients()],
        "runs": runs,
        "schedules": [schedule_table(k, 2e-3, 3, 10, 13) for k in ("constant", "linear", "cosine")],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
