#!/usr/bin/env bash
# `make image`: base disk (cached) -> wheelhouse of this checkout -> per-build SSH key -> packer build -> outputs.
# Everything lands in $CE_IMAGE_DIR (default build/image): out/ holds the image and its per-platform conversions,
# times.json the measured durations. The build key is deleted whatever happens.
#   CE_IMAGE_ACCEL=kvm   use KVM where nested virtualisation works (default tcg)
#   CE_IMAGE_FORMATS     JSON list, e.g. '["qcow2"]' (default: every platform)
#   CE_BASE_DISK         use this base disk instead of scripts/base-disk.sh's cached one
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${CE_IMAGE_DIR:-build/image}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export CHECKPOINT_DISABLE=1 LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
command -v packer > /dev/null || { echo "build-image: packer is not installed (make setup installs it)" >&2; exit 1; }

t0=$SECONDS
if [ -n "${CE_BASE_DISK:-}" ]; then              # an existing base disk (e.g. an older cached one), as it is
    ln -sfn "$(readlink -f "$CE_BASE_DISK")" "$dir/base.qcow2"
else
    packer/scripts/base-disk.sh "$dir/base.qcow2"
fi
t_base=$((SECONDS - t0))

t0=$SECONDS
rm -rf "$dir/wheels"
"$python" -m pip wheel -q --wheel-dir "$dir/wheels" . > "$dir/wheels.log" 2>&1 || { tail -20 "$dir/wheels.log" >&2; exit 1; }
t_wheels=$((SECONDS - t0))

keys=$(mktemp -d)
trap 'rm -rf "$keys"' EXIT
ssh-keygen -q -t ed25519 -N '' -C ce-build -f "$keys/build_key"

rm -rf "$dir/out"
t0=$SECONDS
args=(-var "base_image=$(readlink -f "$dir/base.qcow2")" -var "output_dir=$dir/out" -var "wheelhouse=$dir/wheels"
      -var "ssh_private_key_file=$keys/build_key" -var "ssh_public_key_file=$keys/build_key.pub"
      -var "serial_log=$dir/build-serial.log" -var "python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
      -var "accelerator=${CE_IMAGE_ACCEL:-tcg}")
[ -z "${CE_IMAGE_FORMATS:-}" ] || args+=(-var "formats=$CE_IMAGE_FORMATS")
PACKER_LOG=1 PACKER_LOG_PATH="$dir/packer.log" packer build -color=false "${args[@]}" packer/ce.pkr.hcl
t_packer=$((SECONDS - t0))

size=$(stat -c %s "$dir/out/ce.qcow2")
printf '{"base_disk_seconds": %d, "wheels_seconds": %d, "packer_build_seconds": %d, "qcow2_bytes": %d}\n' \
    "$t_base" "$t_wheels" "$t_packer" "$size" > "$dir/times.json"
echo "build-image: base disk ${t_base}s, wheels ${t_wheels}s, packer build + outputs ${t_packer}s;" \
     "ce.qcow2 $((size / 1048576)) MiB -> $dir/out"
