#!/usr/bin/env bash
# Last provisioner: remove everything the build needed and the final image must not have. SSH goes entirely
# (server, build key, host keys, the fw_cfg key unit), then caches, build files, logs and the machine id.
# Packer still shuts the VM down over the session that is already open.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

systemctl disable ce-build-key.service
rm -f /etc/systemd/system/ce-build-key.service /usr/local/sbin/ce-build-key
apt-get purge -y -qq openssh-server openssh-sftp-server > /dev/null
apt-get autoremove --purge -y -qq > /dev/null
rm -rf /etc/ssh/sshd_config.d /etc/ssh/ssh_host_* /root/.ssh
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/ce-build /tmp/apt.log /tmp/*.sh /var/tmp/*
passwd --lock root > /dev/null
if awk -F: '$2 !~ /^[!*]/ && $2 != "" { bad = 1 } END { exit !bad }' /etc/shadow; then
    echo "finalize: an account still has a password" >&2
    exit 1
fi
! dpkg -l 'openssh-server' 2>/dev/null | grep -q '^ii' || { echo "finalize: openssh-server still installed" >&2; exit 1; }

journalctl --flush --rotate > /dev/null 2>&1 || true
rm -rf /var/log/journal/* /var/log/*.log /var/log/apt/* /var/cache/debconf/*-old
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
fstrim -av || true
echo "finalize: SSH removed, build credentials and logs gone"
