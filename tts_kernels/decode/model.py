"""A compact runner for Llama-3.x and Qwen2-family decoder-only models.

One forward function serves prefill and decode; attention is a callable
(the small internal interface between the layers and the KV storage)::

    attention(layer, q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D], positions [T]) -> [T, Hq, D]

``q`` and ``k`` arrive with RoPE applied. :class:`CausalPrefill` is causal SDPA
over the tokens of one sequence (keeping K/V to store); the engine's decode
attention writes K/V into the paged pool and runs :func:`tts_kernels.tree_attention`.

Numerics follow transformers' modelling code: RMSNorm in float32 and cast
back, RoPE tables computed in float32 and cast to the activation dtype
(rotate-half convention), SwiGLU MLP, residuals in the model dtype, GQA head
``h`` reading KV head ``h // (Hq / Hkv)``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .checkpoint import ModelConfig, parse_dtype, read_config, read_weights, rope_inv_freq

Attention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def expand_kv(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """GQA: repeat each KV head ``groups`` times along ``dim`` (query head h reads KV head h // groups)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=dim)


class CausalPrefill:
    """Attention for a prefill of one sequence from position 0: causal SDPA; keeps each layer's K/V."""

    def __init__(self, groups: int, scale: float):
        self.groups, self.scale = groups, scale
        self.kv: Dict[int, tuple] = {}

    def __call__(self, layer, q, k, v, positions):
        self.kv[layer] = (k, v)
        qt = q.transpose(0, 1).unsqueeze(0)                      # [1, Hq, T, D]
        kt = expand_kv(k, self.groups, 1).transpose(0, 1).unsqueeze(0)
        vt = expand_kv(v, self.groups, 1).transpose(0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=self.scale)
        return out[0].transpose(0, 1)                            # [T, Hq, D]


class PrefixPrefill:
    """Attention for new tokens after a cached prefix of one sequence (``past_k/v`` [P, Hkv, D])."""

    def __init__(self, groups: int, scale: float, past: List[tuple]):
        self.groups, self.scale, self.past = groups, scale, past
        self.kv: Dict[int, tuple] = {}

    def __call__(self, layer, q, k, v, positions):
        self.kv[layer] = (k, v)
        pk, pv = self.past[layer]
        kk, vv = torch.cat([pk.to(k.dtype), k]), torch.cat([pv.to(v.dtype), v])
        T, P = q.shape[0], pk.shape[0]
        mask = torch.arange(P + T, device=q.device)[None, :] <= (P + torch.arange(T, device=q.device))[:, None]
        qt = q.transpose(0, 1).unsqueeze(0)
        kt = expand_kv(kk, self.groups, 1).transpose(0, 1).unsqueeze(0)
        vt = expand_kv(vv, self.groups, 1).transpose(0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=self.scale)
        return out[0].transpose(0, 1)


class Model:
    """Weights and forward pass of a Llama / Qwen2 decoder. Build with :meth:`from_pretrained`."""

    def __init__(self, cfg: ModelConfig, weights: Dict[str, torch.Tensor], dtype=None, device="cpu"):
        self.cfg = cfg
        self.dtype = parse_dtype(dtype) if dtype is not None else cfg.torch_dtype
        self.device = torch.device(device)
        w = {k: v.to(device=self.device, dtype=self.dtype) for k, v in weights.items()}
        self.embed = w["model.embed_tokens.weight"]
        self.lm_head = self.embed if cfg.tie_word_embeddings else w["lm_head.weight"]
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            g = lambda n: w.get(p + n)  # noqa: E731
            self.layers.append(dict(
                ln1=g("input_layernorm.weight"), ln2=g("post_attention_layernorm.weight"),
                # q, k, v fused into one matmul
                qkv_w=torch.cat([g("self_attn.q_proj.weight"), g("self_attn.k_proj.weight"),
                                 g("self_attn.v_proj.weight")]),
                qkv_b=(torch.cat([g("self_attn.q_proj.bias"), g("self_attn.k_proj.bias"),
                                  g("self_attn.v_proj.bias")]) if cfg.qkv_bias else None),
                o_w=g("self_attn.o_proj.weight"), o_b=g("self_attn.o_proj.bias"),
                gate_w=g("mlp.gate_proj.weight"), gate_b=g("mlp.gate_proj.bias"),
                up_w=g("mlp.up_proj.weight"), up_b=g("mlp.up_proj.bias"),
                down_w=g("mlp.down_proj.weight"), down_b=g("mlp.down_proj.bias")))
        self.inv_freq = rope_inv_freq(cfg).to(self.device)
        self.groups = cfg.num_heads // cfg.num_kv_heads
        self.scale = cfg.head_dim ** -0.5

    @classmethod
    def from_pretrained(cls, path: str, dtype=None, device="cpu") -> "Model":
        """Load ``path`` (config.json + safetensors). ``dtype`` defaults to the checkpoint's."""
        cfg = read_config(path)
        return cls(cfg, read_weights(path, cfg), dtype=dtype, device=device)

    # -- pieces ------------------------------------------------------------------
    def rope(self, positions: torch.Tensor, dtype) -> tuple:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention: Attention,
                last_only: bool = False) -> torch.Tensor:
        """Logits (float32 ``[T, V]``, or ``[1, V]`` of the last token with ``last_only``) of ``T`` tokens.

        ``input_ids``, ``positions``: int64 ``[T]`` (tokens of one sequence for a
        prefill, or one token of each of ``T`` sequences for a decode step).
        No host synchronisation happens here (attention permitting).
        """
        c = self.cfg
        T = input_ids.shape[0]
        Hq, Hkv, D = c.num_heads, c.num_kv_heads, c.head_dim
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.rope(positions, x.dtype)
        for i, L in enumerate(self.layers):
            h = rms_norm(x, L["ln1"], c.rms_norm_eps)
            qkv = F.linear(h, L["qkv_w"], L["qkv_b"])
            q, k, v = qkv.split([Hq * D, Hkv * D, Hkv * D], dim=-1)
            q, k, v = q.view(T, Hq, D), k.view(T, Hkv, D), v.view(T, Hkv, D)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            a = attention(i, q, k, v, positions)
            x = x + F.linear(a.reshape(T, Hq * D), L["o_w"], L["o_b"])
            h = rms_norm(x, L["ln2"], c.rms_norm_eps)
            m = F.silu(F.linear(h, L["gate_w"], L["gate_b"])) * F.linear(h, L["up_w"], L["up_b"])
            x = x + F.linear(m, L["down_w"], L["down_b"])
        if last_only:
            x = x[-1:]
        x = rms_norm(x, self.norm, c.rms_norm_eps)
        return F.linear(x, self.lm_head).float()

    def prefill(self, input_ids: torch.Tensor, past: Optional[List[tuple]] = None, last_only: bool = False):
        """Run one sequence's tokens; returns ``(logits, [(k, v) per layer])`` of the new tokens.

        ``past``: per-layer ``(k, v)`` ``[P, Hkv, D]`` of a cached prefix (positions ``[0, P)``).
        """
        input_ids = input_ids.to(self.device)
        P = 0 if past is None else past[0][0].shape[0]
        pos = torch.arange(P, P + input_ids.shape[0], device=self.device)
        attn = (CausalPrefill(self.groups, self.scale) if past is None
                else PrefixPrefill(self.groups, self.scale, past))
        logits = self.forward(input_ids, pos, attn, last_only=last_only)
        return logits, [attn.kv[i] for i in range(self.cfg.num_layers)]

    @torch.no_grad()
    def greedy(self, input_ids, max_new_tokens: int, eos: Optional[int] = None) -> List[int]:
        """Greedy generation with a contiguous cache (a reference path for tests)."""
        ids = torch.as_tensor(input_ids, dtype=torch.int64)
        logits, kv = self.prefill(ids, last_only=True)
        out = []
        for _ in range(max_new_tokens):
            t = int(logits[-1].argmax())
            out.append(t)
            if t == eos:
                break
            logits, new = self.prefill(torch.tensor([t]), past=kv)
            kv = [(torch.cat([a, b]), torch.cat([c, d])) for (a, c), (b, d) in zip(kv, new)]
        return out
