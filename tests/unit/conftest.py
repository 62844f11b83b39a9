"""Unit tests: ce's pieces on their own -- registry values and hive headers (hivex, regipy), disk formats and layouts
that need only qemu-img, the error catalogue, NTFS flags from a sample's bytes, sequences. No smbd, no step server;
the few tests here that commit into an NTFS image launch an appliance and are marked ``slow``.

No folder marker: what runs here is what `make test-fast` is for. A unit test that asks for ``samba``, ``pki`` or
``appliance`` still gets ``smb`` / ``server`` / ``slow`` from tests/conftest.py."""
