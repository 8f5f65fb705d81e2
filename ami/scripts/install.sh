#!/usr/bin/env bash
# Runs on the Packer build instance (as root): installs the package uploaded to /tmp, enables
# the service for the next boots, and proves it is NOT running: a gateway-agent on the build
# instance would claim ENIs and steer routes of whatever group the config named.
set -euo pipefail

if [ -f /tmp/gateway-agent.rpm ]; then
    # dnf resolves the glibc requirement against the image's own repositories.
    dnf install -y /tmp/gateway-agent.rpm
    rm -f /tmp/gateway-agent.rpm
elif [ -f /tmp/gateway-agent.deb ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/gateway-agent.deb
    rm -f /tmp/gateway-agent.deb
else
    echo "install.sh: no /tmp/gateway-agent.rpm or /tmp/gateway-agent.deb: the file provisioner did not upload the package; check -var rpm_path / deb_path" >&2
    exit 1
fi

# The .rpm follows the distribution's preset (off for a new service); the .deb enables it.
systemctl enable gateway-agent.service

if systemctl is-active --quiet gateway-agent.service; then
    echo "install.sh: gateway-agent is running on the build instance; it must not be (is a config baked into the image?). Stopping the build." >&2
    systemctl stop gateway-agent.service
    exit 1
fi
# The packaged config is deliberately unconfigured; gateways get theirs from user data.
if gateway-agent check-config >/dev/null 2>&1; then
    echo "install.sh: /etc/gateway-agent/config.toml is already valid on the image; every gateway would share it. Remove it from the image and pass it in user data instead." >&2
    exit 1
fi
gateway-agent version
systemctl is-enabled gateway-agent.service
