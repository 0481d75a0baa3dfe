"""Incremental detokenisation for streaming: the text each new token adds, in constant work per token.

Decoding the whole output after every token costs O(n²) over a long generation. Decoding only a
short window of recent ids is enough, provided the window keeps a few ids of context before the
new text (tokenizers drop or merge the leading space of the first token they decode). Where a
token ends inside a multi-byte character (byte-level BPE), the decoded window ends in U+FFFD:
that tail is held back until the character is complete, so a stream never shows half a
character (one cut off by the end of the generation is never shown).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

_INCOMPLETE = "\ufffd"
_CONTEXT = 4  # ids kept before the new text when the window slides
_WINDOW = 12  # the window slides once it holds this many ids and nothing is held back


class Detokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._start = 0  # the window is ids[_start:]
        self._shown = 0  # characters of the window's text already returned

    def add(self, token_id: int) -> str:
        """The text that ``token_id`` completes ("" while a character is incomplete)."""
        return self.extend((token_id,))

    def extend(self, token_ids: Sequence[int]) -> str:
        """The text that ``token_ids`` complete, in one decode: a stream's tokens that arrive
        together (coalesced for a reader that fell behind) cost one call, not one per token."""
        self.ids.extend(token_ids)
        text = self._decode(self.ids[self._start :])
        complete = text.rstrip(_INCOMPLETE)
        piece = complete[self._shown :]
        self._shown = max(self._shown, len(complete))
        if complete == text and len(self.ids) - self._start >= _WINDOW:
            self._start = len(self.ids) - _CONTEXT
            self._shown = len(self._decode(self.ids[self._start :]))
        return piece

    def peek(self, token_id: int) -> str:
        """The text ``token_id`` would add after the ids so far, recording nothing: an
        alternative's text in the chosen token's place (with the leading space it would have)."""
        return self._decode([*self.ids[self._start :], token_id])[self._shown :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
