"""What to mount where, decided on the host before any namespace exists (runtime.md §4, §5 step 1).

Planning is separate from mounting so that every cheap failure (a missing bind source, a file
bound onto a directory, a destination that cannot exist) is reported before the kernel is
asked for anything, and so that the plan can be tested without privileges. Destinations are
resolved inside the image (``paths.resolve_in``); those the image lacks become placeholders of
the staging layer (§4.5), unless they lie inside a tmpfs the runtime mounts itself, where they
are simply created.
"""

from __future__ import annotations

import csv
import ipaddress
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple

from runtime import fuselayers
from runtime.environment import LIBS_DIR
from runtime.errors import InvalidRequest
from runtime.passwd import Identity, group_text, passwd_text
from runtime.paths import host_path, normalise, real_path, resolve_in
from runtime.request import OverlayImage, Request

Kind = Literal["dir", "file"]
#: Host device nodes of the minimal ``/dev`` (§4.3).
MINIMAL_DEVICES = ("null", "zero", "random", "urandom", "tty")
NO_MOUNT_NAMES = frozenset({"proc", "sys", "dev", "devpts", "home", "tmp", "hostfs", "cwd", "bind-paths"})


class Bind(NamedTuple):
    """A host path bound at ``dest``; ``secure`` adds nosuid,nodev; ``unless_visible`` is the cwd rule."""

    source: str
    dest: str
    readonly: bool = False
    secure: bool = True
    unless_visible: bool = False


class Tmpfs(NamedTuple):
    """An empty in-memory filesystem on ``dest`` (``/tmp`` with ``--contain``...)."""

    dest: str
    mode: int


class Proc(NamedTuple):
    """A fresh procfs, possible only in a new PID namespace."""

    dest: str


class MinimalDev(NamedTuple):
    """``--contain``'s own /dev: host nodes bound onto placeholders of a tmpfs (mknod is EPERM)."""

    dest: str
    devices: tuple[str, ...]
    console: str | None
    devpts: bool


class Generated(NamedTuple):
    """A file the runtime writes (passwd, group), bound read-only."""

    dest: str
    content: str


class LibraryDir(NamedTuple):
    """``--nv`` libraries bound onto placeholders of a staging dir, itself bound at ``dest``."""

    dest: str
    libraries: tuple[tuple[str, str], ...]


Step = Bind | Tmpfs | Proc | MinimalDev | Generated | LibraryDir


class NvidiaFiles:
    """What ``--nv``/``--rocm`` bind: libraries (cache path, name in the libs dir), programs, data
    files, devices. Found by ``runtime.nvidia``, which a container without them never imports.

    This module's records are plain classes filled in place: a dataclass would compile its methods
    on every start, and import ``dataclasses`` (``inspect``, ``ast``), while the daemon starts."""

    __slots__ = ("data_files", "devices", "libraries", "programs", "warnings")

    def __init__(self) -> None:
        self.libraries: list[tuple[str, str]] = []
        self.programs: list[tuple[str, str]] = []
        self.data_files: list[str] = []
        self.devices: list[str] = []
        self.warnings: list[str] = []


