"""Generate the DPO/KTO reference fixtures under tests/fixtures/dpo/.

Run from the repository root, after scripts/make_fixtures.py has written tests/fixtures/gpt2_tiny/:

    /usr/bin/python3 scripts/make_dpo_fixtures.py

Requires Debian's `python3-torch` (torch 1.13) and `python3-numpy`; nothing else. The tokenizer, the
GPT-2 forward pass and the safetensors reader/writer are imported from scripts/make_fixtures.py (its
main() only runs as a script), so these numbers come from the same independent implementation.

The output is deterministic (fixed seed, one thread, deterministic torch algorithms): running the
script twice produces byte-identical files.

What it writes:
  tests/fixtures/dpo/ref/        the REFERENCE checkpoint: gpt2_tiny's float32 weights plus seeded
                                 Gaussian noise (std 0.05) on every tensor, stored F32, with
                                 gpt2_tiny's config.json, tokenizer.json and tokenizer_config.json
  tests/fixtures/dpo/expected.json
                                 with POLICY = tests/fixtures/gpt2_tiny and REF = tests/fixtures/dpo/ref:
                                 per-pair log-probs and logit sums, DPO losses and TRL metrics for ten
                                 configurations, the policy = ref check (ln 2), one clipped and one
                                 unclipped SGD step from float64 autograd, and a KTO batch.

Everything is computed in float64 from the float32 weights exactly as stored in the two safetensors
files. A completion's log-prob is the SUM of log p over its tokens and one final eos (id 316), i.e.
the sequence is prompt_ids + completion_ids + [eos] and the scored positions are len(prompt_ids)..T-1.
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (sets one thread and deterministic algorithms on import)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
POLICY_DIR = os.path.join(ROOT, "tests", "fixtures", "gpt2_tiny")
OUT = os.path.join(ROOT, "tests", "fixtures", "dpo")
REF_DIR = os.path.join(OUT, "ref")

REF_SEED = 20240611
REF_NOISE_STD = 0.05
COPIED_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json"]

PAIRS = [
    {"prompt": "What is 12+7? The answer is", "chosen": " 19.", "rejected": " 20."},
    {"prompt": "12+7=", "chosen": "19", "rejected": ""},
    {"prompt": "Question: what is two plus two?", "chosen": " Answer: four.", "rejected": " Answer: five."},
    {"prompt": "The cat sat on the", "chosen": " mat.", "rejected": " dog and the log."},
    {
        "prompt": "She said that the weather is nice today,",
        "chosen": " and we went out to the park to play in the sun.",
        "rejected": " so",
    },
]

# (name, loss_type, loss_weights or None, beta, label_smoothing, length_normalize)
LOSS_CASES = [
    ("sigmoid", "sigmoid", None, 0.1, 0.0, False),
    ("sigmoid_label_smoothing", "sigmoid", None, 0.1, 0.1, False),
    ("robust", "robust", None, 0.1, 0.1, False),
    ("hinge", "hinge", None, 0.1, 0.0, False),
    ("ipo", "ipo", None, 0.1, 0.0, True),
    ("sft", "sft", None, 0.1, 0.0, False),
    ("sigmoid_plus_sft", ["sigmoid", "sft"], [1.0, 0.5], 0.1, 0.0, False),
    ("sigmoid_beta_0.5", "sigmoid", None, 0.5, 0.0, False),
    ("sigmoid_length_normalized", "sigmoid", None, 0.1, 0.0, True),
    # Extra: at beta 0.1 no pair has beta*z > 1, so this is the case where the hinge's relu clips to 0.
    ("hinge_beta_0.5", "hinge", None, 0.5, 0.0, False),
]

SGD_LR = 0.5
SGD_MAX_NORM = 1.0
SGD_MAX_NORM_UNCLIPPED = 1e9
SGD_NAMES = [
    "transformer.wte.weight",
    "transformer.h.0.attn.c_attn.weight",
    "transformer.h.1.mlp.c_proj.bias",
    "transformer.ln_f.weight",
]
SGD_NAMES_UNCLIPPED = ["transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight"]

KTO_EXAMPLES = [
    {"prompt": "What is 3+4? The answer is", "completion": " 7.", "label": True},
    {"prompt": "What is 6*7? The answer is", "completion": " 41, I think.", "label": False},
    {"prompt": "Question: what is the capital of France?", "completion": " Answer: Paris.", "label": True},
    {"prompt": "The dog sat on the", "completion": " cat", "label": False},
]
KTO_BETA = 0.1
KTO_DESIRABLE_WEIGHT = 1.0
KTO_UNDESIRABLE_WEIGHT = 1.5


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def load_tokenizer(path):
    """The reference BPE rebuilt from the committed tokenizer.json (checked against its vocab)."""
    with open(path, encoding="utf-8") as f:
        hf = json.load(f)
    merges = [tuple(m.split(" ")) for m in hf["model"]["merges"]]
    assert all(len(m) == 2 for m in merges)
    tok = mf.Tokenizer(merges)
    assert tok.vocab == hf["model"]["vocab"], "tokenizer.json vocab differs from the rebuilt one"
    return tok


def load_f32(path):
    """{name: float32 tensor} exactly as stored (F32 only)."""
    out = {}
    for name, (dtype, shape, raw) in mf.read_safetensors(path).items():
        assert dtype == "F32", f"{name}: expected F32, got {dtype}"
        out[name] = torch.from_numpy(np.frombuffer(raw, "<f4").astype(np.float32).reshape(shape))
    return out


def make_ref(p32):
    """gpt2_tiny + N(0, 0.05^2) noise on every tensor (float32 add), in sorted-name order."""
    g = torch.Generator().manual_seed(REF_SEED)
    ref = {}
    for name in sorted(p32):
        noise = torch.randn(*p32[name].shape, generator=g, dtype=torch.float32) * REF_NOISE_STD
        ref[name] = (p32[name] + noise).contiguous()
    os.makedirs(REF_DIR, exist_ok=True)
    for fname in COPIED_FILES:
        shutil.copyfile(os.path.join(POLICY_DIR, fname), os.path.join(REF_DIR, fname))
    path = os.path.join(REF_DIR, "model.safetensors")
    mf.write_safetensors(path, {k: mf.f32_entry(v) for k, v in ref.items()})
    back = load_f32(path)
    assert sorted(back) == sorted(ref)
    for k in ref:
        assert torch.equal(back[k], ref[k]), k
    return back


def to64(p32, grad=False):
    return {k: v.to(torch.float64).requires_grad_(grad) for k, v in p32.items()}


# ---------------------------------------------------------------------------------------------------
# Sequence scoring
# ---------------------------------------------------------------------------------------------------


def score(p, cfg, tok, prompt_ids, completion_ids):
    """(sum of log p over completion + eos as a 0-d tensor, sum of the raw logits predicting those
    tokens over positions and vocab, number of scored tokens)."""
    assert prompt_ids, "prompts must be non-empty"
    input_ids = prompt_ids + completion_ids + [tok.eos_id]
    assert len(input_ids) <= cfg["n_positions"], len(input_ids)
    lps, logits = mf.completion_logps(p, cfg, input_ids, len(prompt_ids))
    n = len(completion_ids) + 1
    assert lps.shape == (n,)
    logits_sum = logits[len(prompt_ids) - 1 : len(input_ids) - 1].detach().sum().item()
    return lps.sum(), logits_sum, n


def encode_checked(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text, text
    return ids


# ---------------------------------------------------------------------------------------------------
# Losses, written out in plain Python floats (the "formula" side of the autograd cross-check)
# ---------------------------------------------------------------------------------------------------


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def mean(xs):
    return sum(xs) / len(xs)


def per_pair_losses(loss_type, z, beta, eps, sft_nll):
    """Per-pair losses [5] for one loss_type (TRL's dpo_loss; sft = the batch NLL broadcast)."""
    if loss_type == "sigmoid":
        return [-(1 - eps) * log_sigmoid(beta * v) - eps * log_sigmoid(-beta * v) for v in z]
    if loss_type == "robust":
        return [(-(1 - eps) * log_sigmoid(beta * v) + eps * log_sigmoid(-beta * v)) / (1 - 2 * eps) for v in z]
    if loss_type == "hinge":
        return [max(0.0, 1 - beta * v) for v in z]
    if loss_type == "ipo":
        return [(v - 1 / (2 * beta)) ** 2 for v in z]
    if loss_type == "sft":
        return [sft_nll for _ in z]
    raise ValueError(f"Cannot compute loss as loss_type is unknown: current value is {loss_type!r}")


def loss_case(spec, pairs):
    name, loss_type, weights, beta, eps, norm = spec
    types = loss_type if isinstance(loss_type, list) else [loss_type]
    ws = weights if weights is not None else [1.0] * len(types)
    if "ipo" in types:
        assert norm, "ipo always uses length-normalized log-probs (TRL)"

    def get(key, len_key):
        return [q[key] / q[len_key] if norm else q[key] for q in pairs]

    pc, pr = get("policy_chosen_logp", "chosen_len"), get("policy_rejected_logp", "rejected_len")
    rc, rr = get("ref_chosen_logp", "chosen_len"), get("ref_rejected_logp", "rejected_len")
    z = [(a - b) - (c - d) for a, b, c, d in zip(pc, pr, rc, rr)]
    # SFT = token-weighted NLL of the chosen completions (+eos), never length-normalized.
    sft_nll = -sum(q["policy_chosen_logp"] for q in pairs) / sum(q["chosen_len"] for q in pairs)
    per_pair = [0.0] * len(pairs)
    for t, w in zip(types, ws):
        per_pair = [acc + w * v for acc, v in zip(per_pair, per_pair_losses(t, z, beta, eps, sft_nll))]
    rew_c = [beta * (a - c) for a, c in zip(pc, rc)]
    rew_r = [beta * (b - d) for b, d in zip(pr, rr)]
    metrics = {
        "rewards/chosen": mean(rew_c),
        "rewards/rejected": mean(rew_r),
        "rewards/accuracies": mean([1.0 if a > b else 0.0 for a, b in zip(rew_c, rew_r)]),
        "rewards/margins": mean([a - b for a, b in zip(rew_c, rew_r)]),
        "logps/chosen": mean(pc),
        "logps/rejected": mean(pr),
        "logits/chosen": sum(q["policy_chosen_logits_sum"] for q in pairs)
        / sum(q["chosen_logits_count"] for q in pairs),
        "logits/rejected": sum(q["policy_rejected_logits_sum"] for q in pairs)
        / sum(q["rejected_logits_count"] for q in pairs),
    }
    out = {"name": name, "loss_type": loss_type}
    if weights is not None:
        out["loss_weights"] = weights
    out.update(
        {
            "beta": beta,
            "label_smoothing": eps,
            "length_normalize": norm,
            "z": z,
            "per_pair_loss": per_pair,
            "loss": mean(per_pair),
            "metrics": metrics,
        }
    )
    if loss_type == "ipo":
        out["note"] = (
            "ipo: as in TRL, all four log-probs are divided by their lengths (chosen_len / rejected_len) "
            "before z and before every metric: rewards/* and logps/* here use the normalized log-probs."
        )
    if isinstance(loss_type, list):
        out["note"] = (
            "loss = sum_k loss_weights[k] * loss_k, batch mean. rewards/* are beta*(policy-ref) once, "
            "unweighted. (TRL's get_batch_loss_metrics also sums the rewards with the loss weights, which "
            "would scale rewards/chosen, rewards/rejected and rewards/margins by sum(loss_weights) = "
            f"{sum(weights)}; accuracies are unchanged.)"
        )
    if loss_type == "sft":
        out["note"] = (
            "sft: loss = -(sum over pairs of policy_chosen_logp) / (sum over pairs of chosen_len); "
            "rewards/* are still beta*(policy-ref), as TRL's dpo_loss returns them for every loss_type."
        )
    return out


# ---------------------------------------------------------------------------------------------------
# Sections of expected.json
# ---------------------------------------------------------------------------------------------------


def make_pairs(tok, cfg, pol64, ref64):
    pairs = []
    with torch.no_grad():
        for pr in PAIRS:
            pids = encode_checked(tok, pr["prompt"])
            cids = encode_checked(tok, pr["chosen"])
            rids = encode_checked(tok, pr["rejected"])
            pc, pc_logits, lc = score(pol64, cfg, tok, pids, cids)
            pj, pj_logits, lr = score(pol64, cfg, tok, pids, rids)
            rc, _, _ = score(ref64, cfg, tok, pids, cids)
            rj, _, _ = score(ref64, cfg, tok, pids, rids)
            V = cfg["vocab_size"]
            pairs.append(
                {
                    "prompt": pr["prompt"],
                    "chosen": pr["chosen"],
                    "rejected": pr["rejected"],
                    "prompt_ids": pids,
                    "chosen_ids": cids,
                    "rejected_ids": rids,
                    "chosen_len": lc,
                    "rejected_len": lr,
                    "policy_chosen_logp": pc.item(),
                    "policy_rejected_logp": pj.item(),
                    "ref_chosen_logp": rc.item(),
                    "ref_rejected_logp": rj.item(),
                    "policy_chosen_logits_sum": pc_logits,
                    "policy_rejected_logits_sum": pj_logits,
                    "chosen_logits_count": lc * V,
                    "rejected_logits_count": lr * V,
                }
            )
    return pairs


def cross_check_policy(pairs):
    """Pairs that repeat a gpt2_tiny/expected.json case must reproduce its logp_sum."""
    with open(os.path.join(POLICY_DIR, "expected.json"), encoding="utf-8") as f:
        known = {(c["prompt"], c["completion"]): c["logp_sum"] for c in json.load(f)["cases"]}
    hits = 0
    for q in pairs:
        for side in ("chosen", "rejected"):
            key = (q["prompt"], q[side])
            if key in known:
                hits += 1
                assert abs(known[key] - q[f"policy_{side}_logp"]) < 1e-10, key
    assert hits > 0
    print(f"  policy log-probs match gpt2_tiny/expected.json on {hits} shared sequence(s)")


def make_equal(tok, cfg, pol32):
    """policy = ref = gpt2_tiny, each scored by its own float64 copy: z = 0, loss = ln 2."""
    a, b = to64(pol32), to64(pol32)
    z = []
    with torch.no_grad():
        for pr in PAIRS:
            pids = encode_checked(tok, pr["prompt"])
            cids, rids = encode_checked(tok, pr["chosen"]), encode_checked(tok, pr["rejected"])
            pc, pr_ = score(a, cfg, tok, pids, cids)[0], score(a, cfg, tok, pids, rids)[0]
            rc, rr = score(b, cfg, tok, pids, cids)[0], score(b, cfg, tok, pids, rids)[0]
            z.append(((pc - pr_) - (rc - rr)).item())
    loss = mean([-log_sigmoid(0.1 * v) for v in z])
    assert abs(loss - math.log(2)) < 1e-12, loss
    return {
        "description": "policy = ref = gpt2_tiny: every z is 0, so the sigmoid loss is ln 2.",
        "loss_type": "sigmoid",
        "beta": 0.1,
        "loss": loss,
        "ln2": math.log(2),
        "rewards/margins": mean([0.1 * v for v in z]),
    }


def dpo_sigmoid_loss_torch(p, cfg, tok, pairs, beta):
    """Case a) as one torch graph over the policy; the reference log-probs are constants."""
    losses = []
    for q in pairs:
        pc = score(p, cfg, tok, q["prompt_ids"], q["chosen_ids"])[0]
        pr = score(p, cfg, tok, q["prompt_ids"], q["rejected_ids"])[0]
        z = (pc - pr) - (q["ref_chosen_logp"] - q["ref_rejected_logp"])
        losses.append(-torch.nn.functional.logsigmoid(beta * z))
    return torch.stack(losses).mean()


def sgd_update(pol32, grads, names, lr, max_norm):
    total = math.sqrt(sum((g * g).sum().item() for g in grads.values()))
    coef = max_norm / (total + 1e-6)
    applied = min(coef, 1.0)
    # Same thing through torch's own clip_grad_norm_ (1.13 semantics) on copies of the gradients.
    params = [torch.zeros_like(g, requires_grad=True) for g in grads.values()]
    for prm, g in zip(params, grads.values()):
        prm.grad = g.clone()
    torch_total = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    assert abs(torch_total - total) <= 1e-12 * total, (torch_total, total)
    for prm, g in zip(params, grads.values()):
        assert torch.allclose(prm.grad, g * applied, rtol=1e-14, atol=0), "clip mismatch"
    updated = {}
    for name in names:
        w = pol32[name].to(torch.float64) - lr * (grads[name] * applied)
        updated[name] = {"shape": list(w.shape), "values": w.reshape(-1).tolist()}
    return total, coef, applied, updated


def make_sgd(tok, cfg, pol32, pairs, sigmoid_case):
    p64 = to64(pol32, grad=True)
    names = sorted(p64)
    loss = dpo_sigmoid_loss_torch(p64, cfg, tok, pairs, 0.1)
    assert abs(loss.item() - sigmoid_case["loss"]) < 1e-12, (loss.item(), sigmoid_case["loss"])
    gs = torch.autograd.grad(loss, [p64[n] for n in names])
    grads = dict(zip(names, gs))

    # Finite-difference spot check of the gradient on a few entries.
    with torch.no_grad():
        for name, idx in [("transformer.ln_f.weight", 3), ("transformer.h.1.mlp.c_proj.bias", 7)]:
            h = 1e-6
            plus, minus = to64(pol32), to64(pol32)
            plus[name].view(-1)[idx] += h
            minus[name].view(-1)[idx] -= h
            up = dpo_sigmoid_loss_torch(plus, cfg, tok, pairs, 0.1)
            down = dpo_sigmoid_loss_torch(minus, cfg, tok, pairs, 0.1)
            fd = (up - down).item() / (2 * h)
            ad = grads[name].view(-1)[idx].item()
            assert abs(fd - ad) < 1e-6 * max(1.0, abs(ad)), (name, fd, ad)

    total, coef, applied, updated = sgd_update(pol32, grads, SGD_NAMES, SGD_LR, SGD_MAX_NORM)
    assert total > 0
    print(f"  sgd: loss {loss.item():.6f}, grad_norm {total:.6f}, clip_coef {coef:.6f}")
    clipped = {
        "description": (
            "One step on the POLICY: loss = the 'sigmoid' case (beta 0.1) over all 5 pairs, reference "
            "log-probs fixed; float64 autograd through every policy parameter (wte is tied to the LM head, "
            "so its gradient has both contributions). grad_norm = sqrt(sum of squared gradient entries over "
            "all parameters, each tied tensor once); clip_coef = max_norm / (grad_norm + 1e-6), applied to "
            "the gradients only when < 1 (torch.nn.utils.clip_grad_norm_); then plain SGD, "
            "w <- w - lr * min(clip_coef, 1) * grad. 'params' are the updated values in float64 starting "
            "from the stored float32 weights, flattened row-major."
        ),
        "loss": loss.item(),
        "lr": SGD_LR,
        "max_norm": SGD_MAX_NORM,
        "grad_norm": total,
        "clip_coef": coef,
        "clipped": coef < 1.0,
        "params": updated,
    }
    total_u, coef_u, applied_u, updated_u = sgd_update(
        pol32, grads, SGD_NAMES_UNCLIPPED, SGD_LR, SGD_MAX_NORM_UNCLIPPED
    )
    assert applied_u == 1.0 and total_u == total
    unclipped = {
        "description": "The same step with max_norm = 1e9, so the gradients are not scaled.",
        "lr": SGD_LR,
        "max_norm": SGD_MAX_NORM_UNCLIPPED,
        "grad_norm": total_u,
        "params": updated_u,
    }
    return clipped, unclipped


def make_kto(tok, cfg, pol64, ref64):
    n = len(KTO_EXAMPLES)
    assert sum(e["label"] for e in KTO_EXAMPLES) == 2 and n == 4
    enc = [(encode_checked(tok, e["prompt"]), encode_checked(tok, e["completion"])) for e in KTO_EXAMPLES]
    examples = []
    with torch.no_grad():
        for i, e in enumerate(KTO_EXAMPLES):
            pids, cids = enc[i]
            j = (i + 1) % n
            kl_cids = enc[j][1]
            pol = score(pol64, cfg, tok, pids, cids)[0].item()
            ref = score(ref64, cfg, tok, pids, cids)[0].item()
            kl_pol = score(pol64, cfg, tok, pids, kl_cids)[0].item()
            kl_ref = score(ref64, cfg, tok, pids, kl_cids)[0].item()
            examples.append(
                {
                    "prompt": e["prompt"],
                    "completion": e["completion"],
                    "label": e["label"],
                    "prompt_ids": pids,
                    "completion_ids": cids,
                    "completion_len": len(cids) + 1,
                    "policy_logp": pol,
                    "ref_logp": ref,
                    "logratio": pol - ref,
                    "kl_completion_index": j,
                    "kl_policy_logp": kl_pol,
                    "kl_ref_logp": kl_ref,
                }
            )
        # TRL's own _get_kl_dataset rotates the other way (prompt i with completion i-1); kept for reference.
        prev = []
        for i in range(n):
            pids, kl_cids = enc[i][0], enc[(i - 1) % n][1]
            prev.append(
                score(pol64, cfg, tok, pids, kl_cids)[0].item() - score(ref64, cfg, tok, pids, kl_cids)[0].item()
            )

    def kto(kl_logratios):
        kl_raw = mean(kl_logratios)
        z0 = max(0.0, kl_raw)
        losses = []
        for ex in examples:
            r = ex["logratio"]
            if ex["label"]:
                losses.append(KTO_DESIRABLE_WEIGHT * (1 - sigmoid(KTO_BETA * (r - z0))))
            else:
                losses.append(KTO_UNDESIRABLE_WEIGHT * (1 - sigmoid(KTO_BETA * (z0 - r))))
        return kl_raw, z0, losses

    kl_raw, z0, losses = kto([ex["kl_policy_logp"] - ex["kl_ref_logp"] for ex in examples])
    for ex, l in zip(examples, losses):
        ex["weighted_loss"] = l
    prev_raw, prev_z0, prev_losses = kto(prev)
    print(f"  kto: kl (mean, clamped) {kl_raw:.6f} -> {z0:.6f}, loss {mean(losses):.6f}")
    return {
        "description": (
            "KTO (TRL loss_type 'kto') on an unpaired batch, POLICY = gpt2_tiny, REF = dpo/ref. "
            "logratio_i = policy_logp_i - ref_logp_i (sum over completion + eos). KL reference point: "
            "prompt i is scored with the completion of example kl_completion_index = (i+1) mod n; "
            "kl = max(0, mean_i(kl_policy_logp_i - kl_ref_logp_i)), no gradient. Desirable: "
            "desirable_weight * (1 - sigmoid(beta*(logratio - kl))); undesirable: undesirable_weight * "
            "(1 - sigmoid(beta*(kl - logratio))); loss = mean over all examples of weighted_loss. "
            "rewards/chosen = mean beta*logratio over desirable examples, rewards/rejected over undesirable."
        ),
        "beta": KTO_BETA,
        "desirable_weight": KTO_DESIRABLE_WEIGHT,
        "undesirable_weight": KTO_UNDESIRABLE_WEIGHT,
        "examples": examples,
        "kl_mean_unclamped": kl_raw,
        "kl": z0,
        "loss": mean(losses),
        "metrics": {
            "rewards/chosen": mean([KTO_BETA * ex["logratio"] for ex in examples if ex["label"]]),
            "rewards/rejected": mean([KTO_BETA * ex["logratio"] for ex in examples if not ex["label"]]),
            "kl": z0,
        },
        "trl_rotation": {
            "description": (
                "The same batch with TRL's _get_kl_dataset pairing (prompt i with completion (i-1) mod n). "
                "kl_logratios[i] = policy - ref for that mismatched pair."
            ),
            "kl_completion_index": [(i - 1) % n for i in range(n)],
            "kl_logratios": prev,
            "kl_mean_unclamped": prev_raw,
            "kl": prev_z0,
            "loss": mean(prev_losses),
        },
    }


def main():
    tok = load_tokenizer(os.path.join(POLICY_DIR, "tokenizer.json"))
    with open(os.path.join(POLICY_DIR, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    assert tok.eos_id == cfg["eos_token_id"] == 316 and len(tok.vocab) == cfg["vocab_size"]
    pol32 = load_f32(os.path.join(POLICY_DIR, "model.safetensors"))
    ref32 = make_ref(pol32)
    pol64, ref64 = to64(pol32), to64(ref32)

    pairs = make_pairs(tok, cfg, pol64, ref64)
    cross_check_policy(pairs)
    cases = [loss_case(spec, pairs) for spec in LOSS_CASES]
    for c in cases:
        m = c["metrics"]
        acc, margin = m["rewards/accuracies"], m["rewards/margins"]
        print(f"  {c['name']:<26} loss {c['loss']:.6f}  acc {acc:.1f}  margin {margin:+.5f}")
    by_name = {c["name"]: c for c in cases}
    assert min(by_name["hinge_beta_0.5"]["per_pair_loss"]) == 0.0 < min(by_name["hinge"]["per_pair_loss"])
    sft = by_name["sft"]["loss"]
    assert abs(by_name["sigmoid_plus_sft"]["loss"] - (by_name["sigmoid"]["loss"] + 0.5 * sft)) < 1e-12
    assert sft > 0

    equal = make_equal(tok, cfg, pol32)
    sgd, sgd_unclipped = make_sgd(tok, cfg, pol32, pairs, by_name["sigmoid"])
    kto = make_kto(tok, cfg, pol64, ref64)

    expected = {
        "description": (
            "Reference values from scripts/make_dpo_fixtures.py (float64 torch, weights as stored). "
            "POLICY = tests/fixtures/gpt2_tiny, REF = tests/fixtures/dpo/ref. A log-prob is the SUM of "
            "log p over the completion tokens and one final eos: sequence = prompt_ids + completion_ids + "
            "[eos_token_id], scored positions len(prompt_ids)..T-1; *_len = completion tokens + 1. "
            "policy_*_logits_sum = sum over the scored tokens t and the vocab of the raw logits at position "
            "t-1; *_logits_count = len * vocab_size. In 'losses', z = (pc - pr) - (rc - rr) per pair "
            "(after length normalization where length_normalize), loss = batch mean of per_pair_loss, and "
            "metrics use TRL's names: rewards/chosen = mean beta*(pc - rc), rewards/rejected = mean "
            "beta*(pr - rr), rewards/accuracies = mean of [reward_c > reward_r], rewards/margins = mean "
            "(reward_c - reward_r), logps/* = mean policy log-prob, logits/* = sum of logits_sum / sum of "
            "logits_count over the batch."
        ),
        "eos_token_id": tok.eos_id,
        "vocab_size": cfg["vocab_size"],
        "ref_noise": {"seed": REF_SEED, "std": REF_NOISE_STD, "dtype": "F32"},
        "pairs": pairs,
        "losses": cases,
        "equal": equal,
        "sgd_step": sgd,
        "sgd_step_unclipped": sgd_unclipped,
        "kto": kto,
    }
    mf.dump_json(os.path.join(OUT, "expected.json"), expected)
    print("wrote", os.path.relpath(OUT, ROOT))


if __name__ == "__main__":
    main()
