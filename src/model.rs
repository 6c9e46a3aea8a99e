//! The domain model: what the operator knows about an EC2 instance, what it asks EC2 to do, and
//! the tags that tie an instance to its object. Plain data and pure functions; no I/O.
//!
//! `decide` reasons in these terms and `ec2` translates them to and from the AWS SDK.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::crd;

/// Prefix of every tag the operator owns. Users may not set keys with it (admission refuses them):
/// they would fight the operator.
pub const TAG_PREFIX: &str = "k106.com/";
/// The object's UID: the instance's owner tag, and the root of its launch ClientToken.
pub const TAG_OWNER_UID: &str = "k106.com/owner-uid";
/// The cluster the owner lives in, so two clusters sharing an account never touch each other's
/// instances; the inventory lists the fleet by this tag.
pub const TAG_CLUSTER_ID: &str = "k106.com/cluster-id";
pub const TAG_NAMESPACE: &str = "k106.com/namespace";
pub const TAG_NAME: &str = "k106.com/name";
/// SHA-256 of the user data last applied: EC2 does not return user data in DescribeInstances,
/// and a tag is observed for free in the same call.
pub const TAG_USER_DATA_SHA256: &str = "k106.com/user-data-sha256";
/// SHA-256 of the fields EC2 fixes at launch (imageId, subnetId, keyName, rootVolume's type and
/// encryption, and every launch-only field), set by RunInstances: DescribeInstances does not show
/// most of them, and `updatePolicy: Replace` must know whether an instance was launched as the
/// spec now says.
pub const TAG_LAUNCH_SHA256: &str = "k106.com/launch-sha256";
/// When the operator first found the instance without its object (an orphan), RFC 3339: the
/// grace before `--terminate-orphans-after-seconds` counts from it, across restarts.
pub const TAG_ORPHANED_SINCE: &str = "k106.com/orphaned-since";
/// Tags the operator may put on one instance: the four of [`Owner::tags`], the user data hash and
/// the launch hash.
pub const SYSTEM_TAG_COUNT: usize = 6;
/// EC2 allows 50 tags per resource; what the operator does not use is the user's.
pub const MAX_USER_TAGS: usize = 50 - SYSTEM_TAG_COUNT;
/// EC2's limit on user data, before base64 encoding.
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

/// EC2 instance states, as EC2 names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::ShuttingDown,
        InstanceState::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }

    /// An instance that is gone or going away for good.
    pub fn is_dead(self) -> bool {
        matches!(self, InstanceState::ShuttingDown | InstanceState::Terminated)
    }
}

/// What DescribeInstances told us about one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedInstance {
    pub id: String,
    pub state: InstanceState,
    pub instance_type: String,
    pub security_group_ids: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub private_dns_name: Option<String>,
    pub public_dns_name: Option<String>,
    pub availability_zone: Option<String>,
    pub launch_time: Option<String>,
    /// Why EC2 last changed the state, e.g. `Client.InternalError: Client error on launch`.
    pub state_reason: Option<String>,
    /// Fixed at launch: what an adoption compares with the spec.
    pub image_id: Option<String>,
    pub subnet_id: Option<String>,
    pub key_name: Option<String>,
    /// The rest of what DescribeInstances shows, and what the operator read besides.
    pub details: Details,
}

/// What DescribeInstances shows of an instance beyond its identity and state.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Details {
    /// `spot`, or `None` for on-demand.
    pub lifecycle: Option<&'static str>,
    pub spot_request_id: Option<String>,
    /// The primary (device index 0) network interface.
    pub network_interface_id: Option<String>,
    /// `(device name, volume id)` of each attached EBS volume.
    pub volumes: Vec<(String, String)>,
    pub root_device_name: Option<String>,
    pub metadata: Option<MetadataInForce>,
    /// `disabled`, `enabled`, `pending` or `disabling`.
    pub monitoring: Option<&'static str>,
    pub ebs_optimized: Option<bool>,
    pub source_dest_check: Option<bool>,
    pub iam_profile_arn: Option<String>,
    /// Attributes DescribeInstances does not show, when the reconcile read them (boxed: the
    /// inventory holds every instance of the fleet, and few carry these).
    pub hidden: Option<Box<Hidden>>,
}

