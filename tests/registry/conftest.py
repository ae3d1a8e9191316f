"""The registries the tests talk to, one of each kind per session (spec registry.md §7.1)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import build_rootfs, mksquashfs
from tests.support.mounts import siffs
from tests.support.registry import Registry, certificate, htpasswd, registry, static_server, token_server


@pytest.fixture(scope="session")
def plain(tmp_path_factory) -> Iterator[Registry]:
    """No auth; blob GETs are redirected (307) to a static server holding the same storage."""
    work = tmp_path_factory.mktemp("registry-plain")
    (work / "reg" / "data").mkdir(parents=True)
    storage = {"filesystem": {"rootdirectory": str(work / "reg" / "data")}, "delete": {"enabled": True}}
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(static_server(work / "reg" / "data"))
        redirect = {"storage": [{"name": "redirect", "options": {"baseurl": base}}]}
        yield stack.enter_context(registry(work / "reg-srv", storage=storage, middleware=redirect))


@pytest.fixture(scope="session")
def basic(tmp_path_factory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("registry-basic")
    auth = {"htpasswd": {"realm": "siffs-basic-realm", "path": str(htpasswd(work))}}
    with registry(work / "srv", auth=auth) as r:
        yield r


@pytest.fixture(scope="session")
def token(tmp_path_factory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("registry-token")
    with token_server(work, "siffs-test") as (realm, crt):
        auth = {"token": {"realm": realm, "service": "siffs-test", "issuer": "siffs-test-issuer",
                          "rootcertbundle": str(crt)}}  # fmt: skip
        with registry(work / "srv", auth=auth, host="localhost:PORT") as r:
            yield r


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> Iterator[tuple[Registry, Path]]:
    work = tmp_path_factory.mktemp("registry-tls")
    crt, key, _ = certificate(work, "tls")
    with registry(work / "srv", tls={"certificate": str(crt), "key": str(key)}) as r:
        yield r, crt


@pytest.fixture(scope="session")
def sif_image(tmp_path_factory) -> Path:
    """A small runnable SIF (the example root filesystem), unsigned."""
    work = tmp_path_factory.mktemp("registry-image")
    squash = mksquashfs(build_rootfs(work / "tree"), work / "root.squashfs", "-all-root")
    image = work / "example.sif"
    siffs("create", image, squash, check=True)
    return image


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    """A private environment: home (Docker config), XDG dirs, no inherited registry credentials."""
    env = {k: v for k, v in os.environ.items() if "DOCKER_" not in k}
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
    return env
