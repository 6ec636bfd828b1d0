"""The Triton kernels on a real CUDA device against the PyTorch reference (skipped without CUDA).

Everything else in the suite runs the Triton kernels through the CPU interpreter on small
shapes; here they run compiled, on the shapes users run (vocabularies of 32k-152k, batches
1-256, long shared prefixes). ``benchmarks/gpu_suite.py`` runs this file first on a GPU machine.
"""
import pytest
import torch

import tts_kernels as tk

from helpers.attention import assert_close_to_oracle, random_caches, random_forest
from helpers.sampling import decisive_rows, mixed_params, random_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEV = "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,v", [(1, 151936), (33, 32000), (256, 128256), (7, 4099)])
def test_sampler_matches_reference(b, v, dtype):
    gen = torch.Generator().manual_seed(b * 7 + v)
    logits = random_logits(b, v, gen=gen, dtype=dtype, device=DEV)
    params = mixed_params(b, v, gen=gen, device=DEV)
    got = tk.sample(logits, **params, backend="triton")
    want = tk.sample(logits, **params, backend="reference")
    ok = decisive_rows(logits, **params).to(DEV)
    assert ok.float().mean() > 0.9
    assert torch.equal(got.token_ids[ok], want.token_ids[ok])
    torch.testing.assert_close(got.logprobs[ok], want.logprobs[ok], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,v", [(32, 151936), (256, 151936), (1, 151936), (4, 5000), (133, 9000)])
def test_sampler_pipelined_pass1_same_outputs(monkeypatch, b, v, dtype):
    """Pass 1's pipelined loop (``PASS1_STAGES``' 3, compiled: the next tiles copied into shared memory) gives the
    plain loop's tokens and logprobs bit for bit: on split rows of 5 tiles a slice (B = 32) and of one (B = 1), on
    slices without a whole tile (B = 4, V = 5000), and in the per-row kernel over 18 tiles (B = 256, the benchmark's
    pipeline suite's shapes) and over one and a partial one (B = 133, V = 9000): the pipeliner's prologue and
    epilogue with fewer tiles than stages."""
    from tts_kernels.sampling import triton_kernel as tkm

    gen = torch.Generator().manual_seed(b + 5)
    logits = random_logits(b, v, gen=gen, dtype=dtype, device=DEV)
    params = mixed_params(b, v, gen=gen, device=DEV)
    outs = []
    for stages in tkm.PASS1_STAGES:
        monkeypatch.setattr(tkm, "_pass1_stages", lambda device, s=stages: s)
        outs.append(tk.sample(logits, **params, backend="triton"))
    assert torch.equal(outs[0].token_ids, outs[1].token_ids)
    assert torch.equal(outs[0].logprobs, outs[1].logprobs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sampler_budget_forcing_matches_reference(dtype):
    b, v = 64, 32000
    gen = torch.Generator().manual_seed(3)
    bf = tk.BudgetForcing(end_think_ids=[5, 6], wait_ids=[7, 8], answer_prefix_ids=[9])
    mx = torch.randint(0, 12, (b,), generator=gen)
    mn = (mx.float() * torch.rand(b, generator=gen)).long()
    states = [bf.init_state(b, min_tokens=mn, max_tokens=mx, min_waits=1, device=DEV) for _ in range(2)]
    seeds = torch.arange(b, device=DEV)
    for step in range(16):
        logits = random_logits(b, v, gen=gen, dtype=dtype, device=DEV)
        logits[:, 5] += 4.0  # the model keeps trying to end thinking
        outs = [tk.sample(logits, temperature=0.0, seed=seeds, offset=step, budget=st, backend=be)
                for st, be in zip(states, ("triton", "reference"))]
        assert torch.equal(outs[0].token_ids, outs[1].token_ids), step
        assert torch.equal(states[0].data, states[1].data), step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (8, 1, 128), (16, 2, 64)])
def test_tree_attention_matches_oracle(dtype, hq, hkv, d):
    gen = torch.Generator().manual_seed(hq + d)
    bs = 16
    bt, sl, nblk = random_forest("forest", 48, bs, 24, gen)
    k, v = random_caches(nblk + 1, bs, hkv, d, dtype, gen, device=DEV)
    q = torch.randn(bt.shape[0], hq, d, generator=gen).to(dtype=dtype, device=DEV)
    bt, sl = bt.to(DEV), sl.to(DEV)
    out, lse = tk.tree_attention(q, k, v, bt, sl, return_lse=True, backend="triton")
    assert_close_to_oracle(out, lse, q, k, v, bt, sl)


def test_tree_attention_long_shared_prefix():
    """N=64 rows over a 4k-token shared prefix plus own suffixes (the benchmark's shape, smaller)."""
    gen = torch.Generator().manual_seed(0)
    n, bs, prefix_blocks, hkv, hq, d = 64, 16, 256, 8, 32, 128
    own = torch.randint(1, 5, (n,), generator=gen)
    width = prefix_blocks + int(own.max())
    bt = torch.zeros(n, width, dtype=torch.int32)
    bt[:, :prefix_blocks] = torch.arange(prefix_blocks, dtype=torch.int32)
    nxt = prefix_blocks
    for i in range(n):
        bt[i, prefix_blocks:prefix_blocks + int(own[i])] = torch.arange(nxt, nxt + int(own[i]), dtype=torch.int32)
        nxt += int(own[i])
    sl = (prefix_blocks * bs + own * bs - torch.randint(0, bs, (n,), generator=gen)).to(torch.int32)
    k, v = random_caches(nxt, bs, hkv, d, torch.bfloat16, gen, device=DEV)
    q = torch.randn(n, hq, d, generator=gen).to(dtype=torch.bfloat16, device=DEV)
    out, lse = tk.tree_attention(q, k, v, bt.to(DEV), sl.to(DEV), return_lse=True, backend="triton")
    assert_close_to_oracle(out, lse, q, k, v, bt.to(DEV), sl.to(DEV))
