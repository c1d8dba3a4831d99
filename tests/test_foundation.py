"""The foundation's promises: an SDK-only install, and test models built from scratch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.fixtures import REPO_ROOT, STANDARD_ADAPTERS, standard_adapters, tiny_model

HEAVY = ("torch", "triton", "fastapi", "sqlalchemy", "ray", "transformers")


def test_base_install_pulls_no_heavy_dependency():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = " ".join(project["dependencies"]).lower()
    assert not [h for h in HEAVY if h in names], project["dependencies"]


def test_sdk_imports_without_heavy_packages():
    # A meta-path finder that refuses the heavy packages stands in for a venv that lacks them.
    code = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {HEAVY!r}:
            raise ImportError('refused in this test: ' + name)
sys.meta_path.insert(0, Refuse())
import lorafleet
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_tiny_models_are_complete_hf_checkpoints():
    for arch in ("mistral", "llama"):
        folder = tiny_model(arch)
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / name).is_file(), name
        assert "chat_template" in json.loads((folder / "tokenizer_config.json").read_text())
        assert json.loads((folder / "config.json").read_text())["model_type"] == arch


def test_tiny_model_is_cached_by_parameters():
    assert tiny_model("mistral") == tiny_model("mistral")
    assert tiny_model("mistral", seed=1) != tiny_model("mistral")


def test_standard_adapters_change_the_output():
    import peft
    import torch
    import transformers

    model_dir = tiny_model("mistral")
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        base_logits = base(ids).logits
    for name, folder in standard_adapters(model_dir).items():
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["r"] == STANDARD_ADAPTERS[name].r
        model = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(model_dir), str(folder)
        ).eval()
        with torch.no_grad():
            logits = model(ids).logits
        assert (logits - base_logits).abs().max() > 1e-2, name


def test_corpus_is_shipped():
    assert Path(REPO_ROOT / "tests" / "fixtures" / "corpus.txt").stat().st_size > 500
