"""The read guard of tests/conftest.py: an undeclared read fails the test that made it."""

from __future__ import annotations

from tests import conftest
from tests.support import shared


def _probe(path: str) -> list[str]:
    """Open ``path`` (it need not exist: the audit event comes first) and return what was flagged."""
    before = list(conftest._guard["violations"])
    try:
        with open(path, "rb"):
            pass
    except OSError:
        pass
    flagged = conftest._guard["violations"][len(before) :]
    conftest._guard["violations"] = before
    return flagged


def test_undeclared_reads_are_flagged(tmp_path):
    assert _probe("/srv/siffs-guard-probe") == ["/srv/siffs-guard-probe"]
    assert _probe("/root/.gnupg/pubring.kbx") == ["/root/.gnupg/pubring.kbx"]
    assert _probe(str(tmp_path / "file")) == []
    assert _probe(str(shared.REPO / "pyproject.toml")) == []
    assert _probe("/usr/share/gocode/src/github.com/sylabs/sif/go.mod") == []


def test_the_corpus_needs_a_declaration(monkeypatch):
    monkeypatch.setitem(conftest._guard, "item_declares_shared", False)
    assert _probe(str(shared.CONFORMANCE / "expected.json")) != []
    monkeypatch.setitem(conftest._guard, "item_declares_shared", True)
    assert _probe(str(shared.CONFORMANCE / "expected.json")) == []

