"""How the installed Triton lays out the kernels' 3-d tiles: one definition for every Triton kernel module
(the sampler's pass-1 and filtered-draw tiles, tree attention's stage 2). Imported by those modules only.

A tile ``[A0, A1, C]`` whose last axis ``C`` is the contiguous one (the vector loads) and whose first two
axes both have contiguity 1 gets a blocked layout from Triton's coalescing pass; the pass orders the two
tied axes differently by release, and the lanes left over by ``C`` go to the first axis of that order:

* Triton 3.7 on: ``order = [2, 1, 0]``, the lanes on ``A1``, ``A0`` in each thread's registers;
* Triton 3.5 and 3.6: ``order = [2, 0, 1]`` (3.6's TTGIR), the lanes on ``A0``, ``A1`` in registers.

A kernel that reduces one axis in a thread (a group's H loads, the pairs a row's partial outputs are
summed over) puts it on :data:`REGISTER_AXIS` and the other on the remaining one. The wrong order spreads
that reduction over lanes and warps again (static check, sm_90): 20.2-20.7 instead of 9.9 SASS instructions
per bf16 token in the sampler's pass 1; 437 per step in stage 2 under 3.6 (32/8 x 128 bf16), against 209 in
the right order there and 162-169 under 3.7-3.9. ``benchmarks/gpu_static/check.py``'s ``tile_order_failures``
fails a compile whose loops show the other order.
"""
from __future__ import annotations

import triton

from ._torch_support import release


def register_axis(version: str) -> int:
    """The axis (0 or 1) of such a tile that Triton ``version`` keeps in a thread's registers."""
    return 0 if release(version)[:2] >= (3, 7) else 1


#: :func:`register_axis` of the installed Triton
REGISTER_AXIS = register_axis(triton.__version__)
