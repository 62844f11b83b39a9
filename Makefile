# ce — two commands set everything up on a fresh Debian 12 machine:  make setup && make test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export LIBGUESTFS_BACKEND ?= direct

.PHONY: setup apt venv images test test-fast inspect-sample plan-sample test-faults clean clean-images bench bench-large image image-test

setup: apt venv images

apt:
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $$(grep -hv '^\s*#' debian-packages.txt debian-packages-test.txt)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m compileall -q ce steps > /dev/null    # bytecode, as the image's wheel install has (PYTHONDONTWRITEBYTECODE may be set)
	touch $@

images: venv
	$(PY) -m images build

test: venv images
	$(PY) -m pytest tests

# the fault suite (tests/faults) in full: crash injection at every second libguestfs call of a prepare's apply
# (>= 50 kill points; slow, ~1 h under TCG), byte moves killed in every phase at 10/50/90 %, the bad disks, every
# hostile value run to its end, the secrets sweep
test-faults: venv images
	$(PY) -m pytest -s tests/faults --fault-points=all --fault-bytes=all --fault-requests=all

# unit-speed tests only: no libguestfs appliance, smbd, step server, fault suite or VM image (markers: pyproject.toml)
test-fast: venv
	$(PY) -m pytest tests -m 'not slow and not smb and not server and not faults and not image'

inspect-sample: venv images
	$(VENV)/bin/ce inspect images/build/win2019-vda2203-pvs.qcow2

# the main job on an embedded default: a dry run of a prepare with every first-boot option (disk unchanged)
plan-sample: venv images
	$(VENV)/bin/ce plan --job examples/prepare-mcs.json images/build/win2016-vda1912.qcow2

# ce vs the physical limit, side by side on the same data (a few minutes); one script per line
BENCH_SCRIPTS := bench/disks.py bench/hashing.py bench/load.py bench/load_export.py bench/slowclients.py bench/wan.py bench/child.py
bench: venv
	@set -e; for script in $(BENCH_SCRIPTS); do echo "== $$script"; $(PY) $$script; done

# the byte paths at real sizes: bench/disks.py and bench/hashing.py at 1, 4 and 8 GiB, seconds per GiB per size and
# the ratios against qemu-img convert, cp, smbclient put, md5sum and sha256sum side by side (about two hours here;
# up to ~32 GiB of scratch in $CE_SCRATCH or /var/tmp at a time, removed after)
BENCH_LARGE_MB := 1024,4096,8192
bench-large: venv
	@set -e; echo "== bench/disks.py"; $(PY) bench/disks.py --size-mb $(BENCH_LARGE_MB) --skip export-qcow2; \
	echo "== bench/hashing.py"; $(PY) bench/hashing.py --size-mb $(BENCH_LARGE_MB)

# The CE VM image (packer/README.md): debootstrap base disk (cached), packer build under TCG, per-platform outputs
image: venv
	PYTHON=$(PY) packer/scripts/build-image.sh

# boots build/image/out/ce.qcow2 with a config drive and a sample disk, drives its API over mTLS (slow: nested TCG)
image-test: venv images
	CE_IMAGE_TEST=1 $(PY) -m pytest tests/image/test_image_boot.py -v

clean-images:
	rm -rf images/build

clean: clean-images
	rm -rf $(VENV) *.egg-info
