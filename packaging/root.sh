#!/usr/bin/env bash
# packaging/root.sh DEB [PACKAGE...]: the smallest Debian 12 a user could install DEB on, cached.
#
# Prints the path of a debootstrapped root holding Debian's minbase, systemd (so that the root
# boots with systemd-nspawn -b, and the package's systemd integration has something to talk
# to) and exactly the packages DEB declares in Depends (first alternative, versions ignored),
# nothing else. A run time need the package does not declare then shows as a failure in the
# tests that install DEB there (packaging/test.sh, tests/systemd.rs), as it would on a user's
# minimal image. PACKAGEs are added on top (tests/systemd.rs adds Debian's rpm to install the
# .rpm under systemd). The root is never modified by its users: they copy it or lay an overlay
# on it.
#
# Cached under $GATEWAY_AGENT_CACHE/debootstrap (default ~/.cache/gateway-agent), one root per
# set of dependencies: the first run for a set takes a few minutes (debootstrap from
# DEBIAN_MIRROR, default deb.debian.org), later runs print the path at once. Needs root.
set -euo pipefail

CACHE=${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

fail() {
    echo "packaging/root.sh: $*" >&2
    exit 1
}

[ "$#" -ge 1 ] || fail "usage: packaging/root.sh <gateway-agent .deb> [package...]"
DEB=$1
shift
[ -f "$DEB" ] || fail "$DEB: no such package; build it with 'make package'"
[ "$(id -u)" = 0 ] || fail "debootstrap needs root"
command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap (scripts/setup.sh does)"

# "libc6 (>= 2.34), ca-certificates, procps | foo" -> "ca-certificates libc6 procps"
depends=$(dpkg-deb -f "$DEB" Depends) || fail "cannot read Depends of $DEB"
mapfile -t deps < <(echo "$depends" | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' | grep -v '^$' | sort -u)
include=systemd
for d in "${deps[@]}" "$@"; do
    include="$include,$d"
done
ROOT=$CACHE/debootstrap/$SUITE-minbase-$(echo "$include" | tr ',' '+')

mkdir -p "$CACHE/debootstrap"
# Two test runs may want the same root at once: one builds it, the other waits.
exec 9>"$CACHE/debootstrap/.lock"
flock 9
if [ ! -x "$ROOT/usr/bin/dpkg" ]; then
    echo "packaging/root.sh: debootstrap $SUITE minbase + $include (a few minutes, once)" >&2
    rm -rf "$ROOT.tmp"
    debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOT.tmp" "$DEBIAN_MIRROR" >"$ROOT.log" 2>&1 ||
        fail "debootstrap $SUITE from $DEBIAN_MIRROR failed: see $ROOT.log (set DEBIAN_MIRROR for another mirror)"
    # apt's downloaded .debs: 100 MB that nothing reads again.
    rm -rf "$ROOT.tmp"/var/cache/apt/archives/*.deb
    mv "$ROOT.tmp" "$ROOT"
fi
echo "$ROOT"
