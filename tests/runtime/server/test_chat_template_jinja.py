"""A checkpoint saved by current transformers (template in chat_template.jinja) serves chats through
`/v1/chat/completions`, token for token as transformers' `apply_chat_template` + `generate` (and
peft for an adapter) on the same folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tests.fixtures import standard_adapters
from tests.fixtures.checkpoints import jinja_chat_model
from tests.runtime.server.conftest import RunningServer, adapter_flag, run_server

MESSAGES = [
    {"role": "system", "content": "You answer in SQL."},
    {"role": "user", "content": "Count the users who signed up today."},
]
NUM_TOKENS = 16


@pytest.fixture(scope="module")
def chat_model() -> Path:
    return jinja_chat_model("mistral")


@pytest.fixture(scope="module")
def adapters(chat_model: Path) -> dict[str, Path]:
    return standard_adapters(chat_model)


@pytest.fixture(scope="module")
def jinja_server(
    chat_model: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("jinja-server") / "server.log"
    args = ["--model-id", str(chat_model), "--lora-adapters", adapter_flag(adapters)]
    with run_server(args, log_path) as running:
        yield running


@torch.no_grad()
def _transformers_chat(chat_model: Path, adapter: Path | None) -> str:
    import transformers
    from peft import PeftModel

    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_model)
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NUM_TOKENS
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("model", ["tgi", "r16-all"])
def test_openai_chat_on_a_jinja_template_checkpoint_equals_transformers(
    jinja_server: RunningServer, chat_model: Path, adapters: dict[str, Path], model: str
) -> None:
    client = openai.OpenAI(base_url=f"{jinja_server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    completion = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=NUM_TOKENS,
        temperature=0,  # type: ignore[arg-type]
    )
    expected = _transformers_chat(chat_model, adapters.get(model))
    assert completion.choices[0].message.content == expected
    assert completion.usage is not None and completion.usage.completion_tokens == NUM_TOKENS


def test_info_reports_the_architecture(jinja_server: RunningServer) -> None:
    info = httpx.get(f"{jinja_server.url}/info", timeout=30).json()
    assert info["architecture"] == "MistralForCausalLM"
