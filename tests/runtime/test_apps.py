"""SCIF apps (``--app``) on a tree laid out as ``/scif/apps/NAME`` without Apptainer's 95-apps.sh.

Apptainer-built images source the app's environment in their own ``95-apps.sh`` (the goldens in
test_apptainer_parity cover that); here the runtime must do the same for an image that only has
the layout.
"""

from __future__ import annotations

import json

import pytest

from tests.runtime.conftest import add_file


@pytest.fixture(scope="module")
def scif(variant):
    def apps(root):
        for name, greeting in (("foo", "from foo"), ("bar", "from bar")):
            meta = f"/scif/apps/{name}/scif"
            add_file(root, f"{meta}/runscript", f'#!/bin/sh\necho "{name} runs: $* APPVAR=$APPVAR"\nexit 7\n')
            add_file(root, f"{meta}/env/90-environment.sh", f'export APPVAR="{greeting}"\n')
            add_file(root, f"{meta}/labels.json", json.dumps({"AppLabel": name}), mode=0o644)
            add_file(root, f"{meta}/runscript.help", f"help for {name}\n", mode=0o644)
            add_file(root, f"/scif/apps/{name}/bin/{name}-tool", f"#!/bin/sh\necho {name} tool\n")
            (root / f"scif/apps/{name}/lib").mkdir()
        add_file(root, "/scif/apps/foo/scif/test", "#!/bin/sh\necho foo test\n")

    return variant("scif", apps)


def test_run_uses_the_apps_runscript_and_environment(siffs, scif):
    result = siffs("run", "--app", "foo", scif, "a", "b")
    assert result.returncode == 7
    assert result.stdout == "foo runs: a b APPVAR=from foo\n"


def test_exec_sees_the_apps_path_libraries_and_variables(siffs, scif):
    env = siffs.env(scif, "--app", "bar")
    assert env["APPVAR"] == "from bar"
    assert env["PATH"].split(":")[:2] == ["/scif/apps/bar/bin", "/scif/apps/bar"]
    assert env["LD_LIBRARY_PATH"].split(":")[0] == "/scif/apps/bar/lib"
    assert env["SCIF_APPROOT"] == "/scif/apps/bar"
    assert env["APPTAINER_APPNAME"] == env["SINGULARITY_APPNAME"] == "bar"
    assert siffs("exec", "--app", "bar", scif, "bar-tool").stdout == "bar tool\n"
    assert "APPVAR" not in siffs.env(scif)


def test_test_runs_the_apps_test_or_says_there_is_none(siffs, scif):
    result = siffs("test", "--app", "foo", scif)
    assert (result.returncode, result.stdout) == (0, "foo test\n")
    result = siffs("test", "--app", "bar", scif)
    assert result.returncode == 1
    assert "No tests for contained app: bar" in result.stderr


def test_unknown_app_is_refused(siffs, scif):
    result = siffs("run", "--app", "nope", scif)
    assert result.returncode == 1
    assert "Could not locate the container application: nope" in result.stderr


def test_test_without_a_test_script_says_so(siffs, variant):
    root = variant("no-test", lambda r: (r / ".singularity.d/test").unlink())
    result = siffs("test", root)
    assert (result.returncode, result.stdout) == (
        0,
        "No test found in container, executing /bin/sh -c true\n",
    )


def test_inspect_lists_apps_and_shows_their_metadata(siffs, scif, tree):
    assert siffs("inspect", "--list-apps", scif).stdout == "bar\nfoo\n"
    assert siffs("inspect", "--list-apps", tree).stdout == ""
    assert siffs("inspect", "--app", "foo", "--labels", scif).stdout == "AppLabel: foo\n"
    assert siffs("inspect", "--app", "bar", "--helpfile", scif).stdout == "help for bar\n"
    environment = siffs("inspect", "--app", "foo", "--environment", scif).stdout
    assert environment == '=== /scif/apps/foo/scif/env/90-environment.sh ===\nexport APPVAR="from foo"\n\n'
    document = json.loads(siffs("inspect", "--app", "foo", "--labels", "--json", scif).stdout)
    assert document["data"]["attributes"]["apps"]["foo"]["labels"] == {"AppLabel": "foo"}
    missing = siffs("inspect", "--app", "nope", scif)
    assert missing.returncode != 0 and "--list-apps" in missing.stderr


def test_inspect_environment_shows_only_the_users_files(siffs, tree):
    """The docker env file and %environment; not 99-base.sh or 99-runtimevars.sh."""
    shown = [
        line for line in siffs("inspect", "--environment", tree).stdout.splitlines() if line.startswith("===")
    ]
    assert shown == [
        "=== /.singularity.d/env/10-docker2singularity.sh ===",
        "=== /.singularity.d/env/90-environment.sh ===",
    ]
