"""Cutting a byte stream into text without splitting a character."""

from __future__ import annotations


def whole_characters(data: bytes) -> int:
    """The length of `data` without a UTF-8 character cut at its end (bytes that are not
    UTF-8 at all count as whole: they become U+FFFD when decoded, wherever the cut)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)  # ASCII: nothing cut
        if byte >= 0xC0:  # a lead byte: is its character complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)
