"""When a generated sequence ends: at a stop token (<|endoftext|>), or once its text holds a stop string."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

LENGTH, END_OF_TEXT, STOP_STRING = "length", "eot", "stop"  # why a sequence ended


@dataclass
class StopCondition:
    """Stop tokens end a sequence and are not part of it. Stop strings need `decode`; the text is cut
    before the first stop string (the tokens keep the one that completed it: a token cannot be split)."""

    stop_tokens: frozenset[int] = frozenset()
    stop_strings: list[str] = field(default_factory=list)
    decode: Callable[[list[int]], str] | None = None

    def __post_init__(self):
        if self.stop_strings and self.decode is None:
            raise ValueError("stop strings need a decode function (a tokenizer)")
        if any(not s for s in self.stop_strings):
            raise ValueError("a stop string must not be empty")

    def check(self, tokens: list[int]) -> str | None:
        """Why `tokens` (the generated ones, latest last) end here, or None to go on."""
        if tokens and tokens[-1] in self.stop_tokens:
            return END_OF_TEXT
        if self.stop_strings:
            # Only the tail can hold a stop string that was not there a token ago.
            tail = self.decode(tokens[-self._tail_tokens():])
            if any(s in tail for s in self.stop_strings):
                return STOP_STRING
        return None

    def _tail_tokens(self) -> int:
        # Every token decodes to at least one byte: a stop string of n characters (≤ 4n bytes) that the
        # last token completed lies within the last 4n tokens. One more for the token that completed it.
        return 4 * max(len(s) for s in self.stop_strings) + 1

    def text(self, tokens: list[int], reason: str) -> str:
        """The text of a finished sequence: stop token dropped, cut before its first stop string."""
        if reason == END_OF_TEXT:
            tokens = tokens[:-1]
        text = self.decode(tokens)
        cuts = [text.find(s) for s in self.stop_strings if s in text]
        return text[: min(cuts)] if cuts else text
