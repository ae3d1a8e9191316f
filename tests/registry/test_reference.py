"""Reference grammar (go-containerregistry's), checked before any network access."""

from __future__ import annotations

import pytest

from siffs.registry.errors import BadReference
from siffs.registry.reference import parse


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest", "name"),
    [
        ("oras://localhost:5000/a/b:1.0", "localhost:5000", "a/b", "1.0", None, "b_1.0.sif"),
        ("oras://ghcr.io/org/tool", "ghcr.io", "org/tool", "latest", None, "tool_latest.sif"),
        ("docker://alpine:3.19", "index.docker.io", "library/alpine", "3.19", None, "alpine_3.19.sif"),
        ("docker://docker.io/org/x", "index.docker.io", "org/x", "latest", None, "x_latest.sif"),
        ("oras:///host.example:443/r", "host.example:443", "r", "latest", None, "r_latest.sif"),
        ("oras://h.example/r@sha256:" + "ab" * 32, "h.example", "r", None, "sha256:" + "ab" * 32,
         "r_abababababab.sif"),
    ],
)  # fmt: skip
def test_references(text, host, repository, tag, digest, name):
    ref = parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repository, tag, digest)
    assert ref.default_file_name() == name


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("http://x/y", "expected oras://"),
        ("oras://h.example/UPPER", "repository must match"),
        ("oras://h.example/r:bad/tag:x", "repository must match"),
        ("oras://h.example/r:" + "t" * 129, "tag must match"),
        ("oras://h.example/r@sha256:abc", "digest must be"),
        ("oras://h.example//r", "repository must match"),
    ],
)
def test_bad_references_say_which_rule(text, rule):
    with pytest.raises(BadReference, match=rule):
        parse(text)


def test_local_hosts_may_fall_back_to_http():
    assert parse("oras://127.0.0.1:5000/a").is_local and parse("oras://192.168.1.2/a").is_local
    assert not parse("oras://ghcr.io/a").is_local and not parse("oras://172.32.0.1/a").is_local
