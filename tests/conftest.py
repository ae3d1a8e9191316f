import pytest

from tests.support.shared import CONFORMANCE


def pytest_configure(config):
    if not CONFORMANCE.is_dir():
        raise pytest.UsageError(
            f"the conformance corpus is missing at {CONFORMANCE}; set SIFFS_SHARED to the shared/ folder"
        )