/// EC2's word for a value the operator keeps per instance (`required`, `enabled`, `spot`...), as
/// a static string: the inventory holds every instance of the fleet, and each of these would
/// otherwise be an allocation. A word not known here is kept as `unknown`, which differs from
/// every value a spec can ask for.
pub fn ec2_word(value: &str) -> &'static str {
    const WORDS: [&str; 11] = [
        "required",
        "optional",
        "enabled",
        "disabled",
        "pending",
        "applied",
        "disabling",
        "spot",
        "scheduled",
        "capacity-block",
        "interruptible-capacity-reservation",
    ];
    WORDS.into_iter().find(|w| *w == value).unwrap_or("unknown")
}

/// IMDS settings in EC2's words (`required`, `enabled`, ...).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MetadataInForce {
    pub http_tokens: Option<&'static str>,
    pub hop_limit: Option<i32>,
    pub http_endpoint: Option<&'static str>,
    pub instance_tags: Option<&'static str>,
    pub state: Option<&'static str>,
}

/// Attributes that cost a call of their own per instance (DescribeInstanceAttribute,
/// DescribeInstanceCreditSpecifications, DescribeVolumes). Only those the spec sets are read;
/// the others stay `None`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Hidden {
    pub termination_protection: Option<bool>,
    pub stop_protection: Option<bool>,
    pub shutdown_behavior: Option<String>,
    pub credit_specification: Option<String>,
    /// The root volume's id and size in GiB.
    pub root_volume: Option<(String, i32)>,
}

/// Which hidden attributes to read: those the spec sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HiddenWanted {
    pub termination_protection: bool,
    pub stop_protection: bool,
    pub shutdown_behavior: bool,
    pub credit_specification: bool,
    pub root_volume_size: bool,
}

impl HiddenWanted {
    pub fn any(self) -> bool {
        self != HiddenWanted::default()
    }
}

/// Everything RunInstances needs for one instance.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LaunchRequest {
    /// Makes the launch idempotent on AWS: the same token never launches twice.
    pub client_token: String,
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Option<Vec<String>>,
    pub key_name: Option<String>,
    pub iam_instance_profile: Option<String>,
    /// Plain text; the EC2 adapter encodes it.
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub root_volume: Option<RootVolumeRequest>,
    /// Everything else the spec asks of RunInstances.
    pub options: LaunchOptions,
}

/// The spec's launch-only fields, and the initial values of fields changed in place later,
/// which RunInstances can set at once.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LaunchOptions {
    pub subnet_selector: Option<BTreeMap<String, String>>,
    pub security_group_selector: Option<BTreeMap<String, String>>,
    pub launch_template: Option<Box<crd::LaunchTemplate>>,
    pub block_devices: Vec<crd::BlockDevice>,
    pub network_interface: Option<Box<crd::NetworkInterface>>,
    pub placement: Option<Box<crd::Placement>>,
    pub spot: Option<Box<crd::Spot>>,
    pub capacity_reservation: Option<Box<crd::CapacityReservation>>,
    pub cpu_options: Option<Box<crd::CpuOptions>>,
    pub hibernation: Option<bool>,
    pub enclave: Option<bool>,
    pub metadata_options: Option<Box<crd::MetadataOptions>>,
    pub monitoring: Option<crd::Monitoring>,
    pub termination_protection: Option<bool>,
    pub stop_protection: Option<bool>,
    pub shutdown_behavior: Option<crd::ShutdownBehavior>,
    pub credit_specification: Option<crd::CreditSpecification>,
    pub ebs_optimized: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct RootVolumeRequest {
    pub size_gib: Option<i32>,
    pub volume_type: Option<String>,
    pub encrypted: Option<bool>,
}

/// Who owns an instance: the object, in one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub cluster_id: String,
}

