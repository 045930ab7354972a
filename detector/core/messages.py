"""Error messages: the one-line form every command prints."""

from __future__ import annotations


def one_line(e: BaseException, limit: int | None = None) -> str:
    """The exception's message with its whitespace (newlines too) collapsed to single spaces,
    cut to ``limit`` characters when given; the exception's type when it has no message."""
    text = " ".join(str(e).split())
    return (text[:limit] if limit is not None else text) or type(e).__name__
