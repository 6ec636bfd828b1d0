"""Budget forcing inside a real vLLM engine (run in the vLLM virtual environment).

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python tests/integrations/vllm/check_vllm_budget.py [--out result.json]

Offline: makes a tiny random-weight Llama checkpoint (head_dim 32), runs one
mixed batch (budgeted requests with different budgets and sampling settings,
unbudgeted ones) with the processor, and the same batch without it; checks every
budgeted sequence against the rules (tests/integrations/vllm/budget_checker.py) and that the
unbudgeted requests are identical; checks that validate_params rejects bad
settings. Prints a JSON summary (and writes it to --out); exit status 1 on failure.
"""
import json
import os
import sys
import tempfile
import time
import traceback

END, WAIT, ANS = [100, 101], [102, 103], [104, 105, 106]
VOCAB = 112


def make_checkpoint(path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                      attention_bias=True, bos_token_id=1, eos_token_id=111, pad_token_id=110,
                      torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a constant residual feature, so the end token gets a steady probability
        model.model.layers[-1].self_attn.o_proj.bias.zero_()
        model.model.layers[-1].self_attn.o_proj.bias[0] = 100.0
        model.lm_head.weight[END[0]].zero_()
        model.lm_head.weight[END[0], 0] = 0.25
    model.save_pretrained(path, safe_serialization=True)


def main():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from budget_checker import check_sequence

    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from tts_kernels.integrations.vllm import BudgetForcingLogitsProcessorV1

    records = []

    class Recording(BudgetForcingLogitsProcessorV1):
        """Records (seed, output position) of every Wait forced in place of an end."""

        def apply(self, logits):
            out = super().apply(logits)
            if self.rows:
                rows = [i for i in sorted(self.rows) if i < logits.shape[0]]
                for i in rows:
                    if bool(self.replaced[i]):
                        records.append((int(self.seed[i]), int(self.emitted[i])))
            return out

    result = {"vllm": vllm.__version__, "ok": False, "checks": {}}
    t0 = time.time()
    ckpt = tempfile.mkdtemp(prefix="tk_llama_")
    make_checkpoint(ckpt)
    common_kw = dict(model=ckpt, skip_tokenizer_init=True, dtype="float32", max_model_len=256,
                     max_num_seqs=16, enforce_eager=True, seed=0,
                     gpu_memory_utilization=float(os.environ.get("TK_VLLM_MEM_UTIL", "0.2")))

    specs = [  # (budget or None, sampling kwargs)
        (dict(min_tokens=10, max_tokens=30, min_waits=0), dict(temperature=1.0, seed=11)),
        (dict(min_tokens=0, max_tokens=5), dict(temperature=0.8, top_p=0.9, seed=12)),
        (None, dict(temperature=1.0, seed=13)),
        (dict(min_tokens=20, max_tokens=40, min_waits=2), dict(temperature=0.0, seed=14)),
        (dict(min_tokens=8, max_tokens=12, min_waits=1, wait_ids=[107], answer_prefix_ids=[108, 109]),
         dict(temperature=1.0, top_k=20, min_p=0.01, seed=15)),
        (None, dict(temperature=0.0, seed=16)),
        (dict(min_tokens=15, max_tokens=25), dict(temperature=0.7, top_k=30, top_p=0.95, seed=17)),
        (None, dict(temperature=0.9, top_p=0.8, seed=18)),
    ]
    prompts = [TokensPrompt(prompt_token_ids=[1 + i, 20 + 3 * i, 40 + i, 60 + 2 * i]) for i in range(len(specs))]

    def params(with_budget):
        out = []
        for budget, kw in specs:
            extra = None
            if budget is not None and with_budget:
                b = dict(budget)
                b.setdefault("end_think_ids", END)
                b.setdefault("wait_ids", WAIT)
                b.setdefault("answer_prefix_ids", ANS)
                extra = {"budget_forcing": b}
            out.append(SamplingParams(max_tokens=60, ignore_eos=True, detokenize=False, extra_args=extra, **kw))
        return out

    try:
        llm = LLM(logits_processors=[Recording], **common_kw)
        t_load = time.time() - t0
        # bad settings rejected before the request runs
        bad = {"min_gt_max": dict(min_tokens=9, max_tokens=3, end_think_ids=END),
               "unknown_key": dict(max_tokens=3, end_think_ids=END, max_thinking=4),
               "id_outside_vocab": dict(max_tokens=3, end_think_ids=[VOCAB + 5])}
        rejected = {}
        for name, b in bad.items():
            sp = SamplingParams(max_tokens=4, extra_args={"budget_forcing": b}, detokenize=False)
            try:
                llm.generate([prompts[0]], [sp], use_tqdm=False)
                rejected[name] = None
            except Exception as exc:  # noqa: BLE001
                rejected[name] = f"{type(exc).__name__}: {exc}"
        result["rejected"] = rejected
        result["checks"]["validate_params"] = all(v and ("budget_forcing" in v) for v in rejected.values())

        records.clear()
        t1 = time.time()
        outs = llm.generate(prompts, params(True), use_tqdm=False)
        t_gen = time.time() - t1
        with_proc = [list(o.outputs[0].token_ids) for o in outs]
        del llm
        import gc
        gc.collect()
        llm2 = LLM(**common_kw)
        plain = [list(o.outputs[0].token_ids) for o in llm2.generate(prompts, params(False), use_tqdm=False)]

        rows = []
        all_ok = True
        for i, ((budget, kw), toks) in enumerate(zip(specs, with_proc)):
            row = {"request": i, "budget": budget, "sampling": kw, "tokens": toks}
            if budget is None:
                row["identical_to_plain"] = toks == plain[i]
                all_ok &= row["identical_to_plain"]
            else:
                wait = budget.get("wait_ids", WAIT)
                ans = budget.get("answer_prefix_ids", ANS)
                repl = {p for s, p in records if s == kw["seed"]}
                try:
                    r = check_sequence(toks, budget.get("min_tokens", 0), budget["max_tokens"],
                                       budget.get("min_waits", 0), END, wait, ans, replaced=repl)
                    row.update(r, ok=r["finished"], waits_forced=len(repl))
                except AssertionError as exc:
                    row.update(ok=False, error=str(exc))
                all_ok &= row["ok"]
            rows.append(row)
        result["requests"] = rows
        result["checks"]["budgeted_rows_follow_rules"] = all(r.get("ok", True) for r in rows)
        result["checks"]["unbudgeted_identical"] = all(r.get("identical_to_plain", True) for r in rows)
        result["checks"]["some_budget_changed_output"] = any(
            with_proc[i] != plain[i] for i, (b, _) in enumerate(specs) if b is not None)
        result["ok"] = bool(all_ok and all(result["checks"].values()))
        result["seconds"] = {"load": round(t_load, 1), "generate": round(t_gen, 2), "total": round(time.time() - t0, 1)}
    except Exception:  # noqa: BLE001
        result["error"] = traceback.format_exc()
    text = json.dumps(result, indent=1)
    print("RESULT_JSON " + json.dumps(result))
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            f.write(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
