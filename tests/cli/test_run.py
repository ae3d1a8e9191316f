"""``siffs.cli.run``'s own parsing: data-image binds taken out of Apptainer's bind syntax."""

from __future__ import annotations

import os

import pytest

from runtime.errors import InvalidRequest
from siffs.cli.run import _split_data_images, _split_data_mounts


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
