"""A compact runner for Llama-3.x and Qwen2-family decoder-only models.

One forward function serves prefill and decode; attention is a callable
(the small internal interface between the layers and the KV storage)::

    attention(layer, q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D], positions [T]) -> [T, Hq, D]

``q`` and ``k`` arrive with RoPE applied. :class:`CausalPrefill` is causal
attention over the tokens of one or several packed sequences (keeping K/V to
store), :class:`PrefixPrefill` the same after a cached prefix; the engine's
decode attention writes K/V into the paged pool and runs
:func:`tts_kernels.tree_attention`.

Prefill attention is flash-attn's ``flash_attn_varlen_func`` when the
``flash_attn`` package imports and the tensors are on CUDA in float16 /
bfloat16 (packed sequences in one call, GQA native), else
``torch.nn.functional.scaled_dot_product_attention`` per sequence.
:attr:`Model.flash_attn` forces the choice (``True``: flash-attn whenever it
imports, e.g. a test's stand-in; ``False``: always SDPA).

Numerics follow transformers' modelling code: RMSNorm in float32 and cast
back, RoPE tables computed in float32 and cast to the activation dtype
(rotate-half convention), SwiGLU MLP, residuals in the model dtype, GQA head
``h`` reading KV head ``h // (Hq / Hkv)``.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional, Sequence

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


_flash_import_failed = False


def flash_attn_varlen():
    """``flash_attn.flash_attn_varlen_func`` if the ``flash_attn`` package imports, else ``None``."""
    global _flash_import_failed
    mod = sys.modules.get("flash_attn")
    if mod is None and not _flash_import_failed:
        try:
            import flash_attn as mod
        except Exception:               # not installed, or built for another torch / CUDA
            _flash_import_failed = True
            mod = None
    return getattr(mod, "flash_attn_varlen_func", None)


def _sdpa(q, k, v, groups, scale, mask=None):
    """``q [T, Hq, D]`` over ``k, v [S, Hkv, D]``: causal (``mask=None``) or with a bool ``mask [T, S]``."""
    qt = q.transpose(0, 1).unsqueeze(0)                          # [1, Hq, T, D]
    kt = expand_kv(k, groups, 1).transpose(0, 1).unsqueeze(0)
    vt = expand_kv(v, groups, 1).transpose(0, 1).unsqueeze(0)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=mask is None, scale=scale)
    return out[0].transpose(0, 1)                                # [T, Hq, D]


class CausalPrefill:
    """Attention for a prefill from position 0 of one sequence, or of several packed back to back
    (``lens``: their token counts); keeps each layer's K/V.

    ``flash``: a ``flash_attn_varlen_func`` (one call over the packed sequences), else causal SDPA
    per sequence.
    """

    def __init__(self, groups: int, scale: float, lens: Optional[Sequence[int]] = None, flash=None):
        self.groups, self.scale, self.lens, self.flash = groups, scale, None if lens is None else list(lens), flash
        self.kv: Dict[int, tuple] = {}
        self._cu = None

    def __call__(self, layer, q, k, v, positions):
        self.kv[layer] = (k, v)
        lens = self.lens or [q.shape[0]]
        if self.flash is not None:
            if self._cu is None:
                offsets = [0]
                for n in lens:
                    offsets.append(offsets[-1] + n)
                self._cu = torch.tensor(offsets, dtype=torch.int32, device=q.device)
            m = max(lens)
            return self.flash(q, k, v, self._cu, self._cu, m, m, softmax_scale=self.scale, causal=True)
        if len(lens) == 1:
            return _sdpa(q, k, v, self.groups, self.scale)
        out, start = [], 0
        for n in lens:
            out.append(_sdpa(q[start:start + n], k[start:start + n], v[start:start + n], self.groups, self.scale))
            start += n
        return torch.cat(out)


class PrefixPrefill:
    """Attention for new tokens after a cached prefix of one sequence (``past_k/v`` [P, Hkv, D])."""

    def __init__(self, groups: int, scale: float, past: List[tuple], flash=None):
        self.groups, self.scale, self.past, self.flash = groups, scale, past, flash
        self.kv: Dict[int, tuple] = {}

    def __call__(self, layer, q, k, v, positions):
        self.kv[layer] = (k, v)
        pk, pv = self.past[layer]
        kk, vv = torch.cat([pk.to(k.dtype), k]), torch.cat([pv.to(v.dtype), v])
        T, P = q.shape[0], pk.shape[0]
        if self.flash is not None:
            # flash-attn's causal mask is aligned to the bottom right when seqlen_k > seqlen_q:
            # query t sees keys [0, P + t], as below
            cu_q = torch.tensor([0, T], dtype=torch.int32, device=q.device)
            cu_k = torch.tensor([0, P + T], dtype=torch.int32, device=q.device)
            return self.flash(q, kk, vv, cu_q, cu_k, T, P + T, softmax_scale=self.scale, causal=True)
        mask = torch.arange(P + T, device=q.device)[None, :] <= (P + torch.arange(T, device=q.device))[:, None]
        return _sdpa(q, kk, vv, self.groups, self.scale, mask)


class Model:
    """Weights and forward pass of a Llama / Qwen2 decoder. Build with :meth:`from_pretrained`."""

    #: prefill attention: ``None`` = flash-attn's varlen kernel when ``flash_attn`` imports and the
    #: model is on CUDA in float16/bfloat16, else SDPA; ``True`` = flash-attn whenever it imports
    #: (raises if it does not); ``False`` = SDPA always
    flash_attn: Optional[bool] = None

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
                last_only: bool = False, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (float32 ``[T, V]``, or ``[1, V]`` of the last token with ``last_only``) of ``T`` tokens.

        ``input_ids``, ``positions``: int64 ``[T]`` (tokens of one sequence for a
        prefill, or one token of each of ``T`` sequences for a decode step).
        ``rows``: int64 indices of the tokens whose logits to return (e.g. each
        packed sequence's last token). No host synchronisation happens here
        (attention permitting).
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
        elif rows is not None:
            x = x.index_select(0, rows)
        x = rms_norm(x, self.norm, c.rms_norm_eps)
        return F.linear(x, self.lm_head).float()

    def prefill(self, input_ids: torch.Tensor, past: Optional[List[tuple]] = None, last_only: bool = False):
        """Run one sequence's tokens; returns ``(logits, [(k, v) per layer])`` of the new tokens.

        ``past``: per-layer ``(k, v)`` ``[P, Hkv, D]`` of a cached prefix (positions ``[0, P)``).
        """
        input_ids = input_ids.to(self.device)
        P = 0 if past is None else past[0][0].shape[0]
        pos = torch.arange(P, P + input_ids.shape[0], device=self.device)
        flash = self.prefill_flash_attn()
        attn = (CausalPrefill(self.groups, self.scale, flash=flash) if past is None
                else PrefixPrefill(self.groups, self.scale, past, flash=flash))
        logits = self.forward(input_ids, pos, attn, last_only=last_only)
        return logits, [attn.kv[i] for i in range(self.cfg.num_layers)]

    def prefill_packed(self, sequences: Sequence[Sequence[int]]):
        """Prefill several sequences in one forward (tokens packed back to back, varlen attention).

        Returns ``(logits, kv)``: float32 ``[S, V]`` logits of each sequence's
        last token, and per layer ``(k, v)`` ``[sum of lengths, Hkv, D]`` in the packed order.
        """
        lens = [len(s) for s in sequences]
        if not lens or min(lens) < 1:
            raise ValueError("prefill_packed needs at least one sequence, each with at least one token")
        ids = torch.tensor([t for s in sequences for t in s], dtype=torch.int64).to(self.device)
        pos = torch.cat([torch.arange(n) for n in lens]).to(self.device)
        last = torch.tensor(lens).cumsum(0).sub(1).to(self.device)
        attn = CausalPrefill(self.groups, self.scale, lens=lens, flash=self.prefill_flash_attn())
        logits = self.forward(ids, pos, attn, rows=last)
        return logits, [attn.kv[i] for i in range(self.cfg.num_layers)]

    def prefill_flash_attn(self):
        """The ``flash_attn_varlen_func`` prefill uses, or ``None`` for SDPA (see :attr:`flash_attn`)."""
        if self.flash_attn is False:
            return None
        if self.flash_attn is None and not (self.device.type == "cuda"
                                            and self.dtype in (torch.float16, torch.bfloat16)):
            return None
        fn = flash_attn_varlen()
        if fn is None and self.flash_attn:
            raise RuntimeError("Model.flash_attn is True but the flash_attn package cannot be imported")
        return fn

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
