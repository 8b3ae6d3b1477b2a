"""Logits of a gpt-oss checkpoint from HF transformers on the GPU, for the full-size peer check of issue 3.

Usage: python3 transformers_logits.py MODEL_DIR OUT_PREFIX [N_TOKENS] [DTYPE] [NOISE]
DTYPE is bfloat16 (default, how the model is served) or float32 (the exact reference: a random-weight model
is chaotic enough that bf16 rounding flips near-tie router choices; 20b in float32 needs ~84 GB).
NOISE > 0 multiplies the embedding output by (1 + NOISE * N(0,1)) to measure how sensitive the model itself
is to a rounding-sized perturbation (what any two correct engines can be expected to agree to).
Writes OUT_PREFIX.npy (float32 [N, vocab]) and OUT_PREFIX.tokens (comma-separated ids, seeded).
MXFP4 experts are dequantized to bf16 by transformers (no triton kernels needed); attention is eager.
"""
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Mxfp4Config

# A float32 reference must be float32 all the way: report and switch off TF32 matmuls (10-bit mantissa), which
# would otherwise make the reference itself differ from exact f32 by ~1e-3 per product.
print(
    "tf32 before:", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
    torch.get_float32_matmul_precision(),
)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
model_dir, out = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 256
dtype = getattr(torch, sys.argv[4]) if len(sys.argv) > 4 else torch.bfloat16
model = AutoModelForCausalLM.from_pretrained(
    model_dir,
    dtype=dtype,
    device_map="cuda",
    quantization_config=Mxfp4Config(dequantize=True),
    attn_implementation="eager",
)
# The MXFP4 dequantizer leaves the experts in bf16 whatever `dtype` asks, and the grouped expert matmul then
# rounds the activations to bf16 too: a float32 reference must cast them (bf16 values are exact in f32).
model = model.to(dtype)
# The expert loop (train-mode path; no dropout in gpt-oss) computes in the parameters' dtype.
model.train()
noise = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
if noise:
    noise_gen = torch.Generator(device="cuda").manual_seed(1)

    def perturb(module, inputs, output):
        return output * (1 + noise * torch.randn(output.shape, generator=noise_gen, device="cuda", dtype=output.dtype))

    model.model.embed_tokens.register_forward_hook(perturb)
gen = torch.Generator().manual_seed(0)
tokens = torch.randint(0, 200_000, (n,), generator=gen)
with torch.no_grad():
    logits = model(tokens[None].cuda()).logits[0].float().cpu().numpy()
np.save(out + ".npy", logits)
with open(out + ".tokens", "w") as f:
    f.write(",".join(str(t) for t in tokens.tolist()))
print(f"transformers {model.dtype}: logits {logits.shape}, finite {np.isfinite(logits).all()}")
