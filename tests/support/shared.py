"""Where the read-only conformance corpus lives (``../shared`` beside the repository)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SIFFS_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance"
IMAGES = CONFORMANCE / "sylabs-sif" / "images"


@cache
def expected() -> dict[str, Any]:
    """The corpus expectations (``expected.json``)."""
    with open(CONFORMANCE / "expected.json") as f:
        data: dict[str, Any] = json.load(f)
    return data


def image_names() -> list[str]:
    return sorted(expected()["images"])
