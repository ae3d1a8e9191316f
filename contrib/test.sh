#!/usr/bin/env bash
# The README's second command (and what CI runs): set everything up, then run the linters,
# the type checker and the whole test suite. Any failure, or no test collected, fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/install.sh
.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collects no test: with set -e that fails the run, as it should.
.venv/bin/pytest "$@"
