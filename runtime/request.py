"""What the caller asks the runtime to do: one tree, one action, Apptainer's options."""

# No ``from __future__ import annotations`` here: typing.NamedTuple compiles a string annotation
# (ForwardRef) for each field, ~15 us each, 50 fields on every start; these annotations are objects.
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from runtime.elf import Target

Action = Literal["run", "exec", "shell", "test", "start"]
PERSISTENCED_SOCKET = "/var/run/nvidia-persistenced/socket"


class NvidiaSources(NamedTuple):
    """Where ``--nv``/``--rocm`` look for the driver (``runtime.nvidia``); the defaults are the
    real host's (``liblist`` empty: the vendor's; ``path`` None: ``$PATH`` when searched). Defined
    here, not with the search, so that building a request does not import the search (``siffs run``
    imports it after the mount)."""

    liblist: str = ""
    path: str | None = None
    device_dir: str = "/dev"
    persistenced_socket: str = PERSISTENCED_SOCKET
    target: "Target | None" = None


class OverlayImage(NamedTuple):
    """An ext3 overlay filesystem in a file (``--overlay FILE``) or in a SIF's overlay partition.

    Its ``upper`` directory is a layer; ``writable``, its ``upper``/``work`` take the writes.
    ``size`` bounds the filesystem (the partition's size); 0 for a whole file.
    """

    path: str
    offset: int = 0
    size: int = 0
    writable: bool = False


class Request(NamedTuple):
    """A container to start. ``args`` holds the command and its arguments for ``exec``.

    This module's records are named tuples, not dataclasses: ``siffs run`` defines them before
    its mount, and defining a dataclass compiles its methods (~0.6 ms each, and ``dataclasses``
    imports ``inspect``). A request is changed by copying it (``_replace``); its sequences default
    to empty tuples, so no two requests share a mutable default.
    """

    root: str
    action: Action
    args: Sequence[str] = ()
    #: The image as the user named it (``*_CONTAINER``); the tree itself if empty.
    container: str = ""
    binds: Sequence[str] = ()
    home: str | None = None
    no_home: bool = False
    contain: bool = False
    containall: bool = False
    pid: bool = False
    cleanenv: bool = False
    env: Sequence[str] = ()
    env_files: Sequence[str] = ()
    no_env: Sequence[str] = ()
    no_eval: bool = False
    pwd: str | None = None
    shell: str | None = None
    nv: bool = False
    nv_sources: NvidiaSources | None = None
    rocm: bool = False
    rocm_sources: NvidiaSources | None = None
    no_mount: Sequence[str] = ()
    #: The SCIF app (``--app``): its environment, runscript and test (``/scif/apps/NAME``).
    app: str = ""
    hostname: str | None = None
    uts: bool = False
    ipc: bool = False
    #: ``--net``: a network namespace with loopback only (``--network none``).
    net: bool = False
    no_init: bool = False
    no_umask: bool = False
    writable_tmpfs: bool = False
    #: ``--overlay DIR|EXT3FILE[:ro]`` in command-line order (a later one lies above an earlier one).
    overlays: Sequence[str] = ()
    #: The image's own overlay partitions, lowest first, below the ``--overlay`` layers.
    image_overlays: Sequence[OverlayImage] = ()
    #: ``--workdir``: holds ``/tmp``, ``/var/tmp`` and home with ``--contain``, and the scratch dirs.
    workdir: str | None = None
    #: ``--scratch`` destinations: empty writable dirs (in the workdir, else in memory).
    scratch: Sequence[str] = ()
    no_pid: bool = False
    #: ``--dns``: name servers written as the container's ``/etc/resolv.conf`` instead of the host's.
    dns: Sequence[str] = ()
    #: ``--writable``: the tree (a directory the user can write) is mounted read-write.
    writable: bool = False
    #: ``--fakeroot``: uid and gid 0 inside, mapped to the caller (root-mapped namespace).
    fakeroot: bool = False
    #: ``--ignore-subuid``: the root-mapped namespace even when ``/etc/subuid`` lists the caller.
    ignore_subuid: bool = False
    #: ``--mount`` specifications (``type=bind,src=...,dst=...[,ro]``), beside ``binds``.
    mounts: Sequence[str] = ()
    #: The caller's environment: siffs never changes its own, so ``os.environ`` itself by default.
    environ: Mapping[str, str] = os.environ

    @property
    def contained(self) -> bool:
        return self.contain or self.containall

    @property
    def clean(self) -> bool:
        return self.cleanenv or self.containall

    @property
    def new_pid(self) -> bool:
        return (self.pid or self.containall) and not self.no_pid

    @property
    def new_ipc(self) -> bool:
        return self.ipc or self.containall

    @property
    def new_uts(self) -> bool:
        return self.uts or self.hostname is not None
