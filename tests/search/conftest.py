"""Fixtures of the search tests."""
import json
import os
import shutil

import pytest

from tts_kernels.decode import DEFAULT_MODEL


@pytest.fixture(scope="session")
def prm_dir(tmp_path_factory):
    """The embedded policy's weights used as a tag-token PRM (any causal LM is a valid, if poor, one)."""
    d = tmp_path_factory.mktemp("prm")
    for f in os.listdir(DEFAULT_MODEL):
        if f.endswith((".json", ".safetensors")):
            shutil.copy(os.path.join(DEFAULT_MODEL, f), d / f)
    (d / "prm_config.json").write_text(json.dumps(
        {"kind": "tag_token", "step_tag": "\n\n", "good_token": "+", "bad_token": "-"}))
    return str(d)
