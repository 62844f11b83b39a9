#!/usr/bin/env bash
# Runs inside the build VM as root (Packer shell provisioner). Uploaded beforehand to /tmp/ce-build:
# files/ (units, firewall, journald, ce-bootstrap), README.md, debian-packages.txt + image-packages.txt and wheels/
# (the ce wheel built from this checkout plus its Python dependencies).
set -euo pipefail
src=/tmp/ce-build
export DEBIAN_FRONTEND=noninteractive

# ce's run-time packages plus what the image adds (firewall, config-drive readers). base-disk.sh already installed
# them natively, so this is quick unless a list changed since the base disk was cached.
packages=$(grep -hv '^\s*#' "$src/debian-packages.txt" "$src/image-packages.txt" | tr -s ' \n' ' ')

echo "provision: apt-get install $packages"
# The build VM is thrown away if it crashes, so dpkg need not fsync every file (5-10x slower under TCG), and the
# man page index is never read on a worker without logins.
apt_options=(-y -qq --no-install-recommends -o Dpkg::Options::=--force-unsafe-io)
rm -f /var/lib/man-db/auto-update
apt-get update -qq
apt-get install "${apt_options[@]}" $packages > /tmp/apt.log 2>&1 ||
    { tail -30 /tmp/apt.log; exit 1; }
apt-get upgrade "${apt_options[@]}" >> /tmp/apt.log 2>&1 || { tail -30 /tmp/apt.log; exit 1; }
sync

echo "provision: ce into /opt/ce (venv over Debian's guestfs and hivex bindings)"
python3 -m venv --system-site-packages /opt/ce
/opt/ce/bin/pip install -q --no-index --find-links "$src/wheels" ce
ln -sfn /opt/ce/bin/ce /usr/local/bin/ce
/opt/ce/bin/python -c 'import guestfs, hivex, ce.cli, ce.disks'
/opt/ce/bin/ce --help > /dev/null

echo "provision: ce service user, units, firewall, journald"
getent group kvm > /dev/null || groupadd --system kvm
id ce > /dev/null 2>&1 || useradd --system --home-dir /var/lib/ce --no-create-home --shell /usr/sbin/nologin \
    --groups disk,kvm --comment "ce worker" ce
install -d -m 0700 -o ce -g ce /var/lib/ce /var/lib/ce/payloads /var/cache/ce
install -m 0755 "$src/files/ce-bootstrap.py" /usr/local/sbin/ce-bootstrap
install -m 0644 "$src/files/ce-bootstrap.service" "$src/files/ce.service" /etc/systemd/system/
install -m 0755 "$src/files/nftables.conf" /etc/nftables.conf
install -d /etc/systemd/journald.conf.d /usr/share/doc/ce
install -m 0644 "$src/files/journald.conf" /etc/systemd/journald.conf.d/ce.conf
install -m 0644 "$src/README.md" /usr/share/doc/ce/image.md
nft -c -f /etc/nftables.conf
systemctl enable nftables.service ce-bootstrap.service ce.service
# Headless worker: no login prompts anywhere (root is locked and no other account has a password).
systemctl mask getty.target serial-getty@ttyS0.service getty@tty1.service
echo "provision: done ($(du -sm /opt/ce | cut -f1) MiB in /opt/ce)"
