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
    "{REPLACE} || (has(self.rootVolume) == has(oldSelf.rootVolume) && (!has(self.rootVolume) || self.rootVolume == oldSelf.rootVolume))"
)).message("rootVolume is immutable: it is set at launch; create a new Ec2Instance instead").field_path(".rootVolume"))]
#[x_kube(validation = Rule::new(
    "has(self.region) == has(oldSelf.region) && (!has(self.region) || self.region == oldSelf.region)"
).message("region is immutable: an instance cannot move regions; create a new Ec2Instance instead").field_path(".region"))]
#[x_kube(validation = Rule::new(format!(
    "{REPLACE} || (has(self.iamInstanceProfile) == has(oldSelf.iamInstanceProfile) && (!has(self.iamInstanceProfile) || self.iamInstanceProfile == oldSelf.iamInstanceProfile))"
)).message("iamInstanceProfile is immutable in v1alpha1; create a new Ec2Instance instead").field_path(".iamInstanceProfile"))]
pub struct Ec2InstanceSpec {
    /// AMI to launch, e.g. `ami-0abcdef1234567890`. Immutable unless `updatePolicy: Replace`: a
    /// new image means a new instance.
    #[schemars(regex(pattern = r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$"))]
    pub image_id: String,

    /// Instance type, e.g. `t3.micro`. Changing it stops the instance, modifies it and starts it
    /// again (when `desiredState` is `Running`).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$"), length(max = 64))]
    pub instance_type: String,

    /// Subnet to launch into, e.g. `subnet-0abc1234`. Defaults to the default VPC's subnet
    /// chosen by EC2. Immutable unless `updatePolicy: Replace`.
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

    /// IAM instance profile name or ARN to attach at launch. Immutable in v1alpha1 unless
    /// `updatePolicy: Replace`.
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

    /// Root EBS volume. Immutable unless `updatePolicy: Replace`: it is set at launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<RootVolume>,

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
    /// `iamInstanceProfile`, `rootVolume`) does. `Refuse` (default): admission rejects the change.
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