impl Owner {
    /// Tags the operator keeps on every instance it owns (user data hash aside).
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_OWNER_UID.to_owned(), self.uid.clone()),
            (TAG_CLUSTER_ID.to_owned(), self.cluster_id.clone()),
            (TAG_NAMESPACE.to_owned(), self.namespace.clone()),
            (TAG_NAME.to_owned(), self.name.clone()),
        ])
    }

    /// The tag filter that finds every instance this owner has, whatever its namespace tags say.
    pub fn filter(&self) -> [(&'static str, &str); 2] {
        [(TAG_OWNER_UID, &self.uid), (TAG_CLUSTER_ID, &self.cluster_id)]
    }

    /// RunInstances ClientToken (at most 64 ASCII characters). The first launch uses the UID;
    /// a replacement for a vanished instance adds that instance's id, so a retried launch maps
    /// to the same token and EC2 never launches twice for one decision.
    pub fn client_token(&self, replaces: Option<&str>) -> String {
        match replaces {
            None => self.uid.clone(),
            Some(old) => format!("{}-{}", self.uid, old),
        }
        .chars()
        .take(64)
        .collect()
    }

    /// RunInstances ClientToken of a launch that replaces the live instance `old` under
    /// `updatePolicy: Replace`: the UID and a digest of `old`, the replacement launched before
    /// for it (if status names one) and the whole launch request. A retry of the same decision,
    /// after a crash too, sends the same token and EC2 answers with the instance it launched;
    /// another spec, or another try after that replacement died, launches anew.
    pub fn replacement_token(&self, old: &str, previous: Option<&str>, request: &LaunchRequest) -> String {
        let digest = sha256_hex(&format!("{old}\n{}\n{}", previous.unwrap_or(""), request.digest()));
        // A UID has 36 characters: 36 + 1 + 27 = 64, EC2's limit.
        format!("{}-{}", self.uid, &digest[..27]).chars().take(64).collect()
    }
}

impl LaunchRequest {
    /// SHA-256 of everything the request asks EC2 for but its ClientToken: EC2 answers a token it
    /// saw with other parameters with `IdempotentParameterMismatch`, so a token is never reused
    /// for another request.
    pub fn digest(&self) -> String {
        let root = self
            .root_volume
            .as_ref()
            .map(|v| (v.size_gib, v.volume_type.clone(), v.encrypted));
        // Debug of strings, options, vectors and maps: one canonical text per request.
        sha256_hex(&format!(
            "{:?}",
            (
                &self.image_id,
                &self.instance_type,
                &self.subnet_id,
                &self.security_group_ids,
                &self.key_name,
                &self.iam_instance_profile,
                &self.user_data,
                &self.tags,
                root,
                // Absent from requests made before these options existed: their digest stays.
                (self.options != LaunchOptions::default()).then_some(&self.options),
            )
        ))
    }
}

pub fn user_data_sha256(user_data: &str) -> String {
    sha256_hex(user_data)
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One change to make in EC2. A plan is an ordered list of these; each names the instance it
/// changes, so carrying it out needs nothing but the step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No live instance: launch one. `replaces` names the instance that vanished, if any.
    /// Always the only step of its plan, so the status write that follows records the new id.
    Launch {
        request: Box<LaunchRequest>,
        replaces: Option<String>,
    },
    /// `updatePolicy: Replace`: launch the instance the spec now describes next to `old`, which
    /// was launched with other fixed fields and keeps serving until the new one runs. Always the
    /// only step of its plan.
    LaunchReplacement {
        request: Box<LaunchRequest>,
        old: String,
    },
    /// The instance is between states; nothing to call, look again soon.
    Wait,
    Start(String),
    Stop(String),
    ModifyInstanceType {
        id: String,
        instance_type: String,
    },
    /// Replace the user data (empty clears it) and record its hash in a tag (None removes it).
    ModifyUserData {
        id: String,
        user_data: String,
        sha256: Option<String>,
    },
    SetSecurityGroups {
        id: String,
        groups: Vec<String>,
    },
    /// Change one attribute EC2 changes in place (or, `EbsOptimized`, on a stopped instance).
    Modify {
        id: String,
        change: Change,
    },
    /// Add or correct `set`, remove `remove`.
    Tag {
        id: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    Terminate(String),
    /// `deletionPolicy: Retain`: let go of the instance by removing the operator's tags.
    Release {
        id: String,
        keys: Vec<String>,
    },
}

impl Step {
    /// The label of the `actions_total` metric; also how a plan is logged (user data never is).
    pub fn label(&self) -> &'static str {
        match self {
            Step::Launch { .. } => "launch",
            Step::LaunchReplacement { .. } => "launch_replacement",
            Step::Wait => "wait",
            Step::Start(_) => "start",
            Step::Stop(_) => "stop",
            Step::ModifyInstanceType { .. } => "modify_instance_type",
            Step::ModifyUserData { .. } => "modify_user_data",
            Step::SetSecurityGroups { .. } => "set_security_groups",
            Step::Modify { change, .. } => change.label(),
            Step::Tag { .. } => "tag",
            Step::Terminate(_) => "terminate",
            Step::Release { .. } => "release",
        }
    }

    /// The instance the step acts on. A launch acts on the instance it replaces (the new one is
    /// only known from EC2's answer).
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Step::Launch { replaces, .. } => replaces.as_deref(),
            Step::LaunchReplacement { old, .. } => Some(old),
            Step::Wait => None,
            Step::Start(id) | Step::Stop(id) | Step::Terminate(id) => Some(id),
            Step::ModifyInstanceType { id, .. }
            | Step::ModifyUserData { id, .. }
            | Step::SetSecurityGroups { id, .. }
            | Step::Modify { id, .. }
            | Step::Tag { id, .. }
            | Step::Release { id, .. } => Some(id),
        }
    }

    /// Steps after which the instance changes state; the object is requeued quickly.
    pub fn starts_transition(&self) -> bool {
        matches!(
            self,
            Step::Launch { .. } | Step::LaunchReplacement { .. } | Step::Wait | Step::Start(_) | Step::Stop(_)
        )
    }

    /// A launch of either kind: the new instance is only known from EC2's answer.
    pub fn launches(&self) -> bool {
        matches!(self, Step::Launch { .. } | Step::LaunchReplacement { .. })
    }
}

