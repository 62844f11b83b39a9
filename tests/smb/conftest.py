"""SMB tests against a real smbd on 127.0.0.1 (tests/conftest.py's ``samba``, one per module): ce.smb and its wire
layer, containers streamed onto a share, the disk steps (export, publish, convert, reverseImage, hash) and their
command line, the disk bench. Every test here is marked ``smb``."""
import pytest

from tests.support.marks import folder_marker

pytest_collection_modifyitems = folder_marker(__file__, pytest.mark.smb)
