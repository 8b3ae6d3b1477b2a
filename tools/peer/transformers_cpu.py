"""Logits (and per-layer router logits / hidden states) of a gpt-oss checkpoint from HF transformers on the CPU,
for diagnosing the full-size peer check. Same seeded tokens as transformers_logits.py.

Usage: python3 transformers_cpu.py MODEL_DIR OUT_PREFIX [N_TOKENS] [--dtype f32|bf16|f64] [--noise EPS]
       [--flip LAYER:POS] [--tokens-file F]
Writes OUT_PREFIX.npy (float32 [N, vocab] logits) and OUT_PREFIX.npz (router logits [layers, N, experts] and hidden
states [layers + 1, N, hidden], float64). --noise multiplies the embedding output by (1 + EPS * N(0,1)) to measure how
much an f32-rounding-sized perturbation moves the logits. --flip LAYER:POS swaps the 4th and 5th expert of token POS
in layer LAYER (to show that one near-tie routing flip explains a divergence). f64 keeps embedding and lm_head in
f32 storage (their values are bf16, so exact) and computes the layers and the lm_head product in float64.
"""
import argparse

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Mxfp4Config

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("out")
ap.add_argument("n", type=int, nargs="?", default=256)
ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f64"])
ap.add_argument("--noise", type=float, default=0.0)
ap.add_argument("--flip", action="append", default=[])
ap.add_argument("--tokens-file")
args = ap.parse_args()

torch.set_num_threads(2)
load_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
model = AutoModelForCausalLM.from_pretrained(
    args.model_dir,
    dtype=load_dtype,
    device_map="cpu",
    quantization_config=Mxfp4Config(dequantize=True),
    attn_implementation="eager",
)
# The MXFP4 dequantizer leaves the experts in bf16 whatever `dtype` asks (see transformers_logits.py): cast.
model = model.to(load_dtype)
if args.dtype == "f64":
    for layer in model.model.layers:
        layer.double()
    model.model.norm.double()
    model.model.rotary_emb.double()
    model.model.embed_tokens.register_forward_hook(lambda m, i, o: o.double())

if args.tokens_file:
    tokens = torch.tensor([int(t) for t in open(args.tokens_file).read().split(",")])
else:
    tokens = torch.randint(0, 200_000, (args.n,), generator=torch.Generator().manual_seed(0))
n = len(tokens)

if args.noise:
    noise_gen = torch.Generator().manual_seed(1)

    def perturb(m, i, o):
        return o * (1 + args.noise * torch.randn(o.shape, generator=noise_gen, dtype=torch.float64).to(o.dtype))

    model.model.embed_tokens.register_forward_hook(perturb)

flips = {}
for f in args.flip:
    layer, pos = (int(x) for x in f.split(":"))
    flips.setdefault(layer, []).append(pos)

router_logits = []


def router_hook(layer_idx):
    def hook(m, i, o):
        logits, scores, idx = o
        router_logits.append(logits.double().detach().numpy().copy())
        if layer_idx in flips:
            top5_val, top5_idx = torch.topk(logits, 5, dim=-1)
            idx = idx.clone()
            vals = torch.topk(logits, 4, dim=-1).values.clone()
            for pos in flips[layer_idx]:
                idx[pos, 3] = top5_idx[pos, 4]
                vals[pos, 3] = top5_val[pos, 4]
            scores = torch.softmax(vals, dim=1)
        return logits, scores, idx

    return hook


for li, layer in enumerate(model.model.layers):
    layer.mlp.router.register_forward_hook(router_hook(li))

with torch.no_grad():
    if args.dtype == "f64":
        out = model.model(tokens[None], output_hidden_states=True)
        h = out.last_hidden_state[0]
        w = model.lm_head.weight
        logits = torch.cat([h @ w[i : i + 16384].double().T for i in range(0, w.shape[0], 16384)], dim=1)
        hidden = out.hidden_states
    else:
        out = model(tokens[None], output_hidden_states=True)
        logits = out.logits[0]
        hidden = out.hidden_states
logits = logits.float().numpy()
np.save(args.out + ".npy", logits)
np.savez(
    args.out + ".npz",
    router=np.stack(router_logits),
    hidden=np.stack([x[0].double().numpy() for x in hidden]),
    tokens=tokens.numpy(),
)
print(f"transformers {args.dtype} cpu: logits {logits.shape}, finite {np.isfinite(logits).all()}")
