"""Reading a Hugging Face checkpoint directory: config.json, safetensors weights, errors.

Supported: ``LlamaForCausalLM`` (Llama 2/3.x, incl. Llama-3 rope scaling) and
``Qwen2ForCausalLM`` (Qwen2/2.5, DeepSeek-R1-Distill-Qwen). The safetensors
format (8-byte header length, JSON header, raw little-endian tensors) is read
here directly, so the ``safetensors`` package is not needed.

Every problem with a checkpoint directory raises :class:`CheckpointError` (a
``ValueError``) with one message naming the directory and what is wrong.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from .families import SUPPORTED_ARCHS, TEMPLATES_KEY, for_config, templates_named

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_DTYPE_NAMES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "half": torch.float16,
                "bfloat16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (missing file, unsupported model, bad shapes)."""


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower().replace("torch.", "") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower().replace("torch.", "")]
    raise ValueError(f"dtype must be one of float32/float16/bfloat16, got {dtype!r}")


@dataclass
class ModelConfig:
    """The architecture facts the runner needs (parsed from config.json)."""

    arch: str                      # the runner architecture, "llama" or "qwen2" (see .families)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 4096
    torch_dtype: torch.dtype = torch.float32
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple = ()
    extra: dict = field(default_factory=dict)
    family: str = ""               # the model family (.families) config.json selected ("": by arch)
    prompt_templates: str = ""     # config.json "tts_prompt_templates": the templates it reads ("": the family's)

    @classmethod
    def from_dict(cls, cfg: dict, where: str = "config.json") -> "ModelConfig":
        archs = cfg.get("architectures") or []
        family = for_config(archs, cfg.get("model_type"))
        if family is None:
            raise CheckpointError(f"{where}: unsupported architecture {archs or cfg.get('model_type')!r}; "
                                  f"supported: {sorted(SUPPORTED_ARCHS)}")
        arch = family.arch
        need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise CheckpointError(f"{where}: missing field(s) {missing}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (only 'silu')")
        if arch == "qwen2" and cfg.get("use_sliding_window", False):
            raise CheckpointError(f"{where}: use_sliding_window=true is not supported")
        nh = int(cfg["num_attention_heads"])
        nkv = int(cfg.get("num_key_value_heads") or nh)
        hidden = int(cfg["hidden_size"])
        head_dim = int(cfg.get("head_dim") or hidden // nh)
        if nh <= 0 or nkv <= 0 or nh % nkv != 0:
            raise CheckpointError(f"{where}: num_attention_heads={nh} must be a positive multiple of "
                                  f"num_key_value_heads={nkv}")
        if head_dim % 2:
            raise CheckpointError(f"{where}: head_dim={head_dim} must be even for RoPE")
        # transformers >= 5 writes rope_parameters = {rope_theta, rope_type, ...}; older: rope_theta + rope_scaling
        rope = dict(cfg.get("rope_parameters") or {})
        if cfg.get("rope_scaling"):
            rope.update(cfg["rope_scaling"])
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ("default", "linear", "llama3"):
            raise CheckpointError(f"{where}: rope_type {rtype!r} is not supported (default, linear, llama3)")
        scaling = None if rtype == "default" else dict(rope, rope_type=rtype)
        templates = cfg.get(TEMPLATES_KEY)
        templates = "" if templates is None else templates
        if templates != "":
            try:
                if not isinstance(templates, str):
                    raise ValueError(f"{TEMPLATES_KEY}: expected the name of prompt templates, got {templates!r}")
                templates_named(templates)
            except ValueError as exc:
                raise CheckpointError(f"{where}: {exc}") from None
        eos = cfg.get("eos_token_id")
        eos = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
        dt = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
        try:
            dt = parse_dtype(dt)
        except ValueError:
            dt = torch.float32
        return cls(arch=arch, vocab_size=int(cfg["vocab_size"]), hidden_size=hidden,
                   intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
                   num_heads=nh, num_kv_heads=nkv, head_dim=head_dim,
                   rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   qkv_bias=family.qkv_bias or bool(cfg.get("attention_bias", False)),
                   o_bias=family.o_bias and bool(cfg.get("attention_bias", False)),
                   mlp_bias=bool(cfg.get("mlp_bias", False)),
                   max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)), torch_dtype=dt,
                   bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos, family=family.name,
                   prompt_templates=templates)

    def expected_shapes(self) -> Dict[str, tuple]:
        """Name -> shape of every tensor the checkpoint must hold."""
        H, I, D = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * D, self.num_kv_heads * D
        out = {"model.embed_tokens.weight": (self.vocab_size, H), "model.norm.weight": (H,)}
        if not self.tie_word_embeddings:
            out["lm_head.weight"] = (self.vocab_size, H)
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            out.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                        p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
                        p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
                        p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                        p + "mlp.down_proj.weight": (H, I)})
            if self.qkv_bias:
                out.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                            p + "self_attn.v_proj.bias": (kv,)})
            if self.o_bias:
                out[p + "self_attn.o_proj.bias"] = (H,)
            if self.mlp_bias:
                out.update({p + "mlp.gate_proj.bias": (I,), p + "mlp.up_proj.bias": (I,),
                            p + "mlp.down_proj.bias": (H,)})
        return out


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """float32 [head_dim / 2] inverse frequencies, with Llama-3 / linear scaling applied."""
    D = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    sc = cfg.rope_scaling
    if sc is None:
        return inv
    factor = float(sc.get("factor", 1.0))
    if sc["rope_type"] == "linear":
        return inv / factor
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between
    lo, hi = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
    old = float(sc.get("original_max_position_embeddings", 8192))
    lo_wavelen, hi_wavelen = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > lo_wavelen, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
    return torch.where(medium, smoothed, out)