class Layout:
    """The mounts in order, the staging layer's placeholders and what the environment needs to know."""

    __slots__ = (
        "_unplaceable",
        "bind_destinations",
        "created",
        "home",
        "overlay_lowers",
        "overlay_upper",
        "placeholders",
        "root",
        "steps",
        "warnings",
        "writable",
        "writable_tmpfs",
    )

    def __init__(self, root: str, home: str, *, writable_tmpfs: bool = False, writable: bool = False) -> None:
        self.root = root
        self.home = home
        #: ``--writable-tmpfs``: the root is an overlay whose writes go to a tmpfs gone at exit.
        self.writable_tmpfs = writable_tmpfs
        #: ``--writable``: the tree itself is mounted read-write (a sandbox directory).
        self.writable = writable
        #: Read-only overlay layers (host dirs, ext3 images), topmost first, above the image.
        self.overlay_lowers: list[str | OverlayImage] = []
        #: The writable overlay: (DIR/upper, DIR/work) on the host, or an ext3 image.
        self.overlay_upper: tuple[str, str] | OverlayImage | None = None
        self.steps: list[Step] = []
        self.placeholders: dict[str, Kind] = {}
        self.created: dict[str, Kind] = {}
        self.bind_destinations: list[str] = []
        self.warnings: list[str] = []
        self._unplaceable: list[str] = []

    def add(self, step: Step, kind: Kind) -> None:
        """Append ``step``, arranging for its destination to exist when it is mounted."""
        covering = next((s for s in reversed(self.steps) if _inside(step.dest, s.dest)), None)
        if covering is None:
            self._check(step.dest, host_path(self.root, step.dest), kind, self.placeholders)
        elif isinstance(covering, Bind):
            rel = os.path.relpath(step.dest, covering.dest)
            self._check(step.dest, os.path.join(covering.source, rel), kind, None)
        elif isinstance(covering, (Tmpfs, MinimalDev)):
            self.created[step.dest] = kind
        else:
            self._unplaceable.append(f"{step.dest} (inside {covering.dest})")
        self.steps.append(step)

    def _check(self, dest: str, where: str, kind: Kind, placeholders: dict[str, Kind] | None) -> None:
        if not os.path.lexists(where):
            if placeholders is None:
                self._unplaceable.append(dest)
            else:
                placeholders[dest] = kind
        elif os.path.isdir(where) != (kind == "dir"):
            what = "directory" if kind == "dir" else "file"
            raise InvalidRequest(f"cannot mount a {what} onto {dest}: it is not a {what} in the container")

    def finish(self) -> Layout:
        if self._unplaceable:
            raise InvalidRequest(
                "bind destinations missing inside other binds (create them there): "
                + ", ".join(self._unplaceable)
            )
        return self


def _inside(path: str, parent: str) -> bool:
    return parent == "/" or path.startswith(parent.rstrip("/") + "/")


def _kind(path: str) -> Kind:
    return "dir" if os.path.isdir(path) else "file"


def parse_binds(specs: Sequence[str]) -> Iterator[tuple[str, str, bool]]:
    """``SRC[:DST[:ro|rw]]`` items of comma lists as (absolute source, destination, read-only)."""
    for spec in specs:
        for item in filter(None, spec.split(",")):
            parts = item.split(":")
            if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise InvalidRequest(f"invalid bind {item!r}: expected SRC[:DST[:ro|rw]]")
            dest = parts[1] if len(parts) > 1 and parts[1] else parts[0]
            yield _checked(item, parts[0], dest, len(parts) == 3 and parts[2] == "ro")


def parse_mounts(specs: Sequence[str]) -> Iterator[tuple[str, str, bool]]:
    """``--mount`` specifications (one per CSV line: ``type=bind,src=S,dst=D[,ro]``) as ``parse_binds``.

    Apptainer's keys: ``source|src``, ``destination|dst|target``, ``ro|readonly``, ``type=bind``.
    """
    for spec in specs:
        for record in csv.reader(spec.splitlines()):
            fields = dict(f.partition("=")[::2] for f in record)
            unknown = set(fields) - {*_MOUNT_KEYS, "type", "ro", "readonly"}
            if unknown & {"image-src", "id"}:
                raise InvalidRequest(
                    f"--mount {spec!r}: data-image mounts (image-src, id) are not supported yet"
                )
            if unknown:
                raise InvalidRequest(f"--mount {spec!r}: invalid key {sorted(unknown)[0]!r}")
            if fields.get("type", "bind") != "bind":
                raise InvalidRequest(f"--mount {spec!r}: only type=bind is supported")
            found = {
                role: next((fields[k] for k in keys if fields.get(k)), "")
                for role, keys in _MOUNT_KEYS_BY_ROLE
            }
            if not found["source"] or not found["destination"]:
                raise InvalidRequest(f"--mount {spec!r}: mounts must specify a source and a destination")
            yield _checked(
                spec, found["source"], found["destination"], "ro" in fields or "readonly" in fields
            )


