"""The step server as a real process: `ce serve` under gunicorn with mutual TLS and a token (tests/conftest.py's
``pki``, ``server`` and ``api``), its callbacks, the schema fuzz and the load bench. Marked ``server``."""
import pytest

from tests.support.marks import folder_marker

pytest_collection_modifyitems = folder_marker(__file__, pytest.mark.server)
