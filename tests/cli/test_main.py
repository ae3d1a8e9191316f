"""The command table of ``siffs.cli.main`` matches what each command module registers."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from siffs import cli
from siffs.cli.common import exit_code_for
from siffs.cli.exitcodes import ExitCode
from siffs.cli.main import COMMAND_GROUPS, build_parser
from siffs.delta.errors import DigestMismatchError
from siffs.integrity.errors import KeyMaterialError
from siffs.pull import UnknownSourceError
from siffs.registry.errors import AuthError
from tests.support.reference import IMAGES


@pytest.mark.parametrize("module", sorted(COMMAND_GROUPS))
def test_command_table_matches_the_modules(module):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    assert tuple(sub.choices) == COMMAND_GROUPS[module]


def test_every_command_module_is_in_the_table():
    """A module under siffs/cli that registers commands but is missing from the table is unreachable."""
    found = {
        f"siffs.cli.{path.stem}"
        for path in Path(cli.__file__).parent.glob("*.py")
        if re.search(r"^def register\(", path.read_text(), re.M)
    }
    assert found == set(COMMAND_GROUPS)


def test_each_command_in_the_help_runs_through_the_lazy_parser(capsys):
    """Every command ``siffs --help`` lists parses on its own, loading only its table module."""
    listing = subprocess.run(
        [sys.executable, "-m", "siffs", "--help"], capture_output=True, text=True, check=True
    ).stdout
    section = listing.split("positional arguments:")[1].split("options:")[0]
    commands = re.findall(r"^    (\w+) ", section, re.M)
    assert len(commands) > 20 and "mount" in commands and "sandbox" in commands
    for command in commands:
        with pytest.raises(SystemExit) as done:
            build_parser([command]).parse_args([command, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: siffs {command} "), command


@pytest.mark.parametrize(
    "words",
    [
        ["run", "--allow-unsigned", "-B", "/a:/b", "--env", "X=1", "img.sif", "true", "-v"],
        ["-q", "exec", "--contain", "--fakeroot", "img.sif", "ls", "-l"],
        ["inspect", "--json", "--runscript", "img.sif"],
        ["mount", "-o", "uid=1", "-v", "img.sif", "/mnt"],
        ["key", "list"],
        ["instance", "start", "img.sif", "name"],
        ["cache", "clean"],
    ],
)
def test_the_parser_of_one_command_parses_as_the_full_parser(words):
    """``build_parser(argv)`` builds only ``argv``'s command (``_OneCommand``); the result is the same."""
    one = build_parser(words)
    (sub,) = [a for a in one._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == [words[0] if words[0] != "-q" else words[1]]
    assert vars(one.parse_args(words)) == vars(build_parser().parse_args(words))


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


def test_version_loads_no_command_group():
    """``siffs --version`` is how scripts probe for siffs: it must not load the FUSE or crypto stacks."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    argv = [sys.executable, "-X", "importtime", "-m", "siffs", "--version"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("siffs ")
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert not {"trio", "pyfuse3", "cryptography", "siffs.cli.mount", "siffs.cli.verify"} & loaded


@pytest.mark.parametrize("words", [["--version"], ["--help"], ["list", "--help"]])
def test_a_reader_that_goes_away_gets_no_traceback(words):
    # argparse prints --help and --version itself, before a command runs: the pipe's reader
    # is gone before siffs writes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "siffs", *words], stdout=write_end, stderr=subprocess.PIPE, check=False
        )
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode == 0


def test_the_command_exits_fast_with_its_status_and_everything_flushed(tmp_path):
    # entry() ends the process without interpreter teardown: buffered output, exit handlers
    # (logging's) and the status a command ends with (SystemExit, as exec's container status)
    # must all survive that.
    script = tmp_path / "probe.py"
    script.write_text(
        "import atexit, sys\n"
        "import siffs.cli.main as m\n"
        "atexit.register(lambda: open(sys.argv[1], 'w').write('ran'))\n"
        "def fake(argv=None, **kwargs):\n"
        "    sys.stdout.write('x' * 100000)\n"
        "    raise SystemExit(7)\n"
        "m.main = fake\n"
        "m.entry()\n"
    )
    marker = tmp_path / "marker"
    done = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True, check=False)
    assert done.returncode == 7
    assert done.stdout == b"x" * 100000
    assert marker.read_text() == "ran"


def test_every_layer_s_errors_still_get_their_exit_codes():
    """The error table is built on first use (``error_codes``): a layer whose errors are not
    imported by the command that failed must still map to its code, not to "internal error"."""
    assert exit_code_for(UnknownSourceError("x")) == ExitCode.USAGE
    assert exit_code_for(AuthError("x")) == ExitCode.AUTH_FAILED
    assert exit_code_for(DigestMismatchError("x")) == ExitCode.DIGEST_MISMATCH
    assert exit_code_for(KeyMaterialError("x")) == ExitCode.KEY_ERROR
    assert exit_code_for(ValueError("x")) is None


@pytest.mark.parametrize("call", ["entry()", "main()"])
def test_the_installed_command_freezes_what_loading_its_command_made(call):
    """``entry()``, the installed command, loads the command's modules without cyclic garbage
    collection and freezes what they made (``gc.freeze``): the collector ran over it some
    fifteen times before ``siffs run``'s mount. ``main()``, as tests call it in their own
    process, leaves the collector as it was."""
    code = (
        "import atexit, gc, sys\n"
        "import siffs.cli.main as m\n"
        "atexit.register(lambda: print(gc.isenabled(), gc.get_freeze_count()))\n"
        f"sys.argv[1:] = ['list', sys.argv[1]]\nm.{call}\n"
    )
    image = str(IMAGES / "one-group.sif")
    done = subprocess.run([sys.executable, "-c", code, image], capture_output=True, text=True, check=True)
    enabled, frozen = done.stdout.splitlines()[-1].split()
    assert enabled == "True"
    assert (int(frozen) > 10000) == (call == "entry()")
