"""The operator's instance fields that LocalStack lacks, mishandles or never shows, emulated as the
EC2 API reference documents them (see strict_ec2.py's usage text and README.md's table). A mixin of
strict_* handlers for strict_ec2.Proxy plus the state it keeps; standard library only."""

import ipaddress
import json
import random
import string
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
NS = "{" + EC2_NAMESPACE + "}"
ET.register_namespace("", EC2_NAMESPACE)
BURSTABLE_DEFAULT = {"t2": "standard", "t3": "unlimited", "t3a": "unlimited", "t4g": "unlimited"}
# ModifyInstanceAttribute forms moto understands. Any other structured form (EnaSupport.Value,
# SriovNetSupport.Value, Ramdisk.Value...) falls through to moto's security-group handler with an
# empty list, which silently removes every group from the instance.
MOTO_DOT_VALUES = {"InstanceType", "Kernel", "UserData", "DisableApiTermination", "SourceDestCheck",
                   "EbsOptimized", "DisableApiStop"}
# Boolean Attribute=/Value= forms: moto stores the string "true" (truthy, not enforced), so they are
# forwarded as the X.Value form it parses as a boolean.
BOOLEAN_ATTRIBUTES = {"disableApiTermination": "DisableApiTermination", "disableApiStop": "DisableApiStop",
                      "sourceDestCheck": "SourceDestCheck", "ebsOptimized": "EbsOptimized"}
STOPPED_ONLY_ATTRIBUTES = {"InstanceType", "UserData", "EbsOptimized"}
VOLUME_SIZES = {"standard": (1, 1024), "gp2": (1, 16384), "gp3": (1, 16384), "io1": (4, 16384),
                "io2": (4, 65536), "st1": (125, 16384), "sc1": (125, 16384)}
VOLUME_IOPS = {"gp3": (3000, 16000), "io1": (100, 64000), "io2": (100, 256000)}
GP3_THROUGHPUT = (125, 1000)
METADATA_DEFAULTS = {"HttpTokens": "optional", "HttpPutResponseHopLimit": "1", "HttpEndpoint": "enabled",
                     "HttpProtocolIpv6": "disabled", "InstanceMetadataTags": "disabled"}
METADATA_ENUMS = {"HttpTokens": ("optional", "required"), "HttpEndpoint": ("enabled", "disabled"),
                  "HttpProtocolIpv6": ("enabled", "disabled"), "InstanceMetadataTags": ("enabled", "disabled")}
SPOT_REASONS = {"terminate": ("Server.SpotInstanceTermination", "Spot instance termination"),
                "stop": ("Server.SpotInstanceShutdown", "Spot instance shutdown")}
VOLUME_MODIFY_RATE = ("You've reached the maximum modification rate per volume limit. Wait at least 6 hours "
                      "between modifications per EBS volume.")


class Fields:
    """What the proxy remembers per instance and volume, and the tables it was started with."""

    def __init__(self, placement_groups, capacity_reservations, ssm_parameters, volume_cooldown):
        self.placement_groups = dict(placement_groups)
        self.capacity_reservations = set(capacity_reservations)
        self.ssm_parameters = dict(ssm_parameters)
        self.volume_cooldown = volume_cooldown
        self.lock = threading.Lock()
        self.instances = {}
        self.volumes = {}
        self.devices = {}
        self.next_partition = {}

    def record(self, instance_id):
        """The instance's remembered fields (created empty); hold self.lock."""
        return self.instances.setdefault(instance_id, {})

    def get(self, instance_id):
        with self.lock:
            return dict(self.instances.get(instance_id, {}))

    def partition_for(self, group):
        """AWS spreads instances over a partition group's partitions when none is asked for."""
        with self.lock:
            n = self.next_partition.get(group, 0)
            self.next_partition[group] = n + 1
        return n % self.placement_groups[group][1] + 1


# --- command-line tables ------------------------------------------------------------------------

def placement_group_arg(value):
    """NAME=partition:N | NAME=cluster | NAME=spread."""
    name, _, spec = value.partition("=")
    strategy, _, count = spec.partition(":")
    if not name or strategy not in ("partition", "cluster", "spread") or (strategy == "partition") != count.isdigit():
        raise ValueError(f"want NAME=partition:N, NAME=cluster or NAME=spread: {value!r}")
    return name, (strategy, int(count) if count else 0)


def ssm_parameter_arg(value):
    name, sep, ami = value.partition("=")
    if not sep or not name or not ami.startswith("ami-"):
        raise ValueError(f"want NAME=ami-...: {value!r}")
    return name, ami


# --- XML helpers -----------------------------------------------------------------------------------

def local(element):
    return element.tag.rsplit("}", 1)[-1]


def child(element, name):
    return next((c for c in element if local(c) == name), None) if element is not None else None


def text(element, *path):
    for name in path:
        element = child(element, name)
    return element.text if element is not None else None


def put(element, path, value):
    """Set element/a/b/... to value, creating what is missing (in the element's namespace)."""
    ns = element.tag[: -len(local(element))]
    for name in path.split("/"):
        found = child(element, name)
        element = found if found is not None else ET.SubElement(element, ns + name)
    element.text = value
    return element


def drop(element, name):
    found = child(element, name)
    if found is not None:
        element.remove(found)


def build(parent, value):
    """Fill an element from a dict (children), a list (item children) or a scalar (text)."""
    if isinstance(value, dict):
        for name, sub in value.items():
            if sub is not None:
                build(ET.SubElement(parent, NS + name), sub)
    elif isinstance(value, list):
        for sub in value:
            build(ET.SubElement(parent, NS + "item"), sub)
    else:
        parent.text = str(value).lower() if isinstance(value, bool) else str(value)