/// One attribute change, with the EC2 call that makes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// ModifyInstanceMetadataOptions; `None` fields are left as they are.
    MetadataOptions(MetadataInForce),
    /// MonitorInstances (true) or UnmonitorInstances.
    Monitoring(bool),
    /// ModifyInstanceAttribute DisableApiTermination.
    TerminationProtection(bool),
    /// ModifyInstanceAttribute DisableApiStop.
    StopProtection(bool),
    /// ModifyInstanceAttribute InstanceInitiatedShutdownBehavior (`stop` or `terminate`).
    ShutdownBehavior(String),
    /// ModifyInstanceAttribute SourceDestCheck.
    SourceDestCheck(bool),
    /// ModifyInstanceCreditSpecification (`standard` or `unlimited`).
    CreditSpecification(String),
    /// Associate, replace (`Some`) or disassociate (`None`) the IAM instance profile.
    IamInstanceProfile(Option<String>),
    /// ModifyVolume: grow the root volume.
    RootVolumeSize { volume_id: String, size_gib: i32 },
    /// ModifyInstanceAttribute EbsOptimized, on a stopped instance.
    EbsOptimized(bool),
    /// CancelSpotInstanceRequests, before the instance is terminated: a persistent request would
    /// launch another.
    CancelSpotRequest(String),
}

impl std::fmt::Display for Change {
    /// As the plan preview and events show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: &bool| if *b { "on" } else { "off" };
        match self {
            Change::MetadataOptions(m) => {
                let mut set = Vec::new();
                if let Some(v) = &m.http_tokens {
                    set.push(format!("httpTokens={v}"));
                }
                if let Some(v) = m.hop_limit {
                    set.push(format!("hopLimit={v}"));
                }
                if let Some(v) = &m.http_endpoint {
                    set.push(format!("httpEndpoint={v}"));
                }
                if let Some(v) = &m.instance_tags {
                    set.push(format!("instanceMetadataTags={v}"));
                }
                write!(f, "set metadataOptions {}", set.join(","))
            }
            Change::Monitoring(b) => write!(f, "set monitoring {}", if *b { "Detailed" } else { "Basic" }),
            Change::TerminationProtection(b) => write!(f, "turn terminationProtection {}", on(b)),
            Change::StopProtection(b) => write!(f, "turn stopProtection {}", on(b)),
            Change::ShutdownBehavior(v) => write!(f, "set shutdownBehavior {v}"),
            Change::SourceDestCheck(b) => write!(f, "turn sourceDestCheck {}", on(b)),
            Change::CreditSpecification(v) => write!(f, "set creditSpecification {v}"),
            Change::IamInstanceProfile(Some(p)) => write!(f, "set iamInstanceProfile {p}"),
            Change::IamInstanceProfile(None) => write!(f, "disassociate iamInstanceProfile"),
            Change::RootVolumeSize { volume_id, size_gib } => {
                write!(f, "grow root volume {volume_id} to {size_gib} GiB")
            }
            Change::EbsOptimized(b) => write!(f, "turn ebsOptimized {}", on(b)),
            Change::CancelSpotRequest(id) => write!(f, "cancel Spot request {id}"),
        }
    }
}

