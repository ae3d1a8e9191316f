"""``siffs.cli.run``'s own parsing: data-image binds taken out of Apptainer's bind syntax."""

from __future__ import annotations

import os
import subprocess
import sys
import typing

import pytest

from runtime.errors import InvalidRequest
from siffs.cli.run import _split_data_images, _split_data_mounts
from tests.support.reference import IMAGES


def test_data_image_binds_are_split_from_plain_binds():
    plain, images = _split_data_images(["d.sif:/data:image-src=/x,ro,/etc:/e:ro", "/tmp"])
    assert plain == ["/etc:/e:ro", "/tmp"]
    assert images == [(os.path.abspath("d.sif"), "/x", "/data")]
    assert _split_data_images(["d.sif:/data:image-src="])[1][0][1] == "/"


def test_partition_ids_are_refused():
    with pytest.raises(InvalidRequest, match="id="):
        _split_data_images(["d.sif:/data:id=2"])


def test_data_image_mounts_are_split_from_plain_mounts():
    specs = ['type=bind,src=d.sif,dst=/data,image-src=/x\ntype=bind,src=/tmp,"dst=/a,b",ro']
    plain, images = _split_data_mounts(specs)
    assert images == [(os.path.abspath("d.sif"), "/x", "/data")]
    assert plain == ['type=bind,src=/tmp,"dst=/a,b",ro']


def test_the_runtime_is_imported_after_the_mount_starts():
    """``siffs run IMAGE`` imports the container runtime only once the image is mounted, so the mount
    daemon's start overlaps it; the SIF writer, the --nv/--env-file code and the error classes of
    layers the command does not use are not loaded at all."""
    code = (
        "import sys\n"
        "import siffs.open.mount as m\n"
        "def probe(*args, **kwargs):\n"
        "    print(' '.join(n for n in sys.argv[2:] if n in sys.modules))\n"
        "    raise KeyboardInterrupt\n"  # the mount is not needed: stop there, as Ctrl-C would
        "m.mount = probe\n"
        "from siffs.cli.main import main\n"
        "main(['run', '--allow-unsigned', sys.argv[1], 'true'])\n"
    )
    watched = ["runtime.launch", "runtime.layout", "runtime.nvidia", "runtime.envfile"]
    watched += ["siffs.sif.write", "uuid", "hashlib", "socket"]  # OpenSSL ~2 ms; enums ~1.4 ms
    # Only an error looks at these layers' exceptions (``siffs.cli.common.error_codes``).
    watched += ["siffs.pull", "siffs.delta.errors", "siffs.registry.errors", "siffs.integrity.errors"]
    done = subprocess.run(
        [sys.executable, "-c", code, str(IMAGES / "one-group.sif"), *watched],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "\n"  # the probe ran, and none of them was loaded before it
    assert "interrupted" in done.stderr


#: Prints the dataclasses defined by siffs' and the runtime's loaded modules (without importing
#: ``dataclasses``: ``is_dataclass`` looks for the same attribute), and whether it is loaded.
_LIST_DATACLASSES = (
    "import sys\n"
    "def dataclasses_loaded():\n"
    "    found = {f'{o.__module__}.{o.__qualname__}' for name, mod in list(sys.modules.items())\n"
    "             if name.split('.')[0] in ('siffs', 'runtime')\n"
    "             for o in vars(mod).values()\n"
    "             if isinstance(o, type) and hasattr(o, '__dataclass_fields__') and o.__module__ == name}\n"
    "    return found | ({'dataclasses'} & set(sys.modules))\n"
)


def _dataclasses_loaded(code: str, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _LIST_DATACLASSES + code, *args], capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_no_dataclass_is_defined_on_the_way_to_the_container():
    """Defining a dataclass generates and compiles its methods (~0.5 ms each, on every start), and
    ``dataclasses`` imports ``inspect`` (~4 ms): the records on the way to the mount, SquashFS's
    included, are named tuples, and so are the container runtime's immutable ones (imported
    while the mount daemon starts, which competes for the same cores); its mutable ones are
    plain classes."""
    code = (
        "import siffs.open.mount as m\n"
        "def probe(*args, **kwargs):\n"
        "    print(' '.join(dataclasses_loaded()))\n"
        "    raise KeyboardInterrupt\n"
        "m.mount = probe\n"
        "from siffs.cli.main import main\n"
        "main(['run', '--allow-unsigned', sys.argv[1], 'true'])\n"
    )
    assert _dataclasses_loaded(code, str(IMAGES / "one-group.sif")) == set()
    code = "import siffs.cli.run, runtime.launch\nprint(' '.join(dataclasses_loaded()))\n"
    assert _dataclasses_loaded(code) == set()


def test_the_largest_records_have_no_string_annotations():
    """typing.NamedTuple compiles each string annotation (``from __future__ import annotations``)
    into a ForwardRef, ~15 us a field on every start: the records with the most fields on the way
    to the container are defined with annotations that are objects."""
    from runtime.request import NvidiaSources, OverlayImage, Request  # noqa: PLC0415
    from siffs.sif.raw import Descriptor, Header  # noqa: PLC0415
    from siffs.squashfs.superblock import Superblock  # noqa: PLC0415

    for record in (Request, OverlayImage, NvidiaSources, Header, Descriptor, Superblock):
        strings = [n for n, t in record.__annotations__.items() if isinstance(t, typing.ForwardRef)]
        # NvidiaSources.target names the ELF reader's type, imported only to check types.
        assert strings == (["target"] if record is NvidiaSources else []), record