def answer(action, content):
    """A 200 answer in EC2's query-protocol XML, as AWS shapes it."""
    root = ET.Element(NS + action + "Response")
    build(root, {"requestId": str(uuid.uuid4()), **content})
    return 200, {"Content-Type": "text/xml"}, ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def instance_items(root):
    """Every instance item in a DescribeInstances or RunInstances answer."""
    return [e for e in root.iter() if local(e) == "item" and child(e, "instanceState") is not None]


def indexed(params, prefix):
    """{N: {rest: value}} for the keys prefix.N.rest, in N order."""
    found = {}
    for key, value in params.items():
        if key.startswith(prefix + "."):
            n, _, rest = key[len(prefix) + 1 :].partition(".")
            if n.isdigit():
                found.setdefault(int(n), {})[rest] = value
    return dict(sorted(found.items()))


def family(instance_type):
    return (instance_type or "").split(".", 1)[0]


def is_true(value):
    return str(value).lower() == "true"


def spot_request_id():
    return "sir-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))


class FieldRules:
    """strict_* handlers for the operator's fields; mixed into strict_ec2.Proxy, which provides
    world, headers, forward, upstream_call, describe_one, state_of, strict, strict_mutation and reply."""

    # --- RunInstances -------------------------------------------------------------------------

    def launch_refusal(self, params):
        """The error AWS answers for this RunInstances before it launches anything, else None."""
        for check in (self.spot_refusal, self.placement_refusal, self.capacity_refusal, self.volumes_refusal,
                      self.interfaces_refusal, self.cpu_credit_refusal):
            refusal = check(params)
            if refusal is not None:
                return refusal
        return None

    def resolve_image(self, params):
        """resolve:ssm:NAME[:version] → the AMI of --ssm-parameter NAME; an error answer if unknown."""
        image = params.get("ImageId", "")
        if not image.startswith("resolve:ssm:"):
            return None
        name = image[len("resolve:ssm:") :]
        if ":" in name.lstrip("/"):
            name = name.rsplit(":", 1)[0]
        ami = self.world.fields.ssm_parameters.get(name)
        if ami is None:
            return self.strict("InvalidParameterValue", f"Invalid value '{image}' for ImageId. Parameter {name} not found.")
        params["ImageId"] = ami
        self.world.count("strict:resolve-ssm")
        return None

    def spot_refusal(self, params):
        market = params.get("InstanceMarketOptions.MarketType")
        spot = {k: v for k, v in params.items() if k.startswith("InstanceMarketOptions.")}
        if not spot:
            return None
        if market != "spot":
            return self.strict("InvalidParameterValue", f"Value ({market}) for parameter marketType is invalid.")
        kind = params.get("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time")
        behavior = params.get("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate")
        if kind not in ("one-time", "persistent"):
            return self.strict("InvalidParameterValue", f"Value ({kind}) for parameter spotInstanceType is invalid.")
        if behavior not in ("terminate", "stop", "hibernate"):
            return self.strict("InvalidParameterValue",
                               f"Value ({behavior}) for parameter instanceInterruptionBehavior is invalid.")
        # SpotMarketOptions: for RunInstances, persistent requests are only supported with the stop or
        # hibernate behavior, and those need a persistent request.
        if (kind == "persistent") != (behavior in ("stop", "hibernate")):
            return self.strict("InvalidParameterCombination",
                               f"The interruption behavior '{behavior}' is not supported for a {kind} Spot "
                               "Instance request launched by RunInstances: stop and hibernate need a "
                               "persistent request, terminate a one-time request.")
        if is_true(params.get("HibernationOptions.Configured")) and behavior != "hibernate":
            return self.strict("InvalidParameterCombination",
                               "Hibernation-enabled Spot Instances need the interruption behavior 'hibernate'.")
        price = params.get("InstanceMarketOptions.SpotOptions.MaxPrice")
        if price is not None:
            try:
                low = float(price) < 0.001
            except ValueError:
                low = True
            if low:
                return self.strict("InvalidParameterValue",
                                   f"Value ({price}) for parameter maxPrice is invalid. The minimum is 0.001.")
        return None

    def placement_refusal(self, params):
        tenancy = params.get("Placement.Tenancy")
        if tenancy is not None and tenancy not in ("default", "dedicated", "host"):
            return self.strict("InvalidParameterValue", f"Value ({tenancy}) for parameter tenancy is invalid.")
        group = params.get("Placement.GroupName")
        partition = params.get("Placement.PartitionNumber")
        if group:
            known = self.world.fields.placement_groups.get(group)
            if known is None:
                return self.strict("InvalidPlacementGroup.Unknown", f"The Placement Group '{group}' is unknown.")
            strategy, count = known
            if partition is not None and (strategy != "partition" or not partition.isdigit()
                                          or not 1 <= int(partition) <= count):
                return self.strict("InvalidParameterValue",
                                   f"Value ({partition}) for parameter partitionNumber is invalid. Placement "
                                   f"group '{group}' has {count} partitions.")
        elif partition is not None:
            return self.strict("InvalidParameterCombination", "A partition number requires a placement group name.")
        zone = params.get("Placement.AvailabilityZone")
        subnet_id = params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId")
        if zone and subnet_id:
            subnet = self.subnet(subnet_id)
            subnet_zone = text(subnet, "availabilityZone")
            if subnet_zone and subnet_zone != zone:
                return self.strict("InvalidParameterValue",
                                   f"Value ({zone}) for parameter availabilityZone is invalid. Subnet "
                                   f"'{subnet_id}' is in the availability zone {subnet_zone}")
        return None

    def capacity_refusal(self, params):
        prefix = "CapacityReservationSpecification."
        preference = params.get(prefix + "CapacityReservationPreference")
        target = params.get(prefix + "CapacityReservationTarget.CapacityReservationId")
        if preference is not None and preference not in ("open", "none", "capacity-reservations-only"):
            return self.strict("InvalidParameterValue",
                               f"Value ({preference}) for parameter capacityReservationPreference is invalid.")
        if preference is not None and target is not None:
            return self.strict("InvalidParameterCombination",
                               "A capacity reservation preference and a capacity reservation target may not be "
                               "specified on the same request.")
        if target is not None and target not in self.world.fields.capacity_reservations:
            return self.strict("InvalidCapacityReservationId.NotFound",
                               f"The capacity reservation ID '{target}' does not exist.")
        return None

    def cpu_credit_refusal(self, params):
        cores, threads = params.get("CpuOptions.CoreCount"), params.get("CpuOptions.ThreadsPerCore")
        if cores is not None and (not cores.isdigit() or int(cores) < 1):
            return self.strict("InvalidParameterValue", f"Value ({cores}) for parameter coreCount is invalid.")
        if threads is not None and threads not in ("1", "2"):
            return self.strict("InvalidParameterValue", f"Value ({threads}) for parameter threadsPerCore is invalid.")
        credits = params.get("CreditSpecification.CpuCredits")
        if credits is not None and credits not in ("standard", "unlimited"):
            return self.strict("InvalidParameterValue", f"Value ({credits}) for parameter cpuCredits is invalid.")
        return None

    def volumes_refusal(self, params):
        for mapping in indexed(params, "BlockDeviceMapping").values():
            refusal = self.volume_refusal(mapping.get("Ebs.VolumeType", "gp2"), mapping.get("Ebs.VolumeSize"),
                                          mapping.get("Ebs.Iops"), mapping.get("Ebs.Throughput"))
            if refusal is not None:
                return refusal
            if mapping.get("Ebs.KmsKeyId") and not is_true(mapping.get("Ebs.Encrypted")):
                return self.strict("InvalidParameterDependency",
                                   "The parameter KmsKeyId requires the parameter Encrypted to be set.")
        return None

    def volume_refusal(self, kind, size, iops, throughput):
        """AWS's rules for a volume's type, size, IOPS and throughput (RunInstances and ModifyVolume)."""
        if kind not in VOLUME_SIZES:
            return self.strict("InvalidParameterValue", f"Value ({kind}) for parameter volumeType is invalid.")
        if size is not None:
            low, high = VOLUME_SIZES[kind]
            if not str(size).isdigit() or not low <= int(size) <= high:
                return self.strict("InvalidParameterValue",
                                   f"Volume of {size}GiB is out of range for volume type {kind}: "
                                   f"{low} to {high} GiB.")
        if iops is None and kind in ("io1", "io2"):
            return self.strict("MissingParameter", f"The request must contain the parameter iops for {kind} volumes.")
        if iops is not None:
            if kind not in VOLUME_IOPS:
                return self.strict("InvalidParameterCombination", f"The parameter iops is not supported for {kind} volumes.")
            low, high = VOLUME_IOPS[kind]
            if not str(iops).isdigit() or not low <= int(iops) <= high:
                return self.strict("InvalidParameterValue",
                                   f"Value ({iops}) for parameter iops is invalid. For {kind} it must be "
                                   f"between {low} and {high}.")
        if throughput is not None:
            if kind != "gp3":
                return self.strict("InvalidParameterCombination",
                                   f"The parameter throughput is not supported for {kind} volumes.")
            low, high = GP3_THROUGHPUT
            if not str(throughput).isdigit() or not low <= int(throughput) <= high:
                return self.strict("InvalidParameterValue",
                                   f"Value ({throughput}) for parameter throughput is invalid. It must be "
                                   f"between {low} and {high}.")
        return None

    def interfaces_refusal(self, params):
        interfaces = indexed(params, "NetworkInterface")
        if interfaces and (any(k.startswith(("SecurityGroupId.", "SecurityGroup.")) for k in params)):
            return self.strict("InvalidParameterCombination",
                               "Network interfaces and an instance-level security groups may not be specified "
                               "on the same request")
        count = params.get("Ipv6AddressCount") or (interfaces.get(1) or {}).get("Ipv6AddressCount")
        if count and count != "0":
            subnet_id = params.get("SubnetId") or (interfaces.get(1) or {}).get("SubnetId")
            if not self.ipv6_block(subnet_id):
                return self.strict("InvalidParameterValue",
                                   f"The subnet '{subnet_id}' does not have any IPv6 CIDR blocks; an IPv6 address "
                                   "count cannot be specified.")
        return None

    def launch_params(self, params):
        """What LocalStack is sent instead of the request, so it launches what AWS would: EBS volumes
        without IOPS/throughput (moto drops them, and refuses io1/io2 because of it: they launch as gp3
        and are modified after), DeleteOnTermination defaulting to true as on AWS."""
        forwarded = dict(params)
        for n, mapping in indexed(params, "BlockDeviceMapping").items():
            prefix = f"BlockDeviceMapping.{n}.Ebs."
            if "Ebs.VolumeSize" not in mapping and "Ebs.SnapshotId" not in mapping:
                continue
            forwarded.pop(prefix + "Iops", None)
            forwarded.pop(prefix + "Throughput", None)
            if mapping.get("Ebs.VolumeType") in ("io1", "io2"):
                forwarded[prefix + "VolumeType"] = "gp3"
            forwarded.setdefault(prefix + "DeleteOnTermination", "true")
        return forwarded

    def launch_error(self, params, status, answer):
        """AWS's 400s for LocalStack's 500s and 404s at RunInstances, else None."""
        message = answer.decode(errors="replace")
        ip = params.get("PrivateIpAddress") or params.get("NetworkInterface.1.PrivateIpAddress")
        if status == 500 and "IP already in use" in message:
            return self.strict("InvalidIPAddress.InUse", f"Address {ip} is in use.")
        if status == 500 and "does not fall in the subnet CIDR" in message:
            return self.strict("InvalidParameterValue", "Address does not fall within the subnet's address range")
        template = params.get("LaunchTemplate.LaunchTemplateId")
        if status == 500 and template and "list index out of range" in message:
            return self.strict("InvalidLaunchTemplateId.NotFound",
                               f"The specified launch template, with template ID {template}, does not exist.")
        return self.profile_error(params, status, answer)

    def profile_error(self, params, status, answer):
        """LocalStack's 404 NoSuchEntity for an unknown instance profile → AWS's 400."""
        if status != 404 or b"NoSuchEntity" not in answer:
            return None
        if "IamInstanceProfile.Arn" in params:
            return self.strict("InvalidParameterValue",
                               f"Value ({params['IamInstanceProfile.Arn']}) for parameter iamInstanceProfile.arn "
                               "is invalid. Invalid IAM Instance Profile ARN")
        return self.strict("InvalidParameterValue",
                           f"Value ({params.get('IamInstanceProfile.Name')}) for parameter iamInstanceProfile.name "
                           "is invalid. Invalid IAM Instance Profile name")

    def after_launch(self, params, root):
        """Remember the launch fields of the new instances and apply upstream what LocalStack ignored."""
        fields = self.world.fields
        items = instance_items(root)
        spot = params.get("InstanceMarketOptions.MarketType") == "spot"
        for item in items:
            instance_id = text(item, "instanceId")
            remembered = {}
            if spot:
                remembered["spot"] = {
                    "headers": dict(self.headers.items()),  # to sign the interruption's own calls
                    "request": spot_request_id(),
                    "type": params.get("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time"),
                    "behavior": params.get("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior",
                                           "terminate"),
                }
            if "Placement.Tenancy" in params:
                remembered["tenancy"] = params["Placement.Tenancy"]
            group = params.get("Placement.GroupName")
            if group:
                remembered["group"] = group
                if fields.placement_groups[group][0] == "partition":
                    remembered["partition"] = params.get("Placement.PartitionNumber") or str(fields.partition_for(group))
            if "CpuOptions.CoreCount" in params or "CpuOptions.ThreadsPerCore" in params:
                remembered["cpu"] = (params.get("CpuOptions.CoreCount"), params.get("CpuOptions.ThreadsPerCore", "2"))
            if "EnclaveOptions.Enabled" in params:
                remembered["enclave"] = is_true(params["EnclaveOptions.Enabled"])
            target = params.get("CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId")
            remembered["capacity"] = (params.get("CapacityReservationSpecification.CapacityReservationPreference",
                                                 "open" if target is None else None), target)
            if "CreditSpecification.CpuCredits" in params:
                remembered["credits"] = params["CreditSpecification.CpuCredits"]
            interface = self.primary_interface(item)
            count = params.get("Ipv6AddressCount") or params.get("NetworkInterface.1.Ipv6AddressCount")
            if count and count != "0" and interface is not None:
                subnet_id = text(item, "subnetId") or params.get("NetworkInterface.1.SubnetId")
                remembered["ipv6"] = self.ipv6_addresses(subnet_id, int(count))
            with fields.lock:
                fields.record(instance_id).update(remembered)
            if is_true(params.get("DisableApiTermination")):
                self.upstream_call({"Action": "ModifyInstanceAttribute", "InstanceId": instance_id,
                                    "DisableApiTermination.Value": "true"})
            secondary = params.get("NetworkInterface.1.SecondaryPrivateIpAddressCount") or params.get(
                "SecondaryPrivateIpAddressCount")
            if secondary and secondary != "0" and interface is not None:
                self.upstream_call({"Action": "AssignPrivateIpAddresses",
                                    "NetworkInterfaceId": text(interface, "networkInterfaceId"),
                                    "SecondaryPrivateIpAddressCount": secondary})
            self.launch_volumes(params, instance_id)

    def launch_volumes(self, params, instance_id):
        """Remember each requested EBS volume's encryption and DeleteOnTermination (LocalStack shows
        them wrong) and give it the type, IOPS and throughput it was asked for."""
        mappings = indexed(params, "BlockDeviceMapping")
        if not mappings:
            return
        item = self.describe_one(instance_id, b"")
        volumes = {}
        for device in (child(item, "blockDeviceMapping") if item is not None else None) or []:
            volumes[text(device, "deviceName")] = (text(device, "ebs", "volumeId"),
                                                   text(device, "ebs", "deleteOnTermination"))
        fields = self.world.fields
        for mapping in mappings.values():
            volume_id, delete = volumes.get(mapping.get("DeviceName"), (None, None))
            if volume_id is None:
                continue
            with fields.lock:
                fields.volumes[volume_id] = {"encrypted": is_true(mapping.get("Ebs.Encrypted")),
                                             "kms": mapping.get("Ebs.KmsKeyId"),
                                             "delete": delete or "true"}
                fields.devices[(instance_id, mapping.get("DeviceName"))] = volume_id
            kind = mapping.get("Ebs.VolumeType")
            modify = {"Action": "ModifyVolume", "VolumeId": volume_id}
            if kind in ("io1", "io2") or "Ebs.Iops" in mapping or "Ebs.Throughput" in mapping:
                modify.update({"VolumeType": kind, "Iops": mapping.get("Ebs.Iops"),
                               "Throughput": mapping.get("Ebs.Throughput")})
                self.upstream_call({k: v for k, v in modify.items() if v is not None})

    def primary_interface(self, item):
        interfaces = child(item, "networkInterfaceSet")
        return next((i for i in (interfaces if interfaces is not None else [])
                     if text(i, "attachment", "deviceIndex") in ("0", None)), None)

    def subnet(self, subnet_id):
        status, _, body = self.upstream_call({"Action": "DescribeSubnets", "SubnetId.1": subnet_id})
        if status != 200:
            return None
        return next((e for e in ET.fromstring(body).iter() if local(e) == "item" and child(e, "subnetId") is not None),
                    None)

    def ipv6_block(self, subnet_id):
        if not subnet_id:
            return None
        subnet = self.subnet(subnet_id)
        blocks = child(subnet, "ipv6CidrBlockAssociationSet")
        return next((text(b, "ipv6CidrBlock") for b in (blocks if blocks is not None else [])), None)

    def ipv6_addresses(self, subnet_id, count):
        network = ipaddress.IPv6Network(self.ipv6_block(subnet_id))
        return [str(network[random.randrange(16, network.num_addresses - 1)]) for _ in range(count)]

    # --- describes ----------------------------------------------------------------------------

    def decorate(self, item):
        """Show in a DescribeInstances (or RunInstances) item what LocalStack does not. True if changed."""
        remembered = self.world.fields.get(text(item, "instanceId"))
        if not remembered:
            return False
        if "monitoring" in remembered:
            put(item, "monitoring/state", remembered["monitoring"])
        spot = remembered.get("spot")
        if spot:
            put(item, "instanceLifecycle", "spot")
            put(item, "spotInstanceRequestId", spot["request"])
            if spot.get("interrupted"):
                code, message = SPOT_REASONS[spot["interrupted"]]
                set_state_reason(item, code, f"{code}: {message}")
        if "tenancy" in remembered:
            put(item, "placement/tenancy", remembered["tenancy"])
        if "group" in remembered:
            put(item, "placement/groupName", remembered["group"])
        if "partition" in remembered:
            put(item, "placement/partitionNumber", remembered["partition"])
        if "cpu" in remembered:
            cores, threads = remembered["cpu"]
            if cores is not None:
                put(item, "cpuOptions/coreCount", cores)
            put(item, "cpuOptions/threadsPerCore", threads)
        if "enclave" in remembered:
            put(item, "enclaveOptions/enabled", str(remembered["enclave"]).lower())
        preference, target = remembered.get("capacity", (None, None))
        if preference is not None:
            put(item, "capacityReservationSpecification/capacityReservationPreference", preference)
        if target is not None:
            put(item, "capacityReservationSpecification/capacityReservationTarget/capacityReservationId", target)
            put(item, "capacityReservationId", target)
        if remembered.get("ipv6"):
            put(item, "ipv6Address", remembered["ipv6"][0])
            interface = self.primary_interface(item)
            if interface is not None:
                drop(interface, "ipv6AddressesSet")
                addresses = put(interface, "ipv6AddressesSet", None)
                for address in remembered["ipv6"]:
                    entry = ET.SubElement(addresses, item.tag[: -len(local(item))] + "item")
                    put(entry, "ipv6Address", address)
                    put(entry, "isPrimaryIpv6", "false")
        return True

    def strict_DescribeVolumes(self, params, body, _action):
        status, headers, payload = self.forward(body)
        fields = self.world.fields
        if status != 200 or not fields.volumes:
            return status, headers, payload
        root = ET.fromstring(payload)
        changed = False
        for volume in (e for e in root.iter() if local(e) == "item" and child(e, "volumeId") is not None):
            with fields.lock:
                known = dict(fields.volumes.get(text(volume, "volumeId")) or {})
            if not known:
                continue
            put(volume, "encrypted", str(known["encrypted"]).lower())
            drop(volume, "kmsKeyId")
            if known["kms"]:
                put(volume, "kmsKeyId", known["kms"])
            attachments = child(volume, "attachmentSet")
            for attachment in attachments if attachments is not None and known["delete"] else []:
                put(attachment, "deleteOnTermination", known["delete"])
            changed = True
        if changed:
            self.world.count("strict:volume-rewritten")
            payload = ET.tostring(root, xml_declaration=True, encoding="UTF-8")
        return status, headers, payload

    # --- ModifyInstanceAttribute / StopInstances ------------------------------------------------

    def strict_ModifyInstanceAttribute(self, params, body, action):
        refusal = self.strict_mutation(params, body, action)
        if refusal is not None:
            return refusal
        instance_id = params.get("InstanceId")
        forwarded = dict(params)
        attribute, value = params.get("Attribute"), params.get("Value")
        structured = {k.split(".", 1)[0] for k in params if k.endswith(".Value")}
        if "InstanceInitiatedShutdownBehavior" in structured:
            # moto only knows the Attribute/Value form of this one
            attribute, value = "instanceInitiatedShutdownBehavior", forwarded.pop("InstanceInitiatedShutdownBehavior.Value")
            forwarded.update(Attribute=attribute, Value=value)
            structured.discard("InstanceInitiatedShutdownBehavior")
        if attribute in BOOLEAN_ATTRIBUTES:
            forwarded.pop("Attribute")
            forwarded[BOOLEAN_ATTRIBUTES[attribute] + ".Value"] = forwarded.pop("Value", "")
            structured.add(BOOLEAN_ATTRIBUTES[attribute])
        unknown = structured - MOTO_DOT_VALUES
        groups = any(k.startswith("GroupId.") for k in params)
        devices = indexed(params, "BlockDeviceMapping")
        if unknown or not (structured or groups or devices or "Attribute" in forwarded):
            what = ", ".join(sorted(unknown)) or "no attribute"
            return self.strict("UnsupportedOperation",
                               f"The strict EC2 proxy does not emulate ModifyInstanceAttribute with {what}: "
                               "LocalStack would remove the instance's security groups instead.")
        if attribute == "instanceInitiatedShutdownBehavior" and value not in ("stop", "terminate"):
            return self.strict("InvalidParameterValue",
                               f"Value ({value}) for parameter instanceInitiatedShutdownBehavior is invalid. "
                               "Valid values are 'stop' and 'terminate'.")
        stopped_only = structured & STOPPED_ONLY_ATTRIBUTES or attribute in ("instanceType", "userData")
        if stopped_only and self.state_of(instance_id, body) not in (None, "stopped"):
            return self.strict("IncorrectInstanceState", f"The instance '{instance_id}' is not in the 'stopped' state.")
        for n, device in devices.items():
            if "Ebs.DeleteOnTermination" in device:
                with self.world.fields.lock:
                    volume_id = self.world.fields.devices.get((instance_id, device.get("DeviceName")))
                    if volume_id in self.world.fields.volumes:
                        self.world.fields.volumes[volume_id]["delete"] = device["Ebs.DeleteOnTermination"]
        if forwarded == params:
            return None
        self.world.count("strict:attribute-form-translated")
        return self.upstream_call(forwarded)

    def strict_StopInstances(self, params, body, action):
        refusal = self.strict_mutation(params, body, action)
        if refusal is not None:
            return refusal
        for instance_id in ids_in(params, "InstanceId"):
            spot = self.world.fields.get(instance_id).get("spot")
            if spot and spot["type"] == "one-time":
                return self.strict("UnsupportedOperation",
                                   f"You can't stop the Spot Instance '{instance_id}' because it is associated with "
                                   "a one-time Spot Instance request. You can only stop Spot Instances associated "
                                   "with persistent Spot Instance requests.")
        status, headers, payload = self.forward(body)
        wrong = b"may not be terminated. Modify its 'disableApiStop'"
        if status == 400 and wrong in payload:
            self.world.count("strict:OperationNotPermitted")
            payload = payload.replace(wrong, b"may not be stopped. Modify its 'disableApiStop'")
        return status, headers, payload

    # --- monitoring, metadata options, credit specification -------------------------------------

    def strict_MonitorInstances(self, params, body, action):
        return self.monitoring(params, body, action, "enabled", "pending")

    def strict_UnmonitorInstances(self, params, body, action):
        return self.monitoring(params, body, action, "disabled", "disabling")

    def monitoring(self, params, body, action, state, answered):
        """LocalStack 501s both calls: the proxy keeps the state and shows it in describes."""
        refusal = self.strict_mutation(params, body, action) or self.unknown_instances(ids_in(params, "InstanceId"))
        if refusal is not None:
            return refusal
        ids = ids_in(params, "InstanceId")
        with self.world.fields.lock:
            for instance_id in ids:
                self.world.fields.record(instance_id)["monitoring"] = state
        self.world.count("strict:" + action)
        return answer(action, {"instancesSet": [{"instanceId": i, "monitoring": {"state": answered}} for i in ids]})

    def strict_CancelSpotInstanceRequests(self, params, body, action):
        """The `sir-` ids are the proxy's own (LocalStack makes none for RunInstances and 500s on
        them): cancel them here. An id never made → AWS's NotFound, and nothing is cancelled."""
        asked = ids_in(params, "SpotInstanceRequestId")
        with self.world.fields.lock:
            spots = {r["spot"]["request"]: r["spot"] for r in self.world.fields.instances.values() if r.get("spot")}
            unknown = [i for i in asked if i not in spots]
            if not unknown:
                for request in asked:
                    spots[request]["cancelled"] = True
        if unknown:
            return self.strict("InvalidSpotInstanceRequestID.NotFound",
                               f"The spot instance request ID '{unknown[0]}' does not exist")
        self.world.count("strict:" + action)
        return answer(action, {"spotInstanceRequestSet": [
            {"spotInstanceRequestId": i, "state": "cancelled"} for i in asked]})

    def strict_ModifyInstanceMetadataOptions(self, params, body, action):
        refusal = self.strict_mutation(params, body, action)
        if refusal is not None:
            return refusal
        for name, allowed in METADATA_ENUMS.items():
            if name in params and params[name] not in allowed:
                return self.strict("InvalidParameterValue", f"Value ({params[name]}) for parameter {name} is invalid.")
        hops = params.get("HttpPutResponseHopLimit")
        if hops is not None and (not hops.isdigit() or not 1 <= int(hops) <= 64):
            return self.strict("InvalidParameterValue",
                               f"Value ({hops}) for parameter HttpPutResponseHopLimit is invalid. "
                               "Valid values are 1 to 64.")
        missing = [name for name in METADATA_DEFAULTS if name not in params]
        if not missing:
            return None
        # an omitted parameter keeps its value (LocalStack 500s without the hop limit, drops the rest)
        item = self.describe_one(params["InstanceId"], body)
        if item is None:
            return None
        current = child(item, "metadataOptions")
        forwarded = dict(params)
        for name in missing:
            forwarded[name] = text(current, name[0].lower() + name[1:]) or METADATA_DEFAULTS[name]
        self.world.count("strict:metadata-options-filled")
        return self.upstream_call(forwarded)

    def strict_DescribeInstanceCreditSpecifications(self, params, body, action):
        ids = ids_in(params, "InstanceId")
        refusal = self.strict_mutation(params, body, action)
        if refusal is not None:
            return refusal
        items = self.describe_items(ids)
        if isinstance(items, tuple):
            return items
        found = []
        for item in items:
            instance_id, kind = text(item, "instanceId"), text(item, "instanceType")
            credits = self.credits_of(instance_id, kind)
            if credits is None and ids:
                return self.strict("InvalidParameterValue",
                                   f"The instance '{instance_id}' is not a burstable performance instance "
                                   f"(instance type {kind}).")
            listed = credits == "unlimited" and text(item, "instanceState", "name") != "terminated"
            if credits is not None and (ids or listed):
                found.append({"instanceId": instance_id, "cpuCredits": credits})
        self.world.count("strict:" + action)
        return answer(action, {"instanceCreditSpecificationSet": found})

    def strict_ModifyInstanceCreditSpecification(self, params, body, action):
        asked = indexed(params, "InstanceCreditSpecification")
        for spec in asked.values():
            if spec.get("CpuCredits") not in ("standard", "unlimited"):
                return self.strict("InvalidParameterValue",
                                   f"Value ({spec.get('CpuCredits')}) for parameter cpuCredits is invalid.")
        items = {}
        ids = [spec.get("InstanceId") for spec in asked.values()]
        for instance_id in ids:
            item = None if self.world.invisible(instance_id) else self.describe_one(instance_id, body)
            items[instance_id] = item
        done, failed = [], []
        for spec in asked.values():
            instance_id = spec.get("InstanceId")
            item = items.get(instance_id)
            if item is None:
                failed.append({"instanceId": instance_id, "error": {
                    "code": "InvalidInstanceID.NotFound", "message": f"The instance ID '{instance_id}' does not exist"}})
            elif self.credits_of(instance_id, text(item, "instanceType")) is None:
                failed.append({"instanceId": instance_id, "error": {
                    "code": "InstanceCreditSpecification.NotSupported",
                    "message": f"The instance '{instance_id}' is not a burstable performance instance."}})
            else:
                with self.world.fields.lock:
                    self.world.fields.record(instance_id)["credits"] = spec["CpuCredits"]
                done.append({"instanceId": instance_id})
        self.world.count("strict:" + action)
        return answer(action, {"successfulInstanceCreditSpecificationSet": done,
                               "unsuccessfulInstanceCreditSpecificationSet": failed})

    def credits_of(self, instance_id, instance_type):
        """standard|unlimited for a burstable instance (AWS defaults by family), None for another type."""
        default = BURSTABLE_DEFAULT.get(family(instance_type))
        if default is None:
            return None
        return self.world.fields.get(instance_id).get("credits", default)

    # --- IAM instance profiles ----------------------------------------------------------------

    def strict_AssociateIamInstanceProfile(self, params, body, _action):
        status, headers, payload = self.forward(body)
        return self.profile_error(params, status, payload) or (status, headers, payload)

    def strict_ReplaceIamInstanceProfileAssociation(self, params, body, action):
        """LocalStack answers a replace but keeps the old profile on the instance: disassociate and
        associate upstream instead (AWS, too, gives the replacement a new association id)."""
        status, headers, payload = self.upstream_call({"Action": "DescribeIamInstanceProfileAssociations",
                                                       "AssociationId.1": params.get("AssociationId", "")})
        found = [e for e in ET.fromstring(payload).iter() if local(e) == "item" and child(e, "instanceId") is not None] \
            if status == 200 else []
        if not found:
            return self.forward(body)
        instance_id, old_arn = text(found[0], "instanceId"), text(found[0], "iamInstanceProfile", "arn")
        self.upstream_call({"Action": "DisassociateIamInstanceProfile", "AssociationId": params["AssociationId"]})
        associate = {k: v for k, v in params.items() if k.startswith("IamInstanceProfile.")}
        status, headers, payload = self.upstream_call(
            {"Action": "AssociateIamInstanceProfile", "InstanceId": instance_id, **associate})
        if status != 200:
            self.upstream_call({"Action": "AssociateIamInstanceProfile", "InstanceId": instance_id,
                                "IamInstanceProfile.Arn": old_arn})
            return self.profile_error(params, status, payload) or (status, headers, payload)
        root = ET.fromstring(payload)
        association = child(root, "iamInstanceProfileAssociation")
        self.world.count("strict:" + action)
        return answer(action, {"iamInstanceProfileAssociation": {
            "associationId": text(association, "associationId"), "instanceId": instance_id,
            "iamInstanceProfile": {"arn": text(association, "iamInstanceProfile", "arn"),
                                   "id": text(association, "iamInstanceProfile", "id")},
            "state": "associating"}})

    # --- volumes ------------------------------------------------------------------------------

    def strict_ModifyVolume(self, params, body, action):
        volume_id = params.get("VolumeId", "")
        status, _, payload = self.upstream_call({"Action": "DescribeVolumes", "VolumeId.1": volume_id})
        if status != 200:
            return None
        volume = next((e for e in ET.fromstring(payload).iter() if local(e) == "item"
                       and child(e, "volumeId") is not None), None)
        if volume is None:
            return None
        size = params.get("Size")
        current = int(text(volume, "size") or 0)
        if size is not None and size.isdigit() and int(size) < current:
            return self.strict("InvalidParameterValue", "New size cannot be smaller than existing size")
        kind = params.get("VolumeType") or text(volume, "volumeType")
        iops = params.get("Iops") or (text(volume, "iops") if kind in VOLUME_IOPS else None)
        throughput = params.get("Throughput") or (text(volume, "throughput") if kind == "gp3" else None)
        refusal = self.volume_refusal(kind, size, iops, throughput)
        if refusal is not None:
            return refusal
        fields = self.world.fields
        now = time.monotonic()
        with fields.lock:
            last = fields.volumes.setdefault(volume_id, {"encrypted": text(volume, "encrypted") == "true",
                                                         "kms": text(volume, "kmsKeyId"), "delete": None})
            earlier = last.get("modified_at")
        if earlier is not None and now - earlier < fields.volume_cooldown:
            return self.strict("VolumeModificationRateExceeded", VOLUME_MODIFY_RATE)
        status, headers, payload = self.forward(body)
        if status == 200:
            with fields.lock:
                fields.volumes[volume_id]["modified_at"] = now
        return status, headers, payload

    # --- placement groups ---------------------------------------------------------------------

    def strict_DescribePlacementGroups(self, params, body, action):
        """LocalStack cannot create placement groups: describe the proxy's own table."""
        names = ids_in(params, "GroupName")
        unknown = [n for n in names if n not in self.world.fields.placement_groups]
        if unknown:
            return self.strict("InvalidPlacementGroup.Unknown", f"The Placement Group '{unknown[0]}' is unknown.")
        groups = [{"groupName": name, "state": "available", "strategy": strategy,
                   "partitionCount": count or None}
                  for name, (strategy, count) in self.world.fields.placement_groups.items()
                  if not names or name in names]
        self.world.count("strict:" + action)
        return answer(action, {"placementGroupSet": groups})

    # --- spot interruption ----------------------------------------------------------------------

    def interrupt(self, query):
        """POST /_strict/interrupt?instance=i-...: EC2 interrupts the spot instance (terminates it, or
        stops it for the stop behavior) and describes then show AWS's state reason."""
        instance_id = (urllib.parse.parse_qs(query).get("instance") or [""])[0]
        remembered = self.world.fields.get(instance_id)
        spot = remembered.get("spot")
        if not spot:
            return 404, {"error": f"{instance_id or 'no instance'} is not a spot instance launched through this proxy"}
        how = "stop" if spot["behavior"] in ("stop", "hibernate") else "terminate"
        action = "StopInstances" if how == "stop" else "TerminateInstances"
        guard = "DisableApiStop" if how == "stop" else "DisableApiTermination"
        headers = spot["headers"]
        status, _, payload = self.upstream_call({"Action": action, "InstanceId.1": instance_id}, headers)
        if status == 400 and b"OperationNotPermitted" in payload:
            # EC2 interrupts whatever the instance's stop or termination protection says
            self.upstream_call({"Action": "ModifyInstanceAttribute", "InstanceId": instance_id,
                                guard + ".Value": "false"}, headers)
            status, _, payload = self.upstream_call({"Action": action, "InstanceId.1": instance_id}, headers)
        if status != 200:
            return 502, {"error": f"upstream {action}: {status} {payload[:300].decode(errors='replace')}"}
        with self.world.fields.lock:
            self.world.fields.record(instance_id)["spot"]["interrupted"] = how
        self.world.count("strict:spot-interrupted")
        return 200, {"instance": instance_id, "interrupted": how, "stateReason": SPOT_REASONS[how][0]}

    def interrupt_reply(self, query):
        status, content = self.interrupt(query)
        self.reply(status, {"Content-Type": "application/json"}, json.dumps(content).encode())

    # --- helpers ------------------------------------------------------------------------------

    def unknown_instances(self, ids):
        """InvalidInstanceID.NotFound for ids LocalStack does not know, else None."""
        items = self.describe_items(ids)
        return items if isinstance(items, tuple) else None

    def describe_items(self, ids):
        """The instance items LocalStack describes for these ids (all instances for none), or the
        error answer for ids it does not know."""
        request = {"Action": "DescribeInstances", "MaxResults": "1000"} if not ids else {"Action": "DescribeInstances"}
        request.update({f"InstanceId.{n}": i for n, i in enumerate(ids, 1)})
        items = []
        while True:
            status, headers, payload = self.upstream_call(request)
            if status != 200:
                return status, headers, payload
            root = ET.fromstring(payload)
            items += [i for i in instance_items(root) if not self.world.invisible(text(i, "instanceId"))]
            token = text(root, "nextToken")
            if not token:
                return items
            request["NextToken"] = token


def ids_in(params, prefix):
    return [v for k, v in params.items() if k.startswith(prefix + ".") and k[len(prefix) + 1 :].isdigit()]


def set_state_reason(item, code, message):
    """Replace the item's stateReason (AWS's reason for a state EC2 chose, not the user) and clear
    stateTransitionReason as AWS leaves it for those."""
    reason = child(item, "reason")
    if reason is not None:
        reason.text = ""
    old = child(item, "stateReason")
    at = list(item).index(old) if old is not None else len(item)
    if old is not None:
        item.remove(old)
    ns = item.tag[: -len(local(item))]
    new = ET.Element(ns + "stateReason")
    ET.SubElement(new, ns + "code").text = code
    ET.SubElement(new, ns + "message").text = message
    item.insert(at, new)
