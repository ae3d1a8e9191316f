"""Short coverage-guided runs of every target (the long run is in the README), and proof that
the runner fails when a parser raises outside its hierarchy, allocates without bound or hangs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import CORPUS, TARGETS

ROOT = Path(__file__).parents[2]
#: Seconds of fuzzing per target in the suite: about 20 s for all of them.
BUDGET = 6


def fuzz(tmp_path: Path, target: str, *flags: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``tests.fuzz.run`` on ``target`` growing a scratch corpus (the committed one is only read)."""
    grown = tmp_path / "grown"
    grown.mkdir(exist_ok=True)
    argv = [target, *flags, f"-artifact_prefix={tmp_path}/", str(grown), str(CORPUS / target)]
    code = f"{prelude}\nimport sys\nfrom tests.fuzz import run\nsys.argv = ['run', *{argv!r}]\nrun.main()\n"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def executed(result: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"stat::number_of_executed_units: (\d+)", result.stderr)
    assert found, result.stderr[-3000:]
    return int(found.group(1))


def test_every_parser_has_a_target_and_seeds():
    assert set(TARGETS) == {"sif", "squashfs", "signature"}
    for name in TARGETS:
        assert sorted(p.name for p in (CORPUS / name).glob("seed-*")), name
    codecs = {p.name.removeprefix("seed-") for p in (CORPUS / "squashfs").glob("seed-*")}
    assert {"gzip", "xz", "lzo", "lz4", "zstd", "raw"} <= codecs


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_run_finds_nothing(tmp_path, target):
    result = fuzz(tmp_path, target, f"-max_total_time={BUDGET}", "-print_final_stats=1")
    assert result.returncode == 0, result.stderr[-5000:]
    assert executed(result) > 100  # the inputs did run (a mis-set-up runner does nothing)
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))


# A planted bug in the clear-sign decoder, reached as soon as a mutation breaks the armor of a seed.
PLANT = """
import time
from siffs.integrity import clearsign
real = clearsign.decode
def planted(data):
    message = real(data)
    if message is None and data.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        {action}
    return message
clearsign.decode = planted
"""


@pytest.mark.parametrize(
    ("action", "artifact", "reason"),
    [
        ("raise IndexError('planted')", "crash-", "IndexError: planted"),
        ("bytearray(512 << 20)", "crash-", "MemoryError"),  # fits in RAM, not in the limit
        ("time.sleep(60)", "timeout-", "ERROR: libFuzzer: timeout"),
    ],
    ids=["escape", "memory", "hang"],
)
def test_runner_fails_on_a_planted_bug(tmp_path, action, artifact, reason):
    result = fuzz(
        tmp_path, "signature", "-timeout=2", "-max_total_time=60", prelude=PLANT.format(action=action)
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr  # atheris prints the Python traceback on stdout
    assert reason in output, output[-3000:]
    saved = list(tmp_path.glob(artifact + "*"))
    assert saved, result.stderr[-3000:]
