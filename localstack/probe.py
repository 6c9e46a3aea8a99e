"""Re-measure how LocalStack's EC2 differs from AWS (the table in README.md). Creates and terminates
instances tagged k106.com/probe. Run against a bed that is up:

    eval "$(localstack/localstack.sh env)" && .cache/localstack-venv/bin/python localstack/probe.py
"""

import base64
import os
import time

import boto3
from botocore.exceptions import ClientError

E = os.environ
ec2 = boto3.client("ec2", endpoint_url=E["AWS_ENDPOINT_URL"])
TAG = {"Key": "k106.com/probe", "Value": "1"}
BASE = dict(ImageId=E["TEST_IMAGE_ID"], InstanceType="t3.micro", MinCount=1, MaxCount=1, SubnetId=E["TEST_SUBNET_ID"])
launched = []


def show(what, f, **kw):
    try:
        r = f(**kw)
        for i in r.get("Instances", []):
            launched.append(i["InstanceId"])
        out = "accepted"
    except ClientError as e:
        out = f"{e.response['Error']['Code']}: {e.response['Error']['Message']}"
    print(f"{what:55} {out}")


def inst(i):
    return ec2.describe_instances(InstanceIds=[i])["Reservations"][0]["Instances"][0]


def user_data(i):
    v = ec2.describe_instance_attribute(InstanceId=i, Attribute="userData")["UserData"].get("Value")
    return base64.b64decode(v) if v else None


r = ec2.run_instances(**BASE, SecurityGroupIds=[E["TEST_SECURITY_GROUP_ID"]], KeyName=E["TEST_KEY_NAME"],
                      UserData="#!/bin/sh\necho run\n", MetadataOptions={"HttpTokens": "required"},
                      TagSpecifications=[{"ResourceType": t, "Tags": [TAG]} for t in ("instance", "volume")])
i = r["Instances"][0]["InstanceId"]
launched.append(i)
d = inst(i)
print(f"{'RunInstances state / DescribeInstances state':55} {r['Instances'][0]['State']['Name']} / {d['State']['Name']}")
print(f"{'MetadataOptions.HttpTokens echoed':55} {d['MetadataOptions']['HttpTokens']}")
vols = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [i]}])["Volumes"]
print(f"{'root volume tagged from TagSpecifications':55} {TAG in vols[0].get('Tags', [])}")
print(f"{'RunInstances UserData (SDK base64) read back':55} {user_data(i)!r}")
f = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG['Key']}", "Values": ["1"]}], MaxResults=1000)
print(f"{'DescribeInstances tag:KEY filter + MaxResults=1000':55} {sum(len(x['Instances']) for x in f['Reservations'])} found")
show("DescribeInstances MaxResults=4 (AWS: 5..1000)", ec2.describe_instances, MaxResults=4)
show("ModifyInstanceAttribute InstanceType while running", ec2.modify_instance_attribute,
     InstanceId=i, InstanceType={"Value": "t3.small"})
ec2.stop_instances(InstanceIds=[i])
print(f"{'state right after StopInstances':55} {inst(i)['State']['Name']}")
show("ModifyInstanceAttribute InstanceType stopped", ec2.modify_instance_attribute,
     InstanceId=i, InstanceType={"Value": "t3.large"})
show("ModifyInstanceAttribute InstanceType bogus", ec2.modify_instance_attribute,
     InstanceId=i, InstanceType={"Value": "bogus.huge"})
show("UserData blob = raw bytes", ec2.modify_instance_attribute, InstanceId=i, UserData={"Value": b"#!/bin/sh\necho a\n"})
show("UserData blob = base64 text", ec2.modify_instance_attribute,
     InstanceId=i, UserData={"Value": base64.b64encode(b"#!/bin/sh\necho b\n")})
print(f"{'  -> read back':55} {user_data(i)!r}")
show("Attribute=userData, Value=base64 text", ec2.modify_instance_attribute,
     InstanceId=i, Attribute="userData", Value=base64.b64encode(b"#!/bin/sh\necho c\n").decode())
print(f"{'  -> read back':55} {user_data(i)!r}")
ec2.start_instances(InstanceIds=[i])
print(f"{'state right after StartInstances':55} {inst(i)['State']['Name']}")
show("ModifyInstanceAttribute Groups [sg1, sg2]", ec2.modify_instance_attribute,
     InstanceId=i, Groups=[E["TEST_SECURITY_GROUP_ID"], E["TEST_SECURITY_GROUP_ID_2"]])
print(f"{'  -> groups':55} {[g['GroupId'] for g in inst(i)['SecurityGroups']]}")
show("ModifyInstanceAttribute Groups [unknown sg]", ec2.modify_instance_attribute,
     InstanceId=i, Groups=["sg-0123456789abcdef0"])
print(f"{'  -> groups':55} {[g['GroupId'] for g in inst(i)['SecurityGroups']]}")
show("CreateTags aws:-prefixed key (AWS: rejected)", ec2.create_tags, Resources=[i], Tags=[{"Key": "aws:x", "Value": "1"}])
show("RunInstances unknown subnet", ec2.run_instances, **{**BASE, "SubnetId": "subnet-0123456789abcdef0"})
show("RunInstances unknown AMI", ec2.run_instances, **{**BASE, "ImageId": "ami-0123456789abcdef0"})
show("RunInstances unknown instance type", ec2.run_instances, **{**BASE, "InstanceType": "bogus.huge"})
show("RunInstances unknown security group", ec2.run_instances, **{**BASE, "SecurityGroupIds": ["sg-0123456789abcdef0"]})
show("RunInstances unknown key pair", ec2.run_instances, **{**BASE, "KeyName": "no-such-key"})
show("DescribeInstances unknown id", ec2.describe_instances, InstanceIds=["i-0123456789abcdef0"])
a = ec2.run_instances(**BASE, ClientToken="k106-probe")["Instances"][0]["InstanceId"]
b = ec2.run_instances(**BASE, ClientToken="k106-probe")["Instances"][0]["InstanceId"]
launched += [a, b]
print(f"{'RunInstances twice with one ClientToken':55} {'same instance' if a == b else 'two instances'}")
ids = [ec2.run_instances(**BASE)["Instances"][0]["InstanceId"] for _ in range(101)]
launched += ids
r = ec2.describe_instances(InstanceIds=ids)
print(f"{'DescribeInstances with 101 InstanceIds':55} {len(r['Reservations'])} reservations, "
      f"NextToken={'NextToken' in r}")
ec2.terminate_instances(InstanceIds=launched)
time.sleep(2)
print(f"{'DescribeInstances 2 s after TerminateInstances':55} {inst(i)['State']['Name']}")
show("StartInstances on a terminated instance", ec2.start_instances, InstanceIds=[i])
print(f"{'  -> state':55} {inst(i)['State']['Name']}")
ec2.terminate_instances(InstanceIds=[i])
