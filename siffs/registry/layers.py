"""Apply OCI image layers (umoci's rules, as Apptainer unpacks them) into one tree in memory.

Nothing is extracted to disk: an unprivileged extraction loses data (a mode-0000 file cannot be
read back, owners cannot be set), so the merged tree is streamed as one tar into ``mksquashfs
-tar`` instead (spec registry.md §5.3, §5.4, §5.6). Pass one reads every layer's headers and
builds the tree; pass two reads the layers again and writes the surviving file contents, each
straight from its layer's stream, so memory holds metadata only.

Rules, per layer in order and entry in order: names are cleaned inside the root; a parent that
is a symlink is followed inside the tree; ``.wh.NAME`` removes NAME from lower layers,
``.wh..wh..opq`` empties a directory of lower-layer content (what this layer made stays,
wherever the marker stands); missing parents are created; an entry replaces what is there
unless both are directories; hard links share their target's inode, from any lower layer.
Devices become empty regular files with their permission bits (what every unprivileged
Apptainer build gives; the runtime binds its own /dev); only ``user.*`` xattrs are kept.
"""

from __future__ import annotations

import contextlib
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from siffs.registry.errors import UnsupportedError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_MAX_LINKS = 40
_SKIP = 1 << 20
#: Opens layer N's uncompressed tar stream again, from its start.
LayerReader = Callable[[int], "contextlib.AbstractContextManager[IO[bytes]]"]


@dataclass(eq=False)
class Inode:
    """A regular file's content: where it is (layer, byte offset in its tar), shared by hard links."""

    layer: int
    offset: int  # of the member's data in the uncompressed layer
    size: int
    paths: list[str] = field(default_factory=list)  # filled when the tree is emitted


@dataclass(eq=False)
class Node:
    kind: str  # "dir", "file", "symlink", "fifo"
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    mtime: float
    target: str = ""  # symlink target, verbatim
    xattrs: dict[str, str] = field(default_factory=dict)
    inode: Inode | None = None  # regular files
    data: bytes | None = None  # regular files siffs itself adds (metadata)
    children: dict[str, Node] = field(default_factory=dict)  # directories


class LayerError(UnsupportedError):
    """A layer holds an entry that cannot be applied (bad hard link, unknown type, ...)."""


def _clean(name: str) -> list[str]:
    """A tar name as path components inside the root (``..`` cannot climb above it)."""
    return [p for p in posixpath.normpath("/" + name).split("/") if p]


