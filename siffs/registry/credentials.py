"""Registry credentials: where they come from, in Apptainer's order, and ``registry login``'s file.

Sources (spec registry.md §3.2), first match wins: the environment (APPTAINER_, SINGULARITY_,
then plain DOCKER_USERNAME/PASSWORD); ``--authfile``; ``~/.apptainer/docker-config.json``, else
``~/.docker/config.json`` (so siffs and Apptainer share logins); anonymous. Docker config entries
may hold ``auth``, ``username``/``password``, ``identitytoken`` or ``registrytoken``, or name a
credential helper. Secrets are never printed, logged or passed on to child processes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siffs.registry.errors import AuthError, LocalIOError
from siffs.sif.durable import replace_file

_ENV_PREFIXES = ("APPTAINER_DOCKER_", "SINGULARITY_DOCKER_", "DOCKER_")
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HELPER_TIMEOUT = 10


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = ""
    registry_token: str = ""  # used directly as the Bearer token

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback
        return f"Credentials(username={self.username!r}, password=***)"


def from_environment() -> Credentials | None:
    """``APPTAINER_DOCKER_USERNAME``/``_PASSWORD`` (then SINGULARITY_, then DOCKER_)."""
    for prefix in _ENV_PREFIXES:
        user, password = os.environ.get(prefix + "USERNAME"), os.environ.get(prefix + "PASSWORD")
        if user is not None and password is not None:
            return Credentials(user, password)
    return None


def default_config_file() -> Path:
    """``~/.apptainer/docker-config.json`` if it exists, else ``~/.docker/config.json``."""
    configdir = os.environ.get("APPTAINER_CONFIGDIR")
    if configdir:
        return Path(configdir) / "docker-config.json"
    apptainer = Path.home() / ".apptainer" / "docker-config.json"
    return apptainer if apptainer.exists() else Path.home() / ".docker" / "config.json"


def _keys_for(host: str, repository: str) -> list[str]:
    """Config keys to try, most specific first: HOST/REPO, HOST/prefix..., HOST."""
    parts = repository.split("/")
    keys = [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    keys.append(_DOCKER_HUB_KEY if host in ("index.docker.io", "docker.io") else host)
    return keys


def _normalised(key: str) -> str:
    for scheme in ("https://", "http://"):
        key = key.removeprefix(scheme)
    return key.split("/", 1)[0]


def _load(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LocalIOError(f"{path}: not a readable Docker config file ({exc})") from None
    return value if isinstance(value, dict) else {}


def lookup(path: Path, host: str, repository: str) -> Credentials | None:
    """The credentials ``path`` holds for ``host``/``repository``, or None."""
    config = _load(path)
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and host in helpers:
        return _from_helper(str(helpers[host]), host)
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        return None
    entry = next((auths[k] for k in _keys_for(host, repository) if k in auths), None)
    if entry is None:
        entry = next((v for k, v in auths.items() if _normalised(k) == host), None)
    if entry is None and config.get("credsStore"):
        return _from_helper(str(config["credsStore"]), host)
    return _from_entry(entry, path) if isinstance(entry, dict) else None


def _from_entry(entry: dict[str, Any], path: Path) -> Credentials | None:
    if entry.get("registrytoken"):
        return Credentials("<token>", registry_token=str(entry["registrytoken"]))
    if entry.get("auth"):
        try:
            text = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise LocalIOError(f"{path}: an 'auth' entry is not base64 of user:password") from None
        user, _, password = text.partition(":")  # the password may contain ':'
        return Credentials(user, password)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    if entry.get("identitytoken"):
        return Credentials("<token>", str(entry["identitytoken"]))
    return None


def _from_helper(name: str, host: str) -> Credentials | None:
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run(
            [program, "get"], input=host.encode(), capture_output=True, timeout=_HELPER_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        raise AuthError(f"credential helper {program} could not be run for {host}") from None
    if done.returncode != 0:
        return None  # the helper knows nothing for this host (its message may hold secrets: not shown)
    try:
        answer = json.loads(done.stdout)
        return Credentials(str(answer["Username"]), str(answer["Secret"]))
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"credential helper {program} gave an answer siffs cannot read") from None


def resolve(host: str, repository: str, authfile: Path | None) -> Credentials | None:
    """The credentials to use, by Apptainer's precedence."""
    env = from_environment()
    if env is not None:
        return env
    return lookup(authfile or default_config_file(), host, repository)


def store(path: Path, key: str, credentials: Credentials) -> None:
    """Record ``credentials`` under ``key`` (0600, atomically), as ``registry login`` does."""
    config = _load(path)
    auths = config.setdefault("auths", {})
    raw = f"{credentials.username}:{credentials.password}".encode()
    auths[key] = {"auth": base64.b64encode(raw).decode("ascii")}
    _write(path, config)


def erase(path: Path, key: str) -> bool:
    """Remove ``key``'s entry; False when there was none."""
    config = _load(path)
    auths = config.get("auths") or {}
    if key not in auths:
        return False
    del auths[key]
    _write(path, config)
    return True


def _write(path: Path, config: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_file(path, json.dumps(config, indent="\t").encode(), 0o600)  # crash-safe, owner only
    except OSError as exc:
        raise LocalIOError(f"{path}: cannot write credentials: {exc.strerror}") from None
