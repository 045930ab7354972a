"""Stage timings: seconds per named stage, measured back to back."""

from __future__ import annotations

import time


class Clock:
    """``laps[name]`` accumulates the seconds between successive :meth:`lap` calls."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> float:
        """Close the current lap as ``name``; returns its seconds."""
        now = time.perf_counter()
        seconds = now - self._t
        self.laps[name] = self.laps.get(name, 0.0) + seconds
        self._t = now
        return seconds

    def split(self, whole: str, part: str, seconds: float) -> None:
        """Move ``seconds`` of lap ``whole`` into a lap of its own, ``part``."""
        self.laps[whole] = self.laps.get(whole, 0.0) - seconds
        self.laps[part] = self.laps.get(part, 0.0) + seconds
