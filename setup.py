"""Optional native hot paths of siffs (C extensions built by ``pip install``).

Everything else is declared in pyproject.toml. Each extension is ``optional``: where no C
compiler or Python headers are at hand the build skips it, and the module that would use it
falls back to its pure-Python implementation (same results, slower). Each layer owns its
native module, next to the Python code that is its fallback and its oracle in the tests.
"""

from setuptools import Extension, setup

#: (importable module name, C sources). Add one entry per native module.
NATIVE: list[tuple[str, list[str]]] = [
    ("siffs.squashfs._directory", ["siffs/squashfs/_directory.c"]),
    ("siffs.squashfs._inode", ["siffs/squashfs/_inode.c"]),
    ("siffs.squashfs._data", ["siffs/squashfs/_data.c"]),
    ("siffs.squashfs._tree", ["siffs/squashfs/_tree.c"]),
    ("siffs.fs._fast", ["siffs/fs/_fast.c"]),
    ("siffs.delta._chunk", ["siffs/delta/_chunk.c"]),
    ("siffs.delta._zscan", ["siffs/delta/_zscan.c"]),
    ("siffs.crypt._xts", ["siffs/crypt/_xts.c"]),
]
#: Headers the sources include (a change rebuilds every module; listed so they ship in the sdist).
HEADERS = [f"siffs/squashfs/{name}.h" for name in ("_caches", "_inode", "_listing", "_tree")]

setup(
    ext_modules=[
        Extension(name, sources, depends=HEADERS, optional=True, extra_compile_args=["-O2", "-std=c11"])
        for name, sources in NATIVE
    ]
)
