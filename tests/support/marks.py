"""How the markers get onto tests (registered in pyproject.toml): each folder's conftest.py marks every test below
it (``folder_marker``), and tests/conftest.py marks any test by the shared fixtures it uses (``FIXTURE_MARKS``), so a
test needing smbd, the step server or an appliance is marked wherever it lives."""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_MARKS = {"samba": pytest.mark.smb, "full_samba": pytest.mark.smb, "pki": pytest.mark.server,
                 "appliance": pytest.mark.slow}


def folder_marker(conftest_file: str, mark: pytest.MarkDecorator):
    """A ``pytest_collection_modifyitems`` hook for a folder's conftest.py: ``mark`` on every test in that folder.
    (Collection hooks see every item of the session, hence the test of the path.)"""
    folder = Path(conftest_file).resolve().parent

    def pytest_collection_modifyitems(items) -> None:
        for item in items:
            if item.path.is_relative_to(folder):
                item.add_marker(mark)
    return pytest_collection_modifyitems


def mark_by_fixtures(items) -> None:
    for item in items:
        for fixture in set(getattr(item, "fixturenames", ())) & FIXTURE_MARKS.keys():
            item.add_marker(FIXTURE_MARKS[fixture])
