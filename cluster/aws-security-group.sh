#!/usr/bin/env bash
# Create the security group cluster.yaml names in SecurityGroupIds: SSH (port 22) from the one
# CIDR you choose, all traffic between the cluster's own nodes, nothing else from outside. The Ray
# dashboard, Ray's job API and MLflow are reached through SSH port forwarding only.
#
#   SSH_CIDR=203.0.113.7/32 bash cluster/aws-security-group.sh
#
# Settings (environment): SSH_CIDR (required: your address or network), AWS_REGION (default
# us-west-2, as in cluster.yaml), VPC_ID (default: the region's default VPC), GROUP_NAME (default
# image-sweeps). Prints the group's ID: put it in cluster.yaml. Needs the AWS CLI.
#
# Why not let `ray up` make the group: Ray's own group (provider.security_group) always adds SSH
# from 0.0.0.0/0 to the rules you give it. With SecurityGroupIds set, Ray adds no rule.
set -euo pipefail

fail() {
  echo "aws-security-group.sh: $*" >&2
  exit 1
}

SSH_CIDR="${SSH_CIDR:-}"
AWS_REGION="${AWS_REGION:-us-west-2}"
GROUP_NAME="${GROUP_NAME:-image-sweeps}"
[ -n "$SSH_CIDR" ] || fail "set SSH_CIDR to the address or network you SSH from, e.g. SSH_CIDR=203.0.113.7/32"
case "$SSH_CIDR" in
  0.0.0.0/0) fail "SSH_CIDR=$SSH_CIDR opens SSH to the whole internet; give your own address or network" ;;
  *:*) fail "SSH_CIDR=$SSH_CIDR: this script takes an IPv4 CIDR" ;;
  */*) ;;
  *) fail "SSH_CIDR=$SSH_CIDR is not a CIDR (e.g. 203.0.113.7/32)" ;;
esac
command -v aws >/dev/null || fail "the AWS CLI (aws) is not installed"

VPC_ID="${VPC_ID:-$(aws ec2 describe-vpcs --region "$AWS_REGION" --filters Name=isDefault,Values=true \
  --query 'Vpcs[0].VpcId' --output text)}"
[ -n "$VPC_ID" ] && [ "$VPC_ID" != None ] || fail "no default VPC in $AWS_REGION: set VPC_ID"

GROUP_ID="$(aws ec2 create-security-group --region "$AWS_REGION" --vpc-id "$VPC_ID" --group-name "$GROUP_NAME" \
  --description "image-sweeps Ray cluster: SSH from one CIDR, all traffic within the group" \
  --query GroupId --output text)"

# The only inbound rules. tests/test_cluster_config.py reads this block.
RULES=$(
  cat <<EOF
[
  {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
   "IpRanges": [{"CidrIp": "${SSH_CIDR}", "Description": "SSH from your network"}]},
  {"IpProtocol": "-1",
   "UserIdGroupPairs": [{"GroupId": "${GROUP_ID}", "Description": "all traffic between cluster nodes"}]}
]
EOF
)
aws ec2 authorize-security-group-ingress --region "$AWS_REGION" --group-id "$GROUP_ID" \
  --ip-permissions "$RULES" >/dev/null

echo "$GROUP_ID"
echo "security group $GROUP_ID in $VPC_ID: SSH from $SSH_CIDR, all traffic within the group." >&2
echo "Put it in cluster.yaml under SecurityGroupIds (both node types)." >&2
