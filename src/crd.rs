//! The API types: `Ec2Instance` (`k106.com/v1alpha1`), its spec, status and admission rules.
//!
//! Everything a user can get wrong in a manifest is rejected here, at admission, by OpenAPI
//! constraints and CEL rules that the API server evaluates; the controller never sees it.

// Each `printcolumn(...)` repeats the same keys; clippy mistakes that for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{MAX_USER_DATA_BYTES, MAX_USER_TAGS, TAG_PREFIX};

/// Desired state of one EC2 instance. The operator launches it, keeps it matching this spec,
/// and terminates it when the object is deleted (unless `deletionPolicy: Retain`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "k106.com",
    version = "v1alpha1",
    kind = "Ec2Instance",
    namespaced,
    status = "Ec2InstanceStatus",
    shortname = "ec2i",
    category = "aws",
    derive = "PartialEq",
    doc = "An EC2 instance kept matching its spec: launched, started or stopped, modified, retagged, and terminated when the object is deleted.",
    printcolumn(name = "Instance", type_ = "string", json_path = ".status.instanceId"),
    printcolumn(name = "Type", type_ = "string", json_path = ".status.instanceType"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Private-IP", type_ = "string", json_path = ".status.privateIp"),
    printcolumn(name = "Public-IP", type_ = "string", json_path = ".status.publicIp"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Zone",
        type_ = "string",
        json_path = ".status.availabilityZone",
        priority = 1
    ),
    printcolumn(name = "Lifecycle", type_ = "string", json_path = ".status.lifecycle", priority = 1),
    printcolumn(name = "Plan", type_ = "string", json_path = ".status.plan", priority = 1)
)]
#[serde(rename_all = "camelCase")]
// Under `updatePolicy: Replace` a change of a field EC2 fixes at launch is admitted (the operator
// replaces the instance); the region never changes.
#[x_kube(validation = Rule::new(format!(
    "{REPLACE} || self.imageId == oldSelf.imageId"
)).message("imageId is immutable: a new image means a new instance; create a new Ec2Instance instead").field_path(".imageId"))]
#[x_kube(validation = Rule::new(format!(
    "{REPLACE} || (has(self.subnetId) == has(oldSelf.subnetId) && (!has(self.subnetId) || self.subnetId == oldSelf.subnetId))"
)).message("subnetId is immutable: an instance cannot move subnets; create a new Ec2Instance instead").field_path(".subnetId"))]
#[x_kube(validation = Rule::new(format!(
    "{REPLACE} || (has(self.keyName) == has(oldSelf.keyName) && (!has(self.keyName) || self.keyName == oldSelf.keyName))"
)).message("keyName is immutable: EC2 cannot change the key pair of an instance; create a new Ec2Instance instead").field_path(".keyName"))]
#[x_kube(validation = Rule::new(format!(
    "{REPLACE} || (has(self.rootVolume) == has(oldSelf.rootVolume) && (!has(self.rootVolume) || ({} && {})))",
    same("rootVolume.type"), same("rootVolume.encrypted")
)).message("rootVolume is immutable but for sizeGiB: its type and encryption are set at launch; create a new Ec2Instance instead").field_path(".rootVolume"))]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.rootVolume) || !has(oldSelf.rootVolume.sizeGiB) || (has(self.rootVolume) && has(self.rootVolume.sizeGiB) && self.rootVolume.sizeGiB >= oldSelf.rootVolume.sizeGiB)"
).message("rootVolume.sizeGiB can only grow: EBS volumes cannot shrink; create a new Ec2Instance for a smaller one").field_path(".rootVolume.sizeGiB"))]
#[x_kube(validation = Rule::new(
    "has(self.region) == has(oldSelf.region) && (!has(self.region) || self.region == oldSelf.region)"
).message("region is immutable: an instance cannot move regions; create a new Ec2Instance instead").field_path(".region"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("launchTemplate"))).message("launchTemplate is immutable: the launch template is applied at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".launchTemplate"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("blockDeviceMappings"))).message("blockDeviceMappings is immutable: volumes are attached at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".blockDeviceMappings"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("networkInterface"))).message("networkInterface is immutable: the primary network interface is made at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".networkInterface"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("placement"))).message("placement is immutable: an instance cannot move zones, hosts or placement groups; set updatePolicy: Replace or create a new Ec2Instance").field_path(".placement"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("spot"))).message("spot is immutable: the purchase option is chosen at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".spot"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("capacityReservation"))).message("capacityReservation is immutable: the capacity reservation is chosen at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".capacityReservation"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("cpuOptions"))).message("cpuOptions is immutable: CPU options are set at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".cpuOptions"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("hibernation"))).message("hibernation is immutable: hibernation is configured at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".hibernation"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("enclave"))).message("enclave is immutable: Nitro Enclaves are enabled at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".enclave"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("subnetSelector"))).message("subnetSelector is immutable: the subnet is resolved at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".subnetSelector"))]
#[x_kube(validation = Rule::new(format!("{REPLACE} || {}", same("securityGroupSelector"))).message("securityGroupSelector is immutable: the security groups are resolved at launch; set updatePolicy: Replace or create a new Ec2Instance").field_path(".securityGroupSelector"))]
#[x_kube(validation = Rule::new("!(has(self.subnetId) && has(self.subnetSelector))").message("set subnetId or subnetSelector, not both"))]
#[x_kube(validation = Rule::new("!(has(self.securityGroupIds) && has(self.securityGroupSelector))").message("set securityGroupIds or securityGroupSelector, not both"))]
#[x_kube(validation = Rule::new(format!("!({STOP_PROTECTED} && self.desiredState == 'Stopped')")).message("desiredState Stopped with stopProtection: EC2 refuses to stop a protected instance; turn stopProtection off"))]
#[x_kube(validation = Rule::new(format!("!({STOP_PROTECTED} && {NEEDS_STOP})")).message("instanceType, userData and ebsOptimized change only on a stopped instance, and stopProtection forbids the stop: turn stopProtection off in the same or an earlier change"))]
#[x_kube(validation = Rule::new(format!("!({ONE_TIME_SPOT} && self.desiredState == 'Stopped')")).message("a one-time Spot instance cannot be stopped; use spot.interruptionBehavior: Stop (a persistent request) or desiredState Running"))]
#[x_kube(validation = Rule::new(format!("!({ONE_TIME_SPOT} && {NEEDS_STOP})")).message("instanceType, userData and ebsOptimized change only on a stopped instance, and a one-time Spot instance cannot be stopped; create a new Ec2Instance instead"))]
#[x_kube(validation = Rule::new("!(has(self.spot) && ((has(self.terminationProtection) && self.terminationProtection) || (has(self.stopProtection) && self.stopProtection)))").message("EC2 allows neither termination nor stop protection on Spot instances"))]
#[x_kube(validation = Rule::new(format!("!({REPLACE} && has(self.networkInterface) && has(self.networkInterface.privateIp))")).message("networkInterface.privateIp cannot go with updatePolicy: Replace: the new instance would need the address while the old one still holds it"))]
#[x_kube(validation = Rule::new("!has(self.creditSpecification) || self.instanceType.matches('^t[234][a-z]*[.]')").message("creditSpecification applies to burstable instance types only (t2, t3, t3a, t4g)").field_path(".creditSpecification"))]
pub struct Ec2InstanceSpec {
    /// AMI to launch, e.g. `ami-0abcdef1234567890`, or `resolve:ssm:<parameter>` (EC2 resolves the
    /// SSM parameter at launch; `status.imageId` shows the AMI it chose, and a later change of the
    /// parameter never replaces a running instance). Immutable unless `updatePolicy: Replace`: a
    /// new image means a new instance.
    #[schemars(regex(pattern = r"^(ami-([0-9a-f]{8}|[0-9a-f]{17})|resolve:ssm:[a-zA-Z0-9_.:/-]+)$"))]
    #[schemars(length(max = 1024))]
    pub image_id: String,

    /// Instance type, e.g. `t3.micro`. Changing it stops the instance, modifies it and starts it
    /// again (when `desiredState` is `Running`).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$"), length(max = 64))]
    pub instance_type: String,

    /// Subnet to launch into, e.g. `subnet-0abc1234`. Defaults to the default VPC's subnet
    /// chosen by EC2 (or `subnetSelector`). Immutable unless `updatePolicy: Replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$"))]
    pub subnet_id: Option<String>,

    /// Security groups, e.g. `[sg-0abc1234]`, each at most once. When set, the instance's groups are kept equal to
    /// this list; when absent, EC2's default group is used and not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 16),
        inner(regex(pattern = r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub security_group_ids: Option<Vec<String>>,

    /// Name of an existing EC2 key pair for SSH. Immutable unless `updatePolicy: Replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub key_name: Option<String>,

    /// IAM instance profile name or ARN. Changed in place: associated, replaced or (removed from
    /// the spec) disassociated, without a stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub iam_instance_profile: Option<String>,

    /// User data as plain text (the operator base64-encodes it), at most 16 KiB. Changing it
    /// stops the instance, modifies it and starts it again (when `desiredState` is `Running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_USER_DATA_BYTES))]
    #[x_kube(validation = Rule::new(format!("size(bytes(self)) <= {MAX_USER_DATA_BYTES}")).message(format!("userData must be at most 16 KiB ({MAX_USER_DATA_BYTES} bytes)").as_str()))]
    pub user_data: Option<String>,

    /// Tags for the instance and its volumes. At most 44 (EC2 allows 50 per resource and the
    /// operator uses 6), keys 1-128 characters, values at most 256; the prefixes `aws:` (reserved by
    /// AWS) and `k106.com/` (reserved by this operator) are not allowed. Keys removed from this map
    /// are removed from the instance; tags that others add are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = MAX_USER_TAGS, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) >= 1 && size(k) <= 128)").message("tag keys must be 1-128 characters"))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('aws:'))").message("tag keys must not start with 'aws:' (reserved by AWS)"))]
    #[x_kube(validation = Rule::new(format!("self.all(k, !k.startsWith('{TAG_PREFIX}'))")).message(format!("tag keys must not start with '{TAG_PREFIX}' (reserved by the operator)").as_str()))]
    pub tags: Option<BTreeMap<String, String>>,

    /// Root EBS volume. `sizeGiB` can grow in place (ModifyVolume, no stop) and never shrink; type
    /// and encryption are immutable unless `updatePolicy: Replace`: they are set at launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<RootVolume>,

    /// Subnet by tags instead of by id, e.g. `{kubernetes.io/role/internal-elb: "1"}`: resolved at
    /// launch (DescribeSubnets; of several matches, the one with the most free addresses) and
    /// recorded in `status.subnetId`. Exclusive with `subnetId`. Immutable unless `updatePolicy:
    /// Replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    pub subnet_selector: Option<BTreeMap<String, String>>,

    /// Security groups by tags instead of by id: every group carrying all these tags, resolved at
    /// launch (DescribeSecurityGroups, at most 16) and recorded in `status.securityGroupIds`;
    /// not resolved again later. Exclusive with `securityGroupIds`. Immutable unless
    /// `updatePolicy: Replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    pub security_group_selector: Option<BTreeMap<String, String>>,

    /// Launch template to start from; the fields of this spec override the template's. With a
    /// template and no `metadataOptions`, the template's IMDS settings apply. Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<Box<LaunchTemplate>>,

    /// Extra EBS volumes attached at launch (the root volume is `rootVolume`). Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["deviceName"]))]
    pub block_device_mappings: Option<Vec<BlockDevice>>,

    /// The primary network interface: a public IP, a fixed private IP, more private or IPv6
    /// addresses. Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface: Option<Box<NetworkInterface>>,

    /// Availability zone, tenancy and placement group. Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Box<Placement>>,

    /// Run as a Spot instance. An instance EC2 interrupts is replaced (Warning `SpotInterrupted`),
    /// with the same backoff as other replacements. Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<Box<Spot>>,

    /// Which capacity reservation the instance may use. Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation: Option<Box<CapacityReservation>>,

    /// CPU cores and threads per core. Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_options: Option<Box<CpuOptions>>,

    /// Configure the instance for hibernation (needs an encrypted root volume). Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation: Option<bool>,

    /// Enable AWS Nitro Enclaves. Launch-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enclave: Option<bool>,

    /// Instance metadata service (IMDS) settings, changed in place. Each field left out is left as
    /// EC2 has it. Without this field instances launch with IMDSv2 required and the endpoint on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<Box<MetadataOptions>>,

    /// `Detailed` (1-minute CloudWatch metrics, billed) or `Basic`. Changed in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub monitoring: Option<Monitoring>,

    /// Refuse TerminateInstances from anyone (DisableApiTermination). Changed in place. Deleting the
    /// object with `deletionPolicy: Delete` turns it off first, then terminates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_protection: Option<bool>,

    /// Refuse StopInstances from anyone (DisableApiStop). Changed in place. While on, admission
    /// refuses `desiredState: Stopped` and changes that need a stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_protection: Option<bool>,

    /// What a shutdown from inside the instance does: `Stop` or `Terminate` (the operator then
    /// launches a new one). Changed in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub shutdown_behavior: Option<ShutdownBehavior>,

    /// `false` lets the instance route traffic not addressed to it (NAT, VPN). Changed in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_dest_check: Option<bool>,

    /// CPU credits of a burstable (T) instance: `Standard` or `Unlimited`. Changed in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub credit_specification: Option<CreditSpecification>,

    /// EBS-optimized I/O. Changing it stops the instance, modifies it and starts it again (when
    /// `desiredState` is `Running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,

    /// AWS region, e.g. `eu-west-1`. Defaults to the operator's region. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"), length(max = 32))]
    pub region: Option<String>,

    /// `Running` (default) or `Stopped`. The operator starts or stops the instance to match,
    /// including when someone changes it out of band.
    #[serde(default)]
    pub desired_state: DesiredState,

    /// What happens to the instance when this object is deleted: `Delete` (default) terminates
    /// it; `Retain` leaves it running and removes the operator's tags from it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Full` (default): the operator launches, changes and terminates the instance.
    /// `ObserveOnly`: it only reads. Status is kept current, a difference from this spec is
    /// reported with the steps `Full` would take (`status.plan`), nothing in EC2 is changed, and
    /// deleting the object never terminates the instance. With the annotation
    /// `k106.com/adopt-instance-id`, an existing instance is observed without being tagged.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// What a change of a field EC2 fixes at launch (`imageId`, `subnetId`, `keyName`,
    /// `rootVolume` but its size, and every launch-only field) does. `Refuse` (default): admission rejects the change.
    /// `Replace`: the change is admitted and the operator launches a new instance as the spec now
    /// says, keeps the old one serving (and in status) until the new one runs, then moves status
    /// to the new one and terminates the old one. `region` never changes.
    #[serde(default)]
    pub update_policy: UpdatePolicy,
}

/// Root EBS volume settings, applied at launch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RootVolume {
    /// Size in GiB (1-16384). Defaults to the AMI's size.
    #[serde(rename = "sizeGiB", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub size_gib: Option<i32>,
    /// EBS volume type. Defaults to the AMI's type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub volume_type: Option<VolumeType>,
    /// Encrypt the volume with the account's default EBS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
}

/// A launch template, by id or by name, and its version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("launchTemplate needs id or name, not both"))]
pub struct LaunchTemplate {
    /// Template id, e.g. `lt-0abcdef1234567890`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^lt-[0-9a-f]{17}$"))]
    pub id: Option<String>,
    /// Template name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9().\-/_]{3,128}$"))]
    pub name: Option<String>,
    /// `$Default` (default), `$Latest`, or a version number. `$Latest` and `$Default` are read at
    /// launch: a new template version never changes a running instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\$Latest|\$Default|[1-9][0-9]{0,17})$"))]
    pub version: Option<String>,
}

/// An extra EBS volume, attached at launch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.type) || !(self.type == 'io1' || self.type == 'io2') || has(self.iops)").message("io1 and io2 volumes need iops"))]
#[x_kube(validation = Rule::new("!has(self.iops) || (has(self.type) && (self.type == 'io1' || self.type == 'io2' || self.type == 'gp3'))").message("iops applies to io1, io2 and gp3 volumes only"))]
#[x_kube(validation = Rule::new("!has(self.throughput) || (has(self.type) && self.type == 'gp3')").message("throughput applies to gp3 volumes only"))]
#[x_kube(validation = Rule::new("!has(self.kmsKeyId) || (has(self.encrypted) && self.encrypted)").message("kmsKeyId needs encrypted: true"))]
pub struct BlockDevice {
    /// Device name, e.g. `/dev/sdf` or `xvdf`.
    #[schemars(regex(pattern = r"^(/dev/)?(sd[b-z]|xvd[b-z]{1,2}|sd[b-z][1-9]|xvd[b-z][1-9]|nvme[0-9]+n[0-9]+)$"))]
    pub device_name: String,
    /// Size in GiB (1-65536).
    #[serde(rename = "sizeGiB")]
    #[schemars(range(min = 1, max = 65536))]
    pub size_gib: i32,
    /// EBS volume type; EC2's default is gp2 or gp3 by region.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub volume_type: Option<VolumeType>,
    /// Provisioned IOPS (io1, io2, gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 256000))]
    pub iops: Option<i32>,
    /// Throughput in MiB/s (gp3 only, 125-2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 125, max = 2000))]
    pub throughput: Option<i32>,
    /// Encrypt the volume (with `kmsKeyId`, else the account's default EBS key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// KMS key (id, alias or ARN) for an encrypted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
    /// Delete the volume when the instance terminates (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,
}

/// The instance's primary network interface, made at launch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    /// Give the instance a public IPv4 address (default: the subnet's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub associate_public_ip: Option<bool>,
    /// A fixed primary private IPv4 address inside the subnet, e.g. `10.0.1.20`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$"
    ))]
    pub private_ip: Option<String>,
    /// How many secondary private IPv4 addresses EC2 assigns (0-49).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 49))]
    pub secondary_private_ip_count: Option<i32>,
    /// How many IPv6 addresses EC2 assigns (the subnet needs an IPv6 range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 50))]
    pub ipv6_address_count: Option<i32>,
}

