"""The command table of ``siffs.cli.main`` matches what each command module registers."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from siffs.cli.main import COMMAND_GROUPS, build_parser
from tests.support.reference import IMAGES


@pytest.mark.parametrize("module", sorted(COMMAND_GROUPS))
def test_command_table_matches_the_modules(module):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    assert tuple(sub.choices) == COMMAND_GROUPS[module]


def test_full_parser_has_every_command():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(c for cs in COMMAND_GROUPS.values() for c in cs)


def test_a_command_loads_only_its_own_module():
    image = IMAGES / "one-group.sif"
    code = (
        "import sys; from siffs.cli.main import main; main(['list', sys.argv[1]]); "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'trio', 'siffs'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(image)], capture_output=True, text=True, check=True
    )
    loaded = result.stdout.splitlines()[-1].split()
    assert "siffs.cli.inspect" in loaded
    assert not {"pyfuse3", "trio", "siffs.cli.mount", "siffs.cli.run", "siffs.integrity.verify"} & set(loaded)
