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

from dataclasses import dataclass, replace
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
    budget of at least ``long_from`` tokens asks for the long class. ``max_budget`` / ``max_steps``
    (0: no limit) are the largest budgets the model was trained to read: a larger one is a
    ``ValueError``, not a prompt the model has never seen. Defaults: s1's baselines for
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
    max_budget: int = 0
    max_steps: int = 0

    def render(self, kind: str, prompt: str, budget: int = 0, steps: int = 0) -> str:
        """The prompt of baseline ``kind`` ("token", "step", "short" or "long")."""
        if kind not in ("token", "step", "short", "long"):
            raise ValueError(f"kind must be token, step, short or long, got {kind!r}")
        for k, name, v, most in (("token", "budget", budget, self.max_budget), ("step", "steps", steps, self.max_steps)):
            if kind == k and most and not 0 <= v <= most:
                raise ValueError(f"{name}={v}: prompt templates {self.name!r} were trained on {name} 0..{most}")
        tag = self.think_tag if self.think_tag and prompt.endswith(self.think_tag) else ""
        return getattr(self, kind).format(prompt=prompt[:len(prompt) - len(tag)], budget=budget, steps=steps) + tag

    def steps_for(self, max_thinking: int) -> int:
        """The step budget stated for a token budget: whole ``tokens_per_step`` units, at least one."""
        return max(1, max_thinking // self.tokens_per_step)

    def class_for(self, max_thinking: int) -> str:
        return "long" if max_thinking >= self.long_from else "short"


S1_TEMPLATES = PromptTemplates()
#: The embedded model cannot read (or tokenise) instructions: every prompt is left unchanged.
EMBEDDED_TEMPLATES = PromptTemplates(name="embedded-unconditioned", token="{prompt}", step="{prompt}",
                                     short="{prompt}", long="{prompt}", tokens_per_step=8, long_from=40)
#: The conditioning forms the embedded conditioning-trained policy (``models/tiny-arith-cond``,
#: ``scripts/train_tiny_model.py --conditioning``) reads, spelled with its 29-token vocabulary:
#: ``"32:49+9-3-6=?<think>"`` (at most 32 thinking tokens), ``"04.49+9-3-6=?<think>"`` (at most 4
#: steps, a Wait re-check counting as one), ``"-,..."`` (think short: no re-check) and ``"+,..."``
#: (think long: 2-3 re-checks). Budgets are written with two digits (``"08:"``): with a one-digit
#: ``"8:"`` the first fine-tuned policy read budget 8 as a long one (73 thinking tokens, 2% Control
#: on 64 problems). A step ``49+9=58\n\n`` is 6-8 tokens and a re-check (``Wait\n\n`` and the last
#: step) 8-10, so ``tokens_per_step`` is 10: a token budget b is stated as ``b // 10`` steps, and a
#: policy that keeps to the step count keeps to the token budget (with 8 and rounding, a perfect
#: trace overshot budget 48 two times in three). A budget of at least ``long_from`` tokens asks for the
#: long class: a long trace (3-6 steps and 2-3 re-checks) thinks 34-78 tokens and fits budget 48 only
#: 18% of the time, a short one (18-48 tokens) never fits 8-16: over budgets 8-48 a policy that does
#: exactly as asked reaches 19.4% class-conditional Control (measured on the training traces).
#: Budgets are trained up to 99 tokens and 12 steps (``max_budget``, ``max_steps``).
EMBEDDED_CONDITIONED_TEMPLATES = PromptTemplates(name="embedded-conditioned", token="{budget:02d}:{prompt}",
                                                 step="{steps:02d}.{prompt}", short="-,{prompt}", long="+,{prompt}",
                                                 tokens_per_step=10, long_from=48, max_budget=99, max_steps=12)
#: prompt templates by name: what a checkpoint's config.json key ``"tts_prompt_templates"`` may say
TEMPLATES: Dict[str, PromptTemplates] = {t.name: t for t in (S1_TEMPLATES, EMBEDDED_TEMPLATES,
                                                             EMBEDDED_CONDITIONED_TEMPLATES)}
#: the config.json key by which a checkpoint declares the prompt templates it was trained to read
TEMPLATES_KEY = "tts_prompt_templates"


def templates_named(name: str, where: str = TEMPLATES_KEY) -> PromptTemplates:
    """The :data:`TEMPLATES` entry ``name``; ``ValueError`` naming ``where`` (the config key) and the known ones."""
    if name not in TEMPLATES:
        raise ValueError(f"{where}: unknown prompt templates {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


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
    # the embedded model trained to read the conditioning forms (its config.json: "tts_prompt_templates")
    ModelFamily("embedded-conditioned", "llama", (), BudgetStrings("</think>", "Wait", "Final Answer:"),
                EMBEDDED_CONDITIONED_TEMPLATES, embedded=True),
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
    selected (``cfg.family``), else its architecture's; with the prompt templates its config.json
    declares (``cfg.prompt_templates``, key :data:`TEMPLATES_KEY`; the family entry that has them, e.g.
    ``embedded-conditioned``, else the family with its templates replaced)."""
    if is_embedded(cfg, tokenizer):
        fam = FAMILIES["embedded"]
    else:
        fam = FAMILIES[cfg.family] if getattr(cfg, "family", "") in FAMILIES else for_arch(cfg.arch)
    name = getattr(cfg, "prompt_templates", "")
    if not name or name == fam.templates.name:
        return fam
    t = templates_named(name)
    return next((f for f in FAMILIES.values() if f.arch == fam.arch and f.embedded == fam.embedded
                 and f.budget_strings == fam.budget_strings and f.templates is t),
                None) or replace(fam, templates=t)


#: config.json "architectures" name -> runner architecture
SUPPORTED_ARCHS = {a: f.arch for f in FAMILIES.values() for a in f.architectures}
