"""Where verified registry blobs are kept between pulls (``$XDG_CACHE_HOME/siffs/registry``)."""

from __future__ import annotations

from pathlib import Path

from siffs.integrity.xdg import cache_dir, private_dir

#: Default size limit of the blob cache (SIFFS_CACHE_LIMIT_MIB overrides it): a few images.
LIMIT_MIB = 4096


def blob_cache_dir() -> Path:
    """The cache root; blobs live in ``blobs/sha256/<hex>`` below it, partial ones in ``…/tmp``."""
    return private_dir(cache_dir() / "registry")


def blob_directory() -> Path:
    """The directory of finished blobs (what the size limit applies to)."""
    return cache_dir() / "registry" / "blobs" / "sha256"
