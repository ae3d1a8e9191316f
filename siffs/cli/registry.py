"""``siffs push oras://…`` and ``siffs registry login|logout`` (``siffs pull`` is siffs/cli/pull.py)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from siffs.cli import output
from siffs.cli.common import CommandError, interrupt_on_sigterm
from siffs.cli.exitcodes import ExitCode
from siffs.cli.progress import ProgressBar
from siffs.registry import credentials, oras
from siffs.registry.errors import RegistryError
from siffs.registry.http import Session
from siffs.registry.reference import Reference, parse


def connection_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How to reach a registry: the options ``push`` and ``pull`` share."""
    p.add_argument("--no-https", action="store_true", help="the registry speaks plain http")
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA for the registry's TLS certificate")
    p.add_argument("--authfile", type=Path, metavar="FILE", help="Docker-format credentials file")
    p.add_argument("--docker-login", action="store_true", help="ask for a user name and password")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("push", help="upload a SIF image to a registry as an ORAS artifact")
    p.add_argument("image", help="SIF file")
    p.add_argument("target", help="oras://HOST/REPO[:TAG]")
    p.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--description", help="org.opencontainers.image.description")
    connection_arguments(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("registry", help="log in to or out of an OCI registry")
    what = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    login = what.add_parser("login", help="check and store credentials for a registry")
    login.add_argument("target", help="oras://HOST[/PATH] or docker://HOST[/PATH]")
    login.add_argument("--username", "-u")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument("--authfile", type=Path, metavar="FILE", help="where to store (Docker format)")
    login.add_argument("--no-https", action="store_true", help="the registry speaks plain http")
    login.add_argument("--ca-file", metavar="PEM", help="trust this CA for the registry's TLS certificate")
    login.set_defaults(func=cmd_login)
    logout = what.add_parser("logout", help="forget the stored credentials for a registry")
    logout.add_argument("target", help="oras://HOST[/PATH] or docker://HOST[/PATH]")
    logout.add_argument("--authfile", type=Path, metavar="FILE", help="the credentials file")
    logout.set_defaults(func=cmd_logout)


def prompted_credentials(args: argparse.Namespace) -> credentials.Credentials | None:
    """With ``--docker-login``, the user name and password asked for (as Apptainer asks), else None."""
    if not getattr(args, "docker_login", False):
        return None
    user = input("Enter Docker Username: ")
    return credentials.Credentials(user, getpass.getpass("Enter Docker Password: "))


def _session(args: argparse.Namespace, ref: Reference) -> Session:
    creds = prompted_credentials(args) or credentials.resolve(ref.host, ref.repository, args.authfile)
    return Session(ref.host, creds, insecure=args.no_https, local=ref.is_local, ca_file=args.ca_file)


def _reference(text: str, schemes: tuple[str, ...] = ("oras",)) -> Reference:
    ref = parse(text)
    if ref.scheme not in schemes:
        raise CommandError(f"{text}: {ref.scheme}:// is not supported here", ExitCode.UNSUPPORTED)
    return ref


def cmd_push(args: argparse.Namespace) -> None:
    interrupt_on_sigterm()
    ref = _reference(args.target)
    annotations = {}
    for item in args.annotation:
        key, eq, value = item.partition("=")
        if not eq:
            output.warn(f"annotation {item!r} has no '=': skipped")
            continue
        annotations[key] = value
    if args.description:
        annotations["org.opencontainers.image.description"] = args.description
    session = _session(args, ref)
    try:
        with ProgressBar("uploading") as progress:
            digest = oras.push(session, Path(args.image), ref, annotations=annotations, progress=progress)
    except FileNotFoundError as exc:
        raise CommandError(f"{args.image}: {exc.strerror}", ExitCode.IO) from None
    finally:
        session.close()
    print(f"pushed {args.image} to {ref}: manifest {digest}")


def _login_key(text: str) -> tuple[Reference, str]:
    """The registry and the key Apptainer stores credentials under (``HOST[/PATH]``)."""
    ref = parse(text if "/" in text.split("://", 1)[-1] else text.rstrip("/") + "/x")
    rest = text.split("://", 1)[-1].strip("/")
    return ref, rest


def cmd_login(args: argparse.Namespace) -> None:
    ref, key = _login_key(args.target)
    username = args.username or input("Username: ")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    creds = credentials.Credentials(username, password)
    session = Session(ref.host, creds, insecure=args.no_https, local=ref.is_local, ca_file=args.ca_file)
    try:
        response = session.request("GET", "/v2/", scope=f"repository:{ref.repository}:pull")
        response.raw.read()
    except RegistryError as exc:
        raise CommandError(f"login to {ref.host} failed: {exc}", ExitCode.AUTH_FAILED) from None
    finally:
        session.close()
    path = args.authfile or credentials.default_config_file()
    credentials.store(path, key, creds)
    print(f"credentials for {key} stored in {path}")


def cmd_logout(args: argparse.Namespace) -> None:
    _, key = _login_key(args.target)
    path = args.authfile or credentials.default_config_file()
    if not credentials.erase(path, key):
        raise CommandError(f"no credentials for {key} in {path}", ExitCode.NOT_FOUND)
    print(f"credentials for {key} removed from {path}")
