#!/usr/bin/env bash
# packaging/test.sh: build the .deb and .rpm from this checkout and prove them.
#
#   packaging/test.sh               everything below (as root: apt, debootstrap, chroot)
#   packaging/test.sh --build-only  build, lint and analyse only (what `make package` runs)
#
# Steps: build the release binary and the man page/completions generator; build both packages;
# run shellcheck on the package scripts; lintian and rpmlint; systemd-analyze verify and security
# (exposure must be <= MAX_EXPOSURE); then, in a debootstrapped Debian 12 root (cached, holding
# minbase, systemd and the package's dependencies only: packaging/root.sh), install,
# edit the config, upgrade, remove and purge, for the .deb with dpkg and for the .rpm with
# `rpm --root`, once with systemd installed but not running (an image build or chroot: the
# scripts must not try to start anything) and once with a recording fake systemctl that stands
# for a running systemd (proves the start-on-install and the upgrade restart protocol).
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/gateway-agent/target), GATEWAY_AGENT_CACHE
# (default ~/.cache/gateway-agent: the debootstrap root lives there), DEBIAN_MIRROR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# The packaging tools are pinned so a re-run builds the same package; bump deliberately.
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
# Issue 7: `systemd-analyze security` exposure of the unit must stay at or below this.
MAX_EXPOSURE=2.5
UNIT=gateway-agent.service
OUT=$CARGO_TARGET_DIR/packages
BUILD_ONLY=0

case "${1:-}" in
    "") ;;
    --build-only) BUILD_ONLY=1 ;;
    *) echo "packaging/test.sh: unknown argument '$1'; use no argument or --build-only" >&2; exit 2 ;;
esac

cd "$ROOT"

