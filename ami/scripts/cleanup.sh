#!/usr/bin/env bash
# Runs last on the Packer build instance (as root): removes everything that identifies the build
# instance, so each gateway boots as a new machine: a shared machine-id breaks journald and
# DHCP client ids, shared SSH host keys let one gateway impersonate another, and stale
# cloud-init state makes the first boot skip user data (the gateway's config).
set -euo pipefail

systemctl stop gateway-agent.service 2>/dev/null || true
rm -rf /var/lib/gateway-agent /run/gateway-agent

# cloud-init: forget this instance (the next boot is a first boot, runs user data), and its logs.
if command -v cloud-init >/dev/null; then
    cloud-init clean --logs --seed
fi
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance

# The build's SSH identity: host keys (regenerated at first boot) and Packer's temporary key.
rm -f /etc/ssh/ssh_host_*
for home in /root /home/*; do
    rm -f "$home/.ssh/authorized_keys" "$home/.bash_history"
done

# Empty, not absent: systemd then generates a new machine-id at first boot.
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -sf /etc/machine-id /var/lib/dbus/machine-id 2>/dev/null || true

# DHCP leases and logs of the build instance.
rm -rf /var/lib/dhclient/* /var/lib/dhcp/*.leases /var/lib/NetworkManager/*.lease /run/systemd/netif/leases/*
rm -rf /var/log/journal/* /var/log/amazon/ssm/*
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /var/tmp/*

# Package caches: smaller image, nothing of the build's mirror choice.
if command -v dnf >/dev/null; then dnf clean all; fi
if command -v apt-get >/dev/null; then apt-get clean; rm -rf /var/lib/apt/lists/*; fi

sync
