# gateway-agent %postun ($1: 0 = removal, >= 1 = upgrade; the upgrade restart is in %post).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    # The agent's state and runtime directories (StateDirectory=, RuntimeDirectory=); an edited
    # config stays behind as config.toml.rpmsave, as rpm does for every %config file.
    rm -rf /var/lib/gateway-agent /run/gateway-agent
fi
exit 0
