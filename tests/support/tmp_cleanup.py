"""A pytest plugin: each run removes its own temporary folder when it ends, passed or failed.

pytest's ``tmp_path_retention_policy = "none"`` looked like this, but it also stops pytest
from locking the run's numbered folder (``pytest-of-USER/pytest-N``), and at its end every
run removes every unlocked numbered folder: two runs on one machine deleted each other's
``tmp_path`` mid-test. So pyproject keeps a policy that locks (``failed``, which also removes a
passing test's folder at once), and this fixture removes only this run's folder at the end.
A ``--basetemp`` given on the command line is left alone: whoever chose it wants to look.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def remove_this_runs_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if request.config.option.basetemp is None:
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)
