"""What the tests share besides fixtures: a throwaway smbd (smbserver), test certificates (certs), the step server
harness (server_harness), the shared appliance (appliance) and the fault suite's depth (faults). Fixtures that use them
are in tests/conftest.py and each folder's conftest.py."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]      # the checkout: tests/support/__init__.py -> the repository root
