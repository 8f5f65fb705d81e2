#!/usr/bin/env bash
# packaging/examples/validate.sh: offline checks of the example deployment.
#  1. cfn-lint (from PyPI, in a venv under ~/.cache/gateway-agent; pinned so a new rule set
#     cannot fail CI on an unchanged template; bump deliberately);
#  2. the IAM policy embedded in the template is packaging/iam-policy.json, statement for
#     statement: the example must grant what the checked policy grants, no more;
#  3. the monitoring examples (check-monitoring.py): the Grafana dashboard and the Prometheus
#     alert rules name only metrics the agent declares, parse as PromQL, and the rules pass
#     `promtool check rules` and their unit tests (`promtool test rules`).
# What no offline tool can check (real deployment, AMI boot) is listed in packaging/README-install.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${GATEWAY_AGENT_CACHE:-$HOME/.cache/gateway-agent}
VENV=$CACHE/pytools-venv
CFN_LINT_VERSION=1.58.0

if [ "$("$VENV/bin/cfn-lint" --version 2>/dev/null)" != "cfn-lint $CFN_LINT_VERSION" ]; then
    python3 -m venv "$VENV" ||
        { echo "validate.sh: python3 -m venv $VENV failed; install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
    "$VENV/bin/pip" install -q "cfn-lint==$CFN_LINT_VERSION" ||
        { echo "validate.sh: pip install cfn-lint==$CFN_LINT_VERSION failed; check access to PyPI" >&2; exit 1; }
fi

status=0
for template in "$HERE"/*.yaml; do
    if "$VENV/bin/cfn-lint" "$template"; then
        echo "cfn-lint $CFN_LINT_VERSION: ${template##*/}: clean"
    else
        echo "validate.sh: cfn-lint found the problems above in ${template##*/}" >&2
        status=1
    fi
done

"$VENV/bin/python" - "$HERE/gateway-vpc.yaml" "$HERE/../iam-policy.json" <<'PY' || status=1
import json, sys
from cfnlint.decode import decode

template_path, policy_path = sys.argv[1], sys.argv[2]
template, matches = decode(template_path)
if matches:
    sys.exit(f"validate.sh: cannot parse {template_path}: {matches}")
want = json.load(open(policy_path))
docs = [p["PolicyDocument"]
        for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"
        for p in r["Properties"].get("Policies", [])]
if len(docs) != 1:
    sys.exit(f"validate.sh: expected one inline policy on one AWS::IAM::Role in {template_path}, found {len(docs)}")
normal = lambda d: json.loads(json.dumps(d, sort_keys=True))
if normal(docs[0]) != normal(want):
    sys.exit(f"validate.sh: the policy in {template_path} differs from {policy_path}; "
             "copy iam-policy.json's statements into the template's GatewayRole policy")
print(f"IAM policy in {template_path.rsplit('/', 1)[-1]} == iam-policy.json")
PY

python3 "$HERE/check-monitoring.py" || status=1
exit "$status"
