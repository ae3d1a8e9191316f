"""``siffs instance start|list|stop``: containers that run in the background, as Apptainer's instances.

``start`` forks a supervisor that leaves the caller's session, mounts the image (a SIF) for as
long as the instance lives, starts the container (its ``startscript``, in a PID namespace whose
init stays until ``stop``) and records it; the caller returns once the record is written.
``siffs exec|run|shell instance://NAME`` joins its namespaces (``siffs.cli.run``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import NoReturn

from runtime import instances
from runtime.errors import ContainerError, InvalidRequest, report, set_quiet
from runtime.launch import start_container
from runtime.request import Action, Request
from runtime.supervise import wait_for
from siffs.cli import encrypted, output, runoptions, trust
from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.crypt.errors import CryptError

PREFIX = "instance://"


def state_dir() -> str:
    """Where instance records live: beside siffs' mount records (XDG runtime dir, else state dir)."""
    from siffs.fs.registry import registry_dir  # noqa: PLC0415 - only instance commands need it

    return str(registry_dir().parent / "instances")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("instance", help="run containers in the background (as apptainer instance)")
    what = p.add_subparsers(dest="instance_command", metavar="ACTION", required=True)

    start = what.add_parser(
        "start",
        help="start an instance (its startscript)",
        usage="siffs instance start [options] IMAGE NAME [ARGS...]",
    )
    start.add_argument("image", help="SIF file or directory tree")
    start.add_argument("name", help="instance name")
    start.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the startscript")
    runoptions.container_options(start)
    trust.add_arguments(start)
    encrypted.add_arguments(start)
    start.set_defaults(func=cmd_start)

    listing = what.add_parser("list", help="list running instances")
    listing.add_argument("name", nargs="?", help="only this instance")
    listing.add_argument("--json", action="store_true", help="as Apptainer's 'instance list --json'")
    listing.set_defaults(func=cmd_list)

    stats = what.add_parser("stats", help="resource use of an instance (needs a cgroup: refused here)")
    stats.add_argument("name", help="instance name")
    stats.add_argument("-j", "--json", action="store_true", help="as Apptainer's 'instance stats --json'")
    stats.add_argument("--no-stream", action="store_true", help="print once")
    stats.add_argument("-u", "--user", help="another user's instance (root only in Apptainer)")
    stats.set_defaults(func=cmd_stats)

    stop = what.add_parser("stop", help="stop instances")
    stop.add_argument("name", nargs="?", help="instance name")
    stop.add_argument("-a", "--all", action="store_true", help="stop every instance")
    stop.add_argument("-s", "--signal", default="TERM", help="signal to send first (default TERM)")
    stop.add_argument("-t", "--timeout", type=float, default=10, help="seconds before SIGKILL (default 10)")
    stop.add_argument("-F", "--force", action="store_true", help="SIGKILL at once")
    stop.set_defaults(func=cmd_stop)


def cmd_start(args: argparse.Namespace) -> None:
    set_quiet(output.verbosity() == output.Verbosity.QUIET)
    directory = state_dir()
    _ask_key_now(args)
    try:
        refused = runoptions.refusal(args)
        if refused:
            raise InvalidRequest(refused)
        instances.check_name(args.name)
        if any(i.name == args.name for i in instances.live(directory)):
            raise InvalidRequest(f"instance {args.name} already exists (siffs instance stop {args.name})")
        request = runoptions.request(args, "start")._replace(pid=True, no_pid=False)
    except ContainerError as exc:
        raise CommandError(str(exc), ExitCode.CONTAINER_FAILED) from None
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        os.close(ready_r)
        _supervise(args, request, directory, ready_w)
    os.close(ready_w)
    # One read: the container's processes inherit the write end, so no end of file comes.
    answer = os.read(ready_r, 65536).decode("utf-8", "replace")
    os.close(ready_r)
    if answer != "ok":
        raise CommandError(
            answer or "the instance's supervisor ended unexpectedly", ExitCode.CONTAINER_FAILED
        )
    if output.verbosity() != output.Verbosity.QUIET:
        print(f"INFO:    instance {args.name} started successfully", file=sys.stderr)


def _ask_key_now(args: argparse.Namespace) -> None:
    """Take the key options out of the environment, and ask for a passphrase the image needs now:
    the supervisor reads no terminal (its standard input is /dev/null)."""
    from siffs.open.decrypt import is_encrypted  # noqa: PLC0415
    from siffs.sif import Image, SifError  # noqa: PLC0415

    choice = encrypted.KeyChoice.from_args(args)
    if not choice.ask or choice.env_passphrase is not None or choice.pem_path is not None:
        return
    with contextlib.suppress(SifError, OSError), Image.open(args.image) as image:
        if any(d.is_primary_partition and is_encrypted(d) for d in image.descriptors):
            args.key_choice = choice._replace(env_passphrase=choice.material().passphrase)