/// Where the instance runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.partitionNumber) || has(self.groupName)").message("partitionNumber needs groupName (a partition placement group)"))]
pub struct Placement {
    /// Availability zone, e.g. `eu-west-1a`; must be the subnet's zone when a subnet is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+[a-z]$"))]
    pub availability_zone: Option<String>,
    /// `default` (shared hardware), `dedicated` or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub tenancy: Option<Tenancy>,
    /// Name of an existing placement group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub group_name: Option<String>,
    /// Partition of a partition placement group (1-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 7))]
    pub partition_number: Option<i32>,
}

/// EC2 tenancy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tenancy {
    Default,
    Dedicated,
    Host,
}

/// A Spot instance, from a request made with the launch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Spot {
    /// Highest price per hour in USD, e.g. `"0.02"` (default: the on-demand price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,4}(\.[0-9]{1,6})?$"))]
    pub max_price: Option<String>,
    /// What an interruption does: `Terminate` (default; a one-time request, which cannot be
    /// stopped) or `Stop` (a persistent request; EC2 starts it again when capacity returns).
    #[serde(default)]
    pub interruption_behavior: InterruptionBehavior,
}

/// What EC2 does to an interrupted Spot instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InterruptionBehavior {
    #[default]
    Terminate,
    Stop,
}

