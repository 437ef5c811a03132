"""Random weights of Qwen2.5-0.5B's shape (fp32 safetensors), the shapes and config of
bench/make-model.ts, written with torch where node-mlx is not installed (the GPU machine).

usage: python3 make_weights.py <out-dir> <tokenizer-dir>
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000, "max_position_embeddings": 32768, "tie_word_embeddings": True,
    "torch_dtype": "float32", "bos_token_id": 151643, "eos_token_id": 151645,
}


def tensors() -> dict:
    c = CONFIG
    hidden, kv = c["hidden_size"], c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], hidden)}
    norms = ["model.norm.weight"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        norms += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        shapes.update({
            f"{p}.self_attn.q_proj.weight": (hidden, hidden), f"{p}.self_attn.q_proj.bias": (hidden,),
            f"{p}.self_attn.k_proj.weight": (kv, hidden), f"{p}.self_attn.k_proj.bias": (kv,),
            f"{p}.self_attn.v_proj.weight": (kv, hidden), f"{p}.self_attn.v_proj.bias": (kv,),
            f"{p}.self_attn.o_proj.weight": (hidden, hidden),
            f"{p}.mlp.gate_proj.weight": (c["intermediate_size"], hidden),
            f"{p}.mlp.up_proj.weight": (c["intermediate_size"], hidden),
            f"{p}.mlp.down_proj.weight": (hidden, c["intermediate_size"]),
        })
    generator = torch.Generator().manual_seed(5052026)
    out = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}
    out.update({name: torch.ones(hidden) for name in norms})
    return out


def main(out_dir: str, tokenizer_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors(), str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(Path(tokenizer_dir) / name, out / name)
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
