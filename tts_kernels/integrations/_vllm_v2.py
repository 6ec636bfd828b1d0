"""Budget forcing for vLLM's Model Runner V2 (MRV2) logits-processor interface.

Used through :class:`tts_kernels.integrations.vllm.BudgetForcingLogitsProcessor`,
which builds :class:`BudgetForcingLogitsProcessorV2` when MRV2 instantiates it
as ``cls(vllm_config, req_states)``. How one step runs (no host sync, no Python
loop over rows):

* ``add_request`` (host): parse the request's ``extra_args["budget_forcing"]``,
  stage its per-slot configuration; return False for unbudgeted requests (vLLM
  then skips them). Every per-slot field is rewritten: slots are recycled.
* ``apply_staged_writes``: copy the staged slots to the device, fresh states,
  ``seen = prefill_len``; a resumed request (``prefill_len > prompt_len``)
  replays its existing output from ``all_token_ids`` (the host copies of the
  lengths bound the replay, no device read).
* ``apply(logits, ctx)``: (1) catch every budgeted slot of the batch up on its
  newly committed tokens ``all_token_ids[slot, seen:total_len]`` with
  ``1 + num_speculative_tokens`` masked :func:`common.advance` steps (a request
  commits at most that many tokens per step), using the per-slot record of
  which sampled position was a Wait forced in place of an end; (2) the row
  states: a row is a logits row, mapped to its slot by
  ``ctx.expanded_idx_mapping``; a draft row (speculative decoding,
  ``expanded_local_pos = j > 0``) advances its slot's state through the draft
  tokens before it (``ctx.input_ids`` of the rows before it, with their own
  Wait decisions of this step), so every draft row is forced exactly as if its
  prefix were committed; (3) the sync-free logits rewrite
  (:func:`common.injection_draw` + :func:`common.transform_sync_free`), the
  Wait-or-mask uniform keyed by (seed, output position); (4) record, per slot
  and local row, the sequence index whose token was a forced Wait.

Without speculative rows (one row per request: ``logits.shape[0] ==
len(ctx.idx_mapping_np)``) the budgeted rows are known on the host from
``ctx.idx_mapping_np``, so the work is done on those rows only; ``p_end`` (and
its sort) only for the rows whose request can still need an injection (a Wait
sequence and ``min_tokens > 0`` or ``min_waits > 0``) and the sort only when one
of them has top-k / top-p. With draft rows the row layout is only on the
device, so the rewrite runs over every row and keeps the unbudgeted ones
unchanged with a mask.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

from ..sampling.budget import BudgetForcing
from . import common

logger = logging.getLogger("tts_kernels.integrations.vllm")


class V2Impl:
    """MRV2 implementation mixin (combined with vLLM's V2 ``LogitsProcessor`` in ``vllm.py``)."""

    def __init__(self, vllm_config, req_states):
        from . import vllm as _front

        parallel = getattr(vllm_config, "parallel_config", None)
        if getattr(parallel, "enable_batch_sharded_sampling", None):
            # a request's budget state (and its record of forced Waits) lives where the processor
            # runs; vLLM 0.34 hands each step's rows to the tensor-parallel ranks by batch position,
            # so a request's rows move between ranks and its state would fall behind. Refused whenever
            # the option is set: whether vLLM shards (the model must support it) is not known here,
            # and sharded sampling was never tested with this processor on any release
            raise ValueError(
                "budget forcing (tts_kernels BudgetForcingLogitsProcessor) is not supported with "
                "enable_batch_sharded_sampling=True: each request's budget state lives on one rank, and "
                "vLLM 0.34 moves a request between tensor-parallel ranks from step to step (sharded "
                "sampling is untested with this processor on every release); leave the option off")
        _front._register_live(self, vllm_config)
        self.req_states = req_states
        self.device = torch.device(req_states.device)
        self.vocab_size = int(req_states.vocab_size)
        _front._set_vocab_size(self.vocab_size)
        n = int(req_states.max_num_reqs)
        self.max_num_reqs = n
        spec = getattr(vllm_config, "num_speculative_tokens", None)
        if spec is None:
            sc = getattr(vllm_config, "speculative_config", None)
            spec = getattr(sc, "num_speculative_tokens", 0) if sc is not None else 0
        #: rows per request and the most tokens a request commits in one step
        self.rows_per_req = 1 + int(spec or 0)
        self.defaults = _front._resolve_defaults(self, vllm_config, self.vocab_size)
        dev = self.device
        _front._alloc_slot_buffers(self, n, dev)
        self.seen = torch.zeros(n, dtype=torch.int64, device=dev)   # sequence index of the next token to consume
        #: per slot and local row: the sequence index sampled there as a Wait forced instead of an end (-1: none)
        self.wait_at = torch.full((n, self.rows_per_req), -1, dtype=torch.int64, device=dev)
        self.budgeted_dev = torch.zeros(n, dtype=torch.bool, device=dev)
        # host mirrors of per-slot constants (for choices without reading the device)
        self.budgeted = np.zeros(n, dtype=bool)
        self.may_inject = np.zeros(n, dtype=bool)   # has a Wait and min_tokens > 0 or min_waits > 0
        self.needs_sort = np.zeros(n, dtype=bool)   # top-k or top-p on
        self._staged: dict[int, tuple] = {}

    # -- vLLM MRV2 interface -------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params) -> bool:
        from . import vllm as _front

        self.budgeted[req_idx] = self.may_inject[req_idx] = self.needs_sort[req_idx] = False
        self._staged[req_idx] = None  # device side reset for the slot, even when unbudgeted
        if self._disabled:
            return False
        try:
            parsed = _front._request_forcing(sampling_params, self.defaults, self.vocab_size)
        except ValueError as exc:  # normally rejected by validate_params at admission
            logger.error("budget forcing disabled for a request: %s", exc)
            return False
        if parsed is None:
            return False
        cfg, forcing = parsed
        p = sampling_params
        t = common.vllm_temperature(p.temperature)
        k = int(p.top_k or 0)
        k = 0 if k < 0 or k >= self.vocab_size else k
        tp = float(p.top_p)
        seed = p.seed if p.seed is not None else random.getrandbits(63)
        self._staged[req_idx] = (cfg, forcing, t, k, tp, float(p.min_p or 0.0), int(seed) & (2 ** 63 - 1))
        self.budgeted[req_idx] = True
        self.may_inject[req_idx] = bool(forcing.wait_ids) and (cfg["min_tokens"] > 0 or cfg["min_waits"] > 0)
        self.needs_sort[req_idx] = t > 0 and (k > 0 or tp < 1.0)
        return True

    def apply_staged_writes(self) -> None:
        if not self._staged:
            return
        staged, self._staged = self._staged, {}
        slots = sorted(staged)
        dev = self.device
        sl = torch.tensor(slots, dtype=torch.int64, device=dev)
        self.budgeted_dev[sl] = torch.tensor([staged[s] is not None for s in slots], device=dev)
        self.wait_at[sl] = -1
        live = [s for s in slots if staged[s] is not None]
        if not live:
            return
        width = max(len(staged[s][1].forced_ids) for s in live)
        if width > self.ids.shape[1]:
            self.ids = torch.cat([self.ids, self.ids.new_zeros(self.max_num_reqs, width - self.ids.shape[1])], 1)
        ids = np.zeros((len(live), self.ids.shape[1]), dtype=np.int64)
        for i, s in enumerate(live):  # host side, once per admitted request
            f = staged[s][1].forced_ids
            ids[i, :len(f)] = f
        col = lambda vals, dt: torch.tensor(vals, dtype=dt, device=dev)  # noqa: E731
        ls = col(live, torch.int64)
        self.ids[ls] = torch.from_numpy(ids).to(dev)
        fs = [staged[s][1] for s in live]
        self.lw[ls] = col([len(f.wait_ids) for f in fs], torch.int64)
        self.le[ls] = col([len(f.end_think_ids) for f in fs], torch.int64)
        self.la[ls] = col([len(f.answer_prefix_ids) for f in fs], torch.int64)
        for j, (name, dt) in enumerate((("temperature", torch.float32), ("top_k", torch.int32),
                                        ("top_p", torch.float32), ("min_p", torch.float32),
                                        ("seed", torch.int64)), start=2):
            getattr(self, name)[ls] = col([staged[s][j] for s in live], dt)
        cfgs = [staged[s][0] for s in live]
        st = common.init_state(*(col([c[k] for c in cfgs], torch.int64)
                                 for k in ("min_tokens", "max_tokens", "min_waits")))
        rs = self.req_states
        prompt = rs.prompt_len.np[live].astype(np.int64)  # host copies, written by the runner before add_request
        prefill = rs.prefill_len.np[live].astype(np.int64)
        n_out = prefill - prompt
        if n_out.max() > 0:  # resumed requests: replay their existing output (bounded on the host)
            width = int(n_out.max())
            pos = prompt[:, None] + np.arange(width)[None, :]
            pos = np.minimum(pos, np.maximum(prefill - 1, 0)[:, None])
            toks = rs.all_token_ids.gpu[ls.view(-1, 1), torch.from_numpy(pos).to(dev)].to(torch.int64)
            st = common.replay(st, toks, torch.from_numpy(n_out).to(dev), self._table(ls))
        self.state[ls] = st
        self.seen[ls] = torch.from_numpy(prefill).to(dev)

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        if self._disabled:
            return logits
        idx_np = np.asarray(ctx.idx_mapping_np)
        bmask = self.budgeted[idx_np]
        if not bmask.any():
            return logits
        dev = self.device
        slots_np = idx_np[bmask].astype(np.int64)
        slots = torch.from_numpy(slots_np).to(dev, non_blocking=True)
        self._catch_up(slots)
        self.wait_at[slots] = -1
        n_rows = logits.shape[0]
        pos = ctx.pos.to(torch.int64)
        if n_rows == idx_np.shape[0]:  # one row per request, in batch order: budgeted rows known on the host
            rows_np = np.nonzero(bmask)[0]
            rows = torch.from_numpy(rows_np).to(dev, non_blocking=True)
            row_slot, local, valid = slots, torch.zeros_like(slots), None
            pos = pos.index_select(0, rows)
            inj_np = self.may_inject[slots_np]
            sort = bool(self.needs_sort[slots_np][inj_np].any())
        else:  # draft rows: the layout is on the device only; every row, unbudgeted ones masked
            rows = None
            row_slot = ctx.expanded_idx_mapping.to(torch.int64)
            local = ctx.expanded_local_pos.to(torch.int64)
            valid = self.budgeted_dev.index_select(0, row_slot)
            inj_np = None
            sort = bool(self.needs_sort[slots_np][self.may_inject[slots_np]].any())
        table = self._table(row_slot)
        sub = logits if rows is None else logits.index_select(0, rows)
        out_pos = pos + 1 - self.req_states.prompt_len.gpu.to(dev).index_select(0, row_slot).to(torch.int64)
        uniform = common.uniform_draw(self.seed.index_select(0, row_slot), out_pos)
        hit, keep = self._draw(sub, row_slot, table, uniform, inj_np, sort)
        st = self.state.index_select(0, row_slot)
        if rows is None and self.rows_per_req > 1:
            st = self._draft_states(st, local, ctx.input_ids.to(torch.int64), hit, table)
        new, replaced = common.transform_sync_free(sub, st, table, hit, keep)
        if rows is None:
            replaced = replaced & valid
            logits.copy_(torch.where(valid.view(-1, 1), new.to(logits.dtype), logits))
        else:
            logits.index_copy_(0, rows, new.to(logits.dtype))
        mark = torch.where(replaced, pos + 1, torch.full_like(pos, -1))
        self.wait_at.index_put_((row_slot, local.clamp(0, self.rows_per_req - 1)), mark)
        return logits

    # -- helpers -------------------------------------------------------------------
    def _table(self, slots: torch.Tensor) -> common.ForcingTable:
        return common.ForcingTable(self.ids.index_select(0, slots), self.lw.index_select(0, slots),
                                   self.le.index_select(0, slots), self.la.index_select(0, slots))

    def _catch_up(self, slots: torch.Tensor) -> None:
        """Advance the slots through ``all_token_ids[slot, seen:total_len]`` (at most ``rows_per_req`` tokens)."""
        rs = self.req_states
        total = rs.total_len.gpu.index_select(0, slots).to(torch.int64)
        seen = self.seen.index_select(0, slots)
        k = self.rows_per_req
        width = rs.all_token_ids.gpu.shape[1]
        idx = seen.view(-1, 1) + torch.arange(k, device=self.device).view(1, -1)
        toks = rs.all_token_ids.gpu[slots.view(-1, 1), idx.clamp(max=width - 1)].to(torch.int64)
        wait_at = self.wait_at.index_select(0, slots)
        flags = (wait_at.unsqueeze(1) == idx.unsqueeze(2)).any(2)
        lengths = (total - seen).clamp(0, k)
        self.state[slots] = common.replay(self.state.index_select(0, slots), toks, lengths, self._table(slots),
                                          replaced=flags)
        self.seen[slots] = seen + lengths

    def _draw(self, sub, row_slot, table, uniform, inj_np, sort):
        """Per-row ``hit`` and ``keep`` of the Wait injection, computed only for rows that can need one."""
        n, dev = sub.shape[0], sub.device
        args = (self.temperature.index_select(0, row_slot), self.top_k.index_select(0, row_slot),
                self.top_p.index_select(0, row_slot), self.min_p.index_select(0, row_slot))
        if inj_np is None:  # every row (draft-row layout)
            return common.injection_draw(sub, table, *args, uniform, sort=sort)
        hit = torch.zeros(n, dtype=torch.bool, device=dev)
        if not inj_np.any():
            return hit, None
        if inj_np.all():
            return common.injection_draw(sub, table, *args, uniform, sort=sort)
        r = torch.from_numpy(np.nonzero(inj_np)[0]).to(dev, non_blocking=True)
        h, k = common.injection_draw(sub.index_select(0, r), table.index_select(r),
                                     *(a.index_select(0, r) for a in args), uniform.index_select(0, r), sort=sort)
        keep = torch.ones(sub.shape, dtype=torch.bool, device=dev).index_copy_(0, r, k)
        return hit.index_copy_(0, r, h), keep

    def _draft_states(self, st, local, input_ids, hit, table):
        """State of each draft row: its slot's committed state advanced through the drafts before the row.

        Row ``r`` with local position ``j > 0`` was fed draft token ``input_ids[r]``,
        which row ``r - 1`` samples; that token counts as a forced Wait when row
        ``r - 1`` forces one (its own Wait decision of this step).
        """
        for j in range(1, self.rows_per_req):
            _, need = common.plan(st, table)
            rep = need & table.has_wait & hit
            prev_st, prev_rep = st.roll(1, 0), rep.roll(1, 0)
            cand = common.advance(prev_st, input_ids, prev_rep & (input_ids == table.wait0), table)
            st = torch.where((local == j).view(-1, 1), cand, st)
        return st
