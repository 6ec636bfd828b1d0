"""The torch releases this package supports: one definition, read by setup.py (without importing
the package), by the extension loader and by CI (``.ci/run-compat`` installs both ends).

No imports here: setup.py executes this file before torch is known to be installed.
"""

#: the oldest torch the package is built and tested against (``install_requires`` floor)
TORCH_MIN = "2.9.1"
#: the newest torch built and tested: the newest release on 2026-12-07 (2.15.0, on PyPI since 2026-10-28; the
#: project's machines cap pip at the 2.14.1 on their disk, which CI's stages lift: ``PIP_CONSTRAINT=/dev/null``)
TORCH_NEWEST_TESTED = "2.15.0"
#: the torch the main CI suite pins (CPU build)
TORCH_PINNED = "2.13.0"
#: the oldest Triton the kernels are compiled and checked with (TORCH_MIN's pin is 3.5.1; the sampler's
#: ``tl.gather`` needs 3.3 or later): the floor of the ``cuda`` and ``test`` extras
TRITON_MIN = "3.5"


def release(version: str) -> tuple:
    """``"2.14.1+cu130"`` -> ``(2, 14, 1)``: the numeric release, local and pre-release tags dropped."""
    out = []
    for part in version.split("+")[0].split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits or 0))
        if digits != part:
            break
    return tuple(out + [0] * (3 - len(out)))[:3]
