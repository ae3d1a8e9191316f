"""The C XTS loops (through libgcrypt's XTS, and OpenSSL's AES-ECB with whitening) and the ctypes
loop give exactly what ``cryptography``'s XTS gives (the LUKS2 data path oracle against
cryptsetup is in test_luks2). Every test runs once with each C loop."""

from __future__ import annotations

import os

import pytest

from siffs.crypt import xts


@pytest.fixture(autouse=True, params=["gcrypt", "openssl"])
def c_loop(request, monkeypatch):
    """The C loop xts() takes: libgcrypt's XTS, or OpenSSL's ECB (``SIFFS_NO_GCRYPT``)."""
    monkeypatch.delenv("SIFFS_NO_NATIVE", raising=False)
    monkeypatch.delenv("SIFFS_NO_GCRYPT", raising=False)
    if request.param == "openssl":
        monkeypatch.setenv("SIFFS_NO_GCRYPT", "1")
    xts.libgcrypt.cache_clear()
    xts.native_loops.cache_clear()
    if request.param == "gcrypt" and xts.libgcrypt() is None:
        pytest.skip("no libgcrypt (libgcrypt20) on this system")
    yield request.param
    xts.libgcrypt.cache_clear()
    xts.native_loops.cache_clear()


@pytest.mark.parametrize("key_size", [32, 64])
@pytest.mark.parametrize(("unit", "step"), [(512, 1), (4096, 8)])
@pytest.mark.parametrize("encrypt", [False, True])
def test_libcrypto_matches_cryptography(key_size, unit, step, encrypt):
    assert xts.libcrypto() is not None  # Debian always has libssl3: the fast path is what runs
    key, data = os.urandom(key_size), os.urandom(unit * 9)
    fast = xts.xts(key, data, unit, 123456789, step, encrypt=encrypt)
    assert fast == xts.xts_portable(key, data, unit, 123456789, step, encrypt=encrypt)
    assert xts.xts(key, fast, unit, 123456789, step, encrypt=not encrypt) == data


@pytest.mark.parametrize(("unit", "step"), [(512, 1), (4096, 8)])
@pytest.mark.parametrize("first", [0, 123456789, 2**64 - 3, 2**70 + 5])
@pytest.mark.parametrize("encrypt", [False, True])
def test_native_loop_matches_the_python_loop(monkeypatch, unit, step, first, encrypt):
    """The C loop (siffs/crypt/_xts.c) against the ctypes loop it replaces, tweaks crossing 2^64 too."""
    if xts.native_loops() is None:
        pytest.skip("siffs.crypt._xts was not built (no C compiler): the Python loop is what runs")
    key, data = os.urandom(64), os.urandom(unit * 40)
    native = xts.xts(key, data, unit, first, step, encrypt=encrypt)
    monkeypatch.setenv("SIFFS_NO_NATIVE", "1")
    xts.native_loops.cache_clear()
    try:
        assert xts.native_loops() is None
        assert native == xts.xts(key, data, unit, first, step, encrypt=encrypt)
    finally:
        xts.native_loops.cache_clear()
    assert native == xts.xts_portable(key, data, unit, first, step, encrypt=encrypt)


def test_native_loop_refuses_partial_units():
    native = xts.native_loops()
    if native is None:
        pytest.skip("siffs.crypt._xts was not built")
    with pytest.raises(ValueError, match="whole number of units"):
        xts.xts(os.urandom(64), os.urandom(700), 512, 0, 1)


def test_kept_contexts_follow_key_direction_and_thread():
    """Each thread keeps its last keyed context: switching key or direction, or threads, changes nothing."""
    import concurrent.futures  # noqa: PLC0415

    keys = [os.urandom(64), os.urandom(64), os.urandom(32)]
    data = os.urandom(512 * 16)

    def check(i: int) -> bool:
        key = keys[i % 3]
        encrypt = bool(i % 2)
        return xts.xts(key, data, 512, i, 1, encrypt=encrypt) == xts.xts_portable(
            key, data, 512, i, 1, encrypt=encrypt
        )

    assert all(check(i) for i in range(12))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, range(64)))


@pytest.mark.parametrize("units", [1, 256, 257, 600])
def test_native_runs_of_any_length(units):
    """Runs below, at and above the C loop's on-stack tweak buffer (256 units) give XTS's bytes."""
    if xts.native_loops() is None:
        pytest.skip("siffs.crypt._xts was not built")
    key, data = os.urandom(64), os.urandom(512 * units)
    for encrypt in (False, True):
        expected = xts.xts_portable(key, data, 512, 2**64 - 100, 1, encrypt=encrypt)
        assert xts.xts(key, data, 512, 2**64 - 100, 1, encrypt=encrypt) == expected


def test_xts_refuses_equal_key_halves_for_encryption():
    """As OpenSSL's XTS (and cryptography) refuse it: equal data and tweak keys weaken XTS."""
    key = os.urandom(32) * 2
    with pytest.raises(ValueError, match="refused the key"):
        xts.xts(key, bytes(512), 512, 0, 1, encrypt=True)


def _ranges(size: int, unit: int) -> list[tuple[int, int]]:
    """Ranges that start and end on, and inside, units and 16-byte blocks, and the empty one."""
    return [
        (0, size), (0, 0), (size, 0), (1, size - 1), (0, size - 1), (7, 9), (15, 2), (16, 16),
        (unit - 3, 6), (unit, unit), (unit + 5, 3 * unit - 17), (size - unit - 1, unit + 1), (size - 1, 1),
    ]  # fmt: skip


@pytest.mark.parametrize(("unit", "step"), [(512, 1), (4096, 8)])
@pytest.mark.parametrize("encrypt", [False, True])
def test_native_ranges_match_the_python_loop(monkeypatch, unit, step, encrypt):
    """The C loop writing only bytes skip .. skip + length against the ctypes loop's whole run, sliced."""
    if xts.native_loops() is None:
        pytest.skip("siffs.crypt._xts was not built")
    key, data = os.urandom(64), os.urandom(unit * 6)
    whole = xts.xts_portable(key, data, unit, 2**64 - 2, step, encrypt=encrypt)
    ranges = _ranges(len(data), unit)
    native = [xts.xts(key, data, unit, 2**64 - 2, step, encrypt=encrypt, skip=s, length=n) for s, n in ranges]
    assert native == [whole[s : s + n] for s, n in ranges]
    monkeypatch.setenv("SIFFS_NO_NATIVE", "1")
    xts.native_loops.cache_clear()
    try:
        assert native == [
            xts.xts(key, data, unit, 2**64 - 2, step, encrypt=encrypt, skip=s, length=n) for s, n in ranges
        ]
    finally:
        xts.native_loops.cache_clear()


@pytest.mark.parametrize(("skip", "length"), [(-1, 10), (0, 512 * 4 + 1), (100, 512 * 4 - 99), (5, -1)])
def test_native_loop_refuses_ranges_outside_the_data(skip, length):
    if xts.native_loops() is None:
        pytest.skip("siffs.crypt._xts was not built")
    with pytest.raises(ValueError, match="outside the data"):
        xts.xts(os.urandom(64), os.urandom(512 * 4), 512, 0, 1, skip=skip, length=length)