impl Change {
    pub fn label(&self) -> &'static str {
        match self {
            Change::MetadataOptions(_) => "modify_metadata_options",
            Change::Monitoring(_) => "set_monitoring",
            Change::TerminationProtection(_) => "set_termination_protection",
            Change::StopProtection(_) => "set_stop_protection",
            Change::ShutdownBehavior(_) => "set_shutdown_behavior",
            Change::SourceDestCheck(_) => "set_source_dest_check",
            Change::CreditSpecification(_) => "set_credit_specification",
            Change::IamInstanceProfile(_) => "set_iam_instance_profile",
            Change::RootVolumeSize { .. } => "grow_root_volume",
            Change::EbsOptimized(_) => "set_ebs_optimized",
            Change::CancelSpotRequest(_) => "cancel_spot_request",
        }
    }

    /// The instance's details as EC2 shows them once the change is made.
    fn apply_to(&self, details: &mut Details) {
        // Only a change of a hidden attribute says anything about the hidden ones: an instance
        // whose hidden attributes were not read stays unread.
        fn hidden(details: &mut Details) -> &mut Hidden {
            details.hidden.get_or_insert_with(Box::default)
        }
        match self {
            Change::MetadataOptions(wanted) => {
                let metadata = details.metadata.get_or_insert_with(MetadataInForce::default);
                metadata.http_tokens = wanted.http_tokens.or(metadata.http_tokens);
                metadata.http_endpoint = wanted.http_endpoint.or(metadata.http_endpoint);
                metadata.instance_tags = wanted.instance_tags.or(metadata.instance_tags);
                metadata.hop_limit = wanted.hop_limit.or(metadata.hop_limit);
            }
            Change::Monitoring(on) => details.monitoring = Some(if *on { "enabled" } else { "disabled" }),
            Change::TerminationProtection(on) => hidden(details).termination_protection = Some(*on),
            Change::StopProtection(on) => hidden(details).stop_protection = Some(*on),
            Change::ShutdownBehavior(value) => hidden(details).shutdown_behavior = Some(value.clone()),
            Change::SourceDestCheck(on) => details.source_dest_check = Some(*on),
            Change::CreditSpecification(value) => hidden(details).credit_specification = Some(value.clone()),
            Change::IamInstanceProfile(profile) => details.iam_profile_arn = profile.clone(),
            Change::RootVolumeSize { volume_id, size_gib } => {
                hidden(details).root_volume = Some((volume_id.clone(), *size_gib))
            }
            Change::EbsOptimized(on) => details.ebs_optimized = Some(*on),
            Change::CancelSpotRequest(_) => details.spot_request_id = None,
        }
    }
}

impl ObservedInstance {
    /// The instance once its transition is over: pending runs, stopping stops, shutting-down
    /// terminates (what the plan preview assumes of the steps before).
    pub fn settled(mut self) -> ObservedInstance {
        self.state = match self.state {
            InstanceState::Pending => InstanceState::Running,
            InstanceState::Stopping => InstanceState::Stopped,
            InstanceState::ShuttingDown => InstanceState::Terminated,
            settled => settled,
        };
        self
    }

