"""``siffs.sif`` loads its reader and writer on first use: the error classes alone load neither."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_the_error_classes_load_neither_reader_nor_writer():
    code = (
        "import sys\n"
        "from siffs.sif import SifFormatError\n"
        "names = ('siffs.sif.load', 'siffs.sif.raw', 'siffs.sif.write', 'uuid')\n"
        "print(sorted(m for m in names if m in sys.modules))"
    )
    assert _run(code).strip() == "[]"


def test_the_package_names_are_the_functions_and_classes_whatever_was_imported_first():
    # Importing a submodule sets the package attribute of its name; no module shares a public name.
    code = (
        "import siffs.sif.write, siffs.sif.load, siffs.sif.raw\n"
        "from siffs.sif import Descriptor, Image, create, add\n"
        "import siffs.sif\n"
        "print(callable(create), Image.__name__, Descriptor.__name__, siffs.sif.add is add)"
    )
    assert _run(code).strip() == "True Image Descriptor True"


def test_an_unknown_name_is_an_attribute_error():
    code = "import siffs.sif\ntry:\n    siffs.sif.nothing\nexcept AttributeError as e:\n    print(e)"
    assert "has no attribute 'nothing'" in _run(code)
