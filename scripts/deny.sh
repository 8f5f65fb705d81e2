#!/usr/bin/env bash
# Licenses, banned crates (no OpenSSL: rustls only) and sources of everything the workspace
# links, with cargo-deny (deny.toml); security advisories too when the RustSec database can be
# fetched from github.com. Installs cargo-deny once (~2 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
DENY_VERSION=0.20.2

if ! cargo deny --version 2>/dev/null | grep -q " $DENY_VERSION\$"; then
  echo "deny: cargo install cargo-deny@$DENY_VERSION"
  cargo install --locked --quiet --no-default-features cargo-deny --version "$DENY_VERSION"
fi
cargo deny --locked check licenses bans sources
# The advisory database lives on github.com only (no crates.io, PyPI or Debian copy); a machine
# that cannot reach it skips the check and says so rather than passing silently.
if timeout 15 git ls-remote --quiet https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny --locked check advisories
else
  echo "deny: advisories NOT CHECKED: github.com (the RustSec advisory database) is unreachable from this machine"
fi