/// Capacity reservation use: a preference, or one reservation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.preference) != has(self.reservationId)").message("capacityReservation needs preference or reservationId, not both"))]
pub struct CapacityReservation {
    /// `Open` (use any open reservation that matches) or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub preference: Option<ReservationPreference>,
    /// Run in this reservation, e.g. `cr-0abcdef1234567890`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^cr-[0-9a-f]{17}$"))]
    pub reservation_id: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationPreference {
    Open,
    None,
}

/// CPU cores and threads.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CpuOptions {
    /// Number of CPU cores (1-192; the type's valid counts apply).
    #[schemars(range(min = 1, max = 192))]
    pub core_count: i32,
    /// Threads per core: 1 turns hyper-threading off, 2 (default) leaves it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub threads_per_core: Option<i32>,
}

/// Instance metadata service settings; each one left out is left as EC2 has it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOptions {
    /// `Required` (IMDSv2 only) or `Optional` (v1 allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub http_tokens: Option<HttpTokens>,
    /// Network hops an IMDS answer may travel (1-64); 2 lets containers on the instance reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: Option<i32>,
    /// `Enabled` or `Disabled`: whether IMDS answers at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub http_endpoint: Option<Switch>,
    /// `Enabled` or `Disabled`: instance tags in the metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = without_null_value)]
    pub instance_metadata_tags: Option<Switch>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpTokens {
    Required,
    Optional,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Enabled,
    Disabled,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitoring {
    Basic,
    Detailed,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownBehavior {
    Stop,
    Terminate,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditSpecification {
    Standard,
    Unlimited,
}

impl HttpTokens {
    pub fn as_ec2(self) -> &'static str {
        match self {
            HttpTokens::Required => "required",
            HttpTokens::Optional => "optional",
        }
    }
}

impl Switch {
    pub fn as_ec2(self) -> &'static str {
        match self {
            Switch::Enabled => "enabled",
            Switch::Disabled => "disabled",
        }
    }
}

impl ShutdownBehavior {
    pub fn as_ec2(self) -> &'static str {
        match self {
            ShutdownBehavior::Stop => "stop",
            ShutdownBehavior::Terminate => "terminate",
        }
    }
}

