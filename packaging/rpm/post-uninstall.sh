# gateway-agent %postun ($1: 0 = removal, >= 1 = upgrade; the upgrade restart is in %post).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    # The agent's state and runtime directories (StateDirectory=, RuntimeDirectory=); an edited
    # config stays behind as config.toml.rpmsave, as rpm does for every %config file.
    rm -rf /var/lib/gateway-agent /run/gateway-agent
    # rpm removes only directories a package owns, and cargo-generate-rpm 0.21.1 cannot declare
    # one (its `dir = true` assets fail the build). rmdir removes each only when empty, so a
    # directory that zsh, fish or the admin (config.toml.rpmsave) still uses stays.
    for dir in /etc/gateway-agent /usr/share/doc/gateway-agent \
        /usr/lib/systemd/networkd.conf.d \
        /usr/share/zsh/site-functions /usr/share/zsh \
        /usr/share/fish/vendor_completions.d /usr/share/fish; do
        rmdir "$dir" 2>/dev/null || :
    done
fi
exit 0