def read_json(path: str, name: str):
    """``(parsed JSON, file path)`` of ``path/name``; a missing or malformed file is a CheckpointError."""
    fn = os.path.join(path, name)
    if not os.path.isfile(fn):
        raise CheckpointError(f"{path}: missing {name}")
    try:
        with open(fn) as f:
            return json.load(f), fn
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{fn}: not valid JSON ({exc})") from None


def read_config(path: str) -> ModelConfig:
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path!r} does not exist")
    cfg, fn = read_json(path, "config.json")
    return ModelConfig.from_dict(cfg, where=fn)


def _read_safetensors(fn: str, names=None) -> Dict[str, torch.Tensor]:
    try:
        with open(fn, "rb") as f:
            raw = bytearray(f.read())
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
    except Exception as exc:  # noqa: BLE001 - any parse problem is one clear error
        raise CheckpointError(f"{fn}: not a valid safetensors file ({exc})") from None
    base = 8 + n
    out = {}
    buf = memoryview(raw)
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise CheckpointError(f"{fn}: tensor {name} has unsupported dtype {info['dtype']}")
        s, e = info["data_offsets"]
        if base + e > len(raw):
            raise CheckpointError(f"{fn}: file is truncated (tensor {name})")
        t = torch.frombuffer(buf[base + s:base + e], dtype=dt) if e > s else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def read_weights(path: str, cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """All tensors of the checkpoint, checked by name and shape against ``cfg``."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(single):
        files = ["model.safetensors"]
    else:
        files = sorted(fn for fn in os.listdir(path) if fn.endswith(".safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no safetensors weights (model.safetensors or "
                                  f"model.safetensors.index.json); .bin checkpoints are not supported")
    weights = {}
    for fn in files:
        full = os.path.join(path, fn)
        if not os.path.isfile(full):
            raise CheckpointError(f"{path}: missing weight shard {fn} listed in model.safetensors.index.json")
        weights.update(_read_safetensors(full))
    want = cfg.expected_shapes()
    if cfg.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    missing = [k for k in want if k not in weights]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{path}: weights missing from the checkpoint: {missing[:3]}{more}")
    for k, shape in want.items():
        if tuple(weights[k].shape) != shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(weights[k].shape)} but config.json "
                                  f"implies {shape}")
    unused = [k for k in weights if k not in want and "rotary_emb" not in k]
    if unused:
        raise CheckpointError(f"{path}: unexpected tensors not used by a {cfg.arch} model: {unused[:3]}")
    return weights
