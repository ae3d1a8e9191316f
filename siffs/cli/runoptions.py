"""The options of ``siffs run|exec|shell|test``: Apptainer's, grouped, turned into a ``runtime.Request``.

Every option ``apptainer run`` has is known here, so that a job script written for Apptainer never
fails with "unrecognized arguments": what siffs does is implemented; what cannot work for an
unprivileged user (cgroup limits, capabilities, real networks) or is not implemented yet is
accepted by the parser and then refused with one line saying why (``refusal``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from runtime.errors import InvalidRequest
from runtime.request import Action, NvidiaSources, Request

_ROOT_ONLY = "needs root or a setuid installation; siffs runs unprivileged"
_CGROUPS = (
    "cgroup limits need root or a cgroup delegated to you; run siffs in 'systemd-run --user --scope -p ...'"
)
_NOT_YET = "is not implemented in siffs yet"
#: Apptainer options siffs refuses: (flags, metavar or None for a switch, why).
REFUSED: tuple[tuple[tuple[str, ...], str | None, str], ...] = (
    (("--security",), "OPTION", "a security profile (SELinux, AppArmor, seccomp) " + _ROOT_ONLY),
    (("--apply-cgroups",), "FILE", _CGROUPS),
    (("--blkio-weight",), "N", _CGROUPS),
    (("--blkio-weight-device",), "DEV:N", _CGROUPS),
    (("--cpu-shares",), "N", _CGROUPS),
    (("--cpus",), "N", _CGROUPS),
    (("--cpuset-cpus",), "LIST", _CGROUPS),
    (("--cpuset-mems",), "LIST", _CGROUPS),
    (("--memory",), "SIZE", _CGROUPS),
    (("--memory-reservation",), "SIZE", _CGROUPS),
    (("--memory-swap",), "SIZE", _CGROUPS),
    (("--oom-kill-disable",), None, _CGROUPS),
    (("--pids-limit",), "N", _CGROUPS),
    (("--network-args",), "ARGS", "network plugins (CNI) " + _ROOT_ONLY + " (--network none needs none)"),
    (("--netns-path",), "PATH", "joining a network namespace " + _ROOT_ONLY),
    (("--add-caps",), "CAPS", "adding capabilities " + _ROOT_ONLY),
    (("--keep-privs",), None, "keeping root's privileges " + _ROOT_ONLY),
    (("--allow-setuid",), None, "setuid programs " + _ROOT_ONLY),
    (("--boot",), None, "booting an init system " + _ROOT_ONLY),
    (("--fusemount",), "SPEC", _NOT_YET),
    (("--tmpdir",), "DIR", _NOT_YET),
    (("--sharens",), None, _NOT_YET),
    (("--compat32",), None, _NOT_YET),
    (("--nvccli",), None, _NOT_YET + " (use --nv)"),
    (("--intel-hpu",), None, _NOT_YET),
    (("--device",), "NAME", "CDI devices " + _NOT_YET),
    (("--cdi-dirs",), "DIRS", "CDI devices " + _NOT_YET),
    (("--dmtcp-launch",), "FILE", "DMTCP checkpoints " + _NOT_YET),
    (("--dmtcp-restart",), "FILE", "DMTCP checkpoints " + _NOT_YET),
    (("--ignore-userns",), None, "siffs needs user namespaces: it has no setuid mode"),
)
#: Apptainer options that change nothing here, and why (shown in --help).
NO_OPS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-u", "--userns"), "always: siffs runs in a user namespace"),
    (("--no-privs",), "always: an unprivileged container has no privileges to drop"),
    (("--drop-caps",), "always: an unprivileged container has no capabilities"),
    (("--disable-cache",), "siffs caches nothing for run"),
    (("--unsquash",), "siffs reads the image in place"),
    (("--underlay",), "siffs adds mount points with an overlay, else refuses"),
    (("--no-nv",), "--nv is never on unless asked"),
    (("--no-rocm",), "--rocm is never on unless asked"),
    (("--containlibs",), "deprecated in Apptainer"),
    (("--runscript-timeout",), "the runscript runs until it ends"),
    (("--ignore-fakeroot-command",), "--fakeroot never uses the fakeroot command"),
)
_NO_OP_VALUES = frozenset({"--drop-caps", "--containlibs", "--runscript-timeout"})


class _Refuse(argparse.Action):
    """Remember that the user asked for an option siffs refuses; the command reports it, not the parser."""

    def __init__(self, option_strings: Sequence[str], dest: str, why: str = "", **kwargs: Any) -> None:
        self.why = why
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: object) -> None:
        if not getattr(namespace, "refused", None):
            namespace.refused = f"{self.option_strings[-1]}: {self.why}"


def refusal(args: argparse.Namespace) -> str | None:
    """The one line explaining the first refused option given, if any."""
    return getattr(args, "refused", None)


def environment_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "-e", "--cleanenv", action="store_true", help="keep only TERM, proxies and LANG=C from the host"
    )
    p.add_argument("--env", action="append", default=[], metavar="K=V[,K=V]", help="set variables")
    p.add_argument(
        "--env-file", action="append", default=[], metavar="FILE", help="set variables from a file"
    )
    p.add_argument("--no-eval", action="store_true", help="take --env and *ENV_ values literally")


def container_options(p: argparse.ArgumentParser) -> None:
    """Apptainer's action options, in groups (``siffs run --help``)."""
    env = p.add_argument_group("environment")
    environment_options(env)
    env.add_argument(
        "--no-env", action="append", default=[], metavar="NAME", help="do not forward a host variable"
    )
    env.add_argument("--no-umask", action="store_true", help="umask 0022 inside instead of the caller's")
    env.add_argument("--app", default="", metavar="NAME", help="use the SCIF app NAME (/scif/apps/NAME)")
    env.add_argument("-s", "--shell", help="shell for 'siffs shell'")
    env.add_argument("--pwd", "--cwd", dest="pwd", help="working directory inside the container")

    mounts = p.add_argument_group("binds, mounts and writable layers")
    mounts.add_argument(
        "-B", "--bind", action="append", default=[], metavar="SRC[:DST[:ro|rw]]", help="bind mount"
    )
    mounts.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="type=bind,src=S,dst=D[,ro]",
        help="bind mount, Docker's syntax",
    )
    mounts.add_argument("-H", "--home", metavar="SRC[:DST]", help="home directory to bind")
    mounts.add_argument("--no-home", action="store_true", help="do not bind the home directory")
    mounts.add_argument(
        "--no-mount", action="append", default=[], metavar="NAME", help="skip a default mount"
    )
    mounts.add_argument(
        "-S", "--scratch", action="append", default=[], metavar="DIR", help="empty writable dir at DIR"
    )
    mounts.add_argument(
        "-W",
        "--workdir",
        metavar="DIR",
        help="host dir for --scratch, and /tmp, /var/tmp, home with --contain",
    )
    mounts.add_argument(
        "-o",
        "--overlay",
        action="append",
        default=[],
        metavar="DIR[:ro]",
        help="overlay directory: writes go to DIR/upper; with :ro a read-only layer (repeatable)",
    )
    mounts.add_argument(
        "-w", "--writable", action="store_true", help="a sandbox directory you own, mounted read-write"
    )
    mounts.add_argument(
        "--writable-tmpfs",
        action="store_true",
        help="writes to the image go to memory (64 MiB), gone at exit",
    )

    isolation = p.add_argument_group("isolation")
    isolation.add_argument(
        "-c", "--contain", action="store_true", help="fresh /tmp, home and /dev; no cwd bind"
    )
    isolation.add_argument(
        "-C", "--containall", action="store_true", help="--contain, --cleanenv and new PID/IPC ns"
    )
    isolation.add_argument(
        "-f",
        "--fakeroot",
        action="store_true",
        help="root inside (uid and gid 0), you outside; other ids on your /etc/subuid range if any",
    )
    isolation.add_argument(
        "--ignore-subuid", action="store_true", help="--fakeroot: root-mapped even with /etc/subuid ranges"
    )
    isolation.add_argument("-p", "--pid", action="store_true", help="new PID namespace")
    isolation.add_argument("--no-pid", action="store_true", help="no PID namespace, even with --containall")
    isolation.add_argument("-i", "--ipc", action="store_true", help="new IPC namespace")
    isolation.add_argument("--uts", action="store_true", help="new UTS namespace")
    isolation.add_argument("--hostname", metavar="NAME", help="host name inside (new UTS namespace)")
    isolation.add_argument(
        "-n", "--net", action="store_true", help="new network namespace (with --network none)"
    )
    isolation.add_argument("--network", metavar="TYPE", help="only 'none' (loopback only) works unprivileged")
    isolation.add_argument(
        "--dns", action="append", default=[], metavar="IP[,IP]", help="name servers for /etc/resolv.conf"
    )
    isolation.add_argument(
        "--no-init", action="store_true", help="no init process as PID 1 of a PID namespace"
    )
    isolation.add_argument(
        "--compat",
        action="store_true",
        help="as Apptainer: --containall --writable-tmpfs --no-init --no-umask --no-eval",
    )

    gpu = p.add_argument_group("GPUs")
    gpu.add_argument("--nv", action="store_true", help="bind the host's NVIDIA driver")
    gpu.add_argument("--nvliblist", metavar="FILE", help="library list for --nv instead of siffs' own")
    gpu.add_argument(
        "--rocm", action="store_true", help="bind the host's AMD ROCm driver (/dev/kfd, /dev/dri)"
    )

    same = p.add_argument_group("accepted, change nothing in siffs")
    for flags, why in NO_OPS:
        if flags[-1] in _NO_OP_VALUES:
            same.add_argument(*flags, dest=_dest("ignored", flags), metavar="VALUE", help=why)
        else:
            same.add_argument(*flags, dest=_dest("ignored", flags), action="store_true", help=why)

    refused = p.add_argument_group("refused: cannot work unprivileged, or not implemented yet")
    for flags, metavar, why in REFUSED:
        nargs = 0 if metavar is None else None
        refused.add_argument(
            *flags,
            dest=_dest("refused", flags),
            action=_Refuse,
            why=why,
            nargs=nargs,
            metavar=metavar,
            help=why,
        )


