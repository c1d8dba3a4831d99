"""What a tokenizer's configuration proves about token counts, read once from tokenizer.json.

Two facts let the engine bound the work a hostile prompt costs before the tokenizer runs:

- **Bytes per token.** No token stands for more than `max_token_bytes` (L) bytes of the
  normalized text: a byte-level token's characters are one byte each, a SentencePiece "▁" stands
  for one space, a byte-fallback token `<0xNN>` for one byte, an added token for its content, so
  the UTF-8 length of the token's own string is an upper bound. Pre-tokenizers that drop text
  (`Whitespace`, `Removed` splits) or a fused unknown token break that, and give no bound. A text
  whose normalized form has more than N x L bytes therefore has more than N tokens.
- **Safe cuts.** For the pipelines of the architectures we serve (byte-level BPE with GPT-2,
  Llama 3 or Qwen2 splitting; SentencePiece BPE with Metaspace or the legacy Prepend/Replace
  normalizer), a position p with `text[p] == " "` and `text[p-1]` neither whitespace nor a typed
  "▁" is a token boundary: tokenizing the tail from p gives exactly the whole text's tokens from
  p on (the legacy normalizer prepends the space's "▁" itself, so its tail starts at p + 1).
  Why: (1) Unicode normal forms never compose across U+0020 (no composite has it as second
  element; it is a starter, so reordering stops there), and no non-whitespace character
  normalizes to something ending in whitespace (checked over every code point), so the
  normalized text is normalize(head) + normalize(tail). (2) In each known split regex, every
  alternative that can match a non-whitespace character ends before a following space (letters,
  digits, punctuation runs and contractions never take a trailing U+0020; `[\\r\\n]*` takes only
  newlines), so the scan has a match boundary at p; the regexes look only to the right, so the
  matches from p on are those of the tail scanned alone. (3) BPE works on each pre-token alone.
  Without a splitting pre-tokenizer (Metaspace without split, legacy Prepend/Replace) the whole
  text is one BPE word; then we require that no vocabulary entry has "▁" right after a
  character other than "▁", so no merge can join across the "▁" that replaced the space (a "▁"
  typed before the space could join a "▁▁" token: such positions are not cuts). (4) Added tokens with
  spaces or `lstrip`/`rstrip`/`single_word` could straddle or absorb the space: their presence
  turns cuts off. The text is split around added tokens before normalization, and a legacy
  Prepend("▁") gives each piece its own "▁": a space right after an added token is no cut.
  Any other configuration tokenizes the whole text (still bounded by the server's payload
  limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

META_SPACE = "\u2581"
# The split regexes whose boundaries we proved (module docstring, point 2), as tokenizer.json spells them.
KNOWN_SPLIT_PATTERNS = frozenset(
    {
        # Llama 3 (tiktoken cl100k)
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        # Qwen2
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        # GPT-2 (what ByteLevel(use_regex=true) runs)
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    }
)
UNICODE_FORMS = frozenset({"NFC", "NFD", "NFKC", "NFKD"})
KEEPING_PRE_TOKENIZERS = frozenset(
    {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts", "Split", "Punctuation"}
)
END_ONLY_POST_PROCESSORS = frozenset(
    {"TemplateProcessing", "ByteLevel", "RobertaProcessing", "BertProcessing"}
)
# A space after a character that is neither whitespace nor "▁" (a typed "▁" could join a
# SentencePiece "▁▁" token across the cut). The lookbehind sees text before `pos` too.
CUT = re.compile(r"(?<=[^\s\u2581]) ")


@dataclass(frozen=True)
class TailCut:
    """Where a tail may start: at the space of a cut, or right after it (legacy Prepend("▁"),
    which prepends the space's "▁" itself).

    A space right after an added token (`<s>`) is no cut: it starts a segment of its own, which
    a Prepend normalizer gives one more "▁" that may join the space's into a "▁▁" token.
    """

    after_space: bool
    added_tokens: tuple[str, ...] = ()  # their contents

    def next_cut(self, text: str, start: int) -> int | None:
        """The first position >= `start` where the tail may begin, or None."""
        match = CUT.search(text, max(start, 1))
        while match is not None and self.added_tokens and text.endswith(self.added_tokens, 0, match.start()):
            match = CUT.search(text, match.start() + 1)
        if match is None or (self.after_space and match.start() + 1 >= len(text)):
            return None  # a later match would start later still
        return match.start() + 1 if self.after_space else match.start()


@dataclass(frozen=True)
class TokenizerBounds:
    max_token_bytes: int | None  # L; None: no sound bound for this tokenizer
    tail_cut: TailCut | None  # None: tail tokenization is not proven equal; tokenize the whole

    @classmethod
    def from_spec(cls, spec: dict[str, Any], added: list[Any]) -> TokenizerBounds:
        """`spec`: tokenizer.json as a dict; `added`: the tokenizer's `AddedToken`s."""
        vocab = list((spec.get("model") or {}).get("vocab") or {})
        return cls(_max_token_bytes(spec, vocab, added), _tail_cut(spec, vocab, added))

    def must_exceed(self, normalized_bytes: int, max_tokens: int) -> bool:
        """True when a text of `normalized_bytes` (UTF-8, after the normalizer) has > `max_tokens` tokens."""
        return self.max_token_bytes is not None and normalized_bytes > max_tokens * self.max_token_bytes


def _max_token_bytes(spec: dict[str, Any], vocab: list[str], added: list[Any]) -> int | None:
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not vocab:
        return None
    fused_unknown = (
        model.get("unk_token") is not None and model.get("fuse_unk") and not model.get("byte_fallback")
    )
    if fused_unknown or not _keeps_every_character(spec.get("pre_tokenizer")):
        return None
    longest = max(len(token.encode("utf-8", "surrogatepass")) for token in vocab)
    longest = max([longest, *(len(t.content.encode("utf-8", "surrogatepass")) for t in added)])
    return max(longest, 4) if model.get("unk_token") is not None else longest  # unk: one character


def _keeps_every_character(pre: dict[str, Any] | None) -> bool:
    if pre is None:
        return True
    if pre.get("type") == "Sequence":
        return all(_keeps_every_character(p) for p in pre.get("pretokenizers", []))
    return pre.get("type") in KEEPING_PRE_TOKENIZERS and pre.get("behavior") != "Removed"


def _tail_cut(spec: dict[str, Any], vocab: list[str], added: list[Any]) -> TailCut | None:
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or not _end_only(spec.get("post_processor")):
        return None
    if any(t.lstrip or t.rstrip or t.single_word or any(c.isspace() for c in t.content) for t in added):
        return None
    normalizer, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    contents = tuple(t.content for t in added)
    if _is_legacy_sentencepiece(normalizer) and pre is None:
        return TailCut(True, contents) if _no_inner_meta_space(vocab) else None
    if not _unicode_forms_only(normalizer):
        return None
    if pre is not None and pre.get("type") == "Metaspace":
        return TailCut(False, contents) if _no_inner_meta_space(vocab) else None
    return TailCut(False, contents) if _splits_at_spaces(pre) else None


def _end_only(post: dict[str, Any] | None) -> bool:
    """Post-processors that only add special tokens before and after the sequence."""
    if post is None:
        return True
    if post.get("type") == "Sequence":
        return all(_end_only(p) for p in post.get("processors", []))
    return post.get("type") in END_ONLY_POST_PROCESSORS


def _unicode_forms_only(normalizer: dict[str, Any] | None) -> bool:
    if normalizer is None:
        return True
    if normalizer.get("type") == "Sequence":
        return all(_unicode_forms_only(n) for n in normalizer.get("normalizers", []))
    return normalizer.get("type") in UNICODE_FORMS


def _is_legacy_sentencepiece(normalizer: dict[str, Any] | None) -> bool:
    """Llama 2 / Mistral tokenizer.json: Sequence[Prepend("▁"), Replace(" ", "▁")]."""
    if normalizer is None or normalizer.get("type") != "Sequence":
        return False
    steps = normalizer.get("normalizers", [])
    return (
        len(steps) == 2
        and steps[0] == {"type": "Prepend", "prepend": META_SPACE}
        and steps[1].get("type") == "Replace"
        and steps[1].get("pattern") == {"String": " "}
        and steps[1].get("content") == META_SPACE
    )


def _no_inner_meta_space(vocab: list[str]) -> bool:
    """No entry has "▁" right after another character, so no merge joins across a space."""
    return not any(
        token[i] == META_SPACE and token[i - 1] != META_SPACE for token in vocab for i in range(1, len(token))
    )


def _splits_at_spaces(pre: dict[str, Any] | None) -> bool:
    """A pre-tokenizer made of proven splits (+ byte mapping, single digits)."""
    if pre is None:
        return False
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    has_split = False
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            has_split = has_split or bool(step.get("use_regex", True))
        elif kind == "Split":
            pattern = step.get("pattern") or {}
            proven = pattern.get("Regex") in KNOWN_SPLIT_PATTERNS
            if not proven or step.get("behavior") != "Isolated" or step.get("invert"):
                return False
            has_split = True
        elif not (kind == "Digits" and step.get("individual_digits")):
            return False
    return has_split
