"""The libcrypto XTS path gives exactly what ``cryptography``'s XTS gives (the LUKS2 data path oracle
against cryptsetup is in test_luks2)."""

from __future__ import annotations

import os

import pytest

from siffs.crypt import xts


@pytest.mark.parametrize("key_size", [32, 64])
@pytest.mark.parametrize(("unit", "step"), [(512, 1), (4096, 8)])
@pytest.mark.parametrize("encrypt", [False, True])
def test_libcrypto_matches_cryptography(key_size, unit, step, encrypt):
    assert xts._libcrypto() is not None  # Debian always has libssl3: the fast path is what runs
    key, data = os.urandom(key_size), os.urandom(unit * 9)
    fast = xts.xts(key, data, unit, 123456789, step, encrypt=encrypt)
    assert fast == xts.xts_portable(key, data, unit, 123456789, step, encrypt=encrypt)
    assert xts.xts(key, fast, unit, 123456789, step, encrypt=not encrypt) == data