_MOUNT_KEYS_BY_ROLE = (("source", ("source", "src")), ("destination", ("destination", "dst", "target")))
_MOUNT_KEYS = frozenset(k for _, keys in _MOUNT_KEYS_BY_ROLE for k in keys)


def _checked(spec: str, source: str, dest: str, readonly: bool) -> tuple[str, str, bool]:
    if not dest.startswith("/"):
        raise InvalidRequest(f"invalid bind {spec!r}: the destination must be an absolute path")
    if not os.path.exists(source):
        raise InvalidRequest(f"bind source {source} does not exist")
    return real_path(source), dest, readonly


def plan(request: Request, who: Identity, gpu: NvidiaFiles) -> Layout:
    """The mounts of §5 step 9, in its order."""
    root = request.root
    skip = set(request.no_mount)
    unknown = {name for name in skip if not name.startswith("/") and name not in NO_MOUNT_NAMES}
    if unknown:
        raise InvalidRequest(
            f"--no-mount: unknown {', '.join(sorted(unknown))} (use {', '.join(sorted(NO_MOUNT_NAMES))})"
        )

    def where(path: str) -> str:
        return resolve_in(root, path)

    def wanted(name: str, dest: str) -> bool:
        return name not in skip and dest not in skip

    home_source, home_dest = _home(request, who)
    layout = Layout(
        root=root, home=home_dest, writable_tmpfs=request.writable_tmpfs, writable=request.writable
    )
    _overlays(layout, request.overlays, request.image_overlays)
    if wanted("dev", "/dev"):
        if request.contained:
            devices = tuple(f"/dev/{d}" for d in MINIMAL_DEVICES if os.path.exists(f"/dev/{d}"))
            console = _tty()
            layout.add(
                MinimalDev(where("/dev"), devices + tuple(gpu.devices), console, "devpts" not in skip), "dir"
            )
        else:
            layout.add(Bind("/dev", where("/dev"), secure=False), "dir")
    for path in ("/etc/hosts", "/etc/localtime"):
        if wanted("", path) and os.path.exists(path) and os.path.exists(host_path(root, where(path))):
            layout.add(Bind(os.path.realpath(path), where(path), readonly=True), "file")
    if wanted("proc", "/proc"):
        layout.add(Proc(where("/proc")) if request.new_pid else Bind("/proc", where("/proc")), "dir")
    if wanted("sys", "/sys"):
        layout.add(Bind("/sys", where("/sys")), "dir")
    if home_dest != "/" and not request.no_home and wanted("home", home_dest):
        if home_source is None:
            layout.add(Tmpfs(where(home_dest), 0o755), "dir")
        else:
            layout.add(Bind(home_source, where(home_dest)), "dir")
    if wanted("tmp", "/tmp"):
        _temporary_dirs(layout, request, where)
    _scratch(layout, request, where)
    if gpu.libraries:
        layout.add(LibraryDir(where(LIBS_DIR), tuple(gpu.libraries)), "dir")
    for source, dest in gpu.programs:
        layout.add(Bind(source, where(dest), readonly=True), "file")
    for path in gpu.data_files:
        layout.add(Bind(path, where(path), readonly=True), _kind(path))
    if request.dns:
        layout.add(Generated(where("/etc/resolv.conf"), _resolv_conf(request.dns)), "file")
    elif wanted("", "/etc/resolv.conf") and os.path.exists("/etc/resolv.conf"):
        layout.add(
            Bind(os.path.realpath("/etc/resolv.conf"), where("/etc/resolv.conf"), readonly=True), "file"
        )
    if not request.fakeroot:  # root is in the image's own files
        _identity_files(layout, who, wanted)
    if request.hostname is not None:
        layout.add(Generated(where("/etc/hostname"), request.hostname + "\n"), "file")
    specs = list(request.binds)
    if "bind-paths" not in skip:
        specs += [
            request.environ[k] for k in ("SINGULARITY_BIND", "APPTAINER_BIND") if request.environ.get(k)
        ]
    user_binds = [*parse_binds(specs), *parse_mounts(request.mounts)]
    for source, dest, readonly in sorted(user_binds, key=lambda b: len(normalise(b[1]))):
        layout.bind_destinations.append(dest)
        layout.add(Bind(source, where(dest), readonly=readonly), _kind(source))
    _current_dir(layout, request, wanted)
    return layout.finish()


