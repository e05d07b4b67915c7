"""Turning a job's blocks into completion text: EOS, stop strings and safe streaming deltas."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextAssembler:
    """Accumulates generated blocks and says which text is final.

    The completion ends at the model's EOS (excluded from the text) or just before the first
    stop string; otherwise it is every generated token (``finish_reason`` ``"length"``).
    While streaming, a delta never ends inside a UTF-8 character (the decoder's U+FFFD) or
    with text that could still grow into a stop string.

    Args:
      decode: token ids -> text.
      eos_id: the model's EOS id, or None.
      stop: stop strings (non-empty).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], eos_id: int | None,
                 stop: Sequence[str] = ()):
        self.decode = decode
        self.eos_id = eos_id
        self.stop = tuple(stop)
        self.tokens: list[int] = []
        self.sent = ""  # text already handed out
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self._eos = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, tokens: Sequence[int]) -> str:
        """Adds one block; returns the text that became final (possibly empty)."""
        if self.done:
            return ""
        tokens = list(tokens)
        if self.eos_id is not None and self.eos_id in tokens:
            tokens = tokens[:tokens.index(self.eos_id)]
            self._eos = True
        self.tokens += tokens
        text = self.decode(self.tokens)
        cut = self._stop_at(text)
        if cut is not None:
            return self._finish(text[:cut], "stop", stopped=True)
        if self._eos:
            return self._finish(text, "stop")
        return self._hand_out(self._safe_prefix(text))

    def finish(self) -> str:
        """All blocks were added: the rest of the text, ``finish_reason`` ``"length"``."""
        if self.done:
            return ""
        return self._finish(self.decode(self.tokens), "length")

    def _stop_at(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _safe_prefix(self, text: str) -> str:
        text = text.rstrip("\ufffd")
        hold = 0
        for s in self.stop:  # the longest tail that could still become a stop string
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if s.startswith(text[len(text) - n:]):
                    hold = n
                    break
        return text[:len(text) - hold]

    def _hand_out(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        delta = text[len(self.sent):]
        self.sent = text
        return delta

    def _finish(self, text: str, reason: str, stopped: bool = False) -> str:
        self.finish_reason = reason
        self.completion_tokens = (self._tokens_for(text) if stopped
                                  else len(self.tokens) + int(self._eos))
        return self._hand_out(text)

    def _tokens_for(self, text: str) -> int:
        """The fewest generated tokens whose text covers ``text`` (binary search)."""
        lo, hi = 0, len(self.tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.decode(self.tokens[:mid])) >= len(text):
                hi = mid
            else:
                lo = mid + 1
        return lo