impl CreditSpecification {
    pub fn as_ec2(self) -> &'static str {
        match self {
            CreditSpecification::Standard => "standard",
            CreditSpecification::Unlimited => "unlimited",
        }
    }
}

/// schemars lists `null` among an optional enum's values; the API server wants `nullable` alone.
fn without_null_value(schema: &mut schemars::Schema) {
    if let Some(values) = schema.get_mut("enum").and_then(|v| v.as_array_mut()) {
        values.retain(|v| !v.is_null());
    }
}

/// EBS volume types accepted for the root volume.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    Gp2,
    Gp3,
    Io1,
    Io2,
    St1,
    Sc1,
    Standard,
}

impl VolumeType {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Gp2 => "gp2",
            VolumeType::Gp3 => "gp3",
            VolumeType::Io1 => "io1",
            VolumeType::Io2 => "io2",
            VolumeType::St1 => "st1",
            VolumeType::Sc1 => "sc1",
            VolumeType::Standard => "standard",
        }
    }
}

/// Power state the operator keeps the instance in.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

/// What deleting the object does to the instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// Whether the operator changes EC2 for this object or only observes it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ManagementPolicy {
    #[default]
    Full,
    ObserveOnly,
}

/// What a change of a field EC2 fixes at launch does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UpdatePolicy {
    #[default]
    Refuse,
    Replace,
}

