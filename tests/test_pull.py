"""siffs.pull: which stage a SOURCE goes to, and the default destination name."""

from __future__ import annotations

import pytest

from siffs import pull


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("image.sif.caibx", "caibx"),
        ("/srv/x/image.caibx", "caibx"),
        ("https://example.org/images/image.sif.caibx?token=1", "caibx"),
        ("http://example.org/image.sif.zsync", "zsync"),
        ("image.sif.zsync", "zsync"),
        ("oras://registry.example/image:tag", "oras"),
        ("docker://alpine", "docker"),
    ],
)
def test_kind_of(source, kind):
    assert pull.kind_of(source) == kind
    assert pull.stage_for(source) is pull.STAGES[kind]


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("image.caidx", "archive indexes"),
        ("shub://registry/image:tag", "cannot pull shub://"),
        ("image.sif", "expected a .caibx index or a .zsync control file"),
    ],
)
def test_unknown_sources(source, words):
    with pytest.raises(pull.UnknownSourceError, match=words):
        pull.kind_of(source)


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        ("http://h/a/image.sif.caibx", "image.sif"),
        ("/x/alpine.caibx", "alpine.sif"),
        ("alpine.sif.zsync", "alpine.sif"),
        ("docker://alpine:3.19", "alpine_3.19.sif"),
        ("oras://h.example/tools/x", "x_latest.sif"),
    ],
)
def test_default_dest(source, dest):
    assert pull.default_dest(source) == dest
