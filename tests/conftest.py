import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import reference, shared
from tests.support.images import build_rootfs, mksquashfs, wrap_sif
from tests.support.signing import SigningKey
from tests.support.squashfs_corpus import SPECS, Corpus, kernel_mount, mount_unavailable, wrap_at_offset
from tests.support.users import restore_host

# ---- the read guard -------------------------------------------------------------------------
# A test may read the repository, temporary files, the system (libraries, /etc, /proc...), the
# interpreter and its packages, and Debian's reference package. Anything else, ../shared
# included, must be declared: ``@pytest.mark.shared``, a module that takes its material from
# tests/support/shared.py or reference.py (marked automatically), or a read by shared.py itself.
# An audit hook sees every open(), so the check is a prefix test; symlinks are only resolved
# under reference.WORK, where the links into ../shared are.

SYSTEM = ("/usr/", "/lib", "/bin/", "/sbin/", "/etc/", "/proc/", "/sys/", "/dev/", "/run/", "/var/lib/")
ALLOWED = tuple(
    {str(shared.REPO) + "/", tempfile.gettempdir() + "/", "/var/tmp/", *SYSTEM, *reference.declared_roots()}
    | {p.rstrip("/") + "/" for p in (sys.prefix, sys.base_prefix, *sys.path) if p.startswith("/")}
)
SHARED_ROOTS = tuple({str(shared.SHARED) + "/", os.path.realpath(shared.SHARED) + "/"})
WORK = str(reference.WORK) + "/"
SHARED_HELPER = shared.__file__
_guard: dict[str, Any] = {"item_declares_shared": False, "violations": []}


def _read_guard(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not isinstance(args[0], str | bytes):
        return
    path = os.fsdecode(args[0])
    if not path.startswith("/"):
        path = os.path.abspath(path)
    if path.startswith(WORK):
        path = os.path.realpath(path)
    path += "/"  # the roots themselves (/tmp) match too
    if path.startswith(SHARED_ROOTS):
        if _guard["item_declares_shared"] or sys._getframe(1).f_code.co_filename == SHARED_HELPER:
            return
    elif path.startswith(ALLOWED):
        return
    _guard["violations"].append(path.removesuffix("/"))


sys.addaudithook(_read_guard)


def _declares_shared(item: pytest.Item) -> bool:
    if item.get_closest_marker("shared"):
        return True
    module = getattr(item, "module", None)
    helpers = (shared.__name__, reference.__name__)
    return module is not None and any(
        v in (shared, reference)
        or getattr(v, "__module__", None) in helpers
        # a path imported from them (SHARED, IMAGES, CONFORMANCE...): what is below it is read
        or (isinstance(v, Path) and any(vars(h).get(k) is v for h in (shared, reference)))
        for k, v in vars(module).items()
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared: reads the conformance corpus in ../shared (SIFFS_SHARED)")


def pytest_collection_finish(session: pytest.Session) -> None:
    _fail_on_violations("collecting the tests")


def _fail_on_violations(during: str) -> None:
    found, _guard["violations"] = _guard["violations"], []
    if found:
        listed = "\n  ".join(sorted(set(found)))
        message = f"{during} read outside the repository undeclared (see tests/conftest.py):\n  {listed}"
        if during == "collecting the tests":
            raise pytest.UsageError(message)
        pytest.fail(message, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _guard["item_declares_shared"] = _declares_shared(item)
    try:
        return (yield)
    finally:
        _guard["item_declares_shared"] = False


@pytest.fixture(autouse=True)
def _reads_stay_declared(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test (at teardown) that read an undeclared path, naming the paths."""
    _guard["violations"] = []
    yield
    _fail_on_violations(request.node.nodeid)


@pytest.fixture(scope="session", autouse=True)
def _reference_images(request: pytest.FixtureRequest) -> Path:
    """Debian's images (and the corpus', if present) under reference.IMAGES; the images the
    reference library signs at test time only when a collected test uses them (a Go build)."""
    images = reference.materialize()
    if any(f"[{reference.GO}" in item.nodeid for item in request.session.items):
        reference.make_go_images()
    return images


def pytest_sessionfinish(session, exitstatus):
    restore_host()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("squashfs-corpus"))


@pytest.fixture(scope="session")
def kernel(corpus: Corpus) -> Callable[..., contextlib.AbstractContextManager[Path]]:
    """``kernel(name, offset=0)``: a context manager mounting corpus image ``name`` (or its oracle)."""
    reason = mount_unavailable(corpus.workdir)
    if reason is not None:
        pytest.skip(reason)

    @contextlib.contextmanager
    def mount(name: str, offset: int = 0) -> Iterator[Path]:
        image = corpus.image(SPECS[name].oracle or name)
        if offset:
            image = wrap_at_offset(image, corpus.workdir / f"{image.stem}-at{offset}.img", offset)
        with kernel_mount(image, corpus.workdir / "mnt" / f"{name}-{offset}", offset) as mnt:
            yield mnt

    return mount


# The image every FUSE, CLI and runtime test may mount: the example rootfs plus what a mount must get right.
PSEUDO = [
    "-p",
    "dev/null c 666 0 0 1 3",
    "-p",
    "dev/sda b 660 0 6 8 0",
    "-p",
    "run d 755 0 0",
    "-p",
    "run/fifo i 600 1000 1000 f",
    "-p",
    "run/sock i 600 70000 70001 s",
]


def rich_tree(root: Path) -> Path:
    """The example rootfs plus what a mount must get right: links, xattrs, odd names, sizes."""
    build_rootfs(root)
    data = root / "data"
    data.mkdir()
    (data / "empty").write_bytes(b"")
    (data / "one").write_bytes(b"x")
    (data / "big.bin").write_bytes(os.urandom(300_000) + bytes(400_000) + b"tail" * 1000)
    os.link(data / "one", data / "one-hardlink")
    (data / "caf\xe9 \n odd").write_text("odd name")
    os.mkdir(root / os.fsdecode(b"dir-\xff\xfe"))
    (data / "attrs").write_text("with xattrs")
    os.setxattr(data / "attrs", "user.comment", b"hello")
    os.setxattr(data / "attrs", "user.empty", b"")
    (data / "loop").symlink_to("loop")
    (data / "dangling").symlink_to("/nowhere/at/all")
    deep = data / "/".join(f"d{i}" for i in range(40))
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep")
    os.utime(data / "one", (1_000_000_000, 1_000_000_000))
    return root


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("fs-image")
    squash = mksquashfs(rich_tree(work / "tree"), work / "root.squashfs", "-all-root", "-xattrs", *PSEUDO)
    sif = work / "image.sif"
    wrap_sif(squash, sif)
    os.chmod(work, 0o755)
    return sif


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory) -> SigningKey:
    """A fresh Ed25519 key: images signed with it mount on the default (verified) path."""
    work = tmp_path_factory.mktemp("signing-key")
    os.chmod(work, 0o755)
    return SigningKey.make(work / "keys")


@pytest.fixture(scope="session")
def verified_image(image, signing_key) -> Path:
    """``image`` signed with ``signing_key``; mount it with ``key=signing_key.public``."""
    return signing_key.sign(image, image.with_name("image-signed.sif"))
