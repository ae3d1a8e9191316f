"""Credentials and TLS against real registries: htpasswd (Basic), token (Bearer), self-signed TLS."""

from __future__ import annotations

import base64
import json
import stat

from siffs.cli.exitcodes import ExitCode
from tests.support.mounts import siffs
from tests.support.registry import PASSWORD, USER


def _login(registry, home, *extra, password=PASSWORD):
    return siffs("registry", "login", "-u", USER, "--password-stdin", *extra, f"oras://{registry.host}",
                 env=home, input_text=password + "\n")  # fmt: skip


def test_basic_auth_needs_credentials_then_login_stores_them(basic, sif_image, home, tmp_path):
    target = f"oras://{basic.host}/team/tool:1"
    anonymous = siffs("push", sif_image, target, env=home)
    assert anonymous.returncode == ExitCode.AUTH_FAILED
    hint = "(use 'siffs registry login' or --docker-login)"
    assert anonymous.stderr == f"siffs: {basic.host}: authentication required for team/tool {hint}\n"
    wrong = _login(basic, home, password="nope")
    assert wrong.returncode == ExitCode.AUTH_FAILED and "nope" not in wrong.stderr
    stored = _login(basic, home)
    config = tmp_path / "HOME" / ".docker" / "config.json"
    assert stored.returncode == 0 and stored.stdout == f"credentials for {basic.host} stored in {config}\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    auth = json.loads(config.read_text())["auths"][basic.host]["auth"]
    assert base64.b64decode(auth).decode() == f"{USER}:{PASSWORD}"  # split at the first ':' on use
    siffs("push", sif_image, target, env=home, check=True)
    out = tmp_path / "out.sif"
    siffs("pull", "--allow-unsigned", out, target, env=home, check=True)
    assert out.read_bytes() == sif_image.read_bytes()
    assert siffs("registry", "logout", f"oras://{basic.host}", env=home, check=True).returncode == 0
    again = siffs("pull", "--allow-unsigned", "--force", out, target, env=home)
    assert again.returncode == ExitCode.AUTH_FAILED


def test_environment_credentials_win_and_are_never_shown(basic, sif_image, home):
    env = dict(home, APPTAINER_DOCKER_USERNAME=USER, APPTAINER_DOCKER_PASSWORD="wrong-secret")
    failed = siffs("push", sif_image, f"oras://{basic.host}/team/env:1", env=env)
    assert failed.returncode == ExitCode.AUTH_FAILED
    assert f"credentials for {USER} were rejected" in failed.stderr and "wrong-secret" not in failed.stderr
    env["APPTAINER_DOCKER_PASSWORD"] = PASSWORD
    assert siffs("push", sif_image, f"oras://{basic.host}/team/env:1", env=env).returncode == 0


def test_token_auth_grants_by_scope(token, sif_image, home, tmp_path):
    env = dict(home, SINGULARITY_DOCKER_USERNAME=USER, SINGULARITY_DOCKER_PASSWORD=PASSWORD)
    for repo in ("public/tool", "private/tool"):
        siffs("push", sif_image, f"oras://{token.host}/{repo}:1", env=env, check=True)
    anonymous_public = siffs("pull", "--allow-unsigned", tmp_path / "a.sif", f"oras://{token.host}/public/tool:1",
                             env=home)  # fmt: skip
    assert anonymous_public.returncode == 0, anonymous_public.stderr
    anonymous_private = siffs("pull", "--allow-unsigned", tmp_path / "b.sif",
                              f"oras://{token.host}/private/tool:1", env=home)  # fmt: skip
    assert anonymous_private.returncode == ExitCode.AUTH_FAILED
    assert "authentication required for private/tool" in anonymous_private.stderr
    anonymous_push = siffs("push", sif_image, f"oras://{token.host}/public/tool:2", env=home)
    assert anonymous_push.returncode == ExitCode.AUTH_FAILED
    wrong = dict(home, DOCKER_USERNAME=USER, DOCKER_PASSWORD="bad")
    rejected = siffs(
        "pull", "--allow-unsigned", tmp_path / "c.sif", f"oras://{token.host}/private/tool:1", env=wrong
    )
    assert rejected.returncode == ExitCode.AUTH_FAILED and "were rejected" in rejected.stderr
    assert siffs("pull", "--allow-unsigned", tmp_path / "d.sif", f"oras://{token.host}/private/tool:1",
                 env=env).returncode == 0  # fmt: skip


def test_tls_registry_needs_its_ca(tls, sif_image, home, tmp_path):
    registry, ca = tls
    target = f"oras://{registry.host}/secure/tool:1"
    untrusted = siffs("push", sif_image, target, env=home)
    assert untrusted.returncode == ExitCode.NETWORK and "TLS certificate not trusted" in untrusted.stderr
    siffs("push", "--ca-file", ca, sif_image, target, env=home, check=True)
    with_env = dict(home, SSL_CERT_FILE=str(ca))
    out = tmp_path / "out.sif"
    siffs("pull", "--allow-unsigned", out, target, env=with_env, check=True)
    assert out.read_bytes() == sif_image.read_bytes()
    plain_http = siffs("pull", "--no-https", "--allow-unsigned", "--force", out, target, env=home)
    assert plain_http.returncode == ExitCode.NETWORK and "speaks https, not http" in plain_http.stderr