/// The CEL condition under which admission lets a field EC2 fixes at launch change.
const REPLACE: &str = "(has(self.updatePolicy) && self.updatePolicy == 'Replace')";

/// CEL: `path` (under `self`) is the same as before, present or absent alike.
fn same(path: &str) -> String {
    format!("(has(self.{path}) == has(oldSelf.{path}) && (!has(self.{path}) || self.{path} == oldSelf.{path}))")
}

/// CEL: the spec keeps stop protection on.
const STOP_PROTECTED: &str = "(has(self.stopProtection) && self.stopProtection)";
/// CEL: a one-time Spot instance (terminated on interruption), which EC2 never stops.
const ONE_TIME_SPOT: &str =
    "(has(self.spot) && (!has(self.spot.interruptionBehavior) || self.spot.interruptionBehavior == 'Terminate'))";
/// CEL: a change EC2 makes only on a stopped instance.
const NEEDS_STOP: &str = "(self.instanceType != oldSelf.instanceType || has(self.userData) != has(oldSelf.userData) || (has(self.userData) && self.userData != oldSelf.userData) || has(self.ebsOptimized) != has(oldSelf.ebsOptimized) || (has(self.ebsOptimized) && self.ebsOptimized != oldSelf.ebsOptimized))";

/// `k106.com/paused: "true"` stops reconciliation of the object: no EC2 calls, status says
/// paused and shows the plan (from the shared poll) that resuming would carry out. A deletion
/// still proceeds, as `deletionPolicy` says.
pub const PAUSED_ANNOTATION: &str = "k106.com/paused";

