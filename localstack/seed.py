"""Idempotent seed data for the LocalStack test bed; prints KEY=VALUE lines.

Run with the bed venv's python; endpoint/credentials come from AWS_* env vars
(localstack.sh sets them). Everything is found by tag k106.com/testbed=true +
Name before it is created, so re-running changes nothing.
"""

import os
import sys

import boto3

TAG_KEY, NAME = "k106.com/testbed", "k106-testbed"
IMAGE_ID = "ami-760aaa0f"  # Amazon Linux 2017.09, shipped in LocalStack's moto AMI list
KEY_NAME = "k106-test"

ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def tags(name, kind):
    return [{"ResourceType": kind, "Tags": [{"Key": TAG_KEY, "Value": "true"}, {"Key": "Name", "Value": name}]}]


def ours(name, *extra):
    return [{"Name": f"tag:{TAG_KEY}", "Values": ["true"]}, {"Name": "tag:Name", "Values": [name]}, *extra]


vpcs = ec2.describe_vpcs(Filters=ours(NAME))["Vpcs"]
vpc = vpcs[0]["VpcId"] if vpcs else ec2.create_vpc(
    CidrBlock="10.77.0.0/16", TagSpecifications=tags(NAME, "vpc"))["Vpc"]["VpcId"]
in_vpc = {"Name": "vpc-id", "Values": [vpc]}

subnets = ec2.describe_subnets(Filters=ours(NAME, in_vpc))["Subnets"]
subnet = subnets[0]["SubnetId"] if subnets else ec2.create_subnet(
    VpcId=vpc, CidrBlock="10.77.1.0/24", AvailabilityZone="us-east-1a",
    TagSpecifications=tags(NAME, "subnet"))["Subnet"]["SubnetId"]

# Room for a benchmark fleet: a /24 holds 251 instances and the default VPC's subnets ~4,000.
FLEET = f"{NAME}-fleet"
fleet = ec2.describe_subnets(Filters=ours(FLEET, in_vpc))["Subnets"]
fleet_subnet = fleet[0]["SubnetId"] if fleet else ec2.create_subnet(
    VpcId=vpc, CidrBlock="10.77.128.0/17", AvailabilityZone="us-east-1a",
    TagSpecifications=tags(FLEET, "subnet"))["Subnet"]["SubnetId"]

sgs = []
for name in (f"{NAME}-sg-1", f"{NAME}-sg-2"):
    found = ec2.describe_security_groups(Filters=ours(name, in_vpc))["SecurityGroups"]
    sgs.append(found[0]["GroupId"] if found else ec2.create_security_group(
        GroupName=name, Description="k106 test bed", VpcId=vpc,
        TagSpecifications=tags(name, "security-group"))["GroupId"])

if not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [KEY_NAME]}])["KeyPairs"]:
    ec2.create_key_pair(KeyName=KEY_NAME, TagSpecifications=tags(KEY_NAME, "key-pair"))

if not ec2.describe_images(ImageIds=[IMAGE_ID])["Images"]:
    sys.exit(f"seed: AMI {IMAGE_ID} is not listed by DescribeImages")

print(f"TEST_VPC_ID={vpc}")
print(f"TEST_SUBNET_ID={subnet}")
print(f"TEST_FLEET_SUBNET_ID={fleet_subnet}")
print(f"TEST_SECURITY_GROUP_ID={sgs[0]}")
print(f"TEST_SECURITY_GROUP_ID_2={sgs[1]}")
print(f"TEST_IMAGE_ID={IMAGE_ID}")
print(f"TEST_KEY_NAME={KEY_NAME}")
