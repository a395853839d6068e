"""MPO Discover: prompts.

LLM prompt templates are versioned data files in this package: `<name>_v<k>.md`.  A template is never
edited once a run has used it; a change is a new version, so the version stored with every exchange
names the exact text that was sent.  A template holds a `=== system ===` section then a `=== user ===`
section (the two chat messages) with `string.Template` placeholders (`$name`); it is rendered by
`discovery.llm_prompt.render_prompt`.
"""
from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"[a-z][a-z0-9_]*_v[0-9]+")


def load(version: str) -> str:
    """The text of the template `version` (e.g. "propose_v1")."""
    if not isinstance(version, str) or not _NAME.fullmatch(version):
        raise ValueError(f"bad prompt version {version!r}: expected a name like 'propose_v1'")
    path = resources.files(__name__).joinpath(f"{version}.md")
    if not path.is_file():
        raise ValueError(f"unknown prompt version {version!r}; available: {', '.join(available())}")
    return path.read_text(encoding="utf-8")


def available() -> list[str]:
    """Versions of the templates shipped in this package."""
    return sorted(p.name[:-3] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".md") and _NAME.fullmatch(p.name[:-3]))
