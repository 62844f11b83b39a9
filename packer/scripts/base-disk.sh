#!/usr/bin/env bash
# The base disk Packer starts from: Debian 12 made with debootstrap (no ISO or cloud image is downloaded), booting
# headless on a serial console with extlinux, DHCP on the first NIC, and an SSH server that accepts only the
# per-build key handed in through QEMU's fw_cfg (see files/base/ce-build-key). No password works on it.
#
#   packer/scripts/base-disk.sh OUT.qcow2      # OUT becomes a symlink to the cached disk
#
# ce's run-time packages (../debian-packages.txt, image-packages.txt) are installed here, natively in a chroot: under
# TCG in the build VM the same apt-get takes 20+ minutes; provision.sh then finds them installed.
# The disk is cached under $CE_IMAGE_CACHE (default ~/.cache/ce/image) by a hash of everything that goes into it:
# this script (less its comments), files/base/, both package lists, the suite, the mirrors and the size. FORCE=1
# rebuilds it.
# Needs root (debootstrap, chroot) and libguestfs (one appliance launch lays out the disk).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: base-disk.sh OUT.qcow2}
suite=${CE_DEBIAN_SUITE:-bookworm}
size=${CE_BASE_DISK_SIZE:-4G}
cache=${CE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ce/image}
packages=linux-image-amd64,systemd-sysv,udev,kmod,dbus,openssh-server,ifupdown,isc-dhcp-client,iproute2,extlinux,fdisk

# Mirrors come from the host's own apt configuration unless given.
apt_site() { apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
             awk -v r="$1" '$2 == r { print $1; exit }'; }
mirror=${CE_DEBIAN_MIRROR:-$(apt_site "$suite")}
security=${CE_DEBIAN_SECURITY_MIRROR:-$(apt_site "$suite-security")}
[ -n "$mirror" ] || { echo "base-disk: no apt source for $suite on this host; set CE_DEBIAN_MIRROR" >&2; exit 1; }

ce_packages=$(grep -hv '^\s*#' "$here/../debian-packages.txt" "$here/image-packages.txt" | tr -s ' \n' ' ')
key=$( { grep -v '^\s*#' "$0"; find "$here/files/base" -type f | sort | xargs cat; echo "$ce_packages";
         echo "$suite $size $mirror $security $packages"; } | sha256sum | cut -c1-16)
disk=$cache/base-$key.qcow2
mkdir -p "$cache" "$(dirname "$out")"
if [ -s "$disk" ] && [ -z "${FORCE:-}" ]; then
    echo "base-disk: cached $disk"
    ln -sfn "$disk" "$out"
    exit 0
fi

work=$(mktemp -d "$cache/base-work.XXXXXX")
unmount() { for m in dev/pts dev sys proc; do ! mountpoint -q "$work/root/$m" || umount -l "$work/root/$m"; done; }
cleanup() {
    unmount
    if grep -q " $work/" /proc/mounts; then echo "base-disk: $work is still mounted; left in place" >&2; return; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
root=$work/root
start=$SECONDS

echo "base-disk: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }

{
    echo "deb $mirror $suite main"
    echo "deb $mirror $suite-updates main"
    [ -z "$security" ] || echo "deb $security $suite-security main"
} > "$root/etc/apt/sources.list"
echo "base-disk: ce's packages: $ce_packages"
for m in proc sys dev dev/pts; do mount --bind "/$m" "$root/$m"; done
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"     # start no service inside the chroot
chmod +x "$root/usr/sbin/policy-rc.d"
{ chroot "$root" apt-get update -q &&
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -q &&
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends $ce_packages
} > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; exit 1; }
rm -f "$root/usr/sbin/policy-rc.d"
unmount

printf 'LABEL=root / ext4 errors=remount-ro 0 1\n' > "$root/etc/fstab"
printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' > "$root/etc/network/interfaces"
echo ce > "$root/etc/hostname"
: > "$root/etc/machine-id"                         # a fresh id on every first boot
chroot "$root" passwd --lock root > /dev/null
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n' \
    > "$root/etc/ssh/sshd_config.d/ce-build.conf"
rm -f "$root"/etc/ssh/ssh_host_*                    # regenerated at boot by ce-build-key; never cached
install -m 0755 "$here/files/base/ce-build-key" "$root/usr/local/sbin/ce-build-key"
install -m 0644 "$here/files/base/ce-build-key.service" "$root/etc/systemd/system/ce-build-key.service"
chroot "$root" systemctl enable ce-build-key.service > /dev/null 2>&1

# extlinux boots the /vmlinuz and /initrd.img links the kernel package keeps current.
mkdir -p "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<'X'
DEFAULT linux
TIMEOUT 1
PROMPT 0
LABEL linux
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=root ro console=tty0 console=ttyS0,115200n8 net.ifnames=0
X
test -e "$root/vmlinuz" -a -e "$root/initrd.img" || { echo "base-disk: /vmlinuz or /initrd.img missing" >&2; exit 1; }
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
echo "base-disk: root tree $(du -sm "$root" | cut -f1) MiB after $((SECONDS - start)) s"

tar -C "$root" --numeric-owner --xattrs --acls -cf "$work/root.tar" .
rm -rf "$root"
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
[ -e /dev/kvm ] && [ "${CE_GUEST_ACCEL:-tcg}" = kvm ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
qemu-img create -q -f qcow2 "$work/disk.qcow2" "$size"
guestfish --format=qcow2 -a "$work/disk.qcow2" <<X
run
part-disk /dev/sda mbr
part-set-bootable /dev/sda 1 true
mkfs ext4 /dev/sda1 label:root
mount /dev/sda1 /
tar-in $work/root.tar / xattrs:true acls:true
command "extlinux --install /boot/extlinux"
copy-file-to-device /usr/lib/EXTLINUX/mbr.bin /dev/sda size:440
umount-all
X
mv "$work/disk.qcow2" "$disk.partial" && mv "$disk.partial" "$disk"
find "$cache" -maxdepth 1 -name 'base-*.qcow2' ! -name "base-$key.qcow2" -delete     # older inputs' disks
ln -sfn "$disk" "$out"
echo "base-disk: built $disk ($(du -m "$disk" | cut -f1) MiB) in $((SECONDS - start)) s"
