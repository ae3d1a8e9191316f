"""Shared fixtures: corpus key material, isolated XDG/GnuPG directories."""

from __future__ import annotations

import pytest

from siffs.integrity.keys import key_material, load_files
from siffs.integrity.verify import KeyMaterial
from tests.support.reference import expected, key_path

__all__ = ["key_path"]


@pytest.fixture(scope="session")
def keysets() -> dict[str, KeyMaterial]:
    """Every corpus keyset, loaded once (OpenPGP keys go through real GnuPG)."""
    return {
        name: key_material(load_files([key_path(k) for k in keys]))
        for name, keys in expected()["keysets"].items()
    }


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Never touch the real ~/.config, ~/.cache or ~/.gnupg."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "no-gnupg-home"))
