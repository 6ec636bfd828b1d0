"""The search strategies on the vLLM backend, end to end (run in the vLLM virtual environment).

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python tests/integrations/vllm/check_vllm_search.py [--out result.json]

On the embedded policy and PRM (one ``vllm.LLM`` for the policy, one for the
PRM, reused by every check):

* ``bon_beats_single``: Best-of-16 with the PRM (PRM-Vote) beats one sample, on
  48 held-out problems with a fixed seed (as the engine's test);
* ``reproducible``: each strategy twice with one seed gives the same candidates,
  another seed others;
* ``greedy_equals_engine``: at temperature 0 each strategy's candidates (texts,
  answers, step scores) on vLLM equal those of the package's Engine (the
  deterministic reference: the strategies' code is shared, so any difference is
  the backend's);
* ``vllm_prm``: :class:`VLLMPRM` scores equal :class:`EnginePRM`'s, and beam
  search runs with it;
* ``budget``: s1 budget forcing through the backend (the package's vLLM
  processor): every run's thinking length within [min, max] (Control 100%);
* ``bad_settings``: clear errors.

Prints a JSON summary (and writes it to --out); exit status 1 on failure.
"""
import json
import os
import sys
import time
import traceback


def _key(res):
    return [[(c.text, c.answer, c.finished) for c in r.candidates] for r in res]


def _scores(res):
    return [[c.step_scores for c in r.candidates] for r in res]


