"""The budget-forcing state layout (columns and phases) is written in three
places that must agree: tts_kernels/sampling/budget.py (Python, the reference),
csrc/budget/budget_forcing.h (the C++ kernels, parsed here) and the constants
the Triton kernel reads (tts_kernels/sampling/triton_kernel.py)."""
import ast
import pathlib
import re

import pytest

from tts_kernels.sampling import budget

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = ROOT / "csrc" / "budget" / "budget_forcing.h"
TRITON_SRC = ROOT / "tts_kernels" / "sampling" / "triton_kernel.py"

COLUMNS = ["MIN_TOKENS", "MAX_TOKENS", "MIN_WAITS", "NUM_THINKING", "WAITS_USED", "PHASE", "POS", "STOP"]
PHASES = ["THINKING", "ENDING", "DONE"]


def python_layout():
    out = {name: getattr(budget, name) for name in COLUMNS + PHASES}
    out["STATE_COLUMNS"] = budget.STATE_COLUMNS
    return out


def _snake(camel):
    """kNumThinking -> NUM_THINKING."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel[1:]).upper()


def parse_enum(text, name):
    """{UPPER_NAME: value} of `enum name : type { kName = value, ... }` in C++ source text."""
    m = re.search(r"enum\s+" + name + r"\s*:\s*\w+\s*\{(.*?)\};", text, re.S)
    assert m, f"enum {name} not found"
    body = re.sub(r"//[^\n]*", "", m.group(1))
    out = {}
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        em = re.fullmatch(r"(k\w+)\s*=\s*(\d+)", item)
        assert em, f"enum {name}: every entry needs an explicit value, got {item!r}"
        out[_snake(em.group(1))] = int(em.group(2))
    return out


def header_layout(text=None):
    text = HEADER.read_text() if text is None else text
    return {**parse_enum(text, "Column"), **parse_enum(text, "Phase")}


def triton_layout():
    pytest.importorskip("triton")
    from tts_kernels.sampling import triton_kernel

    out = {}
    for name in COLUMNS + PHASES + ["STATE_COLUMNS"]:
        v = getattr(triton_kernel, name)
        out[name] = int(getattr(v, "value", v))
    return out


def test_python_layout_is_complete():
    lay = python_layout()
    assert sorted(lay[c] for c in COLUMNS) == list(range(budget.STATE_COLUMNS))
    assert len({lay[p] for p in PHASES}) == len(PHASES)


def test_header_matches_python():
    assert header_layout() == python_layout()


def test_triton_matches_python():
    assert triton_layout() == python_layout()


def test_a_wrong_column_is_caught():
    """The comparison can fail: a header with two columns swapped differs."""
    text = HEADER.read_text()
    bad = text.replace("kPos = 6", "kPos = 7").replace("kStop = 7", "kStop = 6")
    assert bad != text
    assert header_layout(bad) != python_layout()
    with pytest.raises(AssertionError):
        parse_enum(text.replace("kDone = 2", "kDone"), "Phase")


def _budget_loads(tree):
    """(column expression, line) of every `bp + <expr>` in the Triton source."""
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) \
                and isinstance(node.left, ast.Name) and node.left.id == "bp":
            yield node.right, node.lineno


def test_triton_kernel_uses_the_named_columns():
    """No literal column offsets into the budget row (`bp + 5`) are left in the Triton kernel."""
    tree = ast.parse(TRITON_SRC.read_text())
    uses = list(_budget_loads(tree))
    assert uses, "the Triton kernel no longer indexes the budget row through `bp`"
    for expr, line in uses:
        assert isinstance(expr, ast.Name) and expr.id in COLUMNS, \
            f"triton_kernel.py:{line}: budget column is not one of the named constants"


def test_group_size_is_one_value():
    """The two-level draw's group size: philox.GROUP_SIZE (Python, the reference, the Triton kernel
    through it) and kGroupSize in the C++ sampler (parsed here)."""
    from tts_kernels.sampling import philox
    text = (ROOT / "csrc" / "sampling" / "sampler_math.h").read_text()
    m = re.search(r"constexpr\s+int64_t\s+kGroupSize\s*=\s*(\d+)\s*;", text)
    assert m, "kGroupSize not found in sampler_math.h"
    assert int(m.group(1)) == philox.GROUP_SIZE
    assert "_philox.GROUP_SIZE" in TRITON_SRC.read_text()


def test_greedy_temperature_is_one_value():
    """The greedy rule's temperature: params.MIN_SAMPLING_TEMPERATURE (the reference and the adapters call
    params.greedy_rows), kMinSamplingTemperature in the C++ sampler (a hex float, parsed here) and the
    Triton kernel's MIN_TEMPERATURE, read from params."""
    from tts_kernels.sampling import params
    text = (ROOT / "csrc" / "sampling" / "sampler_math.h").read_text()
    m = re.search(r"constexpr\s+float\s+kMinSamplingTemperature\s*=\s*([0-9a-fA-FxXpP.+-]+)f\s*;", text)
    assert m, "kMinSamplingTemperature not found in sampler_math.h"
    assert float.fromhex(m.group(1)) == params.MIN_SAMPLING_TEMPERATURE == 2.0 ** -126
    assert re.search(r"MIN_TEMPERATURE\s*=\s*tl\.constexpr\(_params\.MIN_SAMPLING_TEMPERATURE\)", TRITON_SRC.read_text())
