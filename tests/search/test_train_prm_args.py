"""scripts/train_prm.py's argument checks (they fail before any sampling or training)."""
import importlib.util
import os

import pytest

pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "tts_kernels", "models")


@pytest.fixture(scope="module")
def train_prm():
    spec = importlib.util.spec_from_file_location("train_prm", os.path.join(ROOT, "scripts", "train_prm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("init", ["tiny-arith", "tiny-arith-large"])
@pytest.mark.parametrize("layer", [0, 4, 5])
def test_aux_layer_must_be_an_intermediate_layer(train_prm, tmp_path, capsys, init, layer):
    with pytest.raises(SystemExit):
        train_prm.main(["--out", str(tmp_path), "--init", os.path.join(MODELS, init), "--aux-layer", str(layer)])
    assert "--aux-layer" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_init_tokenizer_must_be_the_policys(train_prm, tmp_path, capsys):
    init = tmp_path / "init"
    init.mkdir()
    for fn in ("config.json", "tokenizer_config.json"):
        (init / fn).write_bytes(open(os.path.join(MODELS, "tiny-arith-large", fn), "rb").read())
    (init / "tokenizer.json").write_text('{"model": {}}')
    with pytest.raises(SystemExit):
        train_prm.main(["--out", str(tmp_path / "out"), "--init", str(init)])
    assert "tokenizer differs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
