"""A checkpoint's chat template, found where transformers saves it and rendered as it renders it.

Where transformers (4.43+) looks, in this order, and what we do the same way:

1. `chat_template.jinja` — what `save_pretrained` writes today (transformers >= 4.51), plus any
   named templates in `additional_chat_templates/<name>.jinja`; these files win over step 2.
2. `tokenizer_config.json` `"chat_template"`: a string, or a list of `{"name", "template"}`
   (the legacy layout of several named templates).
3. `chat_template.json` `{"chat_template": ...}` — the processor's legacy file (multimodal repos
   such as Gemma 3 keep the template there); the tokenizer alone does not read it, so it only
   serves when steps 1-2 found nothing.

With several named templates the one named "default" is used (the routes offer no tools, so
transformers' "tool_use" choice never applies). Rendering uses transformers' sandboxed jinja2
environment: `trim_blocks`, `lstrip_blocks`, `loopcontrols`, the `tojson` filter with
`ensure_ascii=False`, `raise_exception`, `strftime_now`, and `{% generation %}` blocks rendered as
their plain content (transformers uses them only to mask assistant tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lorafleet.runtime.errors import EngineError

JINJA_FILE = "chat_template.jinja"
JINJA_DIR = "additional_chat_templates"
PROCESSOR_FILE = "chat_template.json"
NO_TEMPLATE = (
    "this model has no chat template (none of chat_template.jinja, tokenizer_config.json's "
    '"chat_template" or chat_template.json)'
)


@dataclass
class ChatTemplate:
    """The template text (None when the checkpoint has none) and where it came from."""

    source: str | None
    origin: str  # file it was read from, for messages
    missing_reason: str = NO_TEMPLATE
    _compiled: Any = field(default=None, init=False, repr=False)

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool, **special: str) -> str:
        if self.source is None:
            raise EngineError(self.missing_reason)
        if self._compiled is None:  # compiled on first use: most replicas never serve chats
            self._compiled = _compile(self.source)
        return str(
            self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)
        )


def find_chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> ChatTemplate:
    """Steps 1-3 above; raises OSError/ValueError naming the file for an unreadable one."""
    named: dict[str, str] = {}
    jinja = model_dir / JINJA_FILE
    if jinja.is_file():
        named["default"] = jinja.read_text(encoding="utf-8")
    extra_dir = model_dir / JINJA_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            named[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if named:
        return _choose(named, f"{JINJA_FILE} / {JINJA_DIR}/")
    config_path = model_dir / "tokenizer_config.json"
    value = tokenizer_config.get("chat_template")
    if value is None:
        processor = model_dir / PROCESSOR_FILE
        if not processor.is_file():
            return ChatTemplate(None, "")
        try:
            value = json.loads(processor.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{processor}: not a JSON object with a chat_template: {e}") from e
        config_path = processor
    if isinstance(value, str):
        return ChatTemplate(value, config_path.name)
    if isinstance(value, list) and all(
        isinstance(t, dict) and {"name", "template"} <= t.keys() for t in value
    ):
        return _choose({t["name"]: t["template"] for t in value}, config_path.name)
    if value is None:
        return ChatTemplate(None, "")
    raise ValueError(f"{config_path}: chat_template must be a string or a list of {{name, template}}")


def _choose(named: dict[str, str], origin: str) -> ChatTemplate:
    if "default" in named:
        return ChatTemplate(named["default"], origin)
    return ChatTemplate(
        None,
        origin,
        f"this model has named chat templates {sorted(named)} but none named 'default' ({origin})",
    )


def _compile(source: str) -> Any:
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body (transformers' assistant mask tag)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
