"""Model families: one record per family holding everything the code knows about it.

A :class:`ModelFamily` gives

* ``arch``: the runner's architecture (``"llama"`` or ``"qwen2"``: weight layout and biases,
  :mod:`.checkpoint`, :mod:`.model`) and the Hugging Face ``architectures`` names that select it;
* ``budget_strings``: end of thinking, Wait and answer prefix of budget forcing (:class:`.Engine`);
* ``templates``: the instructions of s1's prompt-conditional baselines
  (:mod:`tts_kernels.search.budget_control`);
* ``embedded``: whether it is the embedded toy model (:func:`is_embedded` decides, once).

:func:`family_of` picks the family of a loaded model; an architecture without a family is a
``ValueError`` naming it and the known ones. Adding a family is one entry in :data:`FAMILIES`
(plus, for a new ``arch``, its layer code in :mod:`.model`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class BudgetStrings:
    """Budget-forcing strings of a model family (tokenised with the model's tokenizer)."""

    end_think: str = "</think>"
    wait: str = "Wait"
    answer_prefix: str = "Final Answer:"


@dataclass(frozen=True)
class PromptTemplates:
    """Instructions of the prompt-conditional baselines (``str.format`` templates).

    ``{prompt}`` is the problem prompt without a trailing ``think_tag`` (put back after the
    instruction, so that the instruction is not inside the thinking), ``{budget}`` the token
    budget, ``{steps}`` the step budget. ``tokens_per_step`` turns a token budget into steps; a
    budget of at least ``long_from`` tokens asks for the long class. Defaults: s1's baselines for
    instruction-following checkpoints (wording ours).
    """

    name: str = "s1-instruct"
    token: str = "{prompt}\n\nThink for up to {budget} tokens."
    step: str = "{prompt}\n\nThink for up to {steps} steps."
    short: str = "{prompt}\n\nAnswer after a short amount of thinking. Do not spend time double-checking your work."
    long: str = ("{prompt}\n\nAnswer after a long amount of thinking. If you are done early, spend the extra "
                 "time double-checking your work until you are sure of the answer.")
    tokens_per_step: int = 100
    long_from: int = 2048
    think_tag: str = "<think>"

    def render(self, kind: str, prompt: str, budget: int = 0, steps: int = 0) -> str:
        """The prompt of baseline ``kind`` ("token", "step", "short" or "long")."""
        if kind not in ("token", "step", "short", "long"):
            raise ValueError(f"kind must be token, step, short or long, got {kind!r}")
        tag = self.think_tag if self.think_tag and prompt.endswith(self.think_tag) else ""
        return getattr(self, kind).format(prompt=prompt[:len(prompt) - len(tag)], budget=budget, steps=steps) + tag

    def steps_for(self, max_thinking: int) -> int:
        return max(1, round(max_thinking / self.tokens_per_step))

    def class_for(self, max_thinking: int) -> str:
        return "long" if max_thinking >= self.long_from else "short"


S1_TEMPLATES = PromptTemplates()
#: The embedded model cannot read (or tokenise) instructions: every prompt is left unchanged.
EMBEDDED_TEMPLATES = PromptTemplates(name="embedded-unconditioned", token="{prompt}", step="{prompt}",
                                     short="{prompt}", long="{prompt}", tokens_per_step=8, long_from=40)


#: DeepSeek-R1-Distill / QwQ style reasoning models
R1_BUDGET_STRINGS = BudgetStrings("</think>", "Wait", "\n\n**Final Answer**\n\n")


@dataclass(frozen=True)
class ModelFamily:
    """Everything family-specific: architecture, budget strings, prompt templates, embedded or not."""

    name: str
    arch: str                       # the runner's architecture
    architectures: tuple            # config.json "architectures" names that select it
    budget_strings: BudgetStrings
    templates: PromptTemplates
    embedded: bool = False          # the embedded toy model (chosen by :func:`is_embedded`, not by name)
    qkv_bias: bool = False          # q/k/v projections always have a bias (Qwen2)
    o_bias: bool = True             # config "attention_bias" also gives o_proj a bias (Llama)


FAMILIES: Dict[str, ModelFamily] = {f.name: f for f in (
    ModelFamily("embedded", "llama", (), BudgetStrings("</think>", "Wait", "Final Answer:"), EMBEDDED_TEMPLATES,
                embedded=True),
    ModelFamily("qwen2", "qwen2", ("Qwen2ForCausalLM",), R1_BUDGET_STRINGS, S1_TEMPLATES, qkv_bias=True,
                o_bias=False),
    ModelFamily("llama", "llama", ("LlamaForCausalLM",), R1_BUDGET_STRINGS, S1_TEMPLATES),
)}

#: the budget strings per family name (as :data:`FAMILIES` holds them)
FAMILY_BUDGET_STRINGS = {name: f.budget_strings for name, f in FAMILIES.items()}

#: vocabularies below this size are the embedded toy model's (with a "</think>" token)
EMBEDDED_MAX_VOCAB = 1000


def is_embedded(cfg, tokenizer=None) -> bool:
    """Whether a model (its :class:`.ModelConfig`, and tokenizer when there is one) is the embedded toy model."""
    if cfg.vocab_size >= EMBEDDED_MAX_VOCAB:
        return False
    return tokenizer is None or tokenizer.token_to_id(FAMILIES["embedded"].budget_strings.end_think) is not None


def for_arch(arch: str) -> ModelFamily:
    """The (non-embedded) family of runner architecture ``arch``; ``ValueError`` naming the known ones."""
    for f in FAMILIES.values():
        if f.arch == arch and not f.embedded:
            return f
    raise ValueError(f"no model family for architecture {arch!r}; known: "
                     f"{sorted({f.arch for f in FAMILIES.values()})}")


def for_config(architectures, model_type: Optional[str]) -> Optional[ModelFamily]:
    """The family a config.json's ``architectures`` (or, without any, its ``model_type``) selects, or None."""
    found = None
    for a in architectures:
        found = next((f for f in FAMILIES.values() if a in f.architectures), found)
    if found is None and not architectures and model_type is not None:
        found = next((f for f in FAMILIES.values() if f.arch == model_type and not f.embedded), None)
    return found


def family_of(cfg, tokenizer=None) -> ModelFamily:
    """The family of a loaded model: the embedded one (:func:`is_embedded`), else the one its config.json
    selected (``cfg.family``), else its architecture's."""
    if is_embedded(cfg, tokenizer):
        return FAMILIES["embedded"]
    return FAMILIES[cfg.family] if getattr(cfg, "family", "") in FAMILIES else for_arch(cfg.arch)


#: config.json "architectures" name -> runner architecture
SUPPORTED_ARCHS = {a: f.arch for f in FAMILIES.values() for a in f.architectures}
