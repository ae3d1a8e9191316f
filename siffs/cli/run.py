"""``siffs run|exec|shell|test|inspect|bundle``: use an image or a directory tree as Apptainer would.

A directory is handed to ``runtime`` as it is. A SIF file is verified and mounted by
``siffs.cli.mount.mounted_image`` for the duration of the command, so the container runs in a
child and this process stays to unmount. run/exec/shell/test follow Apptainer's exit codes
(runtime.md §12.3): the command's own status, 128+N for signal N, and 255 with one ``FATAL:``
line for anything that kept the command from starting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import NoReturn

from runtime import bundle, envfile, metadata
from runtime.environment import collect_overrides, forwarded_host
from runtime.errors import ContainerError, report, set_quiet, warn
from runtime.launch import env_options, exec_container, run_container
from runtime.nvidia import NvidiaSources
from runtime.request import Action, Request
from siffs.cli import encrypted, output, trust
from siffs.cli.common import CommandError, exit_code_for, print_json
from siffs.cli.exitcodes import ExitCode


def _quiet_runtime() -> None:
    set_quiet(output.verbosity() == output.Verbosity.QUIET)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for action, summary in (
        ("run", "run the image's runscript"),
        ("exec", "run a command in the container"),
        ("shell", "start an interactive shell in the container"),
        ("test", "run the image's test script"),
    ):
        p = sub.add_parser(action, help=summary + " (as apptainer " + action + ")")
        p.add_argument("image", help="SIF file or directory tree")
        if action == "exec":
            p.add_argument("command", help="program to run (looked up on the container's PATH)")
        p.add_argument("args", nargs=argparse.REMAINDER, help="arguments")
        _container_options(p)
        trust.add_arguments(p)
        encrypted.add_arguments(p)
        p.set_defaults(func=cmd_action, action=action)

    p = sub.add_parser("inspect", help="show an image's labels, runscript, environment or definition file")
    p.add_argument("image", help="SIF file or directory tree")
    what = p.add_mutually_exclusive_group()
    for flag in ("labels", "runscript", "test", "environment", "deffile"):
        what.add_argument(f"--{flag}", dest="what", action="store_const", const=flag, help=f"show the {flag}")
    p.add_argument("--json", action="store_true", help="print as Apptainer's 'inspect --json'")
    trust.add_arguments(p)
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_inspect, what="labels")

    p = sub.add_parser("bundle", help="write an OCI runtime bundle that rootless runc runs")
    p.add_argument("image", help="SIF file (mounted at BUNDLE_DIR/rootfs, verified) or directory tree")
    p.add_argument("bundle_dir", help="bundle directory (config.json is written there)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the runscript")
    _environment_options(p)
    p.add_argument(
        "-B", "--bind", action="append", default=[], metavar="SRC[:DST[:ro|rw]]", help="bind mount"
    )
    p.add_argument("--init", action="store_true", help="start the image's tini/dumb-init as PID 1 (signals)")
    trust.add_arguments(p)
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_bundle)


def _environment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-e", "--cleanenv", action="store_true", help="keep only TERM, proxies and LANG=C from the host"
    )
    p.add_argument("--env", action="append", default=[], metavar="K=V[,K=V]", help="set variables")
    p.add_argument(
        "--env-file", action="append", default=[], metavar="FILE", help="set variables from a file"
    )
    p.add_argument("--no-eval", action="store_true", help="take --env and *ENV_ values literally")


def _container_options(p: argparse.ArgumentParser) -> None:
    _environment_options(p)
    p.add_argument(
        "-B", "--bind", action="append", default=[], metavar="SRC[:DST[:ro|rw]]", help="bind mount"
    )
    p.add_argument("-c", "--contain", action="store_true", help="fresh /tmp, home and /dev; no cwd bind")
    p.add_argument("-C", "--containall", action="store_true", help="--contain, --cleanenv and new PID/IPC ns")
    p.add_argument("-p", "--pid", action="store_true", help="new PID namespace")
    p.add_argument("--pwd", help="working directory inside the container")
    p.add_argument("-H", "--home", metavar="SRC[:DST]", help="home directory to bind")
    p.add_argument("--no-home", action="store_true", help="do not bind the home directory")
    p.add_argument("--no-mount", action="append", default=[], metavar="NAME", help="skip a default mount")
    p.add_argument(
        "--no-env", action="append", default=[], metavar="NAME", help="do not forward a host variable"
    )
    p.add_argument("-s", "--shell", help="shell for 'siffs shell'")
    p.add_argument("--nv", action="store_true", help="bind the host's NVIDIA driver")
    p.add_argument("--nvliblist", metavar="FILE", help="library list for --nv instead of siffs' own")


def _request(args: argparse.Namespace, action: Action) -> Request:
    sources = None
    if args.nv:
        sources = NvidiaSources(device_dir=os.environ.get("SIFFS_NV_DEVICE_DIR", "/dev"))
        if args.nvliblist:
            sources = replace(sources, liblist=envfile.read(args.nvliblist, "--nvliblist"))
    command = [args.command] if action == "exec" else []
    return Request(
        root=args.image,
        action=action,
        args=command + _strip_separator(args.args),
        container=os.path.abspath(args.image),
        binds=args.bind,
        home=args.home,
        no_home=args.no_home,
        contain=args.contain,
        containall=args.containall,
        pid=args.pid,
        cleanenv=args.cleanenv,
        env=args.env,
        env_files=args.env_file,
        no_env=[n for item in args.no_env for n in item.split(",")],
        no_eval=args.no_eval,
        pwd=args.pwd,
        shell=args.shell,
        nv=args.nv,
        nv_sources=sources,
        no_mount=[n for item in args.no_mount for n in item.split(",")],
    )


def _strip_separator(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args


def _mounted(image: str, args: argparse.Namespace) -> contextlib.AbstractContextManager[str]:
    # Imported here: a directory target never needs the FUSE daemon (pyfuse3, trio).
    from siffs.cli.mount import mounted_image  # noqa: PLC0415

    return mounted_image(image, args)


@contextlib.contextmanager
def _tree(args: argparse.Namespace) -> Iterator[str]:
    """The directory to run: the target itself, or the mount point of a SIF for the block's duration."""
    if not os.path.isfile(args.image):
        yield args.image
        return
    with _mounted(args.image, args) as mount_point:
        yield mount_point


