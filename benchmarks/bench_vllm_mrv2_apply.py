"""Cost of the budget-forcing processor's Model Runner V2 ``apply`` per decode step, on CPU.

    python benchmarks/bench_vllm_mrv2_apply.py [--rows 256] [--vocab 151936] [--steps 10] [--threads 1]

Runs in the vLLM venv (``.ci/run-vllm`` makes it). Builds vLLM's real
``RequestState`` (non-UVA buffers: CPU has no pinned memory) and the processor
through vLLM's ``build_custom_logits_processors``; every step appends one
committed token per request (the catch-up of the next ``apply`` reads it),
then times ``apply(logits, ctx)`` on a fresh fp32 copy of the logits. Cases:

* ``need+top_p``: every row budgeted, thinking below ``min_tokens`` (so the
  Wait-injection ``p_end`` is computed every step) with top-p on (the sort).
* ``need``: the same without top-k / top-p (no sort, only softmax).
* ``forced/free``: every row budgeted with ``min_tokens = 0`` (no ``p_end``):
  state catch-up, plan and the logits rewrite only.
* ``half``: 128 of 256 rows budgeted (``need+top_p``), the rest untouched.

"Rest of the step" is what vLLM's MRV2 sampler does to the same batch after
``apply`` on CPU, timed the same way: temperature, min-p, vLLM's
``apply_top_k_top_p`` (torch path, top-p 0.95) and a Gumbel-max draw. The
model forward is not included (no GPU, no real model here), so the share is
of the sampling step only; against a full decode step it is smaller.
"""
import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the stand-in config names no tokenizer: no hub look-up
import torch


def build(rows, vocab, max_len):
    import vllm.v1.worker.gpu.buffer_utils as bu

    bu.is_uva_available = lambda: False
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors
    from vllm.v1.worker.gpu.states import RequestState

    rs = RequestState(rows, max_len, 8192, 0, vocab, torch.device("cpu"))
    cfg = SimpleNamespace(model_config=SimpleNamespace(tokenizer=None, trust_remote_code=False),
                          num_speculative_tokens=0)
    (proc,) = build_custom_logits_processors(cfg, rs, False, ("tts_kernels.integrations.vllm:BudgetForcingLogitsProcessor",))
    return rs, proc


def run_case(name, rows, vocab, steps, budgeted, min_tokens, top_p, top_k=0):
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    rs, proc = build(rows, vocab, 64 + steps + 8)
    end, wait = [vocab - 3], [vocab - 2, vocab - 1]
    prompt = list(range(1, 33))
    for i in range(rows):
        extra = None
        if i < budgeted:
            extra = {"budget_forcing": {"min_tokens": min_tokens, "max_tokens": 10 ** 6, "end_think_ids": end,
                                        "wait_ids": wait}}
        sp = SamplingParams(max_tokens=steps + 8, temperature=0.8, top_p=top_p, top_k=top_k, seed=i,
                            extra_args=extra)
        rs.add_request(f"r{i}", len(prompt), prompt, len(prompt), sp.max_tokens)
        proc.add_request(rs.req_id_to_index[f"r{i}"], sp)
    rs.prompt_len.copy_to_uva()
    rs.prefill_len.copy_to_uva()
    for t in (rs.total_len, rs.all_token_ids):  # the runner's staged writes (Triton there), with torch
        lo = 0
        for j, idx in enumerate(t._staged_write_indices):
            hi = t._staged_write_cu_lens[j]
            vals = torch.tensor(t._staged_write_contents[lo:hi], dtype=t.gpu.dtype)
            if t.gpu.dim() == 1:
                t.gpu[idx] = vals[0]
            else:
                t.gpu[idx, :len(vals)] = vals
            lo = hi
        t.clear_staged_writes()
    proc.apply_staged_writes()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(rows, vocab, generator=g)
    slots_all = np.array([rs.req_id_to_index[f"r{i}"] for i in range(rows)], dtype=np.int32)
    t_apply, t_rest = [], []
    temp = torch.full((rows, 1), 0.8)
    for step in range(steps + 2):
        perm = np.random.default_rng(step).permutation(rows)
        slots = slots_all[perm]
        total = rs.total_len.gpu[torch.from_numpy(slots).long()].long()
        ctx = LogitsContext(expanded_idx_mapping=torch.from_numpy(slots), idx_mapping=torch.from_numpy(slots),
                            idx_mapping_np=slots, expanded_local_pos=torch.zeros(rows, dtype=torch.int32),
                            input_ids=torch.zeros(rows, dtype=torch.int64), pos=total - 1,
                            seq_lens_upper_bound_np=total.int().numpy())
        logits = base.clone()
        t0 = time.perf_counter()
        logits = proc.apply(logits, ctx)
        t1 = time.perf_counter()
        # the rest of MRV2's sampling of this batch (sampler.py after the processors)
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

        t2 = time.perf_counter()
        x = logits / temp
        x = apply_top_k_top_p(x, None, torch.full((rows,), 0.95))
        q = torch.empty_like(x).exponential_(generator=g)
        tok = (x.softmax(-1) / q).argmax(-1)
        t3 = time.perf_counter()
        # post_update: commit one thinking token per request (not an end), for the next catch-up
        sl = torch.from_numpy(slots).long()
        rs.all_token_ids.gpu[sl, total] = (tok % (vocab - 4)).int()
        rs.total_len.gpu[sl] = (total + 1).int()
        if step >= 2:
            t_apply.append((t1 - t0) * 1e3)
            t_rest.append((t3 - t2) * 1e3)
    a, r = statistics.median(t_apply), statistics.median(t_rest)
    return {"case": name, "rows": rows, "budgeted": budgeted, "vocab": vocab, "apply_ms": round(a, 2),
            "rest_of_sampling_ms": round(r, 2), "share_of_rest": round(a / r, 3),
            "apply_ms_min": round(min(t_apply), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = [run_case("need+top_p", a.rows, a.vocab, a.steps, a.rows, 10 ** 6, 0.95),
           run_case("need", a.rows, a.vocab, a.steps, a.rows, 10 ** 6, 1.0),
           run_case("forced/free", a.rows, a.vocab, a.steps, a.rows, 0, 0.95),
           run_case("half", a.rows, a.vocab, a.steps, a.rows // 2, 10 ** 6, 0.95)]
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": a.steps}
    for r in res:
        print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
