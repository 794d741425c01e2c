"""Write tests/snapshots/shipped_spaces.json: every shipped space (and each sweep's base space with
its overrides), plus the defaults of an empty space, as the loader reads them.

tests/test_config.py compares the loader against this file, so a refactor of the config classes
that changes a key or a value fails there. Regenerate only when a setting is meant to change:
    .venv/bin/python tests/snapshots/make_shipped_spaces.py
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nasfe.config import SpaceConfig, load_space

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("shipped_spaces.json")


def shipped_spaces() -> dict:
    """Plain data of each shipped space, keyed by file stem ('(defaults)' for an empty space)."""
    out = {"(defaults)": SpaceConfig().to_dict()}
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if "base" in data:  # a sweep file: its base space with the sweep's fixed overrides
            out[path.stem] = load_space(data["base"], data.get("overrides")).to_dict()
        else:
            out[path.stem] = load_space(path).to_dict()
    return out


if __name__ == "__main__":
    OUT.write_text(json.dumps(shipped_spaces(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
