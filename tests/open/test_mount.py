"""``siffs.open.mount``: the private mount points of ``mounted`` (``siffs run``)."""

from __future__ import annotations

import os
import stat

from siffs.open.mount import _private_dir


def test_private_mount_points_are_new_owner_only_directories(tmp_path):
    made = {_private_dir(tmp_path) for _ in range(50)}
    assert len(made) == 50
    for path in made:
        info = os.lstat(path)
        assert os.path.dirname(path) == str(tmp_path)
        assert os.path.basename(path).startswith("mnt-")
        assert stat.S_ISDIR(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o700 & ~_umask()
        assert info.st_uid == os.getuid()


def test_an_existing_name_is_never_reused(tmp_path, monkeypatch):
    # The first name drawn exists already (another run's): a new one is drawn, the old one untouched.
    taken = tmp_path / f"mnt-{bytes(6).hex()}"
    taken.mkdir()
    (taken / "keep").write_text("theirs")
    draws = iter([bytes(6), b"\x01" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    path = _private_dir(tmp_path)
    assert path == str(tmp_path / ("mnt-" + "01" * 6))
    assert (taken / "keep").read_text() == "theirs"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
