#!/usr/bin/env python3
"""Writes a full-size random gpt-oss-20b checkpoint (HF MXFP4 layout, bf16 dense, seed 1234) with torch, as an
independent writer would: unit-RMS embeddings, 1/sqrt(fan-in) dense weights, E8M0 scale 2^-7 on random E2M1
codes. It is the checkpoint of issue 16 (CUDA diverged from the CPU at position 22), and
`scripts/gpu-check.sh` compares CUDA with the CPU on it (tools/peer/cuda_vs_cpu.py).
usage: random_20b.py OUT_DIR   (~13 GB, ~90 s)"""
import json, os, sys, time
import torch
from safetensors.torch import save_file
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(1234)
H, I, E, hd, heads, kv, vocab, layers = 2880, 2880, 32, 64, 64, 8, 201088, 24
def dense(o, i, s=None): return (torch.randn(o, i, generator=g) * (s or i ** -0.5)).to(torch.bfloat16)
def vec(n, s=0.1): return (torch.randn(n, generator=g) * s).to(torch.bfloat16)
def mx(e, o, i, scale_byte):
    blocks = torch.randint(0, 256, (e, o, i // 32, 16), generator=g, dtype=torch.uint8)
    scales = torch.full((e, o, i // 32), scale_byte, dtype=torch.uint8)
    return blocks, scales
t0 = time.time(); sd = {}
sd["model.embed_tokens.weight"] = dense(vocab, H, 1.0)
sd["lm_head.weight"] = dense(vocab, H, H ** -0.5)
sd["model.norm.weight"] = (1 + torch.randn(H, generator=g) * 0.1).to(torch.bfloat16)
for l in range(layers):
    b = f"model.layers.{l}."
    sd[b + "input_layernorm.weight"] = (1 + torch.randn(H, generator=g) * 0.1).to(torch.bfloat16)
    sd[b + "post_attention_layernorm.weight"] = (1 + torch.randn(H, generator=g) * 0.1).to(torch.bfloat16)
    sd[b + "self_attn.q_proj.weight"] = dense(heads * hd, H); sd[b + "self_attn.q_proj.bias"] = vec(heads * hd)
    sd[b + "self_attn.k_proj.weight"] = dense(kv * hd, H); sd[b + "self_attn.k_proj.bias"] = vec(kv * hd)
    sd[b + "self_attn.v_proj.weight"] = dense(kv * hd, H); sd[b + "self_attn.v_proj.bias"] = vec(kv * hd)
    sd[b + "self_attn.o_proj.weight"] = dense(H, heads * hd); sd[b + "self_attn.o_proj.bias"] = vec(H)
    sd[b + "self_attn.sinks"] = vec(heads, 1.0)
    sd[b + "mlp.router.weight"] = dense(E, H, 2.0 * H ** -0.5); sd[b + "mlp.router.bias"] = vec(E, 0.5)
    # random E2M1 codes have RMS ~2.9; scale 2^(120-127) gives weights of RMS ~0.023 ~ 1/sqrt(2880)
    sd[b + "mlp.experts.gate_up_proj_blocks"], sd[b + "mlp.experts.gate_up_proj_scales"] = mx(E, 2 * I, H, 120)
    sd[b + "mlp.experts.gate_up_proj_bias"] = vec(E * 2 * I).reshape(E, 2 * I)
    sd[b + "mlp.experts.down_proj_blocks"], sd[b + "mlp.experts.down_proj_scales"] = mx(E, H, I, 120)
    sd[b + "mlp.experts.down_proj_bias"] = vec(E * H).reshape(E, H)
ck = out
save_file(sd, os.path.join(ck, "model.safetensors"), metadata={"format": "pt"})
cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True,
       "attention_dropout": 0.0, "eos_token_id": min(200002, vocab - 1), "pad_token_id": min(199999, vocab - 1), "head_dim": hd,
       "hidden_act": "silu", "hidden_size": H, "initial_context_length": 4096, "intermediate_size": I,
       "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
       "max_position_embeddings": 131072, "num_attention_heads": heads, "num_experts_per_tok": 4,
       "experts_per_token": 4, "num_hidden_layers": layers, "num_key_value_heads": kv,
       "num_local_experts": E, "rms_norm_eps": 1e-5, "rope_theta": 150000,
       "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                        "original_max_position_embeddings": 4096, "truncate": False},
       "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False, "vocab_size": vocab,
       "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
           "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}
json.dump(cfg, open(os.path.join(ck, "config.json"), "w"), indent=1)
print(f"wrote {ck}")
