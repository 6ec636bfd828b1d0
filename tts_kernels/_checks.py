"""Input checks shared by the public APIs. Errors name the offending argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def checks_enabled() -> bool:
    """False while tracing for torch.compile or capturing a CUDA graph (no host syncs there)."""
    if torch.compiler.is_compiling():
        return False
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    return True


def check_tensor(name, t, *, dim=None, dtypes=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but must be on {device}")
    return t


def per_row(name, value, batch_size, device, dtype, *, integer):
    """A Python scalar or [B] / 0-d tensor -> contiguous tensor [B] of ``dtype`` on ``device``."""
    if isinstance(value, torch.Tensor):
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but logits are on {device}")
        if value.dim() == 0:
            value = value.reshape(1).expand(batch_size)
        if value.dim() != 1 or value.shape[0] != batch_size:
            raise ValueError(f"{name} must be a scalar or a tensor of shape [{batch_size}], got {tuple(value.shape)}")
        if value.dtype == torch.bool or (integer and value.dtype.is_floating_point):
            raise TypeError(f"{name} must be an {'integer' if integer else 'integer or float'} tensor, got {value.dtype}")
        return value.to(dtype).contiguous()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'} or a tensor, got {value!r}")
    if integer:
        info = torch.iinfo(dtype)
        if not info.min <= value <= info.max:
            raise ValueError(f"{name} = {value} does not fit in {dtype}")
    return torch.full((batch_size,), value, dtype=dtype, device=device)


def check_range(name, value, lo, hi, *, lo_open=False, hi_open=False, enabled=True):
    """Range check of a scalar (always) or a tensor (when ``enabled``; syncs on CUDA)."""
    if isinstance(value, torch.Tensor):
        if not enabled or value.numel() == 0:
            return
        v = value.double()
        bad = torch.isnan(v)
        if lo is not None:
            bad |= (v <= lo) if lo_open else (v < lo)
        if hi is not None:
            bad |= (v >= hi) if hi_open else (v > hi)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name}[{i}] = {value[i].item()} is outside {_interval(lo, hi, lo_open, hi_open)}")
        return
    v = float(value)
    bad = v != v or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi))
    if bad:
        raise ValueError(f"{name} = {value} is outside {_interval(lo, hi, lo_open, hi_open)}")


def _interval(lo, hi, lo_open, hi_open):
    return f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if hi_open else ']'}"