/// `k106.com/adopt-instance-id: i-...` makes a new object manage (or, with `ObserveOnly`,
/// observe) that existing instance instead of launching one.
pub const ADOPT_ANNOTATION: &str = "k106.com/adopt-instance-id";

/// Observed state of the instance, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Ec2InstanceStatus {
    /// EC2 instance id, e.g. `i-0abc1234def567890`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// EC2 instance state: pending, running, stopping, stopped, shutting-down or terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Instance type as EC2 reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Private IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// Public IPv4 address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Private DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_dns_name: Option<String>,
    /// Public DNS name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_dns_name: Option<String>,
    /// Availability zone the instance runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// When EC2 last launched (or started) the instance, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<String>,
    /// The AMI the instance runs (for `imageId: resolve:ssm:...`, the one EC2 resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The subnet the instance runs in (for `subnetSelector`, the one resolved at launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// The instance's security groups (for `securityGroupSelector`, those resolved at launch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// `on-demand` or `spot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<String>,
    /// The Spot request behind a Spot instance, e.g. `sir-abcd1234`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_instance_request_id: Option<String>,
    /// The primary network interface, e.g. `eni-0abc1234def567890`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
    /// Attached EBS volumes, the root volume first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<AttachedVolume>,
    /// The IMDS settings in force, as EC2 reports them (`state` is `pending` while a change
    /// is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<Box<MetadataOptionsInForce>>,
    /// CloudWatch monitoring as EC2 reports it: `disabled`, `enabled`, `pending` or `disabling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<String>,
    /// ARN of the associated IAM instance profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_dest_check: Option<bool>,
    /// `spec.iamInstanceProfile` as last applied: removed from the spec, it is disassociated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_iam_instance_profile: Option<String>,
    /// The attributes DescribeInstances does not show (`terminationProtection`, `stopProtection`,
    /// `shutdownBehavior`, `creditSpecification`, `rootVolume.sizeGiB`), as last verified on this
    /// instance: read again when the spec changes them and every `--attribute-check-seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Box<VerifiedAttributes>>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Tag keys from `spec.tags` that the operator has applied, so that a key later removed from
    /// the spec is removed from the instance while tags added by others are left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_tag_keys: Vec<String>,
    /// Replacements in a row without the instance ever becoming Ready (one that dies on its own
    /// right after each launch). The next one waits 30 s, doubling up to an hour; Ready resets it.
    #[serde(default, skip_serializing_if = "is_zero")]
    // The API server knows int32 and int64 only; "uint32" makes kubectl warn.
    #[schemars(extend("format" = "int32"))]
    pub replacements: u32,
    /// Other live instances carrying this object's owner tag, as last seen, and since when
    /// (RFC 3339). Still there a poll interval later, they are terminated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates_since: Option<String>,
    /// The region the instance was launched in, resolved once (`spec.region` or the operator's
    /// default then): a later change of the operator's default never moves an existing object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The cluster id the instance is tagged with, resolved once, for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// SHA-256 of the user data on the instance, as its `k106.com/user-data-sha256` tag said when
    /// last seen: if someone deletes that tag, it is put back instead of restarting the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_sha256: Option<String>,
    /// SHA-256 of the fields the instance was launched with (`imageId`, `subnetId`, `keyName`,
    /// `iamInstanceProfile`, `rootVolume`), as its `k106.com/launch-sha256` tag said when last
    /// seen; for an instance launched before that tag existed, the spec's under `Refuse` (which
    /// never let them change). `updatePolicy: Replace` compares it with the spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_sha256: Option<String>,
    /// Under `updatePolicy: Replace`, the instance launched to replace `instanceId` while that one
    /// still serves; once it runs, status moves to it and the old one is terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<Replacement>,
    /// The steps that would bring the instance to the spec, like `terraform plan`, while it
    /// differs: e.g. `stop → modify instanceType t3.micro→t3.small → start`, or `replace instance
    /// i-0abc (terminated out of band)`. What the operator does next, or, paused or `ObserveOnly`,
    /// what it would do. Absent when the instance matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// `Ready` is True when the instance matches the spec (running, or stopped when
    /// `desiredState: Stopped`). Its reason says what the operator is doing or what failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A replacement on its way (`updatePolicy: Replace`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Replacement {
    /// The new instance's id, as RunInstances answered it.
    pub instance_id: String,
    /// When it was launched, RFC 3339: EC2 may not show it for a while, and it is waited for
    /// rather than launched again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<String>,
}

