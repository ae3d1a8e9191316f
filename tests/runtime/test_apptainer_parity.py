"""What a real Apptainer 1.4.5 printed for 28 commands, replayed with ``siffs`` in its place.

The goldens (``apptainer-fixtures/goldens/NAME.{cmd,out,err,rc}``, see that README) were made
as an ordinary user with ``apptainer -s`` and a clean environment; here the same command runs
as the test user with the same environment and ``siffs -q``. Exit codes and standard output
must match (``env`` listings compared as sets of lines; ``USER_PATH`` and ``_`` are host
records the README says to ignore); error wording may differ, so standard error must only be
empty where Apptainer's was, and a ``FATAL`` line where Apptainer printed one.

siffs refuses unsigned images unless told (Apptainer runs them): the replay adds
``--allow-unsigned``, the one deliberate difference.
"""

from __future__ import annotations

import pwd
import shlex

import pytest

from tests.runtime.conftest import Siffs
from tests.support.shared import SHARED
from tests.support.users import TEST_USER, user_dir

FIXTURES = SHARED / "apptainer-fixtures"
GOLDENS = FIXTURES / "goldens"
IGNORED_PREFIXES = ("USER_PATH=", "_=")
#: Goldens replayed elsewhere: the encrypted images need their key passed as Apptainer got it.
ELSEWHERE = {
    "enc-pass-run": "replayed with its passphrase in tests/crypt/test_read.py",
    "enc-pem-run": "replayed with its PEM key in tests/crypt/test_read.py",
}

pytestmark = pytest.mark.skipif(not GOLDENS.is_dir(), reason=f"no Apptainer goldens at {GOLDENS}")


def _names() -> list[str]:
    return sorted(p.stem for p in GOLDENS.glob("*.cmd")) if GOLDENS.is_dir() else []


@pytest.fixture(scope="module")
def replay(work) -> tuple[Siffs, dict[str, str]]:
    """A ``Siffs`` with the goldens' environment, and the values of their placeholders."""
    entry = pwd.getpwnam(TEST_USER)
    cwd = user_dir(work, "parity-cwd")
    env = {
        "HOME": entry.pw_dir,
        "USER": TEST_USER,
        "LOGNAME": TEST_USER,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TERM": "xterm",
        "LANG": "C.UTF-8",
        "HOSTVAR": "host-value",
    }
    places = {"{FIXTURES}": str(FIXTURES), "{HOME}": entry.pw_dir, "{USER}": TEST_USER, "{CWD}": cwd}
    return Siffs(env, cwd), places


def _fill(text: str, places: dict[str, str]) -> str:
    for placeholder, value in places.items():
        text = text.replace(placeholder, value)
    return text


def _lines(text: str, as_set: bool) -> list[str]:
    lines = [line for line in text.splitlines() if not line.startswith(IGNORED_PREFIXES)]
    return sorted(lines) if as_set else lines


@pytest.mark.parametrize("name", _names())
def test_siffs_prints_what_apptainer_printed(replay, name):
    if name in ELSEWHERE:
        pytest.skip(ELSEWHERE[name])
    siffs, places = replay
    words = shlex.split(_fill((GOLDENS / f"{name}.cmd").read_text().removeprefix("$ "), places))
    assert words[0] == "apptainer"
    result = siffs("-q", words[1], "--allow-unsigned", *words[2:])
    expected_rc = int((GOLDENS / f"{name}.rc").read_text())
    expected_err = (GOLDENS / f"{name}.err").read_text()
    assert result.returncode == expected_rc, result.stderr
    listing = words[-1] == "/bin/env"
    expected_out = _fill((GOLDENS / f"{name}.out").read_text(), places)
    assert _lines(result.stdout, listing) == _lines(expected_out, listing)
    if expected_err.startswith("FATAL:"):
        assert result.stderr.startswith("FATAL:"), result.stderr
    else:
        assert result.stderr == expected_err


def test_every_golden_is_replayed_or_named():
    """A golden added to the fixtures is replayed at once; a skipped one must be listed with its reason."""
    assert set(ELSEWHERE) <= set(_names())
