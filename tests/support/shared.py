"""The one way tests reach the conformance corpus in ``../shared`` (or ``$SIFFS_SHARED``).

The corpus is optional: a clone has none, and tests/support/reference.py stands in for it with
Debian's reference package and the Go oracle. Tests that need a file only the corpus has (images
from a newer upstream, DSSE and OCI objects) skip through :func:`require` with the reason, and the
read guard (tests/conftest.py) allows reads under :data:`SHARED` only through here.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SIFFS_SHARED") or REPO.parent / "shared")
CONFORMANCE = SHARED / "conformance"
IMAGES = CONFORMANCE / "sylabs-sif" / "images"


def available() -> bool:
    return (CONFORMANCE / "expected.json").is_file()


def require(what: str) -> Path:
    """``CONFORMANCE / what``, or skip: the file is only in the corpus, not in a clone."""
    if not available():
        pytest.skip(f"{what} is only in the conformance corpus (set SIFFS_SHARED to a shared/ folder)")
    return CONFORMANCE / what


@cache
def expected() -> dict[str, Any]:
    """The corpus expectations (``expected.json``)."""
    with open(require("expected.json")) as f:
        data: dict[str, Any] = json.load(f)
    return data
