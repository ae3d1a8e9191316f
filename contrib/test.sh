#!/usr/bin/env bash
# The README's second command (and what CI runs): set everything up, then run the linters,
# the type checker and the whole test suite. Any failure, or no test collected, fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/install.sh
# Debian CI images have /dev/fuse as 0600 (no udev); a desktop has 0666. Unprivileged
# mount tests need the desktop situation.
if [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then chmod 666 /dev/fuse; fi
.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collects no test: with set -e that fails the run, as it should.
.venv/bin/pytest "$@"