def _dest(kind: str, flags: tuple[str, ...]) -> str:
    return f"{kind}_{flags[-1][2:].replace('-', '_')}"


def _split(items: list[str]) -> list[str]:
    return [n for item in items for n in item.split(",")]


def request(args: argparse.Namespace, action: Action) -> Request:
    """The runtime's request for ``args``; ``InvalidRequest`` for a network siffs cannot make."""
    sources = None
    if args.nv:
        sources = NvidiaSources(device_dir=os.environ.get("SIFFS_NV_DEVICE_DIR", "/dev"))
        if args.nvliblist:
            from runtime import envfile  # noqa: PLC0415 - only here: siffs.cli.run's docstring

            sources = sources._replace(liblist=envfile.read(args.nvliblist, "--nvliblist"))
    rocm_sources = NvidiaSources(device_dir=os.environ.get("SIFFS_ROCM_DEVICE_DIR", "/dev"))
    if args.network not in (None, "none"):
        raise InvalidRequest(
            f"--network {args.network}: {_ROOT_ONLY} (only --network none works unprivileged)"
        )
    if args.net and args.network is None:
        raise InvalidRequest(f"--net: Apptainer's default network (bridge) {_ROOT_ONLY}; add --network none")
    command = [args.command] if action == "exec" else []
    result = Request(
        root=args.image,
        action=action,
        args=command + strip_separator(args.args),
        container=os.path.abspath(args.image),
        binds=args.bind,
        mounts=args.mount,
        home=args.home,
        no_home=args.no_home,
        contain=args.contain,
        containall=args.containall,
        pid=args.pid,
        no_pid=args.no_pid,
        ipc=args.ipc,
        uts=args.uts,
        hostname=args.hostname,
        net=args.net or args.network == "none",
        no_init=args.no_init,
        no_umask=args.no_umask,
        cleanenv=args.cleanenv,
        env=args.env,
        env_files=args.env_file,
        no_env=_split(args.no_env),
        no_eval=args.no_eval,
        pwd=args.pwd,
        shell=args.shell,
        nv=args.nv,
        nv_sources=sources,
        rocm=args.rocm,
        rocm_sources=rocm_sources,
        no_mount=_split(args.no_mount),
        app=args.app,
        workdir=args.workdir,
        scratch=args.scratch,
        writable_tmpfs=args.writable_tmpfs,
        overlays=args.overlay,
        fakeroot=args.fakeroot,
        ignore_subuid=args.ignore_subuid,
        dns=args.dns,
        writable=args.writable,
    )
    if args.compat:  # Apptainer's OCI/Docker-like defaults, without the uts/user/net namespaces
        result = result._replace(containall=True, writable_tmpfs=True, no_eval=True)
        result = result._replace(no_init=True, no_umask=True)
    return result


def strip_separator(args: list[str]) -> list[str]:
    """The command's arguments without the ``--`` that may separate them from siffs' options."""
    return args[1:] if args[:1] == ["--"] else args
