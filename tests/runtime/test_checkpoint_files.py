"""Checkpoint files as transformers writes them: chat templates, generation_config.json, dtypes.

Each layout is checked against transformers itself on the same folder; broken files are errors
naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams
from lorafleet.runtime.errors import EngineError, ModelLoadError
from lorafleet.runtime.tokenizer import Tokenizer, TokenizerLoadError

from tests.fixtures import CHAT_TEMPLATE, tiny_model
from tests.fixtures.checkpoints import CHATML_TEMPLATE, half_precision_model, jinja_chat_model
from tests.runtime.oracle import engine_prefill_logits

MESSAGES = [
    {"role": "system", "content": "You write SQL."},
    {"role": "user", "content": "Count the users."},
    {"role": "assistant", "content": "SELECT count(*) FROM users;"},
    {"role": "user", "content": "And the admins?"},
]


def _copy(source: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    return folder


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(changes)
    path.write_text(json.dumps(data))


def _rendered_by_transformers(folder: Path) -> str:
    import transformers

    reference = transformers.AutoTokenizer.from_pretrained(folder)
    return reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def test_template_in_chat_template_jinja_renders_as_transformers_does() -> None:
    folder = jinja_chat_model("mistral")
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    rendered = Tokenizer(folder).apply_chat_template(MESSAGES)
    assert rendered == _rendered_by_transformers(folder)
    assert rendered.startswith("<|im_start|>system\n")


def test_jinja_file_wins_over_tokenizer_config_and_named_templates_use_default(tmp_path: Path) -> None:
    folder = _copy(tiny_model("mistral"), tmp_path)
    (folder / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    assert Tokenizer(folder).apply_chat_template(MESSAGES) == _rendered_by_transformers(folder)
    (folder / "chat_template.jinja").unlink()
    named = [
        {"name": "tool_use", "template": "{{ 'tools' }}"},
        {"name": "default", "template": CHATML_TEMPLATE},
    ]
    _edit_json(folder / "tokenizer_config.json", chat_template=named)
    assert Tokenizer(folder).apply_chat_template(MESSAGES) == _rendered_by_transformers(folder)


def test_processor_chat_template_json_serves_when_nothing_else_has_a_template(tmp_path: Path) -> None:
    folder = _copy(tiny_model("mistral"), tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="chat_template.jinja"):
        Tokenizer(folder).apply_chat_template(MESSAGES)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    expected = Tokenizer(tiny_model("mistral")).apply_chat_template(MESSAGES)
    assert Tokenizer(folder).apply_chat_template(MESSAGES) == expected


def test_generation_tags_render_their_content_as_transformers_does(tmp_path: Path) -> None:
    folder = _copy(tiny_model("mistral"), tmp_path)
    template = "{% for m in messages %}{% generation %}[{{ m['content'] }}]{% endgeneration %}{% endfor %}"
    (folder / "chat_template.jinja").write_text(template)
    assert Tokenizer(folder).apply_chat_template(MESSAGES) == _rendered_by_transformers(folder)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json"])
def test_corrupt_tokenizer_files_are_errors_naming_the_file(tmp_path: Path, name: str) -> None:
    folder = _copy(tiny_model("mistral"), tmp_path)
    (folder / name).write_text("{not json")
    with pytest.raises(TokenizerLoadError, match=name):
        Tokenizer(folder)


def _greedy_ids(engine: Engine, prompt: str, n: int, **params: object) -> list[int]:
    request = GenerationRequest(prompt, SamplingParams(max_new_tokens=n, **params))  # type: ignore[arg-type]
    return [t.id for t in engine.generate([request])[0].tokens]


def test_generation_config_eos_list_joins_the_eos_set(tmp_path: Path) -> None:
    folder = _copy(tiny_model("mistral"), tmp_path)
    prompt = "The adapter answers"
    with Engine.from_pretrained(folder, progress=lambda _: None) as engine:
        free_run = _greedy_ids(engine, prompt, 12, ignore_eos=True)
    stop_at = next(i for i, t in enumerate(free_run) if t not in free_run[:i] and i >= 3)
    _edit_json(folder / "generation_config.json", eos_token_id=[2, free_run[stop_at]])
    with Engine.from_pretrained(folder, progress=lambda _: None) as engine:
        assert engine.config.eos_token_ids >= {2, free_run[stop_at]}
        [result] = engine.generate([GenerationRequest(prompt, SamplingParams(max_new_tokens=12))])
    assert [t.id for t in result.tokens] == free_run[: stop_at + 1]
    assert result.finish_reason.value == "eos_token"


def test_generation_config_sampling_values_fill_a_sampled_requests_unset_fields(tmp_path: Path) -> None:
    folder = _copy(tiny_model("mistral"), tmp_path)
    _edit_json(folder / "generation_config.json", do_sample=True, temperature=0.7, top_k=5, top_p=1.0)
    with Engine.from_pretrained(folder, progress=lambda _: None) as engine:
        prompt = "The adapter answers"
        defaulted = _greedy_ids(engine, prompt, 16, do_sample=True, seed=7, ignore_eos=True)
        explicit = _greedy_ids(engine, prompt, 16, temperature=0.7, top_k=5, seed=7, ignore_eos=True)
        plain_sampling = _greedy_ids(engine, prompt, 16, temperature=1.0, top_k=100, seed=7, ignore_eos=True)
        greedy = _greedy_ids(engine, prompt, 16, ignore_eos=True)
    with Engine.from_pretrained(tiny_model("mistral"), progress=lambda _: None) as reference:
        assert greedy == _greedy_ids(reference, prompt, 16, ignore_eos=True)  # do_sample here is not applied
    assert defaulted == explicit
    assert defaulted != plain_sampling  # the defaults changed the draw


@pytest.mark.parametrize(
    "content", ["{broken", json.dumps({"eos_token_id": "two"}), json.dumps({"temperature": -1})]
)
def test_invalid_generation_config_is_an_error_naming_the_file(tmp_path: Path, content: str) -> None:
    folder = _copy(tiny_model("mistral"), tmp_path)
    (folder / "generation_config.json").write_text(content)
    with pytest.raises(ModelLoadError, match="generation_config.json"):
        Engine.from_pretrained(folder, progress=lambda _: None)


@pytest.mark.parametrize(("saved", "served"), [("bfloat16", "float32"), ("float16", "float32")])
def test_half_precision_checkpoint_served_in_another_dtype_matches_transformers(
    saved: str, served: str
) -> None:
    import transformers
    from safetensors import safe_open

    folder = half_precision_model("mistral", saved)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype is getattr(torch, saved)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, served)).eval()
    engine = Engine.from_pretrained(folder, dtype=served, progress=lambda _: None)
    ids = engine.tokenizer.encode("The adapter answers in SQL and counts")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].float()
    torch.testing.assert_close(engine_prefill_logits(engine, ids, None), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["phi3", "mixtral"])
def test_sharded_checkpoints_of_fused_and_expert_layouts_load_the_same_weights(
    tmp_path: Path, arch: str
) -> None:
    import transformers
    from lorafleet.runtime.models.args import LoraCapacity
    from lorafleet.runtime.models.loader import load_model, read_config

    source = tiny_model(arch)
    sharded = tmp_path / "sharded"
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 2 and not (sharded / "model.safetensors").exists()
    cpu, no_lora = torch.device("cpu"), LoraCapacity(0, 8)
    ours = load_model(sharded, read_config(sharded)[1], dtype=torch.float32, device=cpu, lora=no_lora)
    single = load_model(source, read_config(source)[1], dtype=torch.float32, device=cpu, lora=no_lora)
    for (name, a), (_, b) in zip(
        ours.checkpoint_tensors().items(), single.checkpoint_tensors().items(), strict=True
    ):
        assert torch.equal(a, b), name
    (sharded / next(iter(sorted(sharded.glob("model-*.safetensors")))).name).unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors.index.json"):
        load_model(sharded, read_config(sharded)[1], dtype=torch.float32, device=cpu, lora=no_lora)
