#!/usr/bin/env bash
# ami/validate.sh: offline checks of the Packer template (no AWS account needed).
#  1. Packer 1.6.6 (Debian 12's `packer`) validates the template without its modern-only lines
#     (between "modern-packer-only" markers): every variable, source, filter and provisioner,
#     the provisioner scripts' existence included.
#  2. The whole file, modern-only lines included, parses as HCL2 (python-hcl2 from PyPI, in the
#     tools venv), and the modern-only blocks carry the IMDSv2 settings (tokens required, hop limit).
#  3. shellcheck on the provisioner scripts.
# A real `packer build` needs an AWS account; see ami/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}
VENV=$CACHE/pytools-venv
HCL2_VERSION=8.1.4
TEMPLATE=ami/gateway-agent.pkr.hcl
cd "$ROOT"

command -v packer >/dev/null ||
    { echo "ami/validate.sh: packer is not installed; apt-get install packer (Debian 12 ships 1.6.6)" >&2; exit 1; }
command -v shellcheck >/dev/null ||
    { echo "ami/validate.sh: shellcheck is not installed; apt-get install shellcheck" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '/# modern-packer-only: begin/ {skip = 1} !skip {print} /# modern-packer-only: end/ {skip = 0}' \
    "$TEMPLATE" >"$tmp/legacy.pkr.hcl"
# The file provisioners stat their sources at validation: stand-ins for packages not built yet.
touch "$tmp/gateway-agent.deb" "$tmp/gateway-agent.rpm"
if packer validate -var region=eu-west-1 -var deb_path="$tmp/gateway-agent.deb" \
    -var rpm_path="$tmp/gateway-agent.rpm" "$tmp/legacy.pkr.hcl"; then
    echo "packer $(packer version | head -1 | awk '{print $2}') validate: $TEMPLATE (without modern-only lines): valid"
else
    echo "ami/validate.sh: packer validate rejected $TEMPLATE (line numbers are of the stripped copy; the messages name the block)" >&2
    exit 1
fi

if ! "$VENV/bin/python" -c 'import hcl2' 2>/dev/null || [ "$("$VENV/bin/pip" show python-hcl2 | awk '/^Version/ {print $2}')" != "$HCL2_VERSION" ]; then
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "python-hcl2==$HCL2_VERSION" ||
        { echo "ami/validate.sh: pip install python-hcl2==$HCL2_VERSION failed; check access to PyPI" >&2; exit 1; }
fi
"$VENV/bin/python" - "$TEMPLATE" <<'PY'
import sys
import hcl2

path = sys.argv[1]
with open(path) as f:
    try:
        doc = hcl2.load(f)
    except Exception as e:  # the parser's own exception types differ between versions
        sys.exit(f"ami/validate.sh: {path} is not valid HCL2: {e}")

def unquote(v):
    return v.strip('"') if isinstance(v, str) else v

plugins = [p for b in doc.get("packer", []) for p in b.get("required_plugins", [])]
if not any("amazon" in p for p in plugins):
    sys.exit(f"ami/validate.sh: {path}: the packer block must require the amazon plugin")
sources = [(kind, name, body) for s in doc["source"] for kind, named in s.items() for name, body in named.items()]
for kind, name, body in sources:
    where = f"{path}: source {kind}.{name}"
    if unquote(body.get("imds_support")) != "v2.0":
        sys.exit(f'{where}: set imds_support = "v2.0" (instances from the image default to IMDSv2)')
    md = body.get("metadata_options")
    md = md[0] if isinstance(md, list) else md
    if not md or unquote(md.get("http_tokens")) != "required" or int(unquote(md.get("http_put_response_hop_limit", 0))) != 1:
        sys.exit(f'{where}: metadata_options must set http_tokens = "required" and http_put_response_hop_limit = 1')
print(f"HCL2 parse of the full {path}: ok; {len(sources)} sources enforce IMDSv2 (tokens required, hop limit 1, imds_support v2.0)")
PY

shellcheck ami/scripts/*.sh
echo "shellcheck ami/scripts: clean"
