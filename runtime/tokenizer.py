"""The tokenizer of a checkpoint: `tokenizers` on tokenizer.json, specials from tokenizer_config.json,
the chat template wherever transformers saves it, and incremental detokenization for streaming."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorafleet.runtime.chat_template import ChatTemplate, find_chat_template
from lorafleet.runtime.errors import EngineError


class TokenizerLoadError(EngineError):
    """tokenizer.json (or another tokenizer file) missing or unreadable."""


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as {"content": ..., ...}
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerLoadError(f"{path}: unreadable or not JSON: {e}") from e
    if not isinstance(data, dict):
        raise TokenizerLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class Tokenizer:
    """Encodes, decodes and renders chat prompts exactly as transformers' fast tokenizer does."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = model_dir / "tokenizer.json"
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for missing/corrupt files
            raise TokenizerLoadError(f"{path}: cannot load tokenizer: {e}") from e
        self.config = _read_json(model_dir / "tokenizer_config.json")
        # transformers reads specials from tokenizer_config.json, then special_tokens_map.json.
        specials = {**_read_json(model_dir / "special_tokens_map.json"), **self.config}
        self.special_tokens = {
            name: token
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (token := _token_content(specials.get(name))) is not None
        }
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        try:
            self.chat_template: ChatTemplate = find_chat_template(model_dir, self.config)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise TokenizerLoadError(str(e)) from e
        self._special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Renders `messages` with the checkpoint's chat template, in transformers' jinja2 environment
        and with the same variables (the special tokens, `add_generation_prompt`)."""
        return self.chat_template.render(
            messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
        )


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces, never splitting a multi-byte character.

    Like TGI's `decode_token`: decode a short window of previous tokens with and without the new
    ones and emit the difference, but hold it back while it ends in U+FFFD (an incomplete UTF-8
    sequence that the next tokens will complete).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-6:])
        self._prefix_offset = max(len(self._ids) - 5, 0)
        self._read_offset = len(self._ids)

    def add(self, token_id: int) -> str:
        """Appends one token; returns the text it makes decodable ("" while a character is incomplete)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            piece = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return piece
        return ""

    def flush(self) -> str:
        """The text held back so far (an incomplete character decodes to U+FFFD), for the last event.

        Called once the sequence ends: nothing will complete the character, and the final text
        (`GenerationResult.generated_text`) shows it as U+FFFD too.
        """
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