    /// The instance as it is once `step` succeeded, before EC2 is asked again. (A launch yields
    /// a new instance, which EC2 returns; it does not change this one.)
    pub fn after(mut self, step: &Step) -> ObservedInstance {
        if step.instance_id() != Some(self.id.as_str()) {
            return self;
        }
        match step {
            Step::Start(_) => self.state = InstanceState::Pending,
            Step::Stop(_) => self.state = InstanceState::Stopping,
            Step::Terminate(_) => self.state = InstanceState::ShuttingDown,
            Step::ModifyInstanceType { instance_type, .. } => self.instance_type = instance_type.clone(),
            Step::ModifyUserData { sha256, .. } => match sha256 {
                Some(hash) => {
                    self.tags.insert(TAG_USER_DATA_SHA256.into(), hash.clone());
                }
                None => {
                    self.tags.remove(TAG_USER_DATA_SHA256);
                }
            },
            Step::SetSecurityGroups { groups, .. } => self.security_group_ids = groups.iter().cloned().collect(),
            Step::Modify { change, .. } => change.apply_to(&mut self.details),
            Step::Tag { set, remove, .. } => {
                self.tags.extend(set.clone());
                self.tags.retain(|k, _| !remove.contains(k));
            }
            Step::Release { keys, .. } => self.tags.retain(|k, _| !keys.contains(k)),
            Step::Launch { .. } | Step::LaunchReplacement { .. } | Step::Wait => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    #[test]
    fn client_tokens_are_stable_distinct_per_replacement_and_short() {
        let owner = owner();
        assert_eq!(owner.client_token(None), owner.uid);
        assert_eq!(
            owner.client_token(Some("i-0123456789abcdef0")),
            owner.client_token(Some("i-0123456789abcdef0"))
        );
        assert_ne!(
            owner.client_token(None),
            owner.client_token(Some("i-0123456789abcdef0"))
        );
        assert!(owner.client_token(Some("i-0123456789abcdef0")).len() <= 64);
    }

    #[test]
    fn replacement_tokens_repeat_for_one_decision_and_differ_for_another() {
        let owner = owner();
        let request = LaunchRequest {
            image_id: "ami-0bbbbbbbbbbbbbbbb".into(),
            instance_type: "t3.micro".into(),
            ..Default::default()
        };
        let token = owner.replacement_token("i-0aaaaaaaaaaaaaaaa", None, &request);
        assert_eq!(token.len(), 64, "{token}");
        assert!(token.starts_with(&owner.uid));
        assert_eq!(token, owner.replacement_token("i-0aaaaaaaaaaaaaaaa", None, &request));
        let other_image = LaunchRequest {
            image_id: "ami-0cccccccccccccccc".into(),
            ..request.clone()
        };
        let other_tags = LaunchRequest {
            tags: BTreeMap::from([("team".into(), "a".into())]),
            ..request.clone()
        };
        for different in [
            owner.replacement_token("i-0aaaaaaaaaaaaaaaa", None, &other_image),
            owner.replacement_token("i-0aaaaaaaaaaaaaaaa", None, &other_tags),
            owner.replacement_token("i-0dddddddddddddddd", None, &request),
            owner.replacement_token("i-0aaaaaaaaaaaaaaaa", Some("i-0eeeeeeeeeeeeeeee"), &request),
        ] {
            assert_ne!(token, different);
        }
        assert_ne!(token, owner.client_token(Some("i-0aaaaaaaaaaaaaaaa")));
    }

    #[test]
    fn the_system_tags_fit_in_what_the_users_leave() {
        let most = owner().tags().len() + 2; // + the user data and launch hashes
        assert_eq!(most, SYSTEM_TAG_COUNT);
    }

    #[test]
    fn each_step_changes_the_instance_as_ec2_will_show_it() {
        let running = instance_for(&spec().with_user_data("one"), InstanceState::Running);
        let id = running.id.clone();
        assert_eq!(
            running.clone().after(&Step::Stop(id.clone())).state,
            InstanceState::Stopping
        );
        assert_eq!(
            running.clone().after(&Step::Start(id.clone())).state,
            InstanceState::Pending
        );
        assert_eq!(
            running.clone().after(&Step::Terminate(id.clone())).state,
            InstanceState::ShuttingDown
        );
        let resized = running.clone().after(&Step::ModifyInstanceType {
            id: id.clone(),
            instance_type: "t3.large".into(),
        });
        assert_eq!(resized.instance_type, "t3.large");
        let cleared = running.clone().after(&Step::ModifyUserData {
            id: id.clone(),
            user_data: String::new(),
            sha256: None,
        });
        assert!(!cleared.tags.contains_key(TAG_USER_DATA_SHA256));
        let regrouped = running.clone().after(&Step::SetSecurityGroups {
            id: id.clone(),
            groups: vec!["sg-11111111".into()],
        });
        assert_eq!(regrouped.security_group_ids, BTreeSet::from(["sg-11111111".to_owned()]));
        let retagged = running.clone().after(&Step::Tag {
            id: id.clone(),
            set: BTreeMap::from([("team".into(), "b".into())]),
            remove: vec![TAG_NAME.into()],
        });
        assert_eq!(retagged.tags.get("team").map(String::as_str), Some("b"));
        assert!(!retagged.tags.contains_key(TAG_NAME));
        let released = running.clone().after(&Step::Release {
            id,
            keys: vec![TAG_OWNER_UID.into()],
        });
        assert!(!released.tags.contains_key(TAG_OWNER_UID));
        assert_eq!(running.clone().after(&Step::Wait), running);
        let other = Step::Terminate("i-0ffffffffffffffff".into());
        assert_eq!(running.clone().after(&other), running, "a step on another instance");
    }
}
