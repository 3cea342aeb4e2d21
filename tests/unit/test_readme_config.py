"""The README's sample configuration is a valid nexus.toml with the embedded defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from nexus_grpc.config import load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def _sample(tmp_path: Path) -> Path:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Configuration") :]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    path = tmp_path / "nexus.toml"
    path.write_text(max(blocks, key=len), encoding="utf-8")
    return path


def test_the_readme_sample_config_loads_and_states_the_defaults(tmp_path: Path) -> None:
    loaded = load_config(_sample(tmp_path), environ={})
    for section in ("server", "http", "auth", "limits", "events", "cache", "storage", "log"):
        value = getattr(loaded, section)
        # Each section's own defaults (a whole Config() would name default addresses).
        assert dataclasses.asdict(value) == dataclasses.asdict(type(value)()), section
