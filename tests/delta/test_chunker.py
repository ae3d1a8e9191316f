"""The native chunker (siffs/delta/_chunk.c) against its numpy oracle, and the table parameter."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys

import pytest

from siffs.delta import chunker
from siffs.delta.chunker import TABLE, Chunker, ChunkSizes
from tests.delta.conftest import vector

native = pytest.mark.skipif(
    not chunker.native_available(), reason="siffs.delta._chunk not built or SIFFS_NO_NATIVE set"
)

SIZES = [
    ChunkSizes(16384, 65536, 262144),
    ChunkSizes.from_average(16384),
    ChunkSizes(64, 4096, 65536),
    ChunkSizes(16, 64, 1024),  # min below the window: never cut before 48 bytes
    ChunkSizes(1, 2, 40),  # max below the window: every chunk is max bytes
    ChunkSizes(10000, 30000, 200000),
    ChunkSizes(4096, 4096, 4096),
]


def ends(
    data: bytes, sizes: ChunkSizes, *, use_native: bool, table=None, pieces: int | None = None
) -> list[int]:
    """Chunk ends; ``pieces`` seeds random read sizes (1 byte to 100 kB) so state must carry over."""
    stream = io.BytesIO(data)
    rng = random.Random(pieces)
    read = stream.read if pieces is None else (lambda n: stream.read(rng.randint(1, 100_000)))
    out, end = [], 0
    for c in Chunker(sizes, table, use_native=use_native).split(read):
        assert c
        end += len(c)
        out.append(end)
    return out


def _samples() -> list[bytes]:
    rng = random.Random(13)
    low_entropy = bytes(rng.choice(b"ab\0") for _ in range(300_000))
    return [
        rng.randbytes(2_500_000),
        bytes(300_000) + vector(700_000) + bytes(70_000),
        low_entropy,
        rng.randbytes(47),
        b"",
    ]


@native
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"{s.min}:{s.avg}:{s.max}")
def test_native_equals_numpy(sizes):
    for i, data in enumerate(_samples()):
        expected = ends(data, sizes, use_native=False)
        assert ends(data, sizes, use_native=True) == expected
        assert ends(data, sizes, use_native=True, pieces=i) == expected
        assert not expected or expected[-1] == len(data)


@native
def test_native_cuts_at_exactly_min_and_at_max():
    window = bytes.fromhex(
        "6b179ad89a1bdd016b273770c64540ad6aa2f76fffb807e463a65a168202ab93a0a6b72e88d9d95e8f6d14a4989f31a3"
    )
    data = vector(16336) + window + vector(200000, b"tail")
    default = ChunkSizes(16384, 65536, 262144)
    for pieces in (None, 1, 2):
        assert ends(data, default, use_native=True, pieces=pieces) == [16384, 59815, 168817, 189140, 216384]
        assert ends(bytes(1 << 20), default, use_native=True, pieces=pieces) == [
            262144,
            524288,
            786432,
            1048576,
        ]


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=native)])
def test_table_is_a_parameter(use_native):
    """A keyed chunker: the same rule with a table derived from a secret moves every boundary."""
    data = random.Random(5).randbytes(1_000_000)
    keyed = [random.Random(b"secret").getrandbits(32) for _ in range(256)]
    sizes = ChunkSizes.from_average(16384)
    mine = ends(data, sizes, use_native=use_native, table=keyed, pieces=3)
    assert mine == ends(data, sizes, use_native=False, table=keyed)
    assert ends(data, sizes, use_native=use_native, table=TABLE) == ends(data, sizes, use_native=use_native)
    casync_ends = set(ends(data, sizes, use_native=use_native))
    assert len(set(mine[:-1]) & casync_ends) < len(mine) // 10
    with pytest.raises(ValueError, match="256 words"):
        Chunker(sizes, keyed[:255])
    with pytest.raises(ValueError, match="256 words"):
        Chunker(sizes, [*keyed[:255], 1 << 32])


@native
def test_environment_variable_forces_the_python_path():
    code = "from siffs.delta import chunker; print(chunker.native_available())"
    env = {**os.environ, "SIFFS_NO_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
