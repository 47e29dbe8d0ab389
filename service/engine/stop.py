"""Stop strings matched on generated text, with hold-back for streaming.

A stop string may span several tokens, so text that could still be the beginning of a stop
string is held back until it cannot be; no part of a stop string is ever emitted (unless asked
for), and streamed text equals non-streamed text.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    stop_string: str
    # Where the generated text ends once the stop string is cut (or kept).
    text_end: int


class StopStringMatcher:
    def __init__(self, stop_strings: tuple[str, ...], include_stop_string: bool = False) -> None:
        self._stops = tuple(s for s in stop_strings if s)
        self._include = include_stop_string
        self._longest = max((len(s) for s in self._stops), default=0)

    def find(self, text: str, new_from: int) -> StopMatch | None:
        """Earliest stop string in `text` that ends after position `new_from` (the new text)."""
        best: StopMatch | None = None
        best_at = len(text) + 1
        for stop in self._stops:
            at = text.find(stop, max(0, new_from - len(stop) + 1))
            if at != -1 and at < best_at:
                best_at = at
                end = at + len(stop) if self._include else at
                best = StopMatch(stop, end)
        return best

    def safe_end(self, text: str) -> int:
        """How much of `text` can be emitted: all but a suffix that begins some stop string."""
        for held in range(min(self._longest - 1, len(text)), 0, -1):
            suffix = text[-held:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return len(text) - held
        return len(text)
