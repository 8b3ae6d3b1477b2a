"""Compares gptoss logits (`gptoss logits --all-positions --json`) with a reference .npy: top-1 agreement
and mean KL(reference || gptoss) over positions, in float64.

Usage: python3 compare_logits.py REFERENCE.npy GPTOSS.json
"""
import json
import sys

import numpy as np

ref = np.load(sys.argv[1]).astype(np.float64)
with open(sys.argv[2]) as f:
    ours = np.asarray(json.load(f)["logits"], dtype=np.float64)
assert ref.shape == ours.shape, (ref.shape, ours.shape)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


lp, lq = log_softmax(ref), log_softmax(ours)
kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
top1 = (ref.argmax(-1) == ours.argmax(-1)).mean()
rel = np.abs(ref - ours).max(-1) / np.abs(ref).max(-1)
print(f"positions {ref.shape[0]}  top-1 agreement {top1 * 100:.2f}%  mean KL {kl.mean():.3e}  max KL {kl.max():.3e}  "
      f"max rel logit diff {rel.max():.3e}")
