"""gptoss CUDA against gptoss CPU on one checkpoint, per position, tie-aware.

Runs `gptoss logits --all-positions` on both devices (logits as .npy, router logits and chosen experts of
every layer and position as a dump), then reports top-1 agreement and KL(CPU || CUDA) per position. A
position where the two backends chose different experts is a *proven router tie* when, at the first layer
where they differ, the reference's gap between its k-th and (k+1)-th router logit is within the two
backends' difference of those logits (times a safety factor of 4) and the router inputs still agree there
(all of that layer's router logits within 1e-4 relative). Positions from a proven tie onwards are excluded from the verdict (attention
carries the flip forward); any other divergence counts.

Usage: python3 cuda_vs_cpu.py GPTOSS CKPT N_TOKENS [--fast] [--seed 7] [--bar-top1 0.99] [--bar-kl 1e-3] [--work DIR]
Tokens: uniform in [3, --max-token (199990)) from torch's generator with the seed (as the repro's compare.py) when torch
is present, else numpy's. Exit status 1 when the bar is missed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def tokens(n, seed, high):
    try:
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randint(3, high, (1, n), generator=g)[0].tolist()
    except ImportError:
        return np.random.default_rng(seed).integers(3, high, n).tolist()


def run(gptoss, ckpt, ids, device, work, env_extra, exact=False):
    tag = f"{device}-{len(os.listdir(work))}"
    npy, dump = os.path.join(work, f"{tag}.npy"), os.path.join(work, f"{tag}.json")
    cmd = [gptoss, "logits", "--model", ckpt, "--tokens", ",".join(map(str, ids)), "--all-positions",
           "--device", device, "--npy", npy, "--dump-layers", "all", "--dump-nodes",
           "router_logits,experts", "--dump-out", dump]
    if device == "cpu" or exact:
        # The f32 reference, not the fast CPU path; on the GPU the exact expert kernels, not the f16-activation
        # GEMM that prompts take by default (its own fidelity is measured with `eval kld`).
        cmd.append("--exact")
    t = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, **env_extra})
    print(f"  gptoss {device}: {time.time() - t:.0f} s", flush=True)
    return np.load(npy).astype(np.float64), json.load(open(dump))


def nodes_by_layer(dump, name):
    return {n["layer"]: np.asarray(n["rows"], dtype=np.float64) for n in dump["nodes"] if n["node"] == name}


def first_ties(cpu, cuda, top_k):
    """Per position: None, or (layer, proven, gap, delta) of the first layer whose chosen experts differ."""
    ex_a, ex_b = nodes_by_layer(cpu, "experts"), nodes_by_layer(cuda, "experts")
    rl_a, rl_b = nodes_by_layer(cpu, "router_logits"), nodes_by_layer(cuda, "router_logits")
    n = len(cpu["positions"])
    out = [None] * n
    for p in range(n):
        for layer in sorted(ex_a):
            if sorted(ex_a[layer][p]) == sorted(ex_b[layer][p]):
                continue
            la, lb = rl_a[layer][p], rl_b[layer][p]
            order = sorted(range(len(la)), key=lambda e: (-la[e], e))
            kth, nxt = order[top_k - 1], order[top_k]
            gap = la[kth] - la[nxt]
            delta = max(abs(la[kth] - lb[kth]), abs(la[nxt] - lb[nxt]))
            logit_err = np.abs(la - lb).max() / np.abs(la).max()
            proven = gap <= 4 * delta and logit_err <= 1e-4
            out[p] = (layer, proven, gap, delta, logit_err)
            break
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gptoss")
    ap.add_argument("ckpt")
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bar-top1", type=float, default=0.99)
    ap.add_argument("--bar-kl", type=float, default=1e-3)
    ap.add_argument("--work", default="/tmp/cuda_vs_cpu")
    ap.add_argument("--other", default="cuda", help="the device compared with the CPU")
    ap.add_argument("--max-token", type=int, default=199990, help="token ids are drawn below this")
    ap.add_argument("--fast", action="store_true", help="compare the GPU's default (fast) path, not --exact")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    ids = tokens(a.n, a.seed, a.max_token)
    cpu_logits, cpu = run(a.gptoss, a.ckpt, ids, "cpu", a.work, {})
    cuda_logits, cuda = run(a.gptoss, a.ckpt, ids, a.other, a.work, {}, exact=not a.fast)
    top_k = len(next(n for n in cpu["nodes"] if n["node"] == "experts")["rows"][0])

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(cpu_logits), log_softmax(cuda_logits)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    agree = cpu_logits.argmax(-1) == cuda_logits.argmax(-1)
    ties = first_ties(cpu, cuda, top_k)
    flips = [(p, t) for p, t in enumerate(ties) if t is not None]
    proven = [p for p, t in flips if t[1]]
    cut = proven[0] if proven else a.n
    kept_kl, kept_agree = kl[:cut], agree[:cut]
    print(f"all {a.n} positions: top-1 {agree.mean():.4f}, mean KL {kl.mean():.2e}, max KL {kl.max():.2e} "
          f"at position {int(kl.argmax())}")
    print(f"router choices differ at {len(flips)} positions; proven ties: {len(proven)}")
    for p, (layer, ok, gap, delta, logit_err) in flips[:8]:
        print(f"  position {p}: layer {layer}, k/k+1 gap {gap:.3e} vs |d| {delta:.2e}, router logits rel err "
              f"{logit_err:.1e} -> {'proven tie' if ok else 'NOT a tie'}")
    unproven = [p for p, t in flips if not t[1] and p < cut]
    verdict = kept_agree.mean() >= a.bar_top1 and kept_kl.mean() <= a.bar_kl and not unproven
    print(f"positions before the first proven tie ({cut}): top-1 {kept_agree.mean():.4f}, mean KL "
          f"{kept_kl.mean():.2e} (bar: >= {a.bar_top1}, <= {a.bar_kl:g}) -> {'PASS' if verdict else 'FAIL'}")
    sys.exit(0 if verdict else 1)


if __name__ == "__main__":
    main()
