# gateway-agent %post ($1: 1 = first install, >= 2 = upgrade). Hand-written equivalent of
# %systemd_post / %systemd_postun_with_restart (cargo-generate-rpm expands no macros).
#
# First install follows the RPM distributions' rule: the distribution preset decides whether a
# new service is enabled and nothing is started; the admin runs
# `systemctl enable --now gateway-agent` once the config is set.
#
# Upgrade: restart into the new binary without moving routes. While
# /run/gateway-agent/restart exists, a SIGTERM makes the agent exit WITHOUT handing its routes
# to a peer, and the new process adopts the state as it finds it; a plain restart would be a
# planned exit, every route moved to the successor and back for nothing. This runs here, in the
# NEW package's %post (its files are already in place), rather than in %postun, which is the
# OLD package's script and could not know a newer agent's restart protocol.
# /run/gateway-agent exists only while the service runs (RuntimeDirectory=); try-restart does
# nothing when it is stopped; the marker is removed in every case so that a later real stop
# still hands its routes over.
# The service's user (User= in the unit; packaging/sysusers.d/gateway-agent.conf). Kept on erase: a file it
# owned could otherwise pass to a later user.
systemd-sysusers gateway-agent.conf 2>/dev/null ||
    getent passwd gateway-agent >/dev/null ||
    useradd --system --user-group --home-dir / --no-create-home \
        --shell /sbin/nologin gateway-agent || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl --no-reload preset gateway-agent.service >/dev/null 2>&1 || :
    else
        # Never `touch` there: the directory belongs to the agent's user, who could have
        # planted a link at the marker's name. mktemp makes a new file (O_EXCL), mv -T renames
        # it over the name (a link is replaced, not followed).
        if [ -d /run/gateway-agent ] && [ ! -L /run/gateway-agent ]; then
            tmp=$(mktemp /run/gateway-agent/.restart.XXXXXX) &&
                { mv -fT "$tmp" /run/gateway-agent/restart || rm -f "$tmp"; }
        fi
        systemctl try-restart gateway-agent.service >/dev/null 2>&1 || :
        rm -f /run/gateway-agent/restart
    fi
fi
exit 0
