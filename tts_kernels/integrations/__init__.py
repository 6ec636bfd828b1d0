"""Drop-in budget forcing for inference engines.

* :mod:`tts_kernels.integrations.hf`: ``BudgetForcingLogitsProcessor`` for
  Hugging Face ``model.generate`` (needs ``transformers``).
* :mod:`tts_kernels.integrations.vllm`: ``BudgetForcingLogitsProcessor`` for vLLM,
  V1 runner and Model Runner V2 (needs ``vllm``; also registered under the
  ``vllm.logits_processors`` entry-point group).
* :mod:`tts_kernels.integrations.common`: the engine-independent batched pieces.

The engine modules are imported on demand, so importing this package needs neither engine.
"""
__all__ = ["common", "hf", "vllm"]
