"""Text that comes from outside (an LLM endpoint's answers and error bodies, file names) made safe to print
on a terminal and to put into a prompt: control characters (escape sequences among them) and bidirectional
overrides are removed; tabs and newlines stay."""
from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    return _UNSAFE.sub("", str(text))
