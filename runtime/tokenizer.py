"""The tokenizer of a checkpoint: `tokenizers` on tokenizer.json, specials from tokenizer_config.json,
the chat template wherever transformers saves it, and incremental detokenization for streaming."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lorafleet.runtime.chat_template import ChatTemplate, find_chat_template
from lorafleet.runtime.errors import EngineError
from lorafleet.runtime.tokenizer_bounds import TokenizerBounds

# JSON may carry "\ud800": a lone surrogate is no text the tokenizer can read (it raises TypeError).
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Longer texts go through `encode_batch`, which releases the GIL (`encode` holds it throughout:
# ~3 s for 1 MB, during which no other thread, the server's event loop included, can run).
GIL_FREE_CHARS = 8192


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
        added = self._tok.get_added_tokens_decoder()
        self._special_ids = {i for i, t in added.items() if t.special}
        # A tokenizer.json may carry truncation/padding settings; the engine decides lengths itself.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.bounds = TokenizerBounds.from_spec(json.loads(self._tok.to_str()), list(added.values()))
        self._normalizer = self._tok.normalizer

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._encoding(text, add_special_tokens).ids)

    def _encoding(self, text: str, add_special_tokens: bool) -> Any:
        if len(text) < GIL_FREE_CHARS:
            return self._tok.encode(text, add_special_tokens=add_special_tokens)
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0]

    def must_exceed(self, text: str, max_tokens: int) -> bool:
        """True when `text` certainly has more than `max_tokens` tokens; decided without tokenizing.

        Linear and allocation-light: the normalizer (if any) and a UTF-8 length. `text` must hold
        no lone surrogate (the server's JSON may; `validation` refuses those first).
        """
        per_token = self.bounds.max_token_bytes
        if per_token is None:
            return False
        budget = max_tokens * per_token
        if self._normalizer is None:
            if len(text) > budget:  # every character is at least one byte
                return True
            if 4 * len(text) <= budget:  # and at most four
                return False
        else:
            text = self._normalizer.normalize_str(text)
        return self.bounds.must_exceed(len(text.encode("utf-8")), max_tokens)

    def encode_tail(self, text: str, keep: int, add_special_tokens: bool = True) -> list[int]:
        """`encode(text, add_special_tokens)[-keep:]`, tokenizing only a tail of `text` when the
        tokenizer proves it equal (`tokenizer_bounds`: a tail starting at a safe cut has exactly the
        whole text's tokens from that cut on). The tail starts `keep` x L characters from the end
        and doubles until it holds `keep` tokens, so the work is O(keep x L), not O(len(text)).
        """
        cut, per_token = self.bounds.tail_cut, self.bounds.max_token_bytes or 16
        wanted, tried = keep * per_token, None
        while cut is not None and wanted < len(text):
            start = cut.next_cut(text, len(text) - wanted)
            if start is None:
                break
            wanted *= 2  # the next tail starts at least this far back: O(log) rounds
            if start == tried:  # no cut between the old and the new start
                continue
            tried = start
            tail = self._encoding(text[start:], add_special_tokens=False)
            if len(tail.ids) >= keep:  # the head's special tokens cannot reach the last `keep`
                if add_special_tokens:
                    tail = self._tok.post_process(tail, None, add_special_tokens=True)
                return list(tail.ids[-keep:])
        return self.encode(text, add_special_tokens)[-keep:]

    def token_spans(self, text: str, add_special_tokens: bool = True) -> list[tuple[int, str, int, int]]:
        """TGI's `/tokenize`: (id, text, start, stop) per token, from the tokenizer's offsets (linear).

        Spans are contiguous character ranges of `text`: a character split over several tokens
        belongs to the last of them (the others, like a token with no characters of its own, get
        an empty span), a token whose offsets skip leading spaces starts where the previous one
        stopped, and tokens the post-processor added (BOS) get their own text and an empty span.
        """
        encoding = self._encoding(text, add_special_tokens)
        ids, offsets, added = encoding.ids, encoding.offsets, encoding.special_tokens_mask
        spans, previous_end = [], 0
        for i, (token_id, (start, end)) in enumerate(zip(ids, offsets, strict=True)):
            if added[i]:
                spans.append((token_id, self.decode([token_id]), start, start))
            elif end <= start or (i + 1 < len(ids) and offsets[i + 1] == (start, end)):
                spans.append((token_id, "", previous_end, previous_end))
            else:
                stop = max(end, previous_end)
                spans.append((token_id, text[previous_end:stop], previous_end, stop))
                previous_end = stop
        return spans

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
