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


#: the fused projections of a layer: runner name -> the Hugging Face modules concatenated (output rows)
FUSED = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
         "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}


def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's prepacked CPU linear (``torch.ops.mkldnn._linear_pointwise``)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class Linear:
    """``y = x W^T + b``, with ``W`` prepacked for oneDNN when ``pack`` (CPU, float32 / bfloat16).

    torch's default CPU GEMM for float32 ``F.linear`` ran 2-3x slower than oneDNN with a prepacked
    weight on this project's AVX-512 CPU at the decode shapes of a 135M model, one thread
    (``benchmarks/bench_cpu_gemm.py``); vLLM's CPU backend packs its weights for the same reason. A
    packed weight is stored once (the dense ``weight`` is converted back on demand, exactly, for
    export); a tied LM head packs its own copy of the embedding (one more vocabulary x hidden
    matrix). A weight oneDNN refuses stays dense and runs through ``F.linear``.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, pack: bool = False):
        self.bias, self.dtype = bias, weight.dtype
        self.out_features, self.in_features = weight.shape
        self._dense, self._packed = weight, None
        if pack:
            try:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
                self._dense = None
            except (RuntimeError, TypeError, NotImplementedError):   # a shape, dtype or op this torch lacks: stay dense
                self._packed = None

    @property
    def packed(self) -> bool:
        return self._packed is not None

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[out, in]`` weight (a packed one converted back by oneDNN: exact, inf/NaN included)."""
        if self._dense is not None:
            return self._dense
        return self._packed.to_dense() if self._packed.is_mkldnn else self._packed

    def keep_dense(self) -> None:
        """Also hold the dense weight: ``torch.compile`` traces ``F.linear`` on it (Inductor lowers
        oneDNN's linear only for weights it froze itself), while eager calls keep the packed one."""
        if self._packed is not None and self._dense is None:
            self._dense = self.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None or (self._dense is not None and torch.compiler.is_compiling()):
            return F.linear(x, self._dense, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._packed, self.bias, "none", [], "")


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
    #: projections: ``None`` = oneDNN-prepacked weights (:class:`Linear`) on the CPU in float32 /
    #: bfloat16 (when oneDNN supports bf16 on this CPU) if this torch has them, else ``F.linear``;
    #: ``True`` = prepacked (raises if unavailable); ``False`` = ``F.linear`` always. Read when a
    #: model is built (``Model(..., onednn=...)`` sets it for one model).
    onednn: Optional[bool] = None

    def __init__(self, cfg: ModelConfig, weights: Dict[str, torch.Tensor], dtype=None, device="cpu",
                 onednn: Optional[bool] = None):
        self.cfg = cfg
        if onednn is not None:
            self.onednn = onednn
        self.dtype = parse_dtype(dtype) if dtype is not None else cfg.torch_dtype
        self.device = torch.device(device)
        w = {k: v.to(device=self.device, dtype=self.dtype) for k, v in weights.items()}
        pack = self._use_onednn()
        lin = lambda weight, bias=None: Linear(weight, bias, pack)  # noqa: E731
        self.embed = w["model.embed_tokens.weight"]
        self.lm_head = lin(self.embed if cfg.tie_word_embeddings else w["lm_head.weight"])
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            L = dict(ln1=w[p + "input_layernorm.weight"], ln2=w[p + "post_attention_layernorm.weight"])
            for kind, names in FUSED.items():      # q, k, v in one matmul; gate and up in another
                bias = [w.get(p + n + ".bias") for n in names]
                L[kind] = lin(torch.cat([w[p + n + ".weight"] for n in names]),
                              None if bias[0] is None else torch.cat(bias))
            self.layers.append(L)
        del w
        self.inv_freq = rope_inv_freq(cfg).to(self.device)
        self.groups = cfg.num_heads // cfg.num_kv_heads
        self.scale = cfg.head_dim ** -0.5

    def _use_onednn(self) -> bool:
        if self.onednn is False:
            return False
        ok = self.device.type == "cpu" and (self.dtype == torch.float32 or (
            self.dtype == torch.bfloat16 and onednn_linear_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()))
        if self.onednn and not (ok and onednn_linear_available()):
            raise RuntimeError("Model.onednn is True but oneDNN's prepacked linear is unavailable "
                               f"(device {self.device}, dtype {self.dtype}, mkldnn {torch.backends.mkldnn.is_available()})")
        return ok and onednn_linear_available()

    @classmethod
    def from_pretrained(cls, path: str, dtype=None, device="cpu", onednn: Optional[bool] = None) -> "Model":
        """Load ``path`` (config.json + safetensors). ``dtype`` defaults to the checkpoint's; ``onednn``
        overrides :attr:`onednn` for this model."""
        cfg = read_config(path)
        return cls(cfg, read_weights(path, cfg), dtype=dtype, device=device, onednn=onednn)

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
            q, k, v = L["qkv"](h).split([Hq * D, Hkv * D, Hkv * D], dim=-1)
            q, k, v = q.view(T, Hq, D), k.view(T, Hkv, D), v.view(T, Hkv, D)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            a = attention(i, q, k, v, positions)
            x = x + L["o"](a.reshape(T, Hq * D))
            h = rms_norm(x, L["ln2"], c.rms_norm_eps)
            gate, up = L["gate_up"](h).chunk(2, dim=-1)
            x = x + L["down"](F.silu(gate) * up)
        if last_only:
            x = x[-1:]
        elif rows is not None:
            x = x.index_select(0, rows)
        x = rms_norm(x, self.norm, c.rms_norm_eps)
        return self.lm_head(x).float()

    def linears(self) -> List[Linear]:
        """Every projection of the model (layers in order, then the LM head)."""
        return [L[kind] for L in self.layers for kind in FUSED] + [self.lm_head]

    def keep_dense_weights(self) -> None:
        """Before ``torch.compile``: see :meth:`Linear.keep_dense` (doubles the projections' memory)."""
        for lin in self.linears():
            lin.keep_dense()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The weights under their Hugging Face names (dense; the fused matrices split again)."""
        c = self.cfg
        sizes = {"self_attn.q_proj": c.num_heads * c.head_dim, "self_attn.k_proj": c.num_kv_heads * c.head_dim,
                 "self_attn.v_proj": c.num_kv_heads * c.head_dim, "mlp.gate_proj": c.intermediate_size,
                 "mlp.up_proj": c.intermediate_size}
        sd = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm}
        if not c.tie_word_embeddings:
            sd["lm_head.weight"] = self.lm_head.weight
        for i, L in enumerate(self.layers):
            p = f"model.layers.{i}."
            sd[p + "input_layernorm.weight"], sd[p + "post_attention_layernorm.weight"] = L["ln1"], L["ln2"]
            for kind, names in FUSED.items():
                split = [sizes.get(n, c.hidden_size) for n in names]
                for n, t in zip(names, L[kind].weight.split(split)):
                    sd[p + n + ".weight"] = t
                if L[kind].bias is not None:
                    for n, t in zip(names, L[kind].bias.split(split)):
                        sd[p + n + ".bias"] = t
        return sd

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
