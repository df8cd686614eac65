"""Locate the versioned data contracts in ``schemas/``.

The top-level ``schemas/`` folder is the single source of truth. A wheel carries it as
``facegs/_schemas`` (hatch ``force-include``); an editable install or a checkout reads it from the
repository root.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

_PKG_DIR = Path(__file__).resolve().parents[1]  # facegs/


@lru_cache(maxsize=1)
def schema_dir() -> Path:
    """Return the directory holding the schema files (``labels/``, ``*.schema.json``)."""
    for candidate in (_PKG_DIR / "_schemas", _PKG_DIR.parent / "schemas"):
        if (candidate / "labels").is_dir():
            return candidate
    raise FileNotFoundError(
        f"facegs schema files not found next to {_PKG_DIR}: expected '_schemas/' inside the package "
        "or 'schemas/' at the repository root"
    )


@cache
def load_json_schema(name: str) -> dict[str, Any]:
    """Load ``schemas/<name>`` (for example ``subject_manifest.schema.json``) as a dict."""
    path = schema_dir() / name
    with open(path, encoding="utf-8") as f:
        return json.load(f)