class Tree:
    """The merged file system tree of an image."""

    def __init__(self) -> None:
        self.root = Node("dir", 0o755, 0, 0, 0.0)

    # -- lookup ----------------------------------------------------------------------------

    def _resolve_parent(self, parts: list[str], layer: int) -> tuple[Node, list[str]] | None:
        """The directory holding ``parts[-1]``, following symlinked parents inside the tree."""
        node, path, hops = self.root, list(parts[:-1]), 0
        resolved: list[str] = []
        while path:
            name = path.pop(0)
            child = node.children.get(name)
            if child is not None and child.kind == "symlink":
                hops += 1
                if hops > _MAX_LINKS:
                    raise LayerError(f"layer {layer + 1}: too many symbolic links in {'/'.join(parts)}")
                base = [] if child.target.startswith("/") else resolved
                path = _clean("/".join([*base, child.target])) + path
                node, resolved = self.root, []
                continue
            if child is None or child.kind != "dir":
                return None
            node = child
            resolved.append(name)
        return node, resolved

    def lookup(self, parts: list[str], layer: int) -> Node | None:
        if not parts:
            return self.root
        found = self._resolve_parent(parts, layer)
        return None if found is None else found[0].children.get(parts[-1])

    def _make_parents(self, parts: list[str], layer: int) -> Node:
        node = self.root
        for depth, name in enumerate(parts[:-1]):
            child = node.children.get(name)
            if child is not None and child.kind == "symlink":
                found = self._resolve_parent([*parts[: depth + 1], ""], layer)
                if found is not None:
                    node = found[0]
                    continue
                child = None
            if child is None or child.kind != "dir":
                child = Node("dir", 0o755, 0, 0, 0.0)
                node.children[name] = child
            node = child
        return node

    # -- applying ----------------------------------------------------------------------------

    def apply(self, layer: int, members: Iterator[tarfile.TarInfo]) -> None:
        """Apply one layer's entries (headers only; contents are read in the second pass)."""
        created: set[str] = set()  # paths (and their parents) this layer wrote: whiteouts spare them
        pending: list[tuple[list[str], bool]] = []  # whiteouts and opaque markers, applied last
        for info in members:
            parts = _clean(info.name)
            if not parts:
                if info.isdir():
                    self._set_metadata(self.root, info)
                    continue
                raise LayerError(f"layer {layer + 1}: the root entry {info.name!r} is not a directory")
            base = parts[-1]
            if base == OPAQUE:
                pending.append((parts[:-1], True))
                continue
            if base.startswith(WHITEOUT):
                pending.append(([*parts[:-1], base[len(WHITEOUT) :]], False))
                continue
            self._add(layer, parts, info)
            created.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
        for parts, opaque in pending:
            self._whiteout(parts, opaque, created, layer)

    def _whiteout(self, parts: list[str], opaque: bool, created: set[str], layer: int) -> None:
        """Remove ``parts`` (or, opaque, its children) as far as lower layers made them."""
        path = "/".join(parts)
        if opaque:
            directory = self.lookup(parts, layer)
            if directory is not None and directory.kind == "dir":
                _prune(directory, path, created)
            return
        found = self._resolve_parent(parts, layer)
        if found is None or parts[-1] not in found[0].children:
            return
        if path in created:
            _prune(found[0].children[parts[-1]], path, created)
        else:
            del found[0].children[parts[-1]]

    def _add(self, layer: int, parts: list[str], info: tarfile.TarInfo) -> None:
        parent = self._make_parents(parts, layer)
        name = parts[-1]
        existing = parent.children.get(name)
        if info.islnk():
            target = self.lookup(_clean(info.linkname), layer)
            if target is None or target.kind == "dir":
                what = "does not exist" if target is None else "is a directory"
                raise LayerError(
                    f"layer {layer + 1}: hard link {'/'.join(parts)} -> {info.linkname}: target {what}"
                )
            parent.children[name] = target
            return
        if info.isdir():
            if existing is not None and existing.kind == "dir":
                self._set_metadata(existing, info)
                return
            node = Node("dir", 0, 0, 0, 0.0)
        elif info.isreg():
            node = Node("file", 0, 0, 0, 0.0, inode=Inode(layer, info.offset_data, info.size))
        elif info.issym():
            node = Node("symlink", 0, 0, 0, 0.0, target=info.linkname)
        elif info.isfifo():
            node = Node("fifo", 0, 0, 0, 0.0)
        elif info.ischr() or info.isblk():
            node = Node("file", 0, 0, 0, 0.0, data=b"")  # a device: an empty file, as unprivileged builds
        else:
            kind = info.type.decode("latin-1")
            raise LayerError(f"layer {layer + 1}: {'/'.join(parts)}: unsupported tar entry type {kind!r}")
        self._set_metadata(node, info)
        parent.children[name] = node

    @staticmethod
    def _set_metadata(node: Node, info: tarfile.TarInfo) -> None:
        node.mode = info.mode & 0o7777
        node.uid, node.gid, node.mtime = info.uid, info.gid, float(info.mtime)
        node.xattrs = {
            key: value
            for key, value in info.pax_headers.items()
            if key.startswith("SCHILY.xattr.user.") and key != "SCHILY.xattr.user.rootlesscontainers"
        }

    # -- adding siffs' own files -----------------------------------------------------------

    def ensure_dir(self, path: str, mode: int = 0o755) -> None:
        """Create a directory (and parents) unless something already stands there."""
        node = self.root
        for name in _clean(path):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Node("dir", mode, 0, 0, 0.0)
            if child.kind != "dir":
                return  # a symlink or file the image put there stays (Apptainer leaves it)
            node = child

    def put_file(self, path: str, data: bytes, mode: int) -> None:
        """Write a file of siffs' own (replacing whatever non-directory stands there)."""
        parts = _clean(path)
        self.ensure_dir("/".join(parts[:-1]))
        parent = self.lookup(parts[:-1], 0)
        if parent is None or parent.kind != "dir":
            raise LayerError(f"cannot add /{path}: its directory is not a directory in the image")
        parent.children[parts[-1]] = Node("file", mode, 0, 0, 0.0, data=data)

    def put_symlink(self, path: str, target: str) -> None:
        """A symlink of siffs' own, unless a non-symlink already stands there."""
        parts = _clean(path)
        parent = self.lookup(parts[:-1], 0)
        if parent is None or parent.kind != "dir":
            return
        existing = parent.children.get(parts[-1])
        if existing is None or existing.kind == "symlink":
            parent.children[parts[-1]] = Node("symlink", 0o777, 0, 0, 0.0, target=target)

    def read_file(self, path: str) -> Node | None:
        node = self.lookup(_clean(path), 0)
        return node if node is not None and node.kind == "file" else None

    # -- emitting ------------------------------------------------------------------------------

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every entry below the root, parents before children, names sorted."""
        stack = [("", self.root)]
        while stack:
            path, node = stack.pop()
            for name in sorted(node.children, reverse=True):
                child = node.children[name]
                stack.append((f"{path}/{name}" if path else name, child))
            if path:
                yield path, node

    def write_tar(self, out: IO[bytes], read_layer: LayerReader, layers: int) -> None:
        """Stream the tree as one PAX tar: directories, then contents layer by layer, then the rest.

        mksquashfs -tar needs a hard link's target earlier in the stream; every other order is
        free, so contents come in the order the layers hold them and each layer is read once,
        straight through: pass one noted where each content starts, so no tar header is parsed
        twice.
        """
        entries = list(self.walk())
        wanted: dict[int, dict[int, tuple[Inode, Node]]] = {}
        for path, node in entries:
            if node.inode is not None:
                node.inode.paths.append(path)
                wanted.setdefault(node.inode.layer, {})[node.inode.offset] = (node.inode, node)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path, node in entries:
                if node.kind == "dir":
                    tar.addfile(_info(path, node, tarfile.DIRTYPE))
            for layer in range(layers):
                contents = wanted.get(layer)
                if not contents:
                    continue
                with read_layer(layer) as stream:
                    position = 0
                    for offset in sorted(contents):
                        _skip(stream, offset - position)
                        inode, node = contents[offset]
                        info = _info(inode.paths[0], node, tarfile.REGTYPE)
                        info.size = inode.size
                        tar.addfile(info, stream)
                        position = offset + inode.size
            for path, node in entries:
                if node.kind == "symlink":
                    tar.addfile(_info(path, node, tarfile.SYMTYPE))
                elif node.kind == "fifo":
                    tar.addfile(_info(path, node, tarfile.FIFOTYPE))
                elif node.data is not None:
                    info = _info(path, node, tarfile.REGTYPE)
                    info.size = len(node.data)
                    tar.addfile(info, _Bytes(node.data))
            for path, node in entries:
                if node.inode is not None and path != node.inode.paths[0]:
                    info = _info(path, node, tarfile.LNKTYPE)
                    info.linkname = node.inode.paths[0]
                    tar.addfile(info)


def _skip(stream: IO[bytes], count: int) -> None:
    """Read past ``count`` bytes (a decompressing stream cannot seek)."""
    while count > 0:
        chunk = stream.read(min(count, _SKIP))
        if not chunk:
            raise LayerError("a layer ended early on its second reading")
        count -= len(chunk)


def _prune(directory: Node, path: str, created: set[str]) -> None:
    """Remove what lower layers put below ``directory`` (at ``path``), keeping this layer's entries."""
    for name, child in list(directory.children.items()):
        child_path = f"{path}/{name}" if path else name
        if child_path not in created:
            del directory.children[name]
        else:
            _prune(child, child_path, created)


def _info(path: str, node: Node, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = node.mode
    info.uid, info.gid, info.mtime = node.uid, node.gid, node.mtime
    info.linkname = node.target
    info.pax_headers = dict(node.xattrs)
    return info


class _Bytes:
    """A minimal reader over bytes for ``tarfile.addfile``."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return chunk
