"""Per-layer intermediates of transformers (exact float32) at chosen positions, in the dump format of
`gptoss logits --dump-layers`, so `diff_dumps.py` can say which of two gptoss backends departs from the
reference, and where. Router logits are recomputed in float64 from the router's input and weights.

Usage: python3 transformers_trace.py CKPT_DIR TOKENS_CSV POSITIONS_CSV OUT.json   (needs torch + a GPU)
"""
import json
import sys

import torch
from transformers import GptOssForCausalLM, Mxfp4Config

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
ck, toks, positions, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ids = [int(t) for t in toks.split(",")]
positions = [int(p) for p in positions.split(",")]
# As tools/peer/transformers_logits.py: cast the experts the MXFP4 dequantizer leaves in bf16; the expert loop.
m = GptOssForCausalLM.from_pretrained(ck, dtype=torch.float32, device_map="cuda", attn_implementation="eager",
                                      quantization_config=Mxfp4Config(dequantize=True)).to(torch.float32).train()
records = []


def first(o):
    return o[0] if isinstance(o, (tuple, list)) else o


def keep(layer, node):
    def hook(module, inputs, output):
        rows = first(output)[0, positions].double().cpu()
        records.append((layer, node, rows))
    return hook


def keep_router(layer, router):
    def hook(module, inputs, output):
        h = first(inputs)
        h = h.reshape(-1, h.shape[-1])[positions].double()
        logits = h @ router.weight.double().T + router.bias.double()
        records.append((layer, "router_logits", logits.cpu()))
        k = m.config.num_experts_per_tok
        top = torch.topk(logits, k, dim=-1)
        records.append((layer, "experts", top.indices.double().cpu()))
        records.append((layer, "expert_weights", torch.softmax(top.values, -1).cpu()))
    return hook


for i, layer in enumerate(m.model.layers):
    layer.input_layernorm.register_forward_hook(keep(i, "attn_norm"))
    layer.self_attn.q_proj.register_forward_hook(keep(i, "q"))
    layer.self_attn.k_proj.register_forward_hook(keep(i, "k"))
    layer.self_attn.v_proj.register_forward_hook(keep(i, "v"))
    layer.self_attn.register_forward_hook(keep(i, "attn_proj"))
    layer.post_attention_layernorm.register_forward_hook(keep(i, "mlp_norm"))
    layer.mlp.router.register_forward_hook(keep_router(i, layer.mlp.router))
    layer.mlp.register_forward_hook(keep(i, "moe_out"))
    layer.register_forward_hook(keep(i, "layer_out"))
m.model.norm.register_forward_hook(keep(None, "norm"))
with torch.no_grad():
    m(torch.tensor([ids], device="cuda"))
nodes = [{"layer": l, "node": n, "rows": r.tolist()} for l, n, r in records]
json.dump({"device": "transformers", "positions": positions, "nodes": nodes}, open(out, "w"))
print(f"wrote {len(nodes)} nodes for positions {positions}")
