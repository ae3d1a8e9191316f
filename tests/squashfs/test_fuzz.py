"""A short run of the mutation fuzzer (the long one is ``python -m tests.squashfs.fuzz --cases 100000``).

Each case runs in a child under a memory and a time limit (``tests/fuzz/limits.py``), and
the reader has no catch-all turning Python errors into ``CorruptImage``: the tests below
show that an escaped error, a blow-up or a hang in the reader is reported as a bug.
"""

from __future__ import annotations

import pytest

from siffs.squashfs import reader
from tests.squashfs.fuzz import MUTATIONS, build_bases, fuzz, limited_exercise


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return build_bases(tmp_path_factory.mktemp("fuzz-bases"))


def test_hostile_images_raise_only_squashfs_errors(bases):
    counts, bugs = fuzz(800, seed=20240601, bases=bases)
    assert not bugs, bugs[0].detail
    # Every kind of damage reaches the reader and is refused there at least once: a mutation
    # the reader never notices (or never sees) would prove nothing.
    kinds = {m.__name__ for m in MUTATIONS} - {"bomb"} | {"data_bomb", "metadata_bomb"}
    for kind in kinds:
        assert counts[f"{kind} -> CorruptImage"] > 0, kind
    # A directory that contains the root must not make a walk loop: it ends, within the limit.
    assert counts["directory_loop -> ok"] > 0


def test_cases_that_once_escaped_are_refused(bases):
    """Replays of cases longer runs found (seed, case): each raised a non-SquashFS error once."""
    for seed, case in [(606, 8295)]:  # a 64-bit block start: the block list overflowed its array
        counts, bugs = fuzz(1, seed=seed, start=case, bases=bases)
        assert not bugs, bugs[0].detail
        assert counts["CorruptImage"] == 1, counts


@pytest.mark.parametrize(
    ("planted", "found"),
    [
        ("raise IndexError('planted')", "BUG IndexError"),
        ("bytearray(512 << 20)", "BUG MemoryError"),  # fits in RAM, not in the limit
        ("__import__('time').sleep(60)", "BUG Timeout"),
    ],
    ids=["escape", "memory", "hang"],
)
def test_a_bug_in_the_reader_fails_the_run(bases, monkeypatch, planted, found):
    """A reader that raised, allocated or looped while decoding inodes: every case is a bug."""
    real = reader.InodeDecoder.__call__

    def decode(self, ref):
        exec(planted)
        return real(self, ref)

    monkeypatch.setattr(reader.InodeDecoder, "__call__", decode)
    counts, bugs = fuzz(3, seed=1, bases=bases, runner=limited_exercise(seconds=2))
    opened = counts["ok"] + counts["CorruptImage"] + counts["UnsupportedImage"]
    assert len(bugs) + opened == 3 and bugs, counts
    assert {b.result for b in bugs} == {found}
