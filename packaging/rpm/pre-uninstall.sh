# gateway-agent %preun ($1: 0 = removal, 1 = upgrade). Equivalent of %systemd_preun: on removal
# only, disable and stop the service. That is a real stop: the agent hands its routes to its
# successor before it exits. On upgrade nothing happens here (see %postun).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now gateway-agent.service >/dev/null 2>&1 || :
fi
exit 0
