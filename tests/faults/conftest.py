"""The fault suite: prepares killed mid-apply, byte moves killed mid-phase, bad disks, hostile requests, a secrets
sweep. Marked ``faults`` (most also need an appliance, smbd or the server: those marks come too). How deep each
goes is a pytest option (tests/support/faults.py): ``--fault-points=N|all``, ``--fault-bytes=sample|all``,
``--fault-requests=sample|all``; `make test-faults` passes all three as ``all``."""
import pytest

from tests.support.marks import folder_marker

pytest_collection_modifyitems = folder_marker(__file__, pytest.mark.faults)
