#!/usr/bin/env bash
# scripts/test-setup.sh: proves that scripts/setup.sh installs every command `make test` and
# `make demo` run, on a machine that has only Debian's base, Rust and git.
#
# In a copy of a debootstrapped Debian 12 minbase root (the one packaging/test.sh caches; made
# here if missing; the cache itself is never changed), with this checkout mounted read-only at
# /src and the host's Rust toolchain (~/.rustup, ~/.cargo) mounted read-only at the same paths:
#   1. scripts/setup.sh runs as on a fresh machine: apt-get installs the Debian packages,
#      promtool comes out of Debian's prometheus package, pip fills the lab and tools venvs;
#   2. scripts/check-tools.py, run inside the root, derives every command from the Makefile, the
#      scripts, the lab and the tests and finds each one there.
# The cargo tools (cargo-deny, cargo-fuzz, cargo-deb, cargo-generate-rpm) are compiled by setup
# on the host (`make test` runs it first) and seen in the root through the read-only ~/.cargo:
# compiling them again in every run would take ~8 min of the 2 cores.
#
# The .debs are cached between runs ($CACHE/setup-test/apt): a warm run takes ~1.5 min,
# a cold one ~3 (README "Quick start"). Needs root (chroot, mounts) and the Debian mirror and PyPI.
#
# Environment: GATEWAY_AGENT_CACHE (default ~/.cache/gateway-agent), DEBIAN_MIRROR,
# KEEP_ROOT=1 to leave the root for a look (its path is printed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# The same pristine root as packaging/test.sh: minbase plus systemd and procps.
PRISTINE=$CACHE/debootstrap/$SUITE-minbase-systemd
START=$SECONDS

say() { printf 'test-setup: [%4ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { echo "test-setup: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot, mounts)"
command -v debootstrap >/dev/null || fail "debootstrap is not installed; run scripts/setup.sh"
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_DIR=${CARGO_HOME:-$HOME/.cargo}
[ -x "$CARGO_DIR/bin/cargo" ] || fail "no cargo in $CARGO_DIR/bin: the root borrows the host's rustup toolchain"

if [ ! -x "$PRISTINE/usr/bin/dpkg" ]; then
    say "debootstrap $SUITE minbase (once; cached in $PRISTINE)"
    rm -rf "$PRISTINE.tmp"
    mkdir -p "$CACHE/debootstrap"
    debootstrap --variant=minbase --include=systemd,procps "$SUITE" "$PRISTINE.tmp" "$DEBIAN_MIRROR" \
        >"$CACHE/debootstrap/log" 2>&1 ||
        fail "debootstrap $SUITE from $DEBIAN_MIRROR failed: see $CACHE/debootstrap/log"
    mv "$PRISTINE.tmp" "$PRISTINE"
fi

WORK=$(mktemp -d "$CACHE/setup-test.XXXXXX")
R=$WORK/root
MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    if [ "${KEEP_ROOT:-0}" = 1 ]; then
        echo "test-setup: the root is left in $R"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
# mount_at SRC DEST [ro]: a bind mount, read-only with "ro".
mount_at() {
    mkdir -p "$2"
    mount --bind "$1" "$2"
    MOUNTS+=("$2")
    if [ "${3:-}" = ro ]; then
        mount -o remount,bind,ro "$2"
    fi
}

say "copying the pristine root ($PRISTINE)"
cp -a "$PRISTINE" "$R"
cp /etc/resolv.conf "$R/etc/resolv.conf"
# Trust what the host trusts (a proxy's CA, where there is one), beside Debian's own bundle,
# which installing ca-certificates in the root rewrites.
HOST_CA=""
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$ca" ] && [ -f "$ca" ]; then
        cp "$ca" "$R/etc/host-ca.crt"
        HOST_CA=/etc/host-ca.crt
        break
    fi
done
mount -t proc proc "$R/proc" && MOUNTS+=("$R/proc")
mount_at /dev "$R/dev"
mount_at /sys "$R/sys" ro
mount_at "$ROOT" "$R/src" ro
mkdir -p "$R$RUSTUP_DIR" "$R$CARGO_DIR"
mount_at "$RUSTUP_DIR" "$R$RUSTUP_DIR" ro
mount_at "$CARGO_DIR" "$R$CARGO_DIR" ro
# Downloads survive the run: the next one installs the same packages without fetching them.
mkdir -p "$CACHE/setup-test/apt" "$CACHE/setup-test/pip"
mount_at "$CACHE/setup-test/apt" "$R/var/cache/apt/archives"
mount_at "$CACHE/setup-test/pip" "$R/root/.cache/pip"
# The pristine root's apt cleans its archive after each install (docker-clean-like configs
# are not there, but be explicit): keep the .debs.
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$R/etc/apt/apt.conf.d/99keep-debs"

in_root() {
    local env=(HOME=/root LANG=C.UTF-8 TERM=dumb
               PATH="$CARGO_DIR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
               RUSTUP_HOME="$RUSTUP_DIR" CARGO_HOME="$CARGO_DIR" RUSTUP_AUTO_INSTALL=0
               GATEWAY_AGENT_CACHE=/root/.cache/gateway-agent DEBIAN_FRONTEND=noninteractive)
    if [ -n "$HOST_CA" ]; then
        env+=(PIP_CERT="$HOST_CA" SSL_CERT_FILE="$HOST_CA" REQUESTS_CA_BUNDLE="$HOST_CA"
              CARGO_HTTP_CAINFO="$HOST_CA")
    fi
    if [ -n "${PIP_INDEX_URL:-}" ]; then env+=(PIP_INDEX_URL="$PIP_INDEX_URL"); fi
    chroot "$R" /usr/bin/env -i "${env[@]}" "$@"
}

# shellcheck disable=SC2016 # expanded by the root's shell
before=$(in_root sh -c 'for c in python3 make gcc ip packer shellcheck promtool; do command -v $c >/dev/null && printf "%s " $c; done; true')
say "before setup the root has: ${before:-none of python3 make gcc ip packer shellcheck promtool}"
say "scripts/setup.sh in the root (apt-get, apt-get download, pip; cargo tools seen through ~/.cargo)"
if ! in_root bash /src/scripts/setup.sh >"$WORK/setup.log" 2>&1; then
    tail -40 "$WORK/setup.log" >&2
    fail "scripts/setup.sh failed in a fresh root (its last lines above)"
fi
sed 's/^/    /' "$WORK/setup.log"
say "scripts/check-tools.py in the root"
if ! in_root python3 /src/scripts/check-tools.py; then
    fail "setup.sh left commands missing (above): add them to scripts/setup.sh"
fi
say "done: setup.sh installs everything the Makefile, its scripts, the lab and the tests run"
