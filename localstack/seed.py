"""Idempotent seed data for the LocalStack test bed; prints KEY=VALUE lines.

Run with the bed venv's python; endpoint/credentials come from AWS_* env vars
(localstack.sh sets them). Everything is found by tag k106.com/testbed=true +
Name before it is created, so re-running changes nothing.
"""

import base64
import json
import os
import sys

import boto3
from botocore.exceptions import ClientError

TAG_KEY, NAME = "k106.com/testbed", "k106-testbed"
IMAGE_ID = "ami-760aaa0f"  # Amazon Linux 2017.09, shipped in LocalStack's moto AMI list
KEY_NAME = "k106-test"

ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
iam = boto3.client("iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


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

# Selector tags (spec.subnetSelector / securityGroupSelector): the primary subnet and SG 2 only.
ec2.create_tags(Resources=[subnet], Tags=[{"Key": "k106.com/testbed-role", "Value": "primary"},
                                          {"Key": "tier", "Value": "app"}])
ec2.create_tags(Resources=[sgs[1]], Tags=[{"Key": "tier", "Value": "app"}])

# A subnet with an IPv6 /64 (spec.networkInterface.ipv6AddressCount), from the VPC's Amazon /56.
vpc_v6 = ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0].get("Ipv6CidrBlockAssociationSet", [])
if not vpc_v6:
    vpc_v6 = [ec2.associate_vpc_cidr_block(VpcId=vpc, AmazonProvidedIpv6CidrBlock=True)["Ipv6CidrBlockAssociation"]]
IPV6 = f"{NAME}-ipv6"
v6 = ec2.describe_subnets(Filters=ours(IPV6, in_vpc))["Subnets"]
ipv6_subnet = v6[0]["SubnetId"] if v6 else ec2.create_subnet(
    VpcId=vpc, CidrBlock="10.77.2.0/24", AvailabilityZone="us-east-1a",
    Ipv6CidrBlock=vpc_v6[0]["Ipv6CidrBlock"].replace("/56", "/64"),
    TagSpecifications=tags(IPV6, "subnet"))["Subnet"]["SubnetId"]

# Two instance profiles, each with its role (spec.iamInstanceProfile; EC2 checks them in IAM).
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
profiles = []
for name in (f"{NAME}-profile-1", f"{NAME}-profile-2"):
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as err:
        if err.response["Error"]["Code"] != "NoSuchEntity":
            raise
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    profiles.append((name, profile["Arn"]))

# A launch template whose user data, key and tag LocalStack applies, so a test sees it was used.
TEMPLATE = f"{NAME}-template"
try:
    template = ec2.describe_launch_templates(LaunchTemplateNames=[TEMPLATE])["LaunchTemplates"][0]
except ClientError as err:
    if not err.response["Error"]["Code"].startswith("InvalidLaunchTemplateName"):
        raise
    template = ec2.create_launch_template(LaunchTemplateName=TEMPLATE, LaunchTemplateData={
        "ImageId": IMAGE_ID, "InstanceType": "t3.micro", "KeyName": KEY_NAME,
        "UserData": base64.b64encode(b"#!/bin/sh\necho k106-launch-template\n").decode(),
        "Monitoring": {"Enabled": True},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "k106.com/launch-template", "Value": TEMPLATE}]}],
    }, TagSpecifications=tags(TEMPLATE, "launch-template"))["LaunchTemplate"]

print(f"TEST_VPC_ID={vpc}")
print(f"TEST_SUBNET_ID={subnet}")
print(f"TEST_FLEET_SUBNET_ID={fleet_subnet}")
print(f"TEST_SECURITY_GROUP_ID={sgs[0]}")
print(f"TEST_SECURITY_GROUP_ID_2={sgs[1]}")
print(f"TEST_IMAGE_ID={IMAGE_ID}")
print(f"TEST_KEY_NAME={KEY_NAME}")
print(f"TEST_IPV6_SUBNET_ID={ipv6_subnet}")
print(f"TEST_INSTANCE_PROFILE={profiles[0][0]}")
print(f"TEST_INSTANCE_PROFILE_ARN={profiles[0][1]}")
print(f"TEST_INSTANCE_PROFILE_2={profiles[1][0]}")
print(f"TEST_INSTANCE_PROFILE_ARN_2={profiles[1][1]}")
print(f"TEST_LAUNCH_TEMPLATE_ID={template['LaunchTemplateId']}")
print(f"TEST_LAUNCH_TEMPLATE_NAME={TEMPLATE}")