def _home(request: Request, who: Identity) -> tuple[str | None, str]:
    """(host source or None for an empty dir, container destination) of the home directory.

    Contained, the home is empty: in memory, or ``WORKDIR/home`` with ``--workdir`` (Apptainer).
    With ``--fakeroot`` it is ``/root``, root's home.
    """
    if request.home:
        source, _, dest = request.home.partition(":")
        source = real_path(source)
        if not os.path.isdir(source):
            raise InvalidRequest(f"--home: {source} is not a directory")
        return source, normalise(dest or source)
    dest = "/root" if request.fakeroot else normalise(who.home)  # root's home, yours inside (Apptainer)
    if request.contained and request.workdir:
        return _work_subdir(request.workdir, "home", 0o700), dest
    if request.contained or not os.path.isdir(who.home):
        return None, dest
    return who.home, dest


def _resolv_conf(servers: Sequence[str]) -> str:
    """``--dns IP[,IP]``: one ``nameserver`` line per address, as Apptainer writes it."""
    lines = []
    for item in servers:
        for server in filter(None, item.split(",")):
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise InvalidRequest(f"--dns {server}: not an IP address") from None
            lines.append(f"nameserver {server}\n")
    return "".join(lines)


def _overlays(layout: Layout, specs: Sequence[str], images: Sequence[OverlayImage]) -> None:
    """The image's overlay partitions, then ``--overlay DIR|EXT3FILE[:ro]``.

    As Apptainer: a later overlay lies above an earlier one, one overlay only may be writable. A
    directory's writable layer is DIR/upper (work dir DIR/work, both created when missing); a
    read-only directory contributes DIR/upper if it has one, else itself. An ext3 image
    contributes its ``upper`` directory, and takes the writes in it unless ``:ro``.
    """
    for image in images:
        _add_image(layout, image, image.path)
    for spec in specs:
        path, _, mode = spec.rpartition(":") if spec.endswith((":ro", ":rw")) else (spec, "", "rw")
        path = real_path(path)
        if not os.path.exists(path):
            raise InvalidRequest(f"--overlay {spec}: {path} does not exist")
        if not os.path.isdir(path):
            kind = fuselayers.image_kind(path)
            if kind != "ext3":
                what = "a squashfs image is mounted by the siffs command" if kind else "not an overlay"
                raise InvalidRequest(
                    f"--overlay {spec}: {what} (a directory, an ext3 image or a squashfs image)"
                )
            _add_image(layout, OverlayImage(path, writable=mode != "ro"), f"--overlay {spec}")
            continue
        if mode == "ro":
            upper = os.path.join(path, "upper")
            layout.overlay_lowers.insert(0, upper if os.path.isdir(upper) else path)
            continue
        _set_upper(layout, spec)
        upper, work = (_work_subdir(path, name, 0o755, "--overlay") for name in ("upper", "work"))
        layout.overlay_upper = (upper, work)
    if layout.overlay_upper is not None and layout.writable_tmpfs:
        layout.warnings.append("--writable-tmpfs is ignored: the writable --overlay takes the writes")
        layout.writable_tmpfs = False


def _set_upper(layout: Layout, spec: str) -> None:
    if layout.overlay_upper is not None:
        raise InvalidRequest(f"--overlay {spec}: only one overlay can be writable (add :ro to the others)")