T_START=$SECONDS
T_STEP=$SECONDS
STEP="start"
step() {
    local now=$SECONDS
    if [ "$STEP" != start ]; then
        printf '=== %-55s %4ds\n' "$STEP" $((now - T_STEP))
    fi
    STEP=$1
    T_STEP=$now
    printf '\n=== %s\n' "$STEP"
}
fail() {
    echo "packaging/test.sh: FAILED in '$STEP': $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
step "preflight: metadata, tools"
grep -q '^\[package\.metadata\.deb\]' Cargo.toml ||
    fail "Cargo.toml has no [package.metadata.deb]: append packaging/cargo-metadata.toml to the root Cargo.toml"
grep -q '"packaging/gen"' Cargo.toml ||
    fail "packaging/gen is not a workspace member: add \"packaging/gen\" to [workspace] members in Cargo.toml"

need_apt=()
command -v lintian >/dev/null || need_apt+=(lintian)
command -v rpmlint >/dev/null || need_apt+=(rpmlint)
command -v rpm >/dev/null || need_apt+=(rpm)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
if [ "$BUILD_ONLY" = 0 ]; then
    command -v debootstrap >/dev/null || need_apt+=(debootstrap)
    [ "$(id -u)" = 0 ] || fail "the install tests need root (debootstrap, chroot, rpm --root); run as root, or use --build-only"
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "missing tools: ${need_apt[*]}; install them with: apt-get install ${need_apt[*]}"
    echo "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null ||
        fail "apt-get install ${need_apt[*]} failed; see the messages above"
fi
installed_version() { cargo install --list | sed -n "s/^$1 v\([^:]*\):\$/\1/p"; }
if [ "$(installed_version cargo-deb)" != "$CARGO_DEB_VERSION" ]; then
    nice -n 10 cargo install --locked "cargo-deb@$CARGO_DEB_VERSION" ||
        fail "cargo install cargo-deb@$CARGO_DEB_VERSION failed; check network access to crates.io"
fi
if [ "$(installed_version cargo-generate-rpm)" != "$CARGO_GENERATE_RPM_VERSION" ]; then
    nice -n 10 cargo install --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION" ||
        fail "cargo install cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION failed; check network access to crates.io"
fi

# ---------------------------------------------------------------------------------------------
step "shellcheck: package scripts"
shellcheck -s sh debian/postinst debian/prerm debian/postrm packaging/rpm/*.sh ||
    fail "shellcheck found problems in the package scripts (above)"
shellcheck packaging/test.sh || fail "shellcheck found problems in packaging/test.sh (above)"

# ---------------------------------------------------------------------------------------------
step "cargo build --release (agent + packaging/gen)"
# Two cores: nice keeps an interactive machine usable during the ~7 minute cold build.
nice -n 10 cargo build --release --locked -p gateway-agent -p gateway-agent-gen ||
    fail "release build failed (above); 'cargo build --release -p gateway-agent' shows the same"
REL=$CARGO_TARGET_DIR/release
GEN=$REL/gen
rm -rf "$GEN"
"$REL/gateway-agent-gen" "$GEN" >/dev/null || fail "gateway-agent-gen could not write $GEN"
# -n: no name/timestamp in the header, so the same page gives the same .gz (reproducible).
gzip -9nf "$GEN"/man/*.1
VERSION=$("$REL/gateway-agent" version | awk '{print $2}')
[ -n "$VERSION" ] || fail "'gateway-agent version' printed no version"
changelog_version=$(dpkg-parsechangelog -l debian/changelog -S Version)
[ "$changelog_version" = "$VERSION-1" ] ||
    fail "debian/changelog's top entry is $changelog_version, the crate is $VERSION: add a '$VERSION-1' entry (dch -v $VERSION-1)"

# ---------------------------------------------------------------------------------------------
step "build packages: .deb (cargo-deb), .rpm (cargo-generate-rpm)"
rm -rf "$OUT"
mkdir -p "$OUT/upgrade"
# --no-build: the binary above is the one tested; cargo-deb strips it.
cargo deb --no-build -p gateway-agent -o "$OUT" >/dev/null ||
    fail "cargo deb failed (above); check [package.metadata.deb] in Cargo.toml"
# The same package one revision later, to test conffile handling on upgrade.
cargo deb --no-build -p gateway-agent --deb-revision 2 --fast -o "$OUT/upgrade" >/dev/null ||
    fail "cargo deb --deb-revision 2 failed (above)"
cargo generate-rpm -o "$OUT" >/dev/null ||
    fail "cargo generate-rpm failed (above); check [package.metadata.generate-rpm] in Cargo.toml"
cargo generate-rpm -s 'release = "2"' -o "$OUT/upgrade" >/dev/null ||
    fail "cargo generate-rpm (release 2) failed (above)"
only() {
    if [ "$#" != 1 ] || [ ! -e "$1" ]; then
        fail "expected exactly one package, found: $*"
    fi
    echo "$1"
}
DEB=$(only "$OUT"/gateway-agent_*.deb)
DEB2=$(only "$OUT"/upgrade/gateway-agent_*.deb)
RPM=$(only "$OUT"/gateway-agent-*.rpm)
RPM2=$(only "$OUT"/upgrade/gateway-agent-*.rpm)
stat -c '%9s bytes  %n' "$DEB" "$RPM"
# cargo-generate-rpm does not strip; the release profile must (`strip = true`).
file -L "$REL/gateway-agent" | grep -q 'not stripped' &&
    fail "$REL/gateway-agent is not stripped: set strip = true in [profile.release]"

# ---------------------------------------------------------------------------------------------
step "lintian (.deb)"
# Fails on errors and warnings. The info-level tags it prints (I:) are expected of a Rust binary
# built by cargo-deb and are left visible on purpose:
#   hardening-no-fortify-functions: Rust does not call the fortified (_chk) libc functions;
#   binary-has-unneeded-section .comment: rustc's/the linker's version note, ~100 bytes;
#   no-md5sums-control-file: cargo-deb 3.8 writes none, so debsums/dpkg --verify cannot check
#     the installed files (lintian: optional, info level);
#   package-supports-alternative-init-but-no-init.d-script: systemd only (Type=notify, watchdog).
lintian --display-info --fail-on error,warning "$DEB" ||
    fail "lintian reported errors or warnings (above): fix them, or justify an override in the package"

# ---------------------------------------------------------------------------------------------
step "rpmlint (.rpm)"
rpmlint_out=$(rpmlint -c packaging/rpmlint.toml "$RPM" 2>&1) || true
echo "$rpmlint_out"
echo "$rpmlint_out" | grep -Eq '^ *[0-9]+ packages and [0-9]+ specfiles checked; 0 errors, 0 warnings' ||
    fail "rpmlint reported errors or warnings (above): fix them, or justify each filter in packaging/rpmlint.toml"

# ---------------------------------------------------------------------------------------------
step "systemd-analyze security (offline)"
security=$(systemd-analyze security --offline=yes "systemd/$UNIT" 2>&1) ||
    fail "systemd-analyze security failed: $security"
exposure=$(echo "$security" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
echo "$security" | grep -v '^✓' | grep -v '^  ' || true
echo "exposure: $exposure (limit $MAX_EXPOSURE)"
[ -n "$exposure" ] || fail "could not read the exposure level from systemd-analyze security"
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
    fail "exposure $exposure > $MAX_EXPOSURE: tighten systemd/$UNIT (systemd-analyze security lists each setting)"

if [ "$BUILD_ONLY" = 1 ]; then
    step "done"
    echo "packages in $OUT; total $((SECONDS - T_START))s"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
step "debootstrap $SUITE root: minbase + systemd + the package's Depends (cached)"
# The smallest system the package could be installed on (packaging/root.sh): a run time need
# missing from Depends fails here, as it would on a user's minimal image.
PRISTINE=$(DEBIAN_MIRROR=$DEBIAN_MIRROR packaging/root.sh "$DEB") ||
    fail "packaging/root.sh could not make the $SUITE root (above)"
echo "root: $PRISTINE"

WORK=$(mktemp -d "$CACHE/pkgtest.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# A fresh copy of the pristine root for each test, so one test's leftovers cannot hide another's.
new_root() {
    local root=$WORK/$1
    cp -a "$PRISTINE" "$root"
    mkdir -p "$root/tmp/pkg"
    cp "$DEB" "$DEB2" "$RPM" "$RPM2" "$root/tmp/pkg/"
    echo "$root"
}
in_root() {
    local root=$1
    shift
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 chroot "$root" "$@"
}
# Every file except the package databases, logs and caches that any install legitimately changes,
# and the account databases' backups (passwd-, group-, shadow-, gshadow-) that adding the
# service's system user writes: the user itself stays on purge, as Debian does with system users.
snapshot() {
    (cd "$1" && find . -xdev \
        -path './etc/*-' -prune -o -path ./etc/.pwd.lock -prune -o \
        -path ./var/lib/dpkg -prune -o -path ./var/lib/rpm -prune -o -path ./var/log -prune -o \
        -path ./var/cache -prune -o -path ./tmp -prune -o -path ./usr/lib/sysimage/rpm -prune -o \
        -path ./var/lib/systemd/deb-systemd-helper-enabled -prune -o \
        -path ./var/lib/systemd/deb-systemd-helper-masked -prune -o -print | sort)
}
# -L too: enable symlinks are absolute, so from outside the root they dangle.
expect_file() { [ -e "$1$2" ] || [ -L "$1$2" ] || fail "$2 is missing after $3"; }
expect_no_file() {
    if [ -e "$1$2" ] || [ -L "$1$2" ]; then
        fail "$2 is still there after $3"
    fi
}
VALID_CONFIG='version = 1

[group]
name = "egress"   # set by packaging/test.sh
'
# A fake systemctl standing for a running systemd: logs each call with whether the restart
# marker existed at that moment, answers the queries deb-systemd-invoke makes.
install_fake_systemd() {
    local root=$1
    mkdir -p "$root/run/systemd/system"
    cat >"$root/usr/sbin/systemctl" <<'EOF'
#!/bin/sh
marker=absent
[ -e /run/gateway-agent/restart ] && marker=present
echo "systemctl $* marker=$marker" >>/tmp/systemctl.log
case " $* " in
    *" --version "*) echo "systemd 252 (252)" ;;
    *" is-enabled "*) echo enabled ;;
    *" is-active "*) exit 3 ;;
esac
exit 0
EOF
    chmod 755 "$root/usr/sbin/systemctl"
    cp "$root/usr/sbin/systemctl" "$root/usr/local/sbin/systemctl"
    : >"$root/tmp/systemctl.log"
}
expect_log() {
    grep -Eq "$2" "$1/tmp/systemctl.log" || {
        cat "$1/tmp/systemctl.log" >&2
        fail "expected a systemctl call matching '$2' $3 (the calls made are above)"
    }
}
expect_no_log() {
    ! grep -Eq "$2" "$1/tmp/systemctl.log" || {
        cat "$1/tmp/systemctl.log" >&2
        fail "unexpected systemctl call matching '$2' $3 (the calls made are above)"
    }
}

# What the agent's user (or its hook) could do in /run/gateway-agent, which it owns: a link at
# the marker's name to a file root would then create. The scripts must replace the link, never
# write through it.
plant_links() {
    local root=$1
    rm -f "$root/etc/planted-by-agent-user"
    ln -sfn /etc/planted-by-agent-user "$root/run/gateway-agent/restart"
}
expect_links_not_followed() {
    local root=$1
    if [ -e "$root/etc/planted-by-agent-user" ]; then
        fail "$2 followed a link planted at /run/gateway-agent/restart and created /etc/planted-by-agent-user as root"
    fi
}

# dpkg-query formats: ${Field} is dpkg's syntax, not the shell's.
# shellcheck disable=SC2016
CONFFILES_FMT='${Conffiles}\n' VERSION_FMT='${Version}'
DPKG=(dpkg --force-confdef --force-confold)
# --nodeps: the Debian root has glibc and /bin/sh, but no rpm database that says so.
# --force-debian: Debian's rpm refuses to install without it (it guards the host's dpkg).
# --dbpath: Debian's rpm defaults to ~/.rpmdb; inside the root, use the path RPM systems use.
RPM_FLAGS=(--nodeps)
rpm --help 2>&1 | grep -q -- --force-debian && RPM_FLAGS+=(--force-debian)
rpm_db() {
    local root=$1
    shift
    rpm --root "$root" --dbpath /var/lib/rpm "$@"
}
rpm_in() {
    local root=$1
    shift
    rpm_db "$root" "${RPM_FLAGS[@]}" "$@"
}
INSTALLED_FILES=(/usr/bin/gateway-agent /etc/gateway-agent/config.toml
    /usr/share/man/man1/gateway-agent.1.gz /usr/share/bash-completion/completions/gateway-agent
    /usr/share/fish/vendor_completions.d/gateway-agent.fish /usr/share/doc/gateway-agent/iam-policy.json
    /usr/lib/systemd/networkd.conf.d/60-gateway-agent.conf)

# ---------------------------------------------------------------------------------------------
step ".deb: install, edit config, upgrade, remove, purge (systemd not running)"
R=$(new_root deb)
before=$(snapshot "$R")
in_root "$R" "${DPKG[@]}" -i "/tmp/pkg/${DEB##*/}" || fail "dpkg -i ${DEB##*/} failed in the $SUITE root (above)"
for f in "${INSTALLED_FILES[@]}" /lib/systemd/system/$UNIT /usr/share/zsh/vendor-completions/_gateway-agent \
    /etc/systemd/system/multi-user.target.wants/$UNIT; do
    expect_file "$R" "$f" "dpkg -i"
done
in_root "$R" dpkg-query -W -f="$CONFFILES_FMT" gateway-agent | grep -q /etc/gateway-agent/config.toml ||
    fail "/etc/gateway-agent/config.toml is not a conffile: upgrades would overwrite edits"
in_root "$R" gateway-agent version | grep -qx "gateway-agent $VERSION" || fail "the installed binary does not run"
in_root "$R" getent passwd gateway-agent >/dev/null ||
    fail "dpkg -i did not create the gateway-agent system user the unit runs as (User=)"
# The packaged config is unconfigured on purpose: check-config must say so (exit 2).
set +e
msg=$(in_root "$R" gateway-agent check-config 2>&1)
rc=$?
set -e
[ "$rc" = 2 ] || fail "check-config on the packaged config exited $rc, expected 2 (group.name empty): $msg"
echo "packaged config, as expected: $msg"
systemd-analyze verify --root="$R" "$UNIT" 2>"$WORK/verify.err" || true
if [ -s "$WORK/verify.err" ]; then
    cat "$WORK/verify.err" >&2
    fail "systemd-analyze verify of the installed unit printed the problems above"
fi
echo "systemd-analyze verify: clean"
printf '%s' "$VALID_CONFIG" >"$R/etc/gateway-agent/config.toml"
in_root "$R" gateway-agent check-config >/dev/null || fail "check-config rejects the test's valid config"
in_root "$R" "${DPKG[@]}" -i "/tmp/pkg/${DEB2##*/}" || fail "upgrade to ${DEB2##*/} failed (above)"
[ "$(in_root "$R" dpkg-query -W -f="$VERSION_FMT" gateway-agent)" = "$VERSION-2" ] || fail "the upgrade did not install $VERSION-2"
grep -q 'name = "egress"' "$R/etc/gateway-agent/config.toml" || fail "the edited config did not survive the upgrade"
expect_no_file "$R" /etc/gateway-agent/config.toml.dpkg-new "the upgrade (an unchanged packaged config must not prompt)"
in_root "$R" dpkg -r gateway-agent || fail "dpkg -r gateway-agent failed (above)"
expect_no_file "$R" /usr/bin/gateway-agent "dpkg -r"
expect_file "$R" /etc/gateway-agent/config.toml "dpkg -r (remove keeps conffiles)"
in_root "$R" dpkg -P gateway-agent || fail "dpkg -P gateway-agent failed (above)"
after=$(snapshot "$R")
diff <(echo "$before") <(echo "$after") || fail "the root differs after purge (above: < lost, > left behind)"
echo "install, upgrade (config kept), remove, purge: clean"

# ---------------------------------------------------------------------------------------------
step ".deb: maintainer scripts against a running systemd (fake)"
R=$(new_root deb-systemd)
install_fake_systemd "$R"
in_root "$R" "${DPKG[@]}" -i "/tmp/pkg/${DEB##*/}" 2>"$WORK/postinst.err" || fail "dpkg -i with systemd failed"
grep -q 'not started' "$WORK/postinst.err" || fail "postinst did not tell the admin why the service was not started"
expect_no_log "$R" ' start gateway-agent' "on install with the unconfigured packaged config"
in_root "$R" dpkg -P gateway-agent >/dev/null || fail "dpkg -P failed"
: >"$R/tmp/systemctl.log"
# A config put in place before the package (cloud-init, config management): start on install.
mkdir -p "$R/etc/gateway-agent"
printf '%s' "$VALID_CONFIG" >"$R/etc/gateway-agent/config.toml"
in_root "$R" "${DPKG[@]}" -i "/tmp/pkg/${DEB##*/}" 2>/dev/null || fail "dpkg -i with a valid config failed"
expect_log "$R" 'start gateway-agent.service' "on install with a valid config"
# The service "runs": its RuntimeDirectory exists. The upgrade must restart it with the marker
# present (no route hand-over), never stop it in prerm, and leave no marker behind.
mkdir -p "$R/run/gateway-agent"
plant_links "$R"
: >"$R/tmp/systemctl.log"
in_root "$R" "${DPKG[@]}" -i "/tmp/pkg/${DEB2##*/}" || fail "upgrade with systemd failed"
expect_log "$R" 'try-restart gateway-agent.service marker=present' "on upgrade"
expect_links_not_followed "$R" "postinst on upgrade"
expect_no_log "$R" ' stop gateway-agent' "on upgrade (a stop would hand the routes over)"
expect_no_file "$R" /run/gateway-agent/restart "the upgrade (a stale marker would skip the hand-over at the next real stop)"
: >"$R/tmp/systemctl.log"
in_root "$R" dpkg -r gateway-agent >/dev/null || fail "dpkg -r failed"
expect_log "$R" 'stop gateway-agent.service marker=absent' "on removal (a real stop that hands routes over)"
in_root "$R" dpkg -P gateway-agent >/dev/null || fail "dpkg -P failed"
expect_no_file "$R" /etc/gateway-agent "purge"
expect_no_file "$R" /run/gateway-agent "purge"
echo "start only when configured, upgrade = in-place restart with marker, remove = stop: ok"

# ---------------------------------------------------------------------------------------------
step ".rpm: install, edit config, upgrade, erase (rpm --root, systemd not running)"
R=$(new_root rpm)
before=$(snapshot "$R")
rpm_db "$R" --initdb
rpm_in "$R" -i "$R/tmp/pkg/${RPM##*/}" || fail "rpm -i ${RPM##*/} failed (above)"
for f in "${INSTALLED_FILES[@]}" /usr/lib/systemd/system/$UNIT /usr/share/zsh/site-functions/_gateway-agent; do
    expect_file "$R" "$f" "rpm -i"
done
rpm_db "$R" -qc gateway-agent | grep -q /etc/gateway-agent/config.toml ||
    fail "/etc/gateway-agent/config.toml is not %config in the rpm"
in_root "$R" gateway-agent version | grep -qx "gateway-agent $VERSION" || fail "the rpm's binary does not run"
in_root "$R" getent passwd gateway-agent >/dev/null ||
    fail "rpm -i did not create the gateway-agent system user the unit runs as (User=)"
printf '%s' "$VALID_CONFIG" >"$R/etc/gateway-agent/config.toml"
rpm_in "$R" -U "$R/tmp/pkg/${RPM2##*/}" || fail "rpm -U ${RPM2##*/} failed (above)"
rpm_db "$R" -q gateway-agent | grep -q -- "-2\." || fail "the upgrade did not install release 2: $(rpm_db "$R" -q gateway-agent)"
grep -q 'name = "egress"' "$R/etc/gateway-agent/config.toml" || fail "the edited config did not survive rpm -U"
expect_no_file "$R" /etc/gateway-agent/config.toml.rpmnew "rpm -U (the packaged config did not change)"
rpm_in "$R" -e gateway-agent || fail "rpm -e failed (above)"
expect_no_file "$R" /usr/bin/gateway-agent "rpm -e"
# rpm keeps an edited %config file as .rpmsave on erase (rpm has no purge); that file is the
# only thing allowed to remain.
expect_file "$R" /etc/gateway-agent/config.toml.rpmsave "rpm -e of an edited config"
rm "$R/etc/gateway-agent/config.toml.rpmsave"
rmdir "$R/etc/gateway-agent"
after=$(snapshot "$R")
diff <(echo "$before") <(echo "$after") || fail "the root differs after rpm -e (above: < lost, > left behind)"
echo "install, upgrade (config kept), erase: clean (the edited config is kept as config.toml.rpmsave)"

# ---------------------------------------------------------------------------------------------
step ".rpm: scriptlets against a running systemd (fake)"
R=$(new_root rpm-systemd)
install_fake_systemd "$R"
rpm_db "$R" --initdb
rpm_in "$R" -i "$R/tmp/pkg/${RPM##*/}" || fail "rpm -i with systemd failed"
expect_log "$R" 'preset gateway-agent.service' "on install (%systemd_post)"
expect_no_log "$R" ' start gateway-agent' "on install (RPM distributions start nothing on install)"
mkdir -p "$R/run/gateway-agent"
plant_links "$R"
: >"$R/tmp/systemctl.log"
rpm_in "$R" -U "$R/tmp/pkg/${RPM2##*/}" || fail "rpm -U with systemd failed"
expect_log "$R" 'try-restart gateway-agent.service marker=present' "on upgrade"
expect_links_not_followed "$R" "%post on upgrade"
expect_no_log "$R" 'stop gateway-agent' "on upgrade (a stop would hand the routes over)"
expect_no_file "$R" /run/gateway-agent/restart "rpm -U (a stale marker would skip the hand-over at the next real stop)"
: >"$R/tmp/systemctl.log"
rpm_in "$R" -e gateway-agent || fail "rpm -e with systemd failed"
expect_log "$R" 'disable --now gateway-agent.service marker=absent' "on erase (a real stop that hands routes over)"
expect_no_file "$R" /run/gateway-agent "rpm -e"
echo "preset on install, upgrade = in-place restart with marker, erase = stop: ok"

step "done"
echo "packages: $DEB $RPM"
echo "total $((SECONDS - T_START))s"
