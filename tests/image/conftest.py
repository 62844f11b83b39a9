"""The CE VM image: the Packer template and its boot-time scripts (part of `make test`), and the built image booted
under qemu (only with CE_IMAGE_TEST=1, which `make image-test` sets). Marked ``image``."""
import pytest

from tests.support.marks import folder_marker

pytest_collection_modifyitems = folder_marker(__file__, pytest.mark.image)