def main():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import vllm

    from tts_kernels.decode import Engine, load
    from tts_kernels.search import SearchConfig, load_prm, run_strategy
    from tts_kernels.search import budget_control as bc
    from tts_kernels.search.backends import VLLMBackend, VLLMPRM, make_backend
    from tts_kernels.tasks import arith

    out = {"vllm": vllm.__version__, "checks": {}, "ok": False}
    t0 = time.time()
    checks = out["checks"]
    try:
        policy = VLLMBackend(seed=0, max_model_len=256, max_num_seqs=256)
        prm = load_prm()
        out["init_s"] = round(time.time() - t0, 1)

        def run(strategy, prompts, seed, **kw):
            policy.reset(seed)
            r = run_strategy(strategy, policy, prompts, prm, SearchConfig(**{"temperature": 1.0, "max_tokens": 100,
                                                                              **kw}))
            assert policy.live == [], "the strategy left sequences live"
            return r

        # Best-of-16 with the PRM beats one sample
        probs = arith.make_problems(48, seed=20_000)
        res = run("best_of_n", [p.prompt for p in probs], 0, n=16, voting="prm_vote")
        single = sum(sum(arith.is_correct(p, c.text) for c in r.candidates) / 16 for p, r in zip(probs, res)) / 48
        bon = sum(r.answer == str(p.answer) for p, r in zip(probs, res)) / 48
        out["bon"] = {"single_sample_accuracy": single, "best_of_16_prm_vote": bon, "stats": dict(policy.stats)}
        checks["bon_beats_single"] = bon > single + 0.05

        # reproducible with a fixed seed; another seed differs
        prompts = [p.prompt for p in arith.make_problems(3, seed=20_000)]
        rep = {}
        for s in ("best_of_n", "beam_search", "dvts"):
            a = run(s, prompts, 5, n=8, beam_width=4)
            b = run(s, prompts, 5, n=8, beam_width=4)
            c = run(s, prompts, 6, n=8, beam_width=4)
            rep[s] = {"same_seed_equal": _key(a) == _key(b) and _scores(a) == _scores(b),
                      "other_seed_differs": _key(a) != _key(c)}
        out["reproducible"] = rep
        checks["reproducible"] = all(v["same_seed_equal"] and v["other_seed_differs"] for v in rep.values())

        # temperature 0: the same candidates as the package's engine
        probs = arith.make_problems(6, seed=20_100)
        prompts = [p.prompt for p in probs]
        greedy = {}
        for s in ("best_of_n", "beam_search", "dvts"):
            cfg = SearchConfig(n=4, beam_width=2, temperature=0.0, max_tokens=100)
            policy.reset(0)
            v = run_strategy(s, policy, prompts, prm, cfg)
            eng = Engine(*load(), num_blocks=4096, block_size=8, seed=0)
            e = run_strategy(s, eng, prompts, prm, cfg)
            diff = max((abs(x - y) for rv, re in zip(_scores(v), _scores(e)) for cv, ce in zip(rv, re)
                        for x, y in zip(cv, ce)), default=0.0)
            greedy[s] = {"same_candidates": _key(v) == _key(e), "max_score_diff": diff,
                         "answers": [r.answer for r in v], "engine_answers": [r.answer for r in e]}
        out["greedy_equals_engine"] = greedy
        checks["greedy_equals_engine"] = all(g["same_candidates"] and g["max_score_diff"] < 1e-4
                                             for g in greedy.values())

        # a tag-token PRM run by vLLM scores as the package's EnginePRM
        vprm = VLLMPRM(max_num_seqs=256)
        prm.reset()
        policy.reset(3)
        cands = [c for r in run_strategy("best_of_n", policy, prompts[:3], None,
                                         SearchConfig(n=4, voting="majority", max_tokens=100)) for c in r.candidates]
        rep_prompts = [p for p in prompts[:3] for _ in range(4)]
        a = vprm.score(rep_prompts, [c.steps for c in cands])
        b = prm.score(rep_prompts, [c.steps for c in cands])
        prm.reset()
        d = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
        policy.reset(0)
        bs = run_strategy("beam_search", policy, prompts[:3], vprm, SearchConfig(n=8, beam_width=4, max_tokens=100))
        out["vllm_prm"] = {"max_abs_diff_vs_engine_prm": d, "steps_scored": sum(map(len, a)),
                           "beam_answers": [r.answer for r in bs], "tokens_scored": vprm.tokens_scored}
        checks["vllm_prm"] = d < 1e-4 and sum(map(len, a)) > 0 and all(r.candidates for r in bs)

        # s1 budget forcing through the backend (the package's vLLM processor)
        policy.reset(0)
        bprobs = arith.make_problems(16, seed=20_200)
        rows = []
        for lo, hi in ((0, 8), (12, 24)):
            sids = [policy.add(p.prompt, temperature=1.0, min_thinking=lo, max_thinking=hi) for p in bprobs]
            policy.generate(sids, max_new_tokens=hi + 24)
            end = list(policy.tokenizer.encode(policy.family.budget_strings.end_think))
            lens = [bc.thinking_length(policy.tokens(s), end) for s in sids]
            rows.append({"min": lo, "max": hi, "thinking": lens,
                         "control": sum(lo <= x <= hi for x in lens) / len(lens)})
            policy.free(sids)
        out["budget"] = rows
        checks["budget"] = all(r["control"] == 1.0 for r in rows)

        # bad settings: clear errors
        bad = {}

        def expect(name, fn, exc, words):
            try:
                fn()
                bad[name] = None
            except exc as e:  # noqa: BLE001
                bad[name] = f"{type(e).__name__}: {e}"
                if not all(w in str(e) for w in words):
                    bad[name] = "UNCLEAR " + bad[name]
            except Exception as e:  # noqa: BLE001
                bad[name] = f"WRONG TYPE {type(e).__name__}: {e}"

        expect("tensor_parallel_without_gpus", lambda: VLLMBackend(tensor_parallel_size=2), ValueError,
               ["tensor_parallel_size=2", "GPU"])
        expect("pipeline_parallel_zero", lambda: VLLMBackend(pipeline_parallel_size=0), ValueError,
               ["pipeline_parallel_size"])
        expect("unknown_backend", lambda: make_backend("sglang"), ValueError, ["sglang", "vllm", "engine"])
        policy.reset(0)
        sid = policy.add("1+2=?<think>", max_thinking=8)
        policy.generate([sid], max_new_tokens=2)
        expect("budget_over_two_calls", lambda: policy.generate([sid], max_new_tokens=4), ValueError,
               ["budget forcing", "one call"])
        expect("token_outside_vocab", lambda: policy.add([10 ** 6]), ValueError, ["vocabulary"])
        policy.reset(0)
        out["bad_settings"] = bad
        checks["bad_settings"] = all(v and not v.startswith(("UNCLEAR", "WRONG")) for v in bad.values())
        out["ok"] = all(checks.values())
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    out["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            f.write(text)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