def _supervise(args: argparse.Namespace, request: Request, directory: str, ready: int) -> NoReturn:
    """The instance's supervisor: its own session, the image mounted, the container waited for."""
    from siffs.cli.run import with_images  # noqa: PLC0415 - the FUSE stack only where images are mounted

    status = 255
    log = os.path.join(directory, f"{args.name}.log")
    try:
        os.setsid()
        # From here the caller's terminal or pipes are not ours: whoever reads them until their
        # end (a shell's $(...), a test) would wait for the instance to end.
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        for fd, target in ((0, null), (1, out), (2, out)):
            os.dup2(target, fd)
        with contextlib.ExitStack() as stack:  # a SIF, data images, squashfs overlays: as for run
            request = with_images(stack, request, args)
            root = request.root
            holder = start_container(request, wait_built=True)  # joinable once it answers
            options: dict[str, object] = {"contain": request.contain, "containall": request.containall}
            options |= {"home": request.home, "no_home": request.no_home, "fakeroot": request.fakeroot}
            record = instances.Instance(
                args.name, holder, os.getpid(), os.path.abspath(args.image), root, log, options
            )
            instances.write(directory, record)
            os.write(ready, b"ok")
            os.close(ready)
            status = wait_for(holder)
            instances.remove(directory, args.name)
    except BaseException as exc:  # told to the starter, who prints it
        known = (ContainerError, CommandError, OSError, CryptError)
        message = str(exc) if isinstance(exc, known) else repr(exc)
        with contextlib.suppress(OSError):
            os.write(ready, message.encode())
    finally:
        os._exit(status)


def cmd_list(args: argparse.Namespace) -> None:
    found = [i for i in instances.live(state_dir()) if args.name in (None, i.name)]
    if args.json:
        entries = [
            {
                "instance": i.name,
                "pid": i.pid,
                "img": i.image,
                "ip": "",  # as Apptainer unprivileged: no network of its own beyond --network none's loopback
                "logErrPath": i.log,
                "logOutPath": i.log,
            }
            for i in found
        ]
        print(json.dumps({"instances": entries}, indent="\t"))
        return
    print(f"{'INSTANCE NAME':<16} {'PID':<8} {'IP':<15} IMAGE")
    for i in found:
        print(f"{i.name:<16} {i.pid:<8} {'':<15} {i.image}")


def cmd_stats(args: argparse.Namespace) -> None:
    """Apptainer reads an instance's own cgroup; a siffs instance has none (it would need root or a
    cgroup delegated by systemd), so the figures would be the whole session's: refused, saying so."""
    try:
        instances.find(state_dir(), args.name)
    except ContainerError as exc:
        raise CommandError(str(exc), ExitCode.NOT_FOUND) from None
    raise CommandError(
        f"instance stats: {args.name} has no cgroup of its own (siffs starts instances without root or "
        "cgroup delegation); start it under 'systemd-run --user --scope' and read 'systemd-cgtop' instead",
        ExitCode.UNSUPPORTED,
    )


def cmd_stop(args: argparse.Namespace) -> None:
    if args.all == (args.name is not None):
        raise CommandError("give an instance name or --all", ExitCode.USAGE)
    directory = state_dir()
    try:
        targets = instances.live(directory) if args.all else [instances.find(directory, args.name)]
        signum = _signal(args.signal)
    except ContainerError as exc:
        raise CommandError(str(exc), ExitCode.NOT_FOUND) from None
    for instance in targets:
        if output.verbosity() != output.Verbosity.QUIET:
            print(
                f"INFO:    Stopping {instance.name} instance of {instance.image} (PID={instance.pid})",
                file=sys.stderr,
            )
        _stop(instance, signal.SIGKILL if args.force else signum, args.timeout)
        instances.remove(directory, instance.name)


def _signal(name: str) -> int:
    try:
        return int(name) if name.isdigit() else int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        raise InvalidRequest(f"--signal {name}: unknown signal") from None


def _stop(instance: instances.Instance, signum: int, timeout: float) -> None:
    """Signal the instance; SIGKILL it if its supervisor (holding the image) remains after ``timeout``."""
    for pid, sig in ((instance.pid, signum), (instance.pid, signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig != signal.SIGKILL else 10)
        while instances.alive(instance.supervisor) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not instances.alive(instance.supervisor):
            return


def join(args: argparse.Namespace, action: Action) -> NoReturn:
    """``siffs exec|run|shell instance://NAME``: the command in the running instance's namespaces."""
    from runtime.launch import join_container  # noqa: PLC0415

    set_quiet(output.verbosity() == output.Verbosity.QUIET)
    try:
        instance = instances.find(state_dir(), args.image.removeprefix(PREFIX))
        request = runoptions.request(args, action)
        shared = instance.options
        home = shared.get("home")
        request = request._replace(
            root=instance.root,
            container=instance.image,
            contain=bool(shared.get("contain")),
            containall=bool(shared.get("containall")),
            no_home=bool(shared.get("no_home")),
            fakeroot=bool(shared.get("fakeroot")),
            home=home if isinstance(home, str) else None,
        )
        join_container(request, instance.pid)
    except ContainerError as exc:
        report(exc)
        sys.exit(exc.exit_status)
