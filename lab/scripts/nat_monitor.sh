#!/bin/bash
#
# This script will monitor another NAT instance and take over its routes
# if communication with the other instance fails
#
# The classic anchor for `gwlab bench-failover`: AWS's nat_monitor.sh from the "High Availability
# for Amazon VPC NAT Instances" article, re-created with its loop, its timings and its order of
# calls. What differs from the original, and why:
#   - the AWS CLI instead of the retired ec2-api-tools (same calls, one process per call);
#   - routes target the gateway's persistent ENI (--network-interface-id) rather than the
#     instance, as every zone of the lab does;
#   - the peer may have several route tables, taken over one after the other, as the
#     two-table variants of the script do;
#   - parameters come from the environment or the command line instead of edits to the file,
#     and the peer's IP is given rather than looked up;
#   - IMDS is not read: the lab's IMDS speaks only IMDSv2 and the own ENI is given.
#
# Usage (inside a gateway's network namespace, the AWS CLI pointed at the lab's VPC endpoint):
#   nat_monitor.sh PEER_IP OWN_ENI_ID PEER_TABLE_ID...
# or with the environment: NAT_IP, My_ENI_ID, NAT_RT_IDS (space-separated), and optionally
#   NAT_ID         the peer's instance id: after a takeover, stop it for reboot / start it, as
#                  the original does (unset: that part is skipped)
#   My_RT_IDS      own route tables to point at My_ENI_ID on start (space-separated)
#   AWS            the AWS CLI (default: `aws` of the lab's venv)
#   Num_Pings, Ping_Timeout, Wait_Between_Pings, Wait_for_Instance_Stop, Wait_for_Instance_Start

if [ "$#" -ge 3 ]; then
  NAT_IP=$1
  My_ENI_ID=$2
  shift 2
  NAT_RT_IDS="$*"
elif [ "$#" -ne 0 ]; then
  echo "usage: $0 PEER_IP OWN_ENI_ID PEER_TABLE_ID... (or set NAT_IP, My_ENI_ID, NAT_RT_IDS)" >&2
  exit 2
fi

# NAT instance variables
# Other instance's IP to ping and routes to grab if other node goes down
NAT_IP=${NAT_IP:?NAT_IP: the peer gateway ENI IP to ping is not set}
NAT_RT_IDS=${NAT_RT_IDS:?NAT_RT_IDS: the peer route table IDs to take over are not set}
NAT_ID=${NAT_ID:-}

# My routes to grab when I come back up, and the ENI they point at
My_ENI_ID=${My_ENI_ID:?My_ENI_ID: this gateway ENI ID is not set}
My_RT_IDS=${My_RT_IDS:-}

# Health Check variables
Num_Pings=${Num_Pings:-3}
Ping_Timeout=${Ping_Timeout:-1}
Wait_Between_Pings=${Wait_Between_Pings:-2}
Wait_for_Instance_Stop=${Wait_for_Instance_Stop:-60}
Wait_for_Instance_Start=${Wait_for_Instance_Start:-300}

VENV_BIN=$(dirname "${GATEWAY_LAB_PYTHON:-$HOME/.cache/gateway-agent/venv/bin/python}")
AWS=${AWS:-$VENV_BIN/aws}
# The AWS CLI v1 reads its region only from AWS_DEFAULT_REGION; the lab's instances get AWS_REGION.
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}
if ! [ -x "$AWS" ]; then
  echo "$0: no AWS CLI at $AWS (pip install -r lab/requirements.txt, or set AWS)" >&2
  exit 2
fi

now() { date +%T.%3N; }

echo "$(now)" "-- Starting NAT monitor (peer $NAT_IP, tables $NAT_RT_IDS)"

if [ -n "$My_RT_IDS" ]; then
  echo "$(now)" "-- Adding this instance to $My_RT_IDS default route on start"
  for rt in $My_RT_IDS; do
    # If replace-route failed, then the route might not exist and may need to be created instead
    if ! "$AWS" ec2 replace-route --route-table-id "$rt" --destination-cidr-block 0.0.0.0/0 \
      --network-interface-id "$My_ENI_ID"; then
      "$AWS" ec2 create-route --route-table-id "$rt" --destination-cidr-block 0.0.0.0/0 \
        --network-interface-id "$My_ENI_ID"
    fi
  done
fi

while true; do
  # Check health of other NAT instance
  pingresult=$(ping -c "$Num_Pings" -W "$Ping_Timeout" "$NAT_IP" | grep -c time=)
  # Check to see if any of the health checks succeeded, if not
  if [ "$pingresult" == "0" ]; then
    # Set HEALTHY variables to unhealthy (0)
    ROUTE_HEALTHY=0
    NAT_HEALTHY=0
    STOPPING_NAT=0
    while [ "$NAT_HEALTHY" == "0" ]; do
      # NAT instance is unhealthy, loop while we try to fix it
      if [ "$ROUTE_HEALTHY" == "0" ]; then
        echo "$(now)" "-- Other NAT heartbeat failed, taking over $NAT_RT_IDS default route"
        for rt in $NAT_RT_IDS; do
          "$AWS" ec2 replace-route --route-table-id "$rt" --destination-cidr-block 0.0.0.0/0 \
            --network-interface-id "$My_ENI_ID"
          rc=$?
          echo "$(now)" "-- replace-route $rt exit $rc"
        done
        ROUTE_HEALTHY=1
      fi
      if [ -z "$NAT_ID" ]; then
        # Without the peer's instance id there is nothing to stop or start: wait as the
        # original does after asking for a stop, then go back to pinging.
        sleep "$Wait_for_Instance_Stop"
        NAT_HEALTHY=1
        continue
      fi
      # Check NAT state to see if we should stop it or start it again
      NAT_STATE=$("$AWS" ec2 describe-instances --instance-ids "$NAT_ID" \
        --query 'Reservations[*].Instances[*].State.Name' --output text)
      if [ "$NAT_STATE" == "stopped" ]; then
        echo "$(now)" "-- Other NAT instance stopped, starting it back up"
        "$AWS" ec2 start-instances --instance-ids "$NAT_ID"
        NAT_HEALTHY=1
        sleep "$Wait_for_Instance_Start"
      else
        if [ "$STOPPING_NAT" == "0" ]; then
          echo "$(now)" "-- Other NAT instance $NAT_STATE, attempting to stop for reboot"
          "$AWS" ec2 stop-instances --instance-ids "$NAT_ID"
          STOPPING_NAT=1
        fi
        sleep "$Wait_for_Instance_Stop"
      fi
    done
  else
    sleep "$Wait_Between_Pings"
  fi
done