/// One EBS volume attached to the instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttachedVolume {
    pub device_name: String,
    pub volume_id: String,
}

/// IMDS settings as EC2 reports them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOptionsInForce {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tokens: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_put_response_hop_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_metadata_tags: Option<String>,
    /// `pending` or `applied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The spec's hidden attributes as last found (or made) true on the instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedAttributes {
    /// SHA-256 of the instance id and the values verified.
    pub sha256: String,
    /// When, RFC 3339.
    pub verified_at: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Ec2Instance {
    /// Paused by its annotation.
    pub fn paused(&self) -> bool {
        self.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true")
    }

    /// The existing instance its annotation asks to adopt.
    pub fn adopt_instance_id(&self) -> Option<&str> {
        self.annotations().get(ADOPT_ANNOTATION).map(String::as_str)
    }
}

impl Ec2InstanceStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CRD as YAML, exactly as committed in `crds/ec2instance.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    // Long strings (CEL rules, descriptions) stay on one line: a folded rule is hard to read.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: 100_000 };
    serde_saphyr::to_string_with_options(&Ec2Instance::crd(), options).expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/ec2instance.yaml");
        let committed = std::fs::read_to_string(path).expect("crds/ec2instance.yaml exists");
        assert!(
            committed == crd_yaml(),
            "crds/ec2instance.yaml is stale: run `make crds`"
        );
    }

    #[test]
    fn the_crd_uses_only_formats_the_api_server_knows() {
        let known = ["int32", "int64", "date-time", "byte", "double", "float"];
        for line in crd_yaml().lines().filter_map(|l| l.trim().strip_prefix("format: ")) {
            assert!(known.contains(&line), "format {line} makes kubectl warn");
        }
    }

    #[test]
    fn defaults_are_running_delete_and_refuse() {
        let spec: Ec2InstanceSpec =
            serde_json::from_value(serde_json::json!({"imageId": "ami-760aaa0f", "instanceType": "t3.micro"})).unwrap();
        assert_eq!(spec.desired_state, DesiredState::Running);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(spec.update_policy, UpdatePolicy::Refuse);
    }
}
