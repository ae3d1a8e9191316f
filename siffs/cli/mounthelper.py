"""mount(8) and /etc/fstab: ``mount -t fuse.siffs IMAGE DIR -o OPTIONS`` becomes ``siffs mount``.

Two routes end here, both as ``siffs SOURCE MOUNTPOINT [flags] [-o OPTIONS]`` (which
``siffs.cli.main.is_mount_call`` tells from a command):

* mount(8) runs ``/sbin/mount.fuse.siffs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t fuse.siffs]``,
  siffs' own entry point installed under that name (``siffs setup mount-helper`` links it);
* where that helper is not installed, fuse3's ``mount.fuse3`` takes type ``fuse.siffs`` (or a
  source written ``siffs#/path/image.sif`` with type ``fuse``) and runs ``siffs SOURCE
  MOUNTPOINT -o OPTIONS`` itself, after dropping the options it knows (``user``, ``noauto``,
  ``_netdev``, ...) and adding ``dev,suid``.

mount(8)'s generic options concern mount(8), systemd or the kernel, not siffs: they are accepted
and dropped. siffs' own ``-o`` options pass through. What the command line says with ``--key``,
``--allow-unsigned`` and ``--partition``/``--all`` is said in fstab with ``key=FILE[:FILE...]``
(also repeated), ``allow_unsigned`` and ``partition=ID|all``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from siffs.cli import mount, output
from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode

#: Generic options of mount(8) (and mount.fuse3's additions) that siffs accepts and drops.
#: ``suid`` and ``dev`` are among them: siffs mounts are always nosuid,nodev (libfuse's default,
#: kept on purpose) so that a setuid file or device node in an image never gains anything,
#: whoever mounts it; mount.fuse3 adds ``dev,suid`` to every command line, so they cannot be refused.
GENERIC = frozenset(
    {
        "defaults", "ro", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail",
        "_netdev", "exec", "suid", "nosuid", "dev", "nodev", "sync", "async", "dirsync", "atime",
        "noatime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime",
        "nolazytime", "diratime", "nodiratime", "loud", "silent",
    }
)  # fmt: skip
#: Prefixes of generic options: systemd's and other programs' ``x-*``, comments, and the
#: ``user=NAME`` that mount(8) records for a user mount.
GENERIC_PREFIXES = ("x-", "comment=", "user=")
#: siffs' own ``-o`` options, passed to ``siffs mount -o`` as they are.
OWN = mount.PASSTHROUGH | mount.OWN
#: fstab spellings of ``siffs mount``'s trust and partition flags.
FSTAB_ONLY = ("key=FILE[:FILE...]", "allow_unsigned", "partition=ID|all")


def _helper_parser() -> argparse.ArgumentParser:
    """The arguments mount(8) and mount.fuse3 give a helper after SOURCE and MOUNTPOINT."""
    p = argparse.ArgumentParser(prog="mount.fuse.siffs", add_help=False, exit_on_error=False)
    p.add_argument("-o", dest="options", action="append", default=[])
    p.add_argument("-t", dest="type")
    p.add_argument("-s", dest="sloppy", action="store_true")
    p.add_argument("-f", dest="fake", action="store_true")
    p.add_argument("-n", dest="no_mtab", action="store_true")
    p.add_argument("-v", dest="verbose", action="store_true")
    p.add_argument("-N", dest="namespace")
    return p


def siffs_mount_argv(argv: Sequence[str]) -> list[str] | None:
    """The ``siffs`` arguments for a mount helper call, or None for ``mount -f`` (pretend only).

    Raises ``CommandError`` (usage) for what siffs cannot do: an unknown option (unless ``-s``),
    mount.fuse3's ``setuid=``/``drop_privileges``, another mount namespace. ``rw`` gets a warning.
    """
    source, mount_point, *rest = argv
    try:
        flags, unknown = _helper_parser().parse_known_args(rest)
    except argparse.ArgumentError as exc:
        raise CommandError(f"mount helper: {exc}", ExitCode.USAGE) from exc
    if unknown:
        raise CommandError(f"mount helper: unexpected arguments: {' '.join(unknown)}", ExitCode.USAGE)
    if flags.namespace is not None:
        raise CommandError("mount helper: -N (another mount namespace) is not supported", ExitCode.USAGE)
    fuse_options: list[str] = []
    extra: list[str] = []
    for option in (o for group in flags.options for o in group.split(",") if o):
        key, _, value = option.partition("=")
        if option in GENERIC or option.startswith(GENERIC_PREFIXES):
            continue
        if option == "rw":
            # mount(8) says rw whenever the line does not say ro, so it cannot be refused; as for
            # a write-protected block device, the mount is made read-only, and that is said.
            output.warn("siffs mounts are read-only: mounting read-only (say 'ro' to silence this)")
            continue
        if key in OWN:
            fuse_options.append(option)
        elif key == "key" and value:
            extra += [arg for path in value.split(":") if path for arg in ("--key", path)]
        elif option == "allow_unsigned":
            extra.append("--allow-unsigned")
        elif key == "partition" and value:
            extra += ["--all"] if value == "all" else ["--partition", value]
        elif key in ("setuid", "drop_privileges"):
            raise CommandError(
                f"mount option {key} is mount.fuse3's: use type 'fuse' with source 'siffs#IMAGE' "
                "so that mount.fuse3 handles it",
                ExitCode.USAGE,
            )
        elif flags.sloppy:
            output.warn(f"ignoring unknown mount option {option!r} (mount -s)")
        else:
            known = ", ".join([*sorted(OWN), *FSTAB_ONLY])
            raise CommandError(
                f"unknown mount option {option!r} (siffs knows: {known}; and mount(8)'s generic options)",
                ExitCode.USAGE,
            )
    if flags.fake:
        return None
    verbose = ["-v"] if flags.verbose else []
    options = ["-o", ",".join(fuse_options)] if fuse_options else []
    return [*verbose, "mount", source, mount_point, *options, *extra]