def cmd_action(args: argparse.Namespace) -> NoReturn:
    _quiet_runtime()
    encrypted.KeyChoice.from_args(args)  # takes the passphrase out of the container's environment
    try:
        request = _request(args, args.action)
        if not os.path.isfile(args.image):
            exec_container(request)  # a directory, or a missing target the runtime reports
        with _mounted(args.image, args) as mount_point:
            status = run_container(replace(request, root=mount_point))
    except ContainerError as exc:
        report(exc)
        sys.exit(exc.exit_status)
    except CommandError:
        raise
    except Exception as exc:  # image, verification and mount errors: Apptainer's single FATAL line
        if exit_code_for(exc) is None:
            raise
        print(f"FATAL: {args.image}: {exc}", file=sys.stderr)
        sys.exit(ExitCode.CONTAINER_FAILED)
    sys.exit(status)


def cmd_inspect(args: argparse.Namespace) -> None:
    with _tree(args) as root:
        if not os.path.isdir(root):
            raise CommandError(f"{args.image} does not exist", ExitCode.IO)
        value = _inspect(root, args.what)
    if args.json:
        print_json({"data": {"attributes": {args.what: value}}, "type": "container"})
    elif isinstance(value, dict):
        sys.stdout.write("".join(f"{k}: {v}\n" for k, v in value.items()))
    else:
        sys.stdout.write(value)


def _inspect(root: str, what: str) -> dict[str, str] | str:
    if what == "labels":
        return metadata.labels(root)
    if what == "environment":
        return "".join(f"=== {path} ===\n{text}\n" for path, text in metadata.environment(root))
    path = {"runscript": metadata.RUNSCRIPT, "test": metadata.TEST, "deffile": metadata.DEFFILE}[what]
    text = metadata.read_text(root, path)
    if text is None:
        raise CommandError(f"the image has no {what} ({path})", ExitCode.NOT_FOUND)
    return text


def cmd_bundle(args: argparse.Namespace) -> None:
    _quiet_runtime()
    encrypted.KeyChoice.from_args(args)  # takes the passphrase out of the environment in config.json
    tree = args.image
    if os.path.isfile(args.image):
        # A bundle outlives this command: the image stays mounted at BUNDLE_DIR/rootfs.
        from siffs.cli.mount import mount_image  # noqa: PLC0415 - see _mounted

        tree = os.path.join(args.bundle_dir, "rootfs")
        os.makedirs(tree, exist_ok=True)
        mount_image(args.image, tree, args)
        print(f"mounted {args.image} at {tree}; 'siffs umount {tree}' when the bundle is no longer needed")
    elif not os.path.isdir(args.image):
        raise CommandError(f"{args.image} does not exist", ExitCode.IO)
    environ = dict(os.environ)
    try:
        files = [envfile.load(path, environ) for path in args.env_file]
        overrides = collect_overrides(environ, files, env_options(args.env))
        document = bundle.config(
            tree,
            _strip_separator(args.args),
            overrides,
            forwarded_host(environ, cleanenv=True),
            binds=args.bind,
            use_init=args.init,
            evaluate=not args.no_eval,
        )
    except ContainerError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None
    for warning in overrides.warnings:
        warn(warning)
    path = bundle.write(args.bundle_dir, document)
    print(f'wrote {path}; run it with: runc --root "$XDG_RUNTIME_DIR/runc" run -b {args.bundle_dir} NAME')
