"""Logits of a gpt-oss checkpoint from HF transformers on the GPU, for the full-size peer check of issue 3.

Usage: python3 transformers_logits.py MODEL_DIR OUT_PREFIX [N_TOKENS]
Writes OUT_PREFIX.npy (float32 [N, vocab]) and OUT_PREFIX.tokens (comma-separated ids, seeded).
MXFP4 experts are dequantized to bf16 by transformers (no triton kernels needed); attention is eager.
"""
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Mxfp4Config

model_dir, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 256
model = AutoModelForCausalLM.from_pretrained(
    model_dir,
    dtype=torch.bfloat16,
    device_map="cuda",
    quantization_config=Mxfp4Config(dequantize=True),
    attn_implementation="eager",
)
gen = torch.Generator().manual_seed(0)
tokens = torch.randint(0, 200_000, (n,), generator=gen)
with torch.no_grad():
    logits = model(tokens[None].cuda()).logits[0].float().cpu().numpy()
np.save(out + ".npy", logits)
with open(out + ".tokens", "w") as f:
    f.write(",".join(str(t) for t in tokens.tolist()))
print(f"transformers {model.dtype}: logits {logits.shape}, finite {np.isfinite(logits).all()}")