def _add_image(layout: Layout, image: OverlayImage, spec: str) -> None:
    if image.writable:
        _set_upper(layout, spec)
        if not os.access(image.path, os.W_OK):  # Apptainer's words
            raise InvalidRequest(f"could not use {image.path} for writing, you don't have write permissions")
    fuselayers.check(image)
    if image.writable:
        layout.overlay_upper = image
    else:
        layout.overlay_lowers.insert(0, image)


def _work_subdir(workdir: str, name: str, mode: int, option: str = "--workdir") -> str:
    """``WORKDIR/name``, created with ``mode`` if missing (on the host, where it outlives the container)."""
    if not os.path.isdir(workdir):
        raise InvalidRequest(f"{option} {workdir}: not a directory")
    path = os.path.join(real_path(workdir), name)
    try:
        os.makedirs(path, exist_ok=True)
        if not os.path.isdir(path):
            raise InvalidRequest(f"{option}: {path} is not a directory")
        if os.stat(path).st_uid == os.getuid():
            os.chmod(path, mode)
    except OSError as exc:
        raise InvalidRequest(f"{option}: cannot create {path}: {exc.strerror}") from None
    return path


def _temporary_dirs(layout: Layout, request: Request, where: Callable[[str], str]) -> None:
    for path, work_name in (("/tmp", "tmp"), ("/var/tmp", "var_tmp")):
        if request.contained and request.workdir:
            layout.add(Bind(_work_subdir(request.workdir, work_name, 0o1777), where(path)), "dir")
        elif request.contained:
            layout.add(Tmpfs(where(path), 0o1777), "dir")
        elif os.path.isdir(path) and not (path == "/var/tmp" and os.path.samefile("/tmp", "/var/tmp")):
            layout.add(Bind(path, where(path)), "dir")


def _scratch(layout: Layout, request: Request, where: Callable[[str], str]) -> None:
    """``--scratch DIR``: an empty writable dir, kept in ``WORKDIR/scratch/DIR`` with ``--workdir``."""
    for item in request.scratch:
        for dest in filter(None, item.split(",")):
            if not dest.startswith("/"):
                raise InvalidRequest(f"--scratch {dest}: the destination must be an absolute path")
            if request.workdir:
                _work_subdir(request.workdir, "scratch", 0o750)
                source = _work_subdir(request.workdir, "scratch/" + normalise(dest).strip("/"), 0o750)
                layout.add(Bind(source, where(dest)), "dir")
            else:
                layout.add(Tmpfs(where(dest), 0o755), "dir")


def _identity_files(layout: Layout, who: Identity, wanted: Callable[[str, str], bool]) -> None:
    generators: dict[str, Callable[[str], str]] = {
        "/etc/passwd": lambda text: passwd_text(text, who, layout.home),
        "/etc/group": lambda text: group_text(text, who),
    }
    for path, generate in generators.items():
        if not wanted("", path):
            continue
        dest = resolve_in(layout.root, path)
        image_file = host_path(layout.root, dest)
        if not os.path.isfile(image_file):
            layout.warnings.append(f"the image has no {path}: the user has no name inside the container")
            continue
        with open(image_file, encoding="utf-8", errors="surrogateescape") as f:
            layout.add(Generated(dest, generate(f.read())), "file")


def _current_dir(layout: Layout, request: Request, wanted: Callable[[str, str], bool]) -> None:
    """The host cwd at the same path, unless contained or already visible through another bind."""
    try:
        cwd = os.getcwd()
    except OSError:
        return
    if request.contained or cwd == "/" or not wanted("cwd", cwd):
        return
    for step in layout.steps:
        if (
            isinstance(step, Bind)
            and step.source == step.dest
            and (cwd == step.dest or _inside(cwd, step.dest))
        ):
            return
    layout.add(Bind(cwd, resolve_in(layout.root, cwd), unless_visible=True), "dir")


def _tty() -> str | None:
    for fd in (0, 1, 2):
        if os.isatty(fd):
            try:
                return os.ttyname(fd)
            except OSError:
                return None
    return None
