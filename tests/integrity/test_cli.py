"""``siffs key import|list|remove`` and ``siffs verify`` with the trusted keyring."""

from __future__ import annotations

import io
import json

from siffs.cli.exitcodes import ExitCode
from siffs.cli.main import main
from siffs.cli.progress import ProgressBar
from tests.integrity.conftest import key_path
from tests.support.reference import IMAGES, expected


def test_keyring_commands(capsys):
    image = str(IMAGES / "two-groups-signed.sif")
    assert main(["verify", image]) == ExitCode.KEY_ERROR  # nothing trusted yet
    assert "siffs key import" in capsys.readouterr().err
    assert main(["key", "import", key_path("pgp")]) == 0  # a secret key file: the public half is kept
    assert main(["key", "import", key_path("rsa")]) == 0
    capsys.readouterr()
    assert main(["key", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    fingerprint = expected()["keys"]["pgp"]["primary_fingerprint"]
    assert {(k["kind"], k["id"]) for k in listed} == {
        ("pgp", fingerprint),
        ("dsse", expected()["keys"]["rsa"]["dsse_keyid"]),
    }
    assert main(["verify", image]) == 0
    out = capsys.readouterr().out
    assert "signature 4 (PGP, group 1): verified" in out
    assert "Unit Test <unit@test.com>" in out
    assert main(["verify", str(IMAGES / "two-groups-signed-dsse.sif"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["verified_objects"] == [1, 2, 3]
    assert main(["key", "remove", fingerprint[-16:]]) == 0
    assert main(["key", "remove", fingerprint]) == ExitCode.KEY_ERROR
    assert main(["verify", image]) == ExitCode.NOT_TRUSTED  # only the RSA key is left
    assert "pass the signer's public key" in capsys.readouterr().err


def test_progress_bar_is_quiet_when_piped():
    stream = io.StringIO()
    with ProgressBar("verifying", stream) as progress:
        progress(10, 10)
    assert stream.getvalue() == ""
