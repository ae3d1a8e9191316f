"""Interoperability with oras-py (PyPI ``oras``), an independent ORAS client, both ways."""

from __future__ import annotations

import shutil

import pytest

from tests.support.mounts import siffs

oras_client = pytest.importorskip("oras.client")


def test_siffs_pulls_what_oras_py_pushed(plain, sif_image, home, tmp_path, monkeypatch):
    """oras-py writes an unknown config type and an empty annotation map: Apptainer takes it."""
    upload = tmp_path / "up"
    upload.mkdir()
    shutil.copyfile(sif_image, upload / "tool.sif")
    monkeypatch.chdir(upload)  # oras-py names the layer by the path it was given
    client = oras_client.OrasClient(hostname=plain.host, insecure=True)
    client.push(
        files=["tool.sif:application/vnd.sylabs.sif.layer.v1.sif"], target=f"{plain.host}/interop/byoras:1"
    )
    out = tmp_path / "out.sif"
    siffs("pull", "--allow-unsigned", out, f"oras://{plain.host}/interop/byoras:1", env=home, check=True)
    assert out.read_bytes() == sif_image.read_bytes()


def test_oras_py_pulls_what_siffs_pushed(plain, sif_image, home, tmp_path):
    siffs("push", sif_image, f"oras://{plain.host}/interop/bysiffs:1", env=home, check=True)
    client = oras_client.OrasClient(hostname=plain.host, insecure=True)
    files = client.pull(target=f"{plain.host}/interop/bysiffs:1", outdir=str(tmp_path / "down"))
    assert [p.rsplit("/", 1)[-1] for p in files] == [sif_image.name]
    assert (tmp_path / "down" / sif_image.name).read_bytes() == sif_image.read_bytes()
