//! The decisions: what to do, given what the spec asks for and what EC2 shows. Pure functions
//! on the domain model, no I/O: every branch is unit-tested below. The reconcile shell observes,
//! asks here, and hands each [`Step`] to the EC2 adapter.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use crate::crd::{
    DeletionPolicy, DesiredState, Ec2Instance, Ec2InstanceSpec, Monitoring, Replacement, UpdatePolicy,
    VerifiedAttributes,
};
use crate::events::Reason;
use crate::model::{
    Change, Details, Hidden, HiddenWanted, InstanceState, LaunchOptions, LaunchRequest, MetadataInForce,
    ObservedInstance, Owner, RootVolumeRequest, Step, TAG_CLUSTER_ID, TAG_LAUNCH_SHA256, TAG_NAME, TAG_NAMESPACE,
    TAG_ORPHANED_SINCE, TAG_OWNER_UID, TAG_PREFIX, TAG_USER_DATA_SHA256, sha256_hex, user_data_sha256,
};

/// The Ready condition's name.
pub const READY: &str = "Ready";
/// kstatus: present (True) when a terminal error stops progress until the spec changes.
pub const STALLED: &str = "Stalled";

/// What the spec asks of EC2 for this owner.
pub struct Desired<'a> {
    pub spec: &'a Ec2InstanceSpec,
    pub owner: &'a Owner,
}

impl Desired<'_> {
    fn user_tags(&self) -> BTreeMap<String, String> {
        self.spec.tags.clone().unwrap_or_default()
    }

    fn user_data_sha256(&self) -> Option<String> {
        self.spec.user_data.as_deref().map(user_data_sha256)
    }

    /// Every tag a freshly launched instance carries.
    pub fn launch_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.user_tags();
        tags.extend(self.owner.tags());
        if let Some(hash) = self.user_data_sha256() {
            tags.insert(TAG_USER_DATA_SHA256.into(), hash);
        }
        tags.insert(TAG_LAUNCH_SHA256.into(), launch_sha256(self.spec));
        tags
    }

    /// Whether `instance` may go on serving this spec: any instance under `updatePolicy: Refuse`;
    /// under `Replace`, only one launched as the spec now says.
    pub fn may_keep(&self, instance: &ObservedInstance, recorded: &Recorded) -> bool {
        self.spec.update_policy == UpdatePolicy::Refuse || launched_as_specified(self.spec, instance, recorded)
    }

    /// Whether `instance` has come up: running, or stopped as the spec wants. Until then the
    /// instance it replaces keeps serving.
    fn is_up(&self, instance: &ObservedInstance) -> bool {
        match self.spec.desired_state {
            DesiredState::Running => instance.state == InstanceState::Running,
            DesiredState::Stopped => matches!(instance.state, InstanceState::Running | InstanceState::Stopped),
        }
    }

    fn launch(&self, replaces: Option<String>) -> Step {
        let mut request = self.request();
        request.client_token = self.owner.client_token(replaces.as_deref());
        Step::Launch { request, replaces }
    }

    /// The launch of a replacement for the live instance `old` (`updatePolicy: Replace`);
    /// `previous` is the replacement status names, if any (one that died, or that another spec
    /// change made stale), so that trying again is a new launch.
    fn launch_replacing(&self, old: &str, previous: Option<&str>) -> Step {
        let mut request = self.request();
        request.client_token = self.owner.replacement_token(old, previous, &request);
        Step::LaunchReplacement {
            request,
            old: old.to_owned(),
        }
    }

    /// RunInstances for this spec, without its ClientToken.
    fn request(&self) -> Box<LaunchRequest> {
        let spec = self.spec;
        Box::new(LaunchRequest {
            client_token: String::new(),
            image_id: spec.image_id.clone(),
            instance_type: spec.instance_type.clone(),
            subnet_id: spec.subnet_id.clone(),
            security_group_ids: spec.security_group_ids.clone(),
            key_name: spec.key_name.clone(),
            iam_instance_profile: spec.iam_instance_profile.clone(),
            user_data: spec.user_data.clone(),
            tags: self.launch_tags(),
            root_volume: spec.root_volume.as_ref().map(|v| RootVolumeRequest {
                size_gib: v.size_gib,
                volume_type: v.volume_type.map(|t| t.as_str().to_owned()),
                encrypted: v.encrypted,
            }),
            options: LaunchOptions {
                subnet_selector: spec.subnet_selector.clone(),
                security_group_selector: spec.security_group_selector.clone(),
                launch_template: spec.launch_template.clone(),
                block_devices: spec.block_device_mappings.clone().unwrap_or_default(),
                network_interface: spec.network_interface.clone(),
                placement: spec.placement.clone(),
                spot: spec.spot.clone(),
                capacity_reservation: spec.capacity_reservation.clone(),
                cpu_options: spec.cpu_options.clone(),
                hibernation: spec.hibernation,
                enclave: spec.enclave,
                metadata_options: spec.metadata_options.clone(),
                monitoring: spec.monitoring,
                termination_protection: spec.termination_protection,
                stop_protection: spec.stop_protection,
                shutdown_behavior: spec.shutdown_behavior,
                credit_specification: spec.credit_specification,
                ebs_optimized: spec.ebs_optimized,
            },
        })
    }

    /// The hidden attributes the spec sets: only those are read and managed.
    pub fn hidden_wanted(&self) -> HiddenWanted {
        let spec = self.spec;
        HiddenWanted {
            termination_protection: spec.termination_protection.is_some(),
            stop_protection: spec.stop_protection.is_some(),
            shutdown_behavior: spec.shutdown_behavior.is_some(),
            credit_specification: spec.credit_specification.is_some(),
            root_volume_size: spec.root_volume.as_ref().is_some_and(|v| v.size_gib.is_some()),
        }
    }

    /// SHA-256 of `id` and the hidden attribute values the spec sets: status records it once
    /// they are verified on that instance.
    pub fn hidden_sha256(&self, id: &str) -> String {
        let spec = self.spec;
        sha256_hex(&format!(
            "{id}\n{:?}",
            (
                spec.termination_protection,
                spec.stop_protection,
                spec.shutdown_behavior,
                spec.credit_specification,
                spec.root_volume.as_ref().and_then(|v| v.size_gib),
            )
        ))
    }

    /// Whether the reconcile must read `instance`'s hidden attributes: the spec sets some that
    /// status has not verified on this instance with these values, or verified longer than
    /// `every` ago. Never for an instance in transition (it is read once settled).
    pub fn hidden_to_read(
        &self,
        instance: Option<&ObservedInstance>,
        verified: Option<&VerifiedAttributes>,
        now: jiff::Timestamp,
        every: Duration,
    ) -> Option<HiddenWanted> {
        let instance = instance.filter(|i| matches!(i.state, InstanceState::Running | InstanceState::Stopped))?;
        let wanted = self.hidden_wanted();
        if !wanted.any() {
            return None;
        }
        let fresh = verified.is_some_and(|v| {
            let age = v
                .verified_at
                .parse::<jiff::Timestamp>()
                .ok()
                .and_then(|at| Duration::try_from(now.duration_since(at)).ok());
            v.sha256 == self.hidden_sha256(&instance.id) && age.is_some_and(|age| age < every)
        });
        (!fresh).then_some(wanted)
    }
}

/// SHA-256 of the fields EC2 fixes at launch, as the `k106.com/launch-sha256` tag records them:
/// `imageId`, `subnetId`, `keyName`, `rootVolume`'s type and encryption, and the launch-only
/// fields. A spec without launch-only fields hashes as it did before they existed.
pub fn launch_sha256(spec: &Ec2InstanceSpec) -> String {
    let root = spec
        .root_volume
        .as_ref()
        .map(|v| (None::<i32>, v.volume_type.map(|t| t.as_str()), v.encrypted));
    let fixed = (&spec.image_id, &spec.subnet_id, &spec.key_name, None::<&str>, root);
    let launch_only = (
        &spec.subnet_selector,
        &spec.security_group_selector,
        &spec.launch_template,
        &spec.block_device_mappings,
        &spec.network_interface,
        &spec.placement,
        &spec.spot,
        &spec.capacity_reservation,
        &spec.cpu_options,
        spec.hibernation,
        spec.enclave,
    );
    let none = (
        &None, &None, &None, &None, &None, &None, &None, &None, &None, None, None,
    );
    if launch_only == none {
        sha256_hex(&format!("{fixed:?}"))
    } else {
        sha256_hex(&format!("{fixed:?}{launch_only:?}"))
    }
}

/// The launch hash as operators before the in-place `iamInstanceProfile` and root volume growth
/// computed it (both were fixed at launch then): an instance tagged so was launched as `spec`
/// says if this matches, and is retagged with [`launch_sha256`].
fn legacy_launch_sha256(spec: &Ec2InstanceSpec) -> String {
    let root = spec
        .root_volume
        .as_ref()
        .map(|v| (v.size_gib, v.volume_type.map(|t| t.as_str()), v.encrypted));
    sha256_hex(&format!(
        "{:?}",
        (
            &spec.image_id,
            &spec.subnet_id,
            &spec.key_name,
            &spec.iam_instance_profile,
            root
        )
    ))
}

/// Whether `instance` was launched with the fixed fields the spec now has: by its launch tag,
/// else by what status last saw of that tag, else (an instance launched before that tag, or
/// adopted) by the ones DescribeInstances shows, as an adoption compares them.
pub fn launched_as_specified(spec: &Ec2InstanceSpec, instance: &ObservedInstance, recorded: &Recorded) -> bool {
    let recorded_hash = recorded
        .launch_sha256
        .as_ref()
        .filter(|_| recorded.instance_id.as_deref() == Some(instance.id.as_str()));
    if let Some(hash) = instance.tags.get(TAG_LAUNCH_SHA256).or(recorded_hash) {
        return *hash == launch_sha256(spec) || *hash == legacy_launch_sha256(spec);
    }
    shown_fields_differing(spec, instance).is_empty()
}

/// The fields fixed at launch that DescribeInstances shows (imageId, and subnetId and keyName
/// when the spec sets them) where `instance` differs from `spec`: `(field, spec's, instance's)`.
fn shown_fields_differing<'a>(
    spec: &'a Ec2InstanceSpec,
    instance: &'a ObservedInstance,
) -> Vec<(&'static str, &'a str, Option<&'a str>)> {
    // EC2 resolves `resolve:ssm:` to an AMI at launch; a changed parameter is no difference.
    let image = Some(&spec.image_id).filter(|image| !image.starts_with(SSM_PREFIX));
    [
        ("imageId", image, &instance.image_id),
        ("subnetId", spec.subnet_id.as_ref(), &instance.subnet_id),
        ("keyName", spec.key_name.as_ref(), &instance.key_name),
    ]
    .into_iter()
    .filter_map(|(field, wanted, have)| {
        let wanted = wanted?;
        (Some(wanted) != have.as_ref()).then_some((field, wanted.as_str(), have.as_deref()))
    })
    .collect()
}

/// `imageId: resolve:ssm:<parameter>`.
const SSM_PREFIX: &str = "resolve:ssm:";

/// How long EC2 may take to show an instance it has just launched or started: AWS documents the
/// EC2 API as eventually consistent, a new instance unknown to DescribeInstances for a while.
pub const VISIBILITY_GRACE: Duration = Duration::from_secs(600);

/// What the object's status remembers of earlier reconciles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    /// The instance the status names.
    pub instance_id: Option<String>,
    /// The spec tag keys applied before, so keys dropped from the spec get removed.
    pub applied_tag_keys: Vec<String>,
    /// The user data hash last seen on the instance's tag.
    pub user_data_sha256: Option<String>,
    /// Replacements in a row without reaching Ready.
    pub replacements: u32,
    /// Time since the recorded instance was launched (or started).
    pub since_launch: Option<Duration>,
    /// A describe has shown the recorded instance (status holds a state RunInstances never
    /// answers with): if EC2 stops showing it, it is gone, not still on its way.
    pub seen: bool,
    /// Status was last written for the current generation: the spec has not changed since.
    pub same_generation: bool,
    /// Duplicates seen before, and how long ago they were first seen.
    pub duplicates: Vec<String>,
    pub duplicates_for: Option<Duration>,
    /// A terminal error stopped this generation (the Stalled condition): no more stops for it.
    pub stalled: bool,
    /// The launch hash of the recorded instance, as its tag said when last seen.
    pub launch_sha256: Option<String>,
    /// `updatePolicy: Replace`: the instance launched to replace the recorded one, and how long
    /// ago.
    pub replacement: Option<Replacement>,
    pub replacement_since_launch: Option<Duration>,
    /// The IAM instance profile of the spec last applied: removed from the spec, it is
    /// disassociated (a profile someone else associated is left alone).
    pub applied_iam_instance_profile: Option<String>,
}

impl Recorded {
    pub fn of(obj: &Ec2Instance, now: jiff::Timestamp) -> Self {
        let Some(status) = &obj.status else {
            return Self::default();
        };
        let since = |time: Option<&str>| {
            let at = time?.parse::<jiff::Timestamp>().ok()?;
            Some(Duration::try_from(now.duration_since(at)).unwrap_or_default())
        };
        let since_launch = since(status.launch_time.as_deref());
        Self {
            instance_id: status.instance_id.clone(),
            applied_tag_keys: status.applied_tag_keys.clone(),
            user_data_sha256: status.user_data_sha256.clone(),
            replacements: status.replacements,
            since_launch,
            seen: status.state.as_deref().is_some_and(|state| state != "pending"),
            same_generation: status.condition(READY).and_then(|c| c.observed_generation) == obj.metadata.generation,
            duplicates: status.duplicates.clone(),
            duplicates_for: since(status.duplicates_since.as_deref()),
            stalled: status
                .condition(STALLED)
                .is_some_and(|c| c.status == "True" && c.observed_generation == obj.metadata.generation),
            launch_sha256: status.launch_sha256.clone(),
            replacement: status.replacement.clone(),
            replacement_since_launch: status
                .replacement
                .as_ref()
                .and_then(|r| since(r.launch_time.as_deref())),
            applied_iam_instance_profile: status.applied_iam_instance_profile.clone(),
        }
    }

    /// The id of the replacement status names.
    pub fn replacement_id(&self) -> Option<&str> {
        self.replacement.as_ref().map(|r| r.instance_id.as_str())
    }

    /// The replacement status names was launched within [`VISIBILITY_GRACE`]: EC2 not showing
    /// it yet is no reason to launch another.
    fn fresh_replacement(&self) -> Option<&str> {
        let fresh = self.replacement_since_launch.is_some_and(|d| d < VISIBILITY_GRACE);
        self.replacement_id().filter(|_| fresh)
    }

    /// The recorded instance was launched within [`VISIBILITY_GRACE`] and no describe has shown
    /// it yet: EC2 not showing it is no proof that it is gone. (One seen and then no longer
    /// shown was terminated long enough ago for EC2 to forget it.)
    pub fn fresh(&self) -> bool {
        !self.seen && self.since_launch.is_some_and(|d| d < VISIBILITY_GRACE)
    }

    /// How long the next replacement must still wait, if it must.
    pub fn replacement_wait(&self) -> Option<Duration> {
        let wait = replacement_delay(self.replacements).checked_sub(self.since_launch?)?;
        (!wait.is_zero()).then_some(wait)
    }
}

/// The wait before a replacement after `replacements` in a row: none for the first, then 30 s
/// doubling up to an hour. An instance that dies on its own after every launch is relaunched a
/// few times an hour at most, not on every poll.
pub fn replacement_delay(replacements: u32) -> Duration {
    match replacements {
        0 => Duration::ZERO,
        n => (Duration::from_secs(30) * (1 << (n - 1).min(7))).min(Duration::from_secs(3600)),
    }
}

/// Replacements in a row, as status records them after this reconcile.
pub fn replacements(recorded: &Recorded, steps: &[Step], ready: bool) -> u32 {
    let replaced = steps
        .iter()
        .any(|s| matches!(s, Step::Launch { replaces: Some(_), .. }));
    match (ready, replaced) {
        (true, _) => 0,
        (false, true) => recorded.replacements + 1,
        (false, false) => recorded.replacements,
    }
}

/// Where an object's instance lives: the region and cluster id status recorded when it was first
/// resolved, else the spec's region or the operator's defaults. Re-resolving an existing object
/// after the operator's default region or cluster id changed would launch a second fleet and
/// leak the first.
pub fn placement(obj: &Ec2Instance, default_region: &str, cluster_id: &str) -> (String, String) {
    let status = obj.status.as_ref();
    let region = status
        .and_then(|s| s.region.clone())
        .or_else(|| obj.spec.region.clone())
        .unwrap_or_else(|| default_region.to_owned());
    let cluster = status
        .and_then(|s| s.cluster_id.clone())
        .unwrap_or_else(|| cluster_id.to_owned());
    (region, cluster)
}

/// State reasons of an instance that died on its own: a new launch of the same spec would meet
/// them again. A person's terminate (`Client.UserInitiatedShutdown`) or the instance's own
/// shutdown is not among them: those are replaced.
fn is_launch_failure(state_reason: &str) -> bool {
    const REPLACEABLE: [&str; 3] = [
        "Client.UserInitiatedShutdown",
        "Client.InstanceInitiatedShutdown",
        "Client.UserInitiatedHibernate",
    ];
    state_reason.starts_with("Client.") && !REPLACEABLE.iter().any(|r| state_reason.starts_with(r))
}

/// Why `observed` must not be replaced: the recorded instance died at launch for a reason that
/// would recur, and the spec has not changed since. `None` lets the plan replace it.
pub fn launch_failure(observed: Option<&ObservedInstance>, recorded: &Recorded) -> Option<(String, String)> {
    let dead = observed.filter(|i| i.state.is_dead())?;
    let reason = dead.state_reason.as_deref().filter(|r| is_launch_failure(r))?;
    (recorded.same_generation && recorded.instance_id.as_deref() == Some(dead.id.as_str()))
        .then(|| (dead.id.clone(), reason.to_owned()))
}

/// Why no new replacement is launched: the one status names died at launch for a reason that
/// would recur, and the spec has not changed since. The old instance keeps serving.
pub fn replacement_failure(replacement: Option<&ObservedInstance>, recorded: &Recorded) -> Option<(String, String)> {
    let dead = replacement.filter(|i| i.state.is_dead())?;
    let reason = dead.state_reason.as_deref().filter(|r| is_launch_failure(r))?;
    (recorded.same_generation && recorded.replacement_id() == Some(dead.id.as_str()))
        .then(|| (dead.id.clone(), reason.to_owned()))
}

/// The replacement status names, as RunInstances left it (pending, launched as the spec says),
/// while EC2 does not show it yet: within [`VISIBILITY_GRACE`] of its launch EC2 not showing it
/// is no proof that it is gone, and launching another would make a second one. `None` after.
pub fn presumed_replacement(desired: &Desired, recorded: &Recorded) -> Option<ObservedInstance> {
    let id = recorded.fresh_replacement()?;
    let spec = desired.spec;
    Some(ObservedInstance {
        id: id.to_owned(),
        state: InstanceState::Pending,
        instance_type: spec.instance_type.clone(),
        security_group_ids: spec.security_group_ids.iter().flatten().cloned().collect(),
        tags: desired.launch_tags(),
        private_ip: None,
        public_ip: None,
        private_dns_name: None,
        public_dns_name: None,
        availability_zone: None,
        launch_time: recorded.replacement.as_ref().and_then(|r| r.launch_time.clone()),
        state_reason: None,
        image_id: Some(spec.image_id.clone()),
        subnet_id: spec.subnet_id.clone(),
        key_name: spec.key_name.clone(),
        details: Details::default(),
    })
}

/// The instance type to confirm with EC2 before the plan stops a running instance to change it:
/// stopping for a type EC2 does not offer would leave the instance down.
pub fn type_to_confirm<'a>(desired: &'a Desired, observed: Option<&ObservedInstance>) -> Option<&'a str> {
    let instance = observed.filter(|i| !i.state.is_dead())?;
    (instance.instance_type != desired.spec.instance_type).then_some(desired.spec.instance_type.as_str())
}

/// The ordered steps that bring `observed` to the spec. Empty means in sync.
pub fn plan(desired: &Desired, observed: Option<&ObservedInstance>, recorded: &Recorded) -> Vec<Step> {
    let instance = match observed {
        Some(instance) if !instance.state.is_dead() => instance,
        // Replaced again and again without ever becoming Ready: wait before the next one.
        _ if recorded.instance_id.is_some() && recorded.replacement_wait().is_some() => return vec![Step::Wait],
        // Gone or terminated out of band: replace it, as a ReplicaSet replaces a deleted pod.
        Some(dead) => return vec![desired.launch(Some(dead.id.clone()))],
        // Launched moments ago and not visible yet: wait for EC2 rather than launch again.
        None if recorded.fresh() && recorded.instance_id.is_some() => return vec![Step::Wait],
        None => return vec![desired.launch(recorded.instance_id.clone())],
    };
    if !desired.may_keep(instance, recorded) {
        // `updatePolicy: Replace` and launched with other fixed fields: a new instance next to
        // this one, which serves until the new one runs. Nothing else is changed on it.
        return vec![desired.launch_replacing(&instance.id, recorded.replacement_id())];
    }
    let id = instance.id.clone();

    let mut steps = Vec::new();
    if let Some(tagging) = tag_changes(desired, instance, recorded) {
        steps.push(tagging);
    }
    let settled = match instance.state {
        InstanceState::Running | InstanceState::Stopped => instance.state,
        _ => {
            steps.push(Step::Wait);
            return steps;
        }
    };

    if let Some(groups) = &desired.spec.security_group_ids {
        let wanted: BTreeSet<&String> = groups.iter().collect();
        if wanted != instance.security_group_ids.iter().collect() {
            steps.push(Step::SetSecurityGroups {
                id: id.clone(),
                groups: groups.clone(),
            });
        }
    }

    steps.extend(
        live_changes(desired, instance, recorded)
            .into_iter()
            .map(|change| Step::Modify { id: id.clone(), change }),
    );

    let wrong_type = instance.instance_type != desired.spec.instance_type;
    let wanted_hash = desired.user_data_sha256();
    // The hash tag if it is there, else what status last saw on it: a deleted tag alone is
    // no reason to stop a running instance.
    let applied_hash = instance
        .tags
        .get(TAG_USER_DATA_SHA256)
        .or(recorded.user_data_sha256.as_ref());
    let wrong_user_data = applied_hash != wanted_hash.as_ref();
    let want_running = desired.spec.desired_state == DesiredState::Running;
    let wrong_ebs_optimized = desired
        .spec
        .ebs_optimized
        .filter(|wanted| instance.details.ebs_optimized.unwrap_or(false) != *wanted);

    if wrong_type || wrong_user_data || wrong_ebs_optimized.is_some() {
        // EC2 changes type, user data and EBS optimization only on a stopped instance: stop,
        // modify, start.
        if settled == InstanceState::Running {
            steps.push(Step::Stop(id));
            return steps;
        }
        if wrong_type {
            steps.push(Step::ModifyInstanceType {
                id: id.clone(),
                instance_type: desired.spec.instance_type.clone(),
            });
        }
        if wrong_user_data {
            steps.push(Step::ModifyUserData {
                id: id.clone(),
                user_data: desired.spec.user_data.clone().unwrap_or_default(),
                sha256: wanted_hash,
            });
        }
        if let Some(on) = wrong_ebs_optimized {
            steps.push(Step::Modify {
                id: id.clone(),
                change: Change::EbsOptimized(on),
            });
        }
        if want_running {
            steps.push(Step::Start(id));
        }
        return steps;
    }

    match (settled, want_running) {
        // EC2 alone restarts a Spot instance it stopped (interruption behavior Stop), when
        // capacity returns.
        (InstanceState::Stopped, true) if spot_stopped(instance) => steps.push(Step::Wait),
        (InstanceState::Stopped, true) => steps.push(Step::Start(id)),
        (InstanceState::Running, false) => steps.push(Step::Stop(id)),
        _ => {}
    }
    steps
}

/// The attributes EC2 changes in place where `instance` differs from the spec: those
/// DescribeInstances shows, and the hidden ones when the reconcile read them. A field the spec
/// leaves out is left as EC2 has it.
fn live_changes(desired: &Desired, instance: &ObservedInstance, recorded: &Recorded) -> Vec<Change> {
    let spec = desired.spec;
    let details = &instance.details;
    let mut changes = Vec::new();
    if let Some(wanted) = &spec.metadata_options {
        let want = MetadataInForce {
            http_tokens: wanted.http_tokens.map(|t| t.as_ec2()),
            hop_limit: wanted.http_put_response_hop_limit,
            http_endpoint: wanted.http_endpoint.map(|e| e.as_ec2()),
            instance_tags: wanted.instance_metadata_tags.map(|t| t.as_ec2()),
            state: None,
        };
        let have = details.metadata.clone().unwrap_or_default();
        let differs = |want: Option<&str>, have: Option<&str>| want.is_some() && want != have;
        if differs(want.http_tokens, have.http_tokens)
            || differs(want.http_endpoint, have.http_endpoint)
            || differs(want.instance_tags, have.instance_tags)
            || (want.hop_limit.is_some() && want.hop_limit != have.hop_limit)
        {
            changes.push(Change::MetadataOptions(want));
        }
    }
    if let Some(monitoring) = spec.monitoring {
        let on = matches!(details.monitoring, Some("enabled" | "pending"));
        let want = monitoring == Monitoring::Detailed;
        if on != want {
            changes.push(Change::Monitoring(want));
        }
    }
    if let Some(want) = spec.source_dest_check
        && details.source_dest_check.is_some_and(|have| have != want)
    {
        changes.push(Change::SourceDestCheck(want));
    }
    match (&spec.iam_instance_profile, &details.iam_profile_arn) {
        (Some(want), have) if !have.as_deref().is_some_and(|arn| is_profile(arn, want)) => {
            changes.push(Change::IamInstanceProfile(Some(want.clone())));
        }
        (None, Some(_)) if recorded.applied_iam_instance_profile.is_some() => {
            changes.push(Change::IamInstanceProfile(None));
        }
        _ => {}
    }
    if let Some(hidden) = &details.hidden {
        changes.extend(hidden_changes(spec, hidden));
    }
    changes
}

/// Where the read hidden attributes differ from the spec.
fn hidden_changes(spec: &Ec2InstanceSpec, hidden: &Hidden) -> Vec<Change> {
    let mut changes = Vec::new();
    let differs = |want: Option<bool>, have: Option<bool>| want.filter(|w| have != Some(*w));
    if let Some(on) = differs(spec.termination_protection, hidden.termination_protection) {
        changes.push(Change::TerminationProtection(on));
    }
    if let Some(on) = differs(spec.stop_protection, hidden.stop_protection) {
        changes.push(Change::StopProtection(on));
    }
    if let Some(want) = spec.shutdown_behavior.map(|b| b.as_ec2())
        && hidden.shutdown_behavior.as_deref() != Some(want)
    {
        changes.push(Change::ShutdownBehavior(want.to_owned()));
    }
    if let Some(want) = spec.credit_specification.map(|c| c.as_ec2())
        && hidden.credit_specification.as_deref() != Some(want)
    {
        changes.push(Change::CreditSpecification(want.to_owned()));
    }
    if let Some(want) = spec.root_volume.as_ref().and_then(|v| v.size_gib)
        && let Some((volume_id, size)) = &hidden.root_volume
        && *size < want
    {
        changes.push(Change::RootVolumeSize {
            volume_id: volume_id.clone(),
            size_gib: want,
        });
    }
    changes
}

/// Whether the instance profile `arn` is `wanted`, given by ARN or by name.
fn is_profile(arn: &str, wanted: &str) -> bool {
    arn == wanted || arn.rsplit('/').next() == Some(wanted)
}

/// What must come before each termination in `steps`: the spec's own termination protection
/// turned off (deleting the object, retiring a replaced instance or a duplicate is the user's
/// decision; protection someone else set is left, and TerminateInstances reports it), and the
/// Spot request of a Spot instance among `known` cancelled (a persistent one would launch again).
pub fn before_terminating<'a>(
    spec: &Ec2InstanceSpec,
    steps: Vec<Step>,
    known: impl IntoIterator<Item = &'a ObservedInstance>,
) -> Vec<Step> {
    let requests: BTreeMap<&str, &str> = known
        .into_iter()
        .filter_map(|i| Some((i.id.as_str(), i.details.spot_request_id.as_deref()?)))
        .collect();
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        if let Step::Terminate(id) = &step {
            if let Some(request) = requests.get(id.as_str()) {
                out.push(Step::Modify {
                    id: id.clone(),
                    change: Change::CancelSpotRequest((*request).to_owned()),
                });
            }
            if spec.termination_protection == Some(true) {
                out.push(Step::Modify {
                    id: id.clone(),
                    change: Change::TerminationProtection(false),
                });
            }
        }
        out.push(step);
    }
    out
}

/// A Spot instance EC2 stopped on interruption, by its state reason.
fn spot_stopped(instance: &ObservedInstance) -> bool {
    instance
        .state_reason
        .as_deref()
        .is_some_and(|r| r.starts_with("Server.SpotInstanceShutdown"))
}

/// The replacement that EC2 interrupting a Spot instance calls for, by its state reason.
pub fn spot_interrupted(instance: &ObservedInstance) -> bool {
    instance
        .state_reason
        .as_deref()
        .is_some_and(|r| r.starts_with("Server.SpotInstanceTermination"))
}

/// At most this many passes are previewed (a type change takes three: stop, modify and start).
const PREVIEW_PASSES: usize = 4;

/// The whole plan as a user reads it, like `terraform plan`: every step from `observed` to the
/// spec, across the passes it takes (each pass's steps applied to the instance as EC2 will show
/// it, transitions settled), e.g. `stop → modify instanceType t3.micro→t3.small → start`.
/// `replaced`: the instances `observed` replaces (`updatePolicy: Replace`), terminated once it
/// runs. `None` when the instance matches the spec.
pub fn preview(
    desired: &Desired,
    observed: Option<&ObservedInstance>,
    replaced: &[ObservedInstance],
    recorded: &Recorded,
) -> Option<String> {
    let mut instance = observed.cloned().map(ObservedInstance::settled);
    let mut shown = Vec::new();
    for _ in 0..PREVIEW_PASSES {
        let steps = plan(desired, instance.as_ref(), recorded);
        shown.extend(steps.iter().filter_map(|step| describe(step, instance.as_ref())));
        let launches = steps.iter().any(|s| s.launches() || *s == Step::Wait);
        let Some(current) = instance.take().filter(|_| !steps.is_empty() && !launches) else {
            break;
        };
        instance = Some(steps.iter().fold(current, |i, step| i.after(step)).settled());
    }
    if let Some(new) = observed {
        shown.extend(
            replaced
                .iter()
                .map(|old| format!("terminate {} once {} runs", old.id, new.id)),
        );
    }
    (!shown.is_empty()).then(|| shown.join(" → "))
}

/// One step as the plan preview shows it; `None` for a wait.
fn describe(step: &Step, before: Option<&ObservedInstance>) -> Option<String> {
    Some(match step {
        Step::Wait => return None,
        Step::Launch {
            request,
            replaces: None,
        } => {
            format!("launch {} from {}", request.instance_type, request.image_id)
        }
        Step::Launch {
            replaces: Some(old), ..
        } => match before.filter(|i| i.state.is_dead()) {
            Some(dead) => format!("replace instance {old} ({} out of band)", dead.state.as_str()),
            None => format!("replace instance {old} (gone from EC2)"),
        },
        Step::LaunchReplacement { request, old } => format!(
            "launch {} from {} → terminate {old} once it runs",
            request.instance_type, request.image_id
        ),
        Step::Start(_) => "start".into(),
        Step::Stop(_) => "stop".into(),
        Step::ModifyInstanceType { instance_type, .. } => {
            let old = before.map_or("?", |i| i.instance_type.as_str());
            format!("modify instanceType {old}→{instance_type}")
        }
        Step::ModifyUserData { .. } => "replace userData".into(),
        Step::SetSecurityGroups { groups, .. } => format!("set securityGroupIds {}", groups.join(",")),
        Step::Modify { change, .. } => change.to_string(),
        Step::Tag { set, remove, .. } => {
            let mut changes: Vec<String> = set.keys().map(|k| format!("+{k}")).collect();
            changes.extend(remove.iter().map(|k| format!("-{k}")));
            format!("tag {}", changes.join(" "))
        }
        Step::Terminate(id) => format!("terminate {id}"),
        Step::Release { id, .. } => format!("release {id}"),
    })
}

/// Tags to add or correct (spec and operator tags, and a deleted user data hash whose user data
/// is unchanged) and spec keys to remove.
fn tag_changes(desired: &Desired, instance: &ObservedInstance, recorded: &Recorded) -> Option<Step> {
    let mut wanted = desired.user_tags();
    wanted.extend(desired.owner.tags());
    if let Some(hash) = desired.user_data_sha256()
        && !instance.tags.contains_key(TAG_USER_DATA_SHA256)
        && recorded.user_data_sha256.as_ref() == Some(&hash)
    {
        wanted.insert(TAG_USER_DATA_SHA256.into(), hash);
    }
    // Launched before `iamInstanceProfile` and the root size changed in place: the new hash.
    let current = launch_sha256(desired.spec);
    if instance.tags.get(TAG_LAUNCH_SHA256) == Some(&legacy_launch_sha256(desired.spec)) {
        wanted.insert(TAG_LAUNCH_SHA256.into(), current);
    }
    let set: BTreeMap<String, String> = wanted
        .iter()
        .filter(|(k, v)| instance.tags.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove: Vec<String> = recorded
        .applied_tag_keys
        .iter()
        .filter(|k| !wanted.contains_key(*k) && instance.tags.contains_key(*k))
        .cloned()
        .collect();
    (!set.is_empty() || !remove.is_empty()).then(|| Step::Tag {
        id: instance.id.clone(),
        set,
        remove,
    })
}

/// The spec tag keys to remember as applied once a plan has run.
pub fn applied_tag_keys(spec: &Ec2InstanceSpec) -> Vec<String> {
    spec.tags.iter().flat_map(|t| t.keys().cloned()).collect()
}

/// Ready for the current generation: the last reconcile found nothing to do, so the shared
/// inventory is enough to notice drift.
pub fn is_steady(obj: &Ec2Instance) -> bool {
    obj.status
        .as_ref()
        .and_then(|s| s.condition(READY))
        .is_some_and(|c| c.status == "True" && c.observed_generation == obj.metadata.generation)
}

/// Whether `instance` may be managed for `owner`: not if its operator tags name another object or
/// another cluster (a status copied or restored from elsewhere must not adopt, retag or
/// terminate someone else's instance). An instance whose tags were stripped is still ours.
pub fn belongs_to(instance: &ObservedInstance, owner: &Owner) -> bool {
    let claims = |key: &str, value: &str| instance.tags.get(key).is_none_or(|v| v == value);
    claims(TAG_OWNER_UID, &owner.uid) && claims(TAG_CLUSTER_ID, &owner.cluster_id)
}

/// The instances among `found` that `owner` may act on.
pub fn owned(found: Vec<ObservedInstance>, owner: &Owner) -> Vec<ObservedInstance> {
    found.into_iter().filter(|i| belongs_to(i, owner)).collect()
}

/// Of the instances found for one owner, the one to manage: among the live ones, those `keep`
/// accepts first (under `updatePolicy: Replace`, the one launched as the spec says, even while
/// status still names the one it replaces), the status's own, then the oldest; else the status's
/// dead one, else the newest dead one (so that it is replaced). Returns the chosen instance and
/// any other live ones: instances it replaces, or duplicates only a lenient EC2 would let through.
pub fn choose(
    mut found: Vec<ObservedInstance>,
    status_id: Option<&str>,
    keep: impl Fn(&ObservedInstance) -> bool,
) -> (Option<ObservedInstance>, Vec<ObservedInstance>) {
    use std::cmp::Reverse;
    // Live before dead; the status's own first; then live ones oldest first (stable choice),
    // dead ones newest first: a replacement's ClientToken names the newest dead instance,
    // whose token has not been used yet.
    found.sort_by_key(|i| {
        let launched = i.launch_time.clone().unwrap_or_default();
        let order = if i.state.is_dead() {
            (String::new(), Reverse(launched))
        } else {
            (launched, Reverse(String::new()))
        };
        let dead = i.state.is_dead();
        (
            dead,
            !dead && !keep(i),
            Some(i.id.as_str()) != status_id,
            order,
            i.id.clone(),
        )
    });
    let mut found = found.into_iter();
    let chosen = found.next();
    let extras = found.filter(|i| !i.state.is_dead()).collect();
    (chosen, extras)
}

/// The other live instances split into those the spec no longer keeps (`updatePolicy: Replace`,
/// launched with other fixed fields: replaced, not duplicates) and duplicates.
pub fn replaced_and_duplicates(
    desired: &Desired,
    extras: Vec<ObservedInstance>,
    recorded: &Recorded,
) -> (Vec<ObservedInstance>, Vec<ObservedInstance>) {
    extras.into_iter().partition(|i| !desired.may_keep(i, recorded))
}

/// Terminate the instances `chosen` replaces once it has come up, launched as the spec says:
/// until then they keep serving.
pub fn retire(
    desired: &Desired,
    chosen: Option<&ObservedInstance>,
    replaced: &[ObservedInstance],
    recorded: &Recorded,
) -> Vec<Step> {
    let up = chosen.is_some_and(|new| desired.may_keep(new, recorded) && desired.is_up(new));
    if !up {
        return Vec::new();
    }
    replaced.iter().map(|old| Step::Terminate(old.id.clone())).collect()
}

/// The instances still to retire after `steps` ran on `observed`: the replaced ones not
/// terminated, and `observed` itself if a replacement for it was launched.
pub fn still_replaced(
    observed: Option<&ObservedInstance>,
    replaced: &[ObservedInstance],
    steps: &[Step],
) -> Vec<ObservedInstance> {
    let mut left: Vec<ObservedInstance> = replaced
        .iter()
        .filter(|old| !steps.contains(&Step::Terminate(old.id.clone())))
        .cloned()
        .collect();
    let launched_beside = |old: &ObservedInstance| {
        steps
            .iter()
            .any(|step| matches!(step, Step::LaunchReplacement { old: id, .. } if *id == old.id))
    };
    left.extend(observed.filter(|old| launched_beside(old)).cloned());
    left
}

/// The instance status describes: `current`, unless it replaces instances and has not come up
/// yet; then the one it replaces that status names (else the first), which still serves.
pub fn in_service<'a>(
    desired: &Desired,
    current: Option<&'a ObservedInstance>,
    replaced: &'a [ObservedInstance],
    recorded: &Recorded,
) -> Option<&'a ObservedInstance> {
    let new = current?;
    if replaced.is_empty() || !desired.may_keep(new, recorded) || desired.is_up(new) {
        return Some(new);
    }
    let named = replaced
        .iter()
        .find(|old| recorded.instance_id.as_deref() == Some(old.id.as_str()));
    named.or(replaced.first())
}

/// `current`, while it is on its way to replace `serving` (which status then still describes).
pub fn on_its_way<'a>(
    current: Option<&'a ObservedInstance>,
    serving: Option<&ObservedInstance>,
) -> Option<&'a ObservedInstance> {
    current.filter(|new| serving.is_some_and(|old| old.id != new.id))
}

/// The Ready condition while `new` is on its way to replace `old`, which serves.
pub fn replacing(new: &ObservedInstance, old: &ObservedInstance) -> Readiness {
    Readiness::not_ready(
        "Replacing",
        format!(
            "instance {new} ({}) replaces {old}: {old} serves until {new} runs, then it is terminated",
            new.state.as_str(),
            new = new.id,
            old = old.id
        ),
    )
}

/// `steps` terminate the instance the status names.
pub fn terminates(steps: &[Step], status_id: Option<&str>) -> bool {
    steps
        .iter()
        .any(|step| matches!(step, Step::Terminate(id) if Some(id.as_str()) == status_id))
}

/// A plan not to carry out: it stops the instance for a change, and a terminal error already
/// stopped this generation (a type the AMI cannot run, say). The instance keeps running on its
/// old settings, Stalled says why, and a spec change tries again. Without this, every retry
/// would stop a production instance only to fail again.
pub fn held_back(steps: &[Step], recorded: &Recorded) -> bool {
    recorded.stalled && steps.iter().any(|step| matches!(step, Step::Stop(_)))
}

/// After `failed` failed for good: the start that restores the instance if the plan stopped it
/// for that change, so a refused type or user data leaves it running as it was, not stopped.
pub fn restart_after(failed: &Step, steps: &[Step]) -> Option<Step> {
    let (Step::ModifyInstanceType { id, .. } | Step::ModifyUserData { id, .. }) = failed else {
        return None;
    };
    steps
        .iter()
        .find(|step| matches!(step, Step::Start(start) if start == id))
        .cloned()
}

/// Live instances of this cluster whose owner is not among the `known` object UIDs. With a
/// watched `namespace`, only instances of that namespace: the others belong to another operator.
pub fn orphan_candidates<'a>(
    instances: impl IntoIterator<Item = &'a ObservedInstance>,
    known: &HashSet<&str>,
    namespace: Option<&str>,
) -> Vec<&'a ObservedInstance> {
    instances
        .into_iter()
        .filter(|i| !i.state.is_dead())
        .filter(|i| namespace.is_none_or(|ns| i.tags.get(TAG_NAMESPACE).is_some_and(|t| t == ns)))
        .filter(|i| {
            i.tags
                .get(TAG_OWNER_UID)
                .is_some_and(|uid| !known.contains(uid.as_str()))
        })
        .collect()
}

/// What to do about confirmed orphans: date each one with a tag when first found, and terminate
/// it once `terminate_after` has passed since then, only if the operator was told to.
pub fn orphan_steps(
    orphans: &[&ObservedInstance],
    now: jiff::Timestamp,
    terminate_after: Option<Duration>,
) -> Vec<Step> {
    orphans
        .iter()
        .filter_map(|orphan| {
            let since = orphan
                .tags
                .get(TAG_ORPHANED_SINCE)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            match since {
                None => Some(Step::Tag {
                    id: orphan.id.clone(),
                    set: BTreeMap::from([(TAG_ORPHANED_SINCE.to_owned(), now.to_string())]),
                    remove: Vec::new(),
                }),
                Some(since) => {
                    let age = Duration::try_from(now.duration_since(since)).unwrap_or_default();
                    terminate_after
                        .is_some_and(|grace| age >= grace)
                        .then(|| Step::Terminate(orphan.id.clone()))
                }
            }
        })
        .collect()
}

/// Duplicates to terminate now: extra live instances of this owner that were already seen at
/// least `confirm_after` ago (a poll interval: two sightings, not one answer, decide).
pub fn duplicates_to_terminate(extras: &[ObservedInstance], recorded: &Recorded, confirm_after: Duration) -> Vec<Step> {
    if recorded.duplicates_for.is_none_or(|seen| seen < confirm_after) {
        return Vec::new();
    }
    extras
        .iter()
        .filter(|i| recorded.duplicates.contains(&i.id))
        .map(|i| Step::Terminate(i.id.clone()))
        .collect()
}

/// The duplicates to remember in status after `steps` ran, and since when they are seen.
pub fn duplicates_seen(
    extras: &[ObservedInstance],
    steps: &[Step],
    recorded: &Recorded,
    now: jiff::Timestamp,
) -> (Vec<String>, Option<String>) {
    let left: Vec<String> = extras
        .iter()
        .map(|i| i.id.clone())
        .filter(|id| !steps.contains(&Step::Terminate(id.clone())))
        .collect();
    if left.is_empty() {
        return (left, None);
    }
    let seen_before = left.iter().any(|id| recorded.duplicates.contains(id));
    let since = match recorded
        .duplicates_for
        .and_then(|d| jiff::SignedDuration::try_from(d).ok())
    {
        Some(ago) if seen_before => now.checked_sub(ago).unwrap_or(now),
        _ => now,
    };
    (left, Some(since.to_string()))
}

/// What deleting the object does next.
#[derive(Clone, Debug, PartialEq)]
pub struct Cleanup {
    /// Calls to make now: terminate (`Delete`) or release (`Retain`) every live owned instance.
    pub steps: Vec<Step>,
    /// Once the steps succeeded, drop the finalizer; otherwise look again until EC2 shows the
    /// instances terminated.
    pub release: bool,
}

/// `owned` are all instances found by status id or owner tag. The finalizer stays until EC2 shows
/// every one of them terminated, including one launched so recently that EC2 does not show it yet.
pub fn plan_cleanup(policy: DeletionPolicy, owned: &[ObservedInstance], recorded: &Recorded) -> Cleanup {
    let live = owned.iter().filter(|i| !i.state.is_dead());
    let recorded_unseen = recorded.instance_id.as_deref().filter(|_| recorded.fresh());
    let unseen: Vec<&str> = recorded_unseen
        .into_iter()
        .chain(recorded.fresh_replacement())
        .filter(|id| !owned.iter().any(|i| i.id == *id))
        .collect();
    match policy {
        DeletionPolicy::Delete => {
            let mut steps: Vec<Step> = live.map(|i| Step::Terminate(i.id.clone())).collect();
            // Terminating an id EC2 does not show yet may answer NotFound; it is tried again
            // until the instance shows up terminated or the grace has passed.
            steps.extend(unseen.iter().map(|id| Step::Terminate((*id).to_owned())));
            let shutting_down = owned.iter().any(|i| i.state == InstanceState::ShuttingDown);
            let release = steps.is_empty() && !shutting_down;
            Cleanup { steps, release }
        }
        DeletionPolicy::Retain => {
            let steps = live
                .map(|i| Step::Release {
                    id: i.id.clone(),
                    keys: i.tags.keys().filter(|k| k.starts_with(TAG_PREFIX)).cloned().collect(),
                })
                .filter(|step| !matches!(step, Step::Release { keys, .. } if keys.is_empty()))
                .collect();
            // An instance not visible yet cannot be untagged yet: wait for it.
            Cleanup {
                steps,
                release: unseen.is_empty(),
            }
        }
    }
}

/// The Ready condition's value, reason and message.
#[derive(Clone, Debug, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    /// CamelCase, e.g. `InstanceRunning`, `Starting`, `Failed`.
    pub reason: &'static str,
    pub message: String,
}

impl Readiness {
    pub fn ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ready: true,
            reason,
            message: message.into(),
        }
    }
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ready: false,
            reason,
            message: message.into(),
        }
    }
}

/// The Ready reason while the object is paused by its annotation.
pub const PAUSED: &str = "Paused";
/// The Ready reason of an `ObserveOnly` object whose instance matches the spec.
pub const OBSERVED: &str = "Observed";
/// The Ready reason of an `ObserveOnly` object whose instance differs from the spec (or that has
/// none).
pub const DRIFTED: &str = "Drifted";

/// What an object that changes nothing (paused, or `ObserveOnly`) reports: `observed` is `None`
/// when the instance is not known (paused objects read only the shared poll), `Some(None)` when
/// there is none; `plan` is the preview of what `Full` would do.
pub fn hands_off_readiness(paused: bool, observed: Option<Option<&ObservedInstance>>, plan: Option<&str>) -> Readiness {
    let what = match (observed, plan) {
        (None, _) => "waiting for the next poll of EC2 to show the instance".to_owned(),
        (Some(None), None) => "there is no instance".to_owned(),
        (Some(_), None) => "the instance matches the spec".to_owned(),
        (Some(_), Some(plan)) => format!("the instance differs from the spec; the operator would: {plan}"),
    };
    let in_sync = matches!(observed, Some(Some(_))) && plan.is_none();
    if paused {
        let message = format!("reconciliation paused by the annotation k106.com/paused; {what}");
        return Readiness {
            ready: in_sync,
            reason: PAUSED,
            message,
        };
    }
    let message = format!("observe-only: {what}");
    if in_sync {
        Readiness::ready(OBSERVED, message)
    } else {
        Readiness::not_ready(DRIFTED, message)
    }
}

/// Why the instance a new object asks to adopt cannot be taken over, if it cannot: EC2 does not
/// show it, it is dead, another object or cluster owns it, or a field fixed at launch differs from
/// the spec (nothing is replaced: the object reports the mismatch and waits for a fixed spec).
pub fn adoption_refusal(spec: &Ec2InstanceSpec, owner: &Owner, instance: Option<&ObservedInstance>) -> Option<String> {
    let Some(instance) = instance else {
        return Some("EC2 does not show it".into());
    };
    if instance.state.is_dead() {
        return Some(format!("it is {}", instance.state.as_str()));
    }
    let tag = |key: &str| instance.tags.get(key).map_or("?", String::as_str);
    if instance.tags.get(TAG_OWNER_UID).is_some_and(|uid| *uid != owner.uid) {
        return Some(format!(
            "it is managed by {}/{} (owner uid {})",
            tag(TAG_NAMESPACE),
            tag(TAG_NAME),
            tag(TAG_OWNER_UID)
        ));
    }
    if instance
        .tags
        .get(TAG_CLUSTER_ID)
        .is_some_and(|id| *id != owner.cluster_id)
    {
        return Some(format!("it is managed from cluster {}", tag(TAG_CLUSTER_ID)));
    }
    let mismatches: Vec<String> = shown_fields_differing(spec, instance)
        .into_iter()
        .map(|(field, wanted, have)| {
            let have = have.unwrap_or("none");
            format!("{field} is {wanted} in the spec but {have} on the instance")
        })
        .collect();
    (!mismatches.is_empty()).then(|| format!("{}; fix the spec to match", mismatches.join(", ")))
}

/// The Ready condition once `steps` ran and left the instance in `current`.
pub fn readiness(want: DesiredState, steps: &[Step], current: Option<&ObservedInstance>) -> Readiness {
    let Some(instance) = current else {
        return Readiness::not_ready("Launching", "no instance yet");
    };
    let id = &instance.id;
    let settled = steps.iter().all(|s| !s.starts_transition());
    match (instance.state, want) {
        _ if steps.iter().any(Step::launches) => {
            Readiness::not_ready("Launching", format!("instance {id} launched, waiting for it to run"))
        }
        (InstanceState::Running, DesiredState::Running) if settled => Readiness::ready(
            "InstanceRunning",
            format!("instance {id} is running and matches the spec"),
        ),
        (InstanceState::Stopped, DesiredState::Stopped) if settled => Readiness::ready(
            "InstanceStopped",
            format!("instance {id} is stopped as desired and matches the spec"),
        ),
        (InstanceState::Stopping, DesiredState::Running) => Readiness::not_ready(
            "Modifying",
            format!("stopping instance {id} to change its type or user data"),
        ),
        (InstanceState::Pending, _) => Readiness::not_ready("Starting", format!("instance {id} is starting")),
        (InstanceState::Stopping, _) => Readiness::not_ready("Stopping", format!("instance {id} is stopping")),
        (state, _) => Readiness::not_ready("Reconciling", format!("instance {id} is {}", state.as_str())),
    }
}

/// The event that tells a user what `step` did to `before`, leaving `after` (for a launch: the
/// new instance). User data is never quoted.
pub fn event(
    step: &Step,
    before: Option<&ObservedInstance>,
    after: Option<&ObservedInstance>,
) -> Option<(Reason, String)> {
    let new_id = after.map_or("(unknown)", |i| i.id.as_str());
    Some(match step {
        Step::Wait => return None,
        Step::Launch { replaces: None, .. } => (Reason::Launched, format!("launched instance {new_id}")),
        Step::Launch {
            replaces: Some(old), ..
        } if before.is_some_and(spot_interrupted) => (
            Reason::SpotInterrupted,
            format!("Spot instance {old} was interrupted by EC2 (Server.SpotInstanceTermination); launched {new_id}"),
        ),
        Step::Launch {
            replaces: Some(old), ..
        } => (
            Reason::Replaced,
            format!("instance {old} is gone (terminated out of band); launched {new_id}"),
        ),
        Step::LaunchReplacement { request, old } => (
            Reason::Launched,
            format!(
                "replacing instance {old} ({}): launched {new_id}; {old} serves until {new_id} runs, then it is terminated",
                fixed_changes(before, request)
            ),
        ),
        Step::Start(id) => (Reason::Started, format!("starting instance {id}")),
        Step::Stop(id) => (Reason::Stopped, format!("stopping instance {id}")),
        Step::ModifyInstanceType { id, instance_type } => {
            let old = before.map_or("?", |i| i.instance_type.as_str());
            (
                Reason::Modified,
                format!("instance {id}: type {old} -> {instance_type}"),
            )
        }
        Step::ModifyUserData { id, .. } => (Reason::Modified, format!("instance {id}: user data replaced")),
        Step::SetSecurityGroups { id, groups } => (
            Reason::SecurityGroupsUpdated,
            format!("instance {id}: security groups {groups:?}"),
        ),
        Step::Modify { id, change } => (Reason::Modified, format!("instance {id}: {change}")),
        Step::Tag { id, set, remove } => {
            let set: Vec<&String> = set.keys().collect();
            (
                Reason::TagsUpdated,
                format!("instance {id}: set tags {set:?}, removed {remove:?}"),
            )
        }
        Step::Terminate(id) => (Reason::Terminating, format!("terminating instance {id}")),
        Step::Release { id, keys } => (
            Reason::Retained,
            format!("instance {id} retained; removed operator tags {keys:?}"),
        ),
    })
}

/// What changed among the fields fixed at launch, as far as DescribeInstances shows them on `old`:
/// e.g. `imageId ami-a→ami-b`.
fn fixed_changes(old: Option<&ObservedInstance>, request: &LaunchRequest) -> String {
    let Some(old) = old else {
        return "fields fixed at launch changed".into();
    };
    let fields = [
        ("imageId", &old.image_id, Some(&request.image_id)),
        ("subnetId", &old.subnet_id, request.subnet_id.as_ref()),
        ("keyName", &old.key_name, request.key_name.as_ref()),
    ];
    let shown: Vec<String> = fields
        .into_iter()
        .filter(|(_, had, wanted)| wanted.is_some() && had.as_ref() != *wanted)
        .map(|(field, had, wanted)| {
            let had = had.as_deref().unwrap_or("none");
            format!("{field} {had}→{}", wanted.map_or("none", String::as_str))
        })
        .collect();
    if shown.is_empty() {
        "rootVolume or iamInstanceProfile changed".into()
    } else {
        shown.join(", ")
    }
}

/// A Warning when an object that already matched its spec needs steps again: someone changed
/// the instance out of band.
pub fn drift(steady: bool, observed: Option<&ObservedInstance>, steps: &[Step]) -> Option<(Reason, String)> {
    if !steady || steps.is_empty() {
        return None;
    }
    let id = observed.map_or("(none)", |i| i.id.as_str());
    let state = observed.map_or("missing", |i| i.state.as_str());
    let labels: Vec<&str> = steps.iter().map(Step::label).collect();
    Some((
        Reason::DriftDetected,
        format!("instance {id} ({state}) no longer matches the spec: {labels:?}"),
    ))
}

/// What a drift's steps repair, by kind (the `drift_repairs_total` metric). A stop for a type or
/// user data change counts as that change, and a wait on an instance someone started or stopped
/// as the stop or start it will get: those steps come in later passes, when the object is no
/// longer Ready and so no longer drifted.
pub fn drift_repairs(spec: &Ec2InstanceSpec, observed: Option<&ObservedInstance>, steps: &[Step]) -> Vec<&'static str> {
    let want_running = spec.desired_state == DesiredState::Running;
    let resized = observed.is_some_and(|i| i.instance_type != spec.instance_type);
    let ebs_changed = observed.is_some_and(|i| {
        spec.ebs_optimized
            .is_some_and(|on| i.details.ebs_optimized.unwrap_or(false) != on)
    });
    let mut kinds: Vec<&'static str> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Launch { .. } | Step::LaunchReplacement { .. } => Some("replaced"),
            Step::Start(_) => Some("started"),
            Step::Stop(_) if !want_running => Some("stopped"),
            // The plan stops an instance meant to run only to change its type, user data or EBS optimization.
            Step::Stop(_) if resized => Some("resized"),
            Step::Stop(_) if ebs_changed => Some("attributes"),
            Step::Stop(_) => Some("user_data"),
            Step::ModifyInstanceType { .. } => Some("resized"),
            Step::ModifyUserData { .. } => Some("user_data"),
            Step::SetSecurityGroups { .. } => Some("security_groups"),
            Step::Modify { .. } => Some("attributes"),
            Step::Tag { .. } => Some("retagged"),
            Step::Terminate(_) => Some("duplicate_terminated"),
            Step::Wait => match (observed.map(|i| i.state), want_running) {
                (Some(InstanceState::Stopping | InstanceState::Stopped), true) => Some("started"),
                (Some(InstanceState::Pending | InstanceState::Running), false) => Some("stopped"),
                _ => None,
            },
            Step::Release { .. } => None,
        })
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::model::{TAG_CLUSTER_ID, TAG_NAME, TAG_OWNER_UID};

    const ID: &str = "i-0123456789abcdef0";

    fn plan_for(spec: &Ec2InstanceSpec, observed: Option<&ObservedInstance>, applied: &[&str]) -> Vec<Step> {
        let owner = owner();
        let recorded = Recorded {
            applied_tag_keys: applied.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        plan(&Desired { spec, owner: &owner }, observed, &recorded)
    }

    /// Status names instance `ID`, launched moments ago (`fresh`) or an hour ago.
    fn recorded(fresh: bool) -> Recorded {
        let ago = if fresh { 5 } else { 3600 };
        Recorded {
            instance_id: Some(ID.into()),
            since_launch: Some(Duration::from_secs(ago)),
            ..Default::default()
        }
    }

    fn launch_of(spec: &Ec2InstanceSpec, replaces: Option<&str>) -> Step {
        let owner = owner();
        Desired { spec, owner: &owner }.launch(replaces.map(str::to_owned))
    }

    fn preview_for(spec: &Ec2InstanceSpec, observed: Option<&ObservedInstance>, applied: &[&str]) -> Option<String> {
        let owner = owner();
        let recorded = Recorded {
            applied_tag_keys: applied.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        preview(&Desired { spec, owner: &owner }, observed, &[], &recorded)
    }

    #[test]
    fn the_preview_lists_every_step_across_the_passes_a_change_takes() {
        let small = spec().with_type("t3.small").with_tag("team", "a");
        let running_micro = instance_for(&spec().with_tag("team", "a"), InstanceState::Running).with_type("t3.micro");
        assert_eq!(
            preview_for(&small, Some(&running_micro), &["team"]).as_deref(),
            Some("stop → modify instanceType t3.micro→t3.small → start")
        );
        let stopping = running_micro.clone().in_state(InstanceState::Stopping);
        assert_eq!(
            preview_for(&small, Some(&stopping), &["team"]).as_deref(),
            Some("modify instanceType t3.micro→t3.small → start"),
            "what is left once the stop is under way"
        );
        let matching = instance_for(&small, InstanceState::Running);
        assert_eq!(preview_for(&small, Some(&matching), &["team"]), None, "in sync");
        let retagged = spec().with_type("t3.small").with_tag("env", "prod");
        assert_eq!(
            preview_for(&retagged, Some(&matching), &["team"]).as_deref(),
            Some("tag +env -team")
        );
        let dead = matching.in_state(InstanceState::Terminated);
        assert_eq!(
            preview_for(&small, Some(&dead), &["team"]).as_deref(),
            Some("replace instance i-0123456789abcdef0 (terminated out of band)")
        );
        assert_eq!(
            preview_for(&small, None, &[]).as_deref(),
            Some("launch t3.small from ami-760aaa0f")
        );
        let stopped = spec().with_desired_state(DesiredState::Stopped);
        let running = instance_for(&stopped, InstanceState::Running);
        assert_eq!(preview_for(&stopped, Some(&running), &[]).as_deref(), Some("stop"));
    }

    #[test]
    fn an_instance_is_adopted_only_when_free_and_launched_as_the_spec_says() {
        let spec = spec().with_subnet("subnet-0aaaaaaaaaaaaaaaa");
        let owner = owner();
        let mut free = instance_for(&spec, InstanceState::Running);
        free.tags.clear();
        assert_eq!(adoption_refusal(&spec, &owner, Some(&free)), None);
        assert_eq!(
            adoption_refusal(&spec, &owner, Some(&instance_for(&spec, InstanceState::Running))),
            None,
            "already this object's (a retry after the tags landed)"
        );
        let refusal = |instance: Option<&ObservedInstance>| adoption_refusal(&spec, &owner, instance).unwrap();
        assert_eq!(refusal(None), "EC2 does not show it");
        assert_eq!(
            refusal(Some(&free.clone().in_state(InstanceState::Terminated))),
            "it is terminated"
        );
        let other = free
            .clone()
            .with_instance_tag(TAG_OWNER_UID, "uid-other")
            .with_instance_tag(TAG_NAMESPACE, "team-b")
            .with_instance_tag(TAG_NAME, "db");
        assert_eq!(
            refusal(Some(&other)),
            "it is managed by team-b/db (owner uid uid-other)"
        );
        let elsewhere = free.clone().with_instance_tag(TAG_CLUSTER_ID, "cluster-b");
        assert_eq!(refusal(Some(&elsewhere)), "it is managed from cluster cluster-b");
        let mut moved = free;
        moved.image_id = Some("ami-0bbbbbbbbbbbbbbbb".into());
        moved.subnet_id = None;
        assert_eq!(
            refusal(Some(&moved)),
            "imageId is ami-760aaa0f in the spec but ami-0bbbbbbbbbbbbbbbb on the instance, \
             subnetId is subnet-0aaaaaaaaaaaaaaaa in the spec but none on the instance; fix the spec to match"
        );
    }

    #[test]
    fn paused_and_observe_only_objects_say_what_they_see_and_what_would_be_done() {
        let running = instance_for(&spec(), InstanceState::Running);
        let paused = hands_off_readiness(true, Some(Some(&running)), Some("stop"));
        assert_eq!((paused.ready, paused.reason), (false, PAUSED));
        assert!(
            paused.message.ends_with("the operator would: stop"),
            "{}",
            paused.message
        );
        let paused_in_sync = hands_off_readiness(true, Some(Some(&running)), None);
        assert_eq!((paused_in_sync.ready, paused_in_sync.reason), (true, PAUSED));
        let unknown = hands_off_readiness(true, None, None);
        assert!(!unknown.ready && unknown.message.contains("waiting for the next poll"));

        let observed = hands_off_readiness(false, Some(Some(&running)), None);
        assert_eq!((observed.ready, observed.reason), (true, OBSERVED));
        let drifted = hands_off_readiness(
            false,
            Some(Some(&running)),
            Some("modify instanceType t3.micro→t3.small"),
        );
        assert_eq!((drifted.ready, drifted.reason), (false, DRIFTED));
        let none = hands_off_readiness(false, Some(None), Some("launch t3.micro from ami-760aaa0f"));
        assert_eq!((none.ready, none.reason), (false, DRIFTED));
    }

    #[test]
    fn no_instance_means_launch() {
        let spec = spec();
        assert_eq!(plan_for(&spec, None, &[]), vec![launch_of(&spec, None)]);
    }

    #[test]
    fn an_instance_matching_the_spec_needs_nothing() {
        let spec = spec().with_tag("team", "a");
        let running = instance_for(&spec, InstanceState::Running);
        assert_eq!(plan_for(&spec, Some(&running), &["team"]), vec![]);
    }

    #[test]
    fn terminated_out_of_band_is_replaced_and_names_the_old_instance() {
        let spec = spec();
        let dead = instance_for(&spec, InstanceState::Terminated);
        assert_eq!(plan_for(&spec, Some(&dead), &[]), vec![launch_of(&spec, Some(ID))]);
        let owner = owner();
        let vanished = plan(
            &Desired {
                spec: &spec,
                owner: &owner,
            },
            None,
            &recorded(false),
        );
        assert_eq!(vanished, vec![launch_of(&spec, Some(ID))]);
    }

    #[test]
    fn an_instance_launched_moments_ago_and_not_yet_visible_is_waited_for() {
        // AWS: a new instance may be unknown to DescribeInstances for a while. Reading that as
        // "gone" launched a second instance with a new token.
        let spec = spec();
        let desired = desired_for(&spec);
        assert_eq!(plan(&desired, None, &recorded(true)), vec![Step::Wait]);
        assert_eq!(
            plan(&desired, None, &recorded(false)),
            vec![launch_of(&spec, Some(ID))],
            "long after its launch, an instance EC2 no longer shows is gone"
        );
    }

    #[test]
    fn freshness_comes_from_the_recorded_launch_time_until_a_describe_shows_the_instance() {
        let pending = instance_for(&spec(), InstanceState::Pending).launched("2026-01-01T00:00:00Z");
        let obj = Ec2Instance::test().ready_on(&pending);
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap();
        assert!(Recorded::of(&obj, at("2026-01-01T00:01:00Z")).fresh());
        assert!(!Recorded::of(&obj, at("2026-01-01T00:11:00Z")).fresh());
        // Seen running, then gone from describe (terminated and forgotten): gone, at once.
        let seen = Ec2Instance::test().ready_on(&pending.in_state(InstanceState::Running));
        assert!(!Recorded::of(&seen, at("2026-01-01T00:01:00Z")).fresh());
        assert_eq!(
            Recorded::of(&Ec2Instance::test(), at("2026-01-01T00:01:00Z")),
            Recorded::default()
        );
    }

    #[test]
    fn deleting_right_after_a_launch_terminates_the_unseen_instance_before_letting_go() {
        // Before: terminate answered NotFound, the tag search was empty, the finalizer went and
        // the instance ran on, unmanaged.
        let unseen = plan_cleanup(DeletionPolicy::Delete, &[], &recorded(true));
        assert_eq!(
            unseen,
            Cleanup {
                steps: vec![Step::Terminate(ID.into())],
                release: false
            }
        );
        let retained = plan_cleanup(DeletionPolicy::Retain, &[], &recorded(true));
        assert!(!retained.release, "an unseen instance cannot be untagged yet");
        let long_gone = plan_cleanup(DeletionPolicy::Delete, &[], &recorded(false));
        assert!(long_gone.release && long_gone.steps.is_empty());
    }

    #[test]
    fn an_existing_object_keeps_its_region_and_cluster_when_the_defaults_change() {
        let new = Ec2Instance::test();
        assert_eq!(
            placement(&new, "eu-west-1", "cluster-b"),
            ("eu-west-1".to_owned(), "cluster-b".to_owned())
        );
        let existing = new.with_status(crate::crd::Ec2InstanceStatus {
            region: Some("us-east-1".into()),
            cluster_id: Some("cluster-a".into()),
            ..Default::default()
        });
        assert_eq!(
            placement(&existing, "eu-west-1", "cluster-b"),
            ("us-east-1".to_owned(), "cluster-a".to_owned())
        );
    }

    #[test]
    fn an_instance_that_keeps_dying_is_replaced_ever_more_slowly() {
        // Before: every poll launched (and billed) another instance.
        let spec = spec();
        let desired = desired_for(&spec);
        let dead = instance_for(&spec, InstanceState::Terminated);
        let after = |replacements: u32, secs: u64| Recorded {
            instance_id: Some(ID.into()),
            replacements,
            since_launch: Some(Duration::from_secs(secs)),
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, Some(&dead), &after(0, 5)),
            vec![launch_of(&spec, Some(ID))]
        );
        assert_eq!(plan(&desired, Some(&dead), &after(1, 5)), vec![Step::Wait]);
        assert_eq!(
            plan(&desired, Some(&dead), &after(1, 31)),
            vec![launch_of(&spec, Some(ID))]
        );
        assert_eq!(
            plan(&desired, Some(&dead), &after(3, 100)),
            vec![Step::Wait],
            "120 s after 3"
        );
        assert_eq!(replacement_delay(20), Duration::from_secs(3600), "at most an hour");
        let launch = [launch_of(&spec, Some(ID))];
        assert_eq!(replacements(&after(2, 0), &launch, false), 3);
        assert_eq!(replacements(&after(2, 0), &[], true), 0, "Ready resets the count");
    }

    #[test]
    fn an_instance_that_died_at_launch_is_not_replaced_until_the_spec_changes() {
        let mut dead = instance_for(&spec(), InstanceState::Terminated);
        dead.state_reason = Some("Client.InternalError: Client error on launch".into());
        let mut recorded = Recorded {
            instance_id: Some(ID.into()),
            same_generation: true,
            ..Default::default()
        };
        let (id, reason) = launch_failure(Some(&dead), &recorded).expect("a launch failure");
        assert_eq!(
            (id.as_str(), reason.as_str()),
            (ID, "Client.InternalError: Client error on launch")
        );
        recorded.same_generation = false;
        assert_eq!(launch_failure(Some(&dead), &recorded), None, "a new spec is tried");
        recorded.same_generation = true;
        dead.state_reason = Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
        assert_eq!(
            launch_failure(Some(&dead), &recorded),
            None,
            "a person's terminate is replaced"
        );
    }

    #[test]
    fn a_duplicate_is_terminated_only_when_seen_again_a_poll_later() {
        let extra = instance_for(&spec(), InstanceState::Running).with_id("i-0bbbbbbbbbbbbbbbb");
        let seen = |ids: &[&str], secs: u64| Recorded {
            duplicates: ids.iter().map(|s| s.to_string()).collect(),
            duplicates_for: Some(Duration::from_secs(secs)),
            ..Default::default()
        };
        let poll = Duration::from_secs(30);
        let extras = std::slice::from_ref(&extra);
        assert_eq!(
            duplicates_to_terminate(extras, &Recorded::default(), poll),
            vec![],
            "first sighting"
        );
        assert_eq!(
            duplicates_to_terminate(extras, &seen(&[&extra.id], 5), poll),
            vec![],
            "same poll"
        );
        assert_eq!(
            duplicates_to_terminate(extras, &seen(&[&extra.id], 31), poll),
            vec![Step::Terminate(extra.id.clone())]
        );
        assert_eq!(duplicates_to_terminate(extras, &seen(&["i-0other"], 31), poll), vec![]);
    }

    #[test]
    fn stopped_out_of_band_is_started() {
        let spec = spec();
        let stopped = instance_for(&spec, InstanceState::Stopped);
        assert_eq!(plan_for(&spec, Some(&stopped), &[]), vec![Step::Start(ID.into())]);
    }

    #[test]
    fn desired_state_is_honoured_both_ways() {
        let stopped_spec = spec().with_desired_state(DesiredState::Stopped);
        let running = instance_for(&stopped_spec, InstanceState::Running);
        assert_eq!(
            plan_for(&stopped_spec, Some(&running), &[]),
            vec![Step::Stop(ID.into())]
        );
        let stopped = instance_for(&stopped_spec, InstanceState::Stopped);
        assert_eq!(plan_for(&stopped_spec, Some(&stopped), &[]), vec![]);
    }

    #[test]
    fn instances_in_transition_are_waited_for() {
        let spec = spec();
        for state in [InstanceState::Pending, InstanceState::Stopping] {
            let instance = instance_for(&spec, state);
            assert_eq!(plan_for(&spec, Some(&instance), &[]), vec![Step::Wait], "{state:?}");
        }
    }

    #[test]
    fn instance_type_change_stops_then_modifies_then_starts() {
        let spec = spec().with_type("t3.large");
        let running = instance_for(&spec, InstanceState::Running).with_type("t3.micro");
        assert_eq!(plan_for(&spec, Some(&running), &[]), vec![Step::Stop(ID.into())]);
        let stopped = running.clone().in_state(InstanceState::Stopped);
        assert_eq!(
            plan_for(&spec, Some(&stopped), &[]),
            vec![
                Step::ModifyInstanceType {
                    id: ID.into(),
                    instance_type: "t3.large".into()
                },
                Step::Start(ID.into())
            ]
        );
    }

    #[test]
    fn a_refused_type_change_starts_the_instance_again_and_is_not_retried_for_this_spec() {
        let spec = spec().with_type("a1.medium");
        let stopped = instance_for(&spec, InstanceState::Stopped).with_type("t3.micro");
        let steps = plan_for(&spec, Some(&stopped), &[]);
        assert_eq!(restart_after(&steps[0], &steps), Some(Step::Start(ID.into())));
        assert_eq!(
            restart_after(&Step::Stop(ID.into()), &steps),
            None,
            "only a refused modify"
        );
        let stay_stopped = [steps[0].clone()];
        assert_eq!(
            restart_after(&steps[0], &stay_stopped),
            None,
            "desired Stopped stays stopped"
        );

        let running = stopped.in_state(InstanceState::Running);
        let stop = plan_for(&spec, Some(&running), &[]);
        let stalled = Recorded {
            stalled: true,
            ..Default::default()
        };
        assert!(
            held_back(&stop, &stalled),
            "no second stop for a change that failed for good"
        );
        assert!(!held_back(&stop, &Recorded::default()));
        let modify_only = plan_for(&spec, Some(&running.in_state(InstanceState::Stopped)), &[]);
        assert!(
            !held_back(&modify_only, &stalled),
            "a stopped instance may be tried again"
        );
    }

    #[test]
    fn an_orphan_is_dated_first_and_terminated_only_when_asked_after_the_grace() {
        let spec = spec();
        let running = instance_for(&spec, InstanceState::Running);
        let other_namespace = running.clone().with_instance_tag(TAG_NAMESPACE, "elsewhere");
        let dead = running.clone().in_state(InstanceState::Terminated);
        let uid = running.tags[TAG_OWNER_UID].clone();
        let none = HashSet::new();
        let scope = running.tags.get(TAG_NAMESPACE).map(String::as_str);
        let candidates = orphan_candidates([&running, &other_namespace, &dead], &none, scope);
        assert_eq!(candidates, [&running], "live, and in the watched namespace");
        assert!(orphan_candidates([&running], &HashSet::from([uid.as_str()]), None).is_empty());

        let now: jiff::Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let tag = Step::Tag {
            id: ID.into(),
            set: BTreeMap::from([(TAG_ORPHANED_SINCE.into(), now.to_string())]),
            remove: vec![],
        };
        assert_eq!(orphan_steps(&[&running], now, Some(Duration::from_secs(60))), [tag]);
        let dated = running.with_instance_tag(TAG_ORPHANED_SINCE, "2026-11-26T11:58:00Z");
        assert_eq!(orphan_steps(&[&dated], now, None), [], "reported only, by default");
        assert_eq!(
            orphan_steps(&[&dated], now, Some(Duration::from_secs(300))),
            [],
            "within the grace"
        );
        let grace = Some(Duration::from_secs(60));
        assert_eq!(orphan_steps(&[&dated], now, grace), [Step::Terminate(ID.into())]);
    }

    #[test]
    fn instance_type_change_while_stopped_stays_stopped() {
        let spec = spec().with_type("t3.large").with_desired_state(DesiredState::Stopped);
        let stopped = instance_for(&spec, InstanceState::Stopped).with_type("t3.micro");
        assert_eq!(
            plan_for(&spec, Some(&stopped), &[]),
            vec![Step::ModifyInstanceType {
                id: ID.into(),
                instance_type: "t3.large".into()
            }]
        );
    }

    #[test]
    fn user_data_change_is_detected_by_its_hash_tag() {
        let old = spec().with_user_data("#!/bin/sh\necho one");
        let new = old.clone().with_user_data("#!/bin/sh\necho two");
        let stopped = instance_for(&old, InstanceState::Stopped);
        assert_eq!(
            plan_for(&new, Some(&stopped), &[]),
            vec![
                Step::ModifyUserData {
                    id: ID.into(),
                    user_data: "#!/bin/sh\necho two".into(),
                    sha256: Some(user_data_sha256("#!/bin/sh\necho two")),
                },
                Step::Start(ID.into())
            ]
        );
    }

    #[test]
    fn a_deleted_user_data_hash_tag_is_put_back_without_a_restart() {
        // Before: the missing tag read as "user data changed" and a running production instance
        // was stopped, modified and started.
        let spec = spec().with_user_data("echo one");
        let mut running = instance_for(&spec, InstanceState::Running);
        let hash = running.tags.remove(TAG_USER_DATA_SHA256).unwrap();
        let desired = desired_for(&spec);
        let seen = Recorded {
            user_data_sha256: Some(hash.clone()),
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, Some(&running), &seen),
            vec![Step::Tag {
                id: ID.into(),
                set: BTreeMap::from([(TAG_USER_DATA_SHA256.into(), hash)]),
                remove: vec![],
            }]
        );
        let never_seen = plan(&desired, Some(&running), &Recorded::default());
        assert_eq!(never_seen, vec![Step::Stop(ID.into())], "unknown user data is replaced");
    }

    #[test]
    fn removing_user_data_clears_it() {
        let old = spec().with_user_data("echo one");
        let stopped = instance_for(&old, InstanceState::Stopped);
        let mut new = old.clone();
        new.user_data = None;
        assert_eq!(
            plan_for(&new, Some(&stopped), &[]),
            vec![
                Step::ModifyUserData {
                    id: ID.into(),
                    user_data: String::new(),
                    sha256: None
                },
                Step::Start(ID.into())
            ]
        );
    }

    #[test]
    fn security_groups_are_made_to_match_in_any_order() {
        let spec = spec().with_security_groups(&["sg-11111111", "sg-22222222"]);
        let mut instance = instance_for(&spec, InstanceState::Running);
        instance.security_group_ids = ["sg-22222222".into(), "sg-11111111".into()].into();
        assert_eq!(plan_for(&spec, Some(&instance), &[]), vec![]);
        instance.security_group_ids = ["sg-33333333".into()].into();
        assert_eq!(
            plan_for(&spec, Some(&instance), &[]),
            vec![Step::SetSecurityGroups {
                id: ID.into(),
                groups: vec!["sg-11111111".into(), "sg-22222222".into()]
            }]
        );
    }

    #[test]
    fn unmanaged_security_groups_are_left_alone() {
        let spec = spec();
        let mut instance = instance_for(&spec, InstanceState::Running);
        instance.security_group_ids = ["sg-99999999".into()].into();
        assert_eq!(plan_for(&spec, Some(&instance), &[]), vec![]);
    }

    #[test]
    fn tags_are_added_corrected_and_removed_but_foreign_tags_stay() {
        let spec = spec().with_tag("team", "a").with_tag("env", "prod");
        let mut instance = instance_for(&spec, InstanceState::Running);
        instance.tags.insert("env".into(), "dev".into()); // changed out of band
        instance.tags.remove("team"); // removed out of band
        instance.tags.insert("old".into(), "x".into()); // removed from spec earlier
        instance.tags.insert("backup".into(), "daily".into()); // someone else's
        let steps = plan_for(&spec, Some(&instance), &["team", "env", "old"]);
        assert_eq!(
            steps,
            vec![Step::Tag {
                id: ID.into(),
                set: BTreeMap::from([("env".into(), "prod".into()), ("team".into(), "a".into())]),
                remove: vec!["old".into()],
            }]
        );
    }

    #[test]
    fn operator_tags_are_restored() {
        let spec = spec();
        let mut instance = instance_for(&spec, InstanceState::Running);
        instance.tags.remove(TAG_NAME);
        assert_eq!(
            plan_for(&spec, Some(&instance), &[]),
            vec![Step::Tag {
                id: ID.into(),
                set: BTreeMap::from([(TAG_NAME.into(), "web".into())]),
                remove: vec![]
            }]
        );
    }

    #[test]
    fn tags_are_fixed_even_while_the_instance_is_in_transition() {
        let spec = spec().with_tag("team", "a");
        let mut pending = instance_for(&spec, InstanceState::Pending);
        pending.tags.remove("team");
        let steps = plan_for(&spec, Some(&pending), &[]);
        assert!(matches!(steps.as_slice(), [Step::Tag { .. }, Step::Wait]), "{steps:?}");
    }

    #[test]
    fn a_launch_carries_its_request_owner_tags_token_and_hash() {
        let spec = spec().with_tag("team", "a").with_user_data("echo hi");
        let Step::Launch { request, replaces } = launch_of(&spec, None) else {
            panic!("a launch")
        };
        let owner = owner();
        assert_eq!(replaces, None);
        assert_eq!(request.client_token, owner.uid);
        assert_eq!(request.tags.get(TAG_OWNER_UID), Some(&owner.uid));
        assert_eq!(request.tags.get(TAG_CLUSTER_ID), Some(&owner.cluster_id));
        assert_eq!(request.tags.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            request.tags.get(TAG_USER_DATA_SHA256),
            Some(&user_data_sha256("echo hi"))
        );
        let Step::Launch { request, .. } = launch_of(&spec, Some(ID)) else {
            panic!("a launch")
        };
        assert_eq!(request.client_token, owner.client_token(Some(ID)));
    }

    #[test]
    fn choose_prefers_the_status_instance_then_the_oldest_live_one() {
        let any = |_: &ObservedInstance| true;
        let spec = spec();
        let a = instance_for(&spec, InstanceState::Running)
            .with_id("i-aaaaaaaaaaaaaaaaa")
            .launched("2026-01-02T00:00:00Z");
        let b = instance_for(&spec, InstanceState::Running)
            .with_id("i-bbbbbbbbbbbbbbbbb")
            .launched("2026-01-01T00:00:00Z");
        let dead = instance_for(&spec, InstanceState::Terminated).with_id("i-ccccccccccccccccc");
        let (chosen, extras) = choose(
            vec![a.clone(), b.clone(), dead.clone()],
            Some("i-aaaaaaaaaaaaaaaaa"),
            any,
        );
        assert_eq!(chosen.unwrap().id, a.id);
        assert_eq!(extras, vec![b.clone()]);
        let (chosen, _) = choose(
            vec![a.clone(), dead.clone(), b.clone()],
            Some("i-ccccccccccccccccc"),
            any,
        );
        assert_eq!(
            chosen.unwrap().id,
            b.id,
            "a live instance wins over the dead status one"
        );
        let (chosen, extras) = choose(vec![dead.clone()], Some("i-ccccccccccccccccc"), any);
        assert_eq!(chosen.unwrap().id, dead.id);
        assert!(extras.is_empty());
        let older_dead = dead
            .clone()
            .with_id("i-ddddddddddddddddd")
            .launched("2025-01-01T00:00:00Z");
        let newer_dead = dead.with_id("i-eeeeeeeeeeeeeeeee").launched("2026-06-01T00:00:00Z");
        let (chosen, _) = choose(vec![older_dead, newer_dead.clone()], None, any);
        assert_eq!(
            chosen.unwrap().id,
            newer_dead.id,
            "status lost: replace the newest dead instance"
        );
    }

    #[test]
    fn another_objects_or_clusters_instance_is_never_ours() {
        let owner = owner();
        let ours = instance_for(&spec(), InstanceState::Running);
        let mut theirs = ours.clone().with_id("i-0bbbbbbbbbbbbbbbb");
        theirs.tags.insert(TAG_OWNER_UID.into(), "someone-else".into());
        let mut other_cluster = ours.clone().with_id("i-0ccccccccccccccccc");
        other_cluster.tags.insert(TAG_CLUSTER_ID.into(), "other".into());
        let mut stripped = ours.clone().with_id("i-0ddddddddddddddddd");
        stripped.tags.clear();
        let kept = owned(vec![ours.clone(), theirs, other_cluster, stripped.clone()], &owner);
        assert_eq!(kept, vec![ours, stripped]);
    }

    #[test]
    fn delete_terminates_every_live_owned_instance_then_waits_then_releases() {
        let spec = spec();
        let a = instance_for(&spec, InstanceState::Running).with_id("i-aaaaaaaaaaaaaaaaa");
        let b = instance_for(&spec, InstanceState::Stopped).with_id("i-bbbbbbbbbbbbbbbbb");
        assert_eq!(
            plan_cleanup(DeletionPolicy::Delete, &[a.clone(), b.clone()], &Recorded::default()),
            Cleanup {
                steps: vec![Step::Terminate(a.id.clone()), Step::Terminate(b.id.clone())],
                release: false
            }
        );
        let going = a.clone().in_state(InstanceState::ShuttingDown);
        let wait = Cleanup {
            steps: vec![],
            release: false,
        };
        assert_eq!(
            plan_cleanup(DeletionPolicy::Delete, &[going], &Recorded::default()),
            wait
        );
        let release = Cleanup {
            steps: vec![],
            release: true,
        };
        let gone = a.in_state(InstanceState::Terminated);
        assert_eq!(
            plan_cleanup(DeletionPolicy::Delete, &[gone], &Recorded::default()),
            release
        );
        assert_eq!(plan_cleanup(DeletionPolicy::Delete, &[], &Recorded::default()), release);
    }

    #[test]
    fn retain_removes_only_operator_tags() {
        let spec = spec().with_tag("team", "a");
        let a = instance_for(&spec, InstanceState::Running);
        let cleanup = plan_cleanup(DeletionPolicy::Retain, std::slice::from_ref(&a), &Recorded::default());
        let [Step::Release { keys, .. }] = cleanup.steps.as_slice() else {
            panic!("expected one release, got {cleanup:?}")
        };
        assert!(cleanup.release);
        assert!(keys.contains(&TAG_OWNER_UID.to_string()) && keys.contains(&TAG_CLUSTER_ID.to_string()));
        assert!(!keys.contains(&"team".to_string()));
        let untagged = a.after(&cleanup.steps[0]);
        assert_eq!(
            plan_cleanup(DeletionPolicy::Retain, &[untagged], &Recorded::default()),
            Cleanup {
                steps: vec![],
                release: true
            }
        );
    }

    #[test]
    fn ready_only_when_the_instance_matches_and_nothing_is_under_way() {
        let spec = spec();
        let running = instance_for(&spec, InstanceState::Running);
        let ready = readiness(DesiredState::Running, &[], Some(&running));
        assert_eq!((ready.ready, ready.reason), (true, "InstanceRunning"));
        let tagged = [Step::Tag {
            id: ID.into(),
            set: BTreeMap::new(),
            remove: vec![],
        }];
        assert!(
            readiness(DesiredState::Running, &tagged, Some(&running)).ready,
            "a tag fix is no transition"
        );
        let stopping = running.clone().after(&Step::Stop(ID.into()));
        let modifying = readiness(DesiredState::Running, &[Step::Stop(ID.into())], Some(&stopping));
        assert_eq!((modifying.ready, modifying.reason), (false, "Modifying"));
        let stopped = running.in_state(InstanceState::Stopped);
        assert_eq!(
            readiness(DesiredState::Stopped, &[], Some(&stopped)).reason,
            "InstanceStopped"
        );
        let launching = readiness(DesiredState::Running, &[launch_of(&spec, None)], Some(&stopped));
        assert_eq!((launching.ready, launching.reason), (false, "Launching"));
        assert_eq!(readiness(DesiredState::Running, &[], None).reason, "Launching");
    }

    #[test]
    fn events_name_the_instances_and_never_the_user_data() {
        let spec = spec();
        let before = instance_for(&spec, InstanceState::Stopped);
        let step = Step::ModifyUserData {
            id: ID.into(),
            user_data: "password=hunter2".into(),
            sha256: None,
        };
        let (reason, note) = event(&step, Some(&before), None).unwrap();
        assert_eq!(reason, Reason::Modified);
        assert!(!note.contains("hunter2"), "{note}");
        let new = before.clone().with_id("i-0fffffffffffffff0");
        let (reason, note) = event(&launch_of(&spec, Some(ID)), None, Some(&new)).unwrap();
        assert_eq!(reason, Reason::Replaced);
        assert!(note.contains(ID) && note.contains("i-0fffffffffffffff0"), "{note}");
        assert_eq!(event(&Step::Wait, Some(&before), Some(&before)), None);
        let drifted = drift(true, Some(&before), std::slice::from_ref(&step)).unwrap();
        assert!(!drifted.1.contains("hunter2"), "{}", drifted.1);
        assert_eq!(drift(false, Some(&before), &[step]), None, "not steady: no drift");
    }

    #[test]
    fn drift_repairs_are_named_by_what_changed_out_of_band() {
        let spec = spec().with_tag("team", "a").with_security_groups(&["sg-11111111"]);
        let running = instance_for(&spec, InstanceState::Running);
        let repairs = |spec: &Ec2InstanceSpec, observed: &ObservedInstance| {
            drift_repairs(spec, Some(observed), &plan_for(spec, Some(observed), &["team"]))
        };
        let stopped = running.clone().in_state(InstanceState::Stopped);
        assert_eq!(repairs(&spec, &stopped), ["started"]);
        let stopping = running.clone().in_state(InstanceState::Stopping);
        assert_eq!(repairs(&spec, &stopping), ["started"], "caught stopping: started next");
        let terminated = running.clone().in_state(InstanceState::Terminated);
        assert_eq!(repairs(&spec, &terminated), ["replaced"]);
        let resized = running.clone().with_type("t3.large");
        assert_eq!(repairs(&spec, &resized), ["resized"], "stopped to be resized");
        let mut regrouped = running.clone().with_instance_tag("team", "b");
        regrouped.security_group_ids = ["sg-22222222".to_owned()].into();
        assert_eq!(repairs(&spec, &regrouped), ["retagged", "security_groups"]);
        let to_stop = spec.clone().with_desired_state(DesiredState::Stopped);
        assert_eq!(repairs(&to_stop, &running), ["stopped"], "started out of band");
        assert_eq!(repairs(&spec, &running), Vec::<&str>::new(), "no drift, no repair");
    }

    /// `updatePolicy: Replace`: a spec whose image changed from the one `old` was launched from.
    mod replace {
        use super::*;
        use crate::crd::{RootVolume, VolumeType};

        const OLD: &str = ID;
        const NEW: &str = "i-0fffffffffffffff1";
        const NEW_IMAGE: &str = "ami-0bbbbbbbbbbbbbbbb";

        /// The instance as launched before the change (ami-760aaa0f), and the spec after it.
        fn before_and_after() -> (ObservedInstance, Ec2InstanceSpec) {
            let old = instance_for(&spec(), InstanceState::Running).launched("2026-01-01T00:00:00Z");
            (old, spec().replacing_on_change().with_image(NEW_IMAGE))
        }

        /// The replacement as EC2 shows it once launched for `spec`.
        fn replacement_for(spec: &Ec2InstanceSpec, state: InstanceState) -> ObservedInstance {
            instance_for(spec, state).with_id(NEW).launched("2026-02-01T00:00:00Z")
        }

        /// Status names `OLD` (seen, an hour after its launch), and `NEW` as its replacement if given.
        fn serving_old(replacement: Option<(&str, u64)>) -> Recorded {
            Recorded {
                instance_id: Some(OLD.into()),
                seen: true,
                since_launch: Some(Duration::from_secs(3600)),
                same_generation: true,
                replacement: replacement.map(|(id, _)| Replacement {
                    instance_id: id.to_owned(),
                    launch_time: Some("2026-02-01T00:00:00Z".into()),
                }),
                replacement_since_launch: replacement.map(|(_, ago)| Duration::from_secs(ago)),
                ..Default::default()
            }
        }

        fn replacement_launch(spec: &Ec2InstanceSpec, previous: Option<&str>) -> Step {
            let owner = owner();
            Desired { spec, owner: &owner }.launch_replacing(OLD, previous)
        }

        #[test]
        fn old_running_and_no_new_one_launches_the_new_one_beside_it_with_its_own_token() {
            let (old, after) = before_and_after();
            let desired = desired_for(&after);
            let steps = plan(&desired, Some(&old), &serving_old(None));
            let [Step::LaunchReplacement { request, old: replaced }] = steps.as_slice() else {
                panic!("one replacement launch, got {steps:?}")
            };
            assert_eq!(replaced, OLD);
            assert_eq!(request.image_id, NEW_IMAGE);
            assert_eq!(request.tags.get(TAG_LAUNCH_SHA256), Some(&launch_sha256(&after)));
            assert_eq!(request.client_token, OWNER.replacement_token(OLD, None, request));
            assert_ne!(
                request.client_token,
                OWNER.client_token(None),
                "not the first launch's token"
            );
            let other_image = spec().replacing_on_change().with_image("ami-0cccccccccccccccc");
            let Step::LaunchReplacement { request: other, .. } = replacement_launch(&other_image, None) else {
                panic!("a replacement launch")
            };
            assert_ne!(
                request.client_token, other.client_token,
                "another change launches again"
            );
        }

        #[test]
        fn refuse_never_replaces_an_instance_launched_otherwise() {
            let (old, after) = before_and_after();
            let mut refused = after.clone();
            refused.update_policy = UpdatePolicy::Refuse;
            let desired = desired_for(&refused);
            assert_eq!(plan(&desired, Some(&old), &serving_old(None)), vec![]);
        }

        #[test]
        fn a_new_one_launched_moments_ago_and_not_shown_yet_is_waited_for() {
            let (old, after) = before_and_after();
            let desired = desired_for(&after);
            let waiting = serving_old(Some((NEW, 5)));
            let presumed = presumed_replacement(&desired, &waiting).expect("presumed on its way");
            assert_eq!((presumed.id.as_str(), presumed.state), (NEW, InstanceState::Pending));
            let keep = |i: &ObservedInstance| desired.may_keep(i, &waiting);
            let (chosen, extras) = choose(vec![old.clone(), presumed.clone()], Some(OLD), keep);
            assert_eq!((chosen.as_ref(), extras), (Some(&presumed), vec![old.clone()]));
            assert_eq!(
                plan(&desired, Some(&presumed), &waiting),
                vec![Step::Wait],
                "no call on it"
            );

            // Not shown ten minutes after its launch: gone; the next launch names it in its token.
            let gone = serving_old(Some((NEW, 3600)));
            assert_eq!(presumed_replacement(&desired, &gone), None);
            let steps = plan(&desired, Some(&old), &gone);
            assert_eq!(steps, vec![replacement_launch(&after, Some(NEW))]);
        }

        #[test]
        fn a_new_one_pending_is_managed_while_the_old_one_serves_and_stays() {
            let (old, after) = before_and_after();
            let desired = desired_for(&after);
            let recorded = serving_old(Some((NEW, 5)));
            let new = replacement_for(&after, InstanceState::Pending);
            let keep = |i: &ObservedInstance| desired.may_keep(i, &recorded);
            let (chosen, extras) = choose(vec![old.clone(), new.clone()], Some(OLD), keep);
            assert_eq!(chosen.as_ref(), Some(&new), "the one launched as the spec says");
            let (replaced, duplicates) = replaced_and_duplicates(&desired, extras, &recorded);
            assert_eq!((replaced.clone(), duplicates), (vec![old.clone()], vec![]));

            assert_eq!(plan(&desired, Some(&new), &recorded), vec![Step::Wait]);
            assert_eq!(retire(&desired, Some(&new), &replaced, &recorded), vec![]);
            let serving = in_service(&desired, Some(&new), &replaced, &recorded);
            assert_eq!(serving, Some(&old));
            assert_eq!(
                on_its_way(Some(&new), serving),
                Some(&new),
                "status names it as the replacement"
            );
            let readiness = replacing(&new, &old);
            assert_eq!((readiness.ready, readiness.reason), (false, "Replacing"));
            assert!(readiness.message.contains(NEW) && readiness.message.contains(OLD));
        }

        #[test]
        fn a_new_one_running_takes_over_and_the_old_one_is_terminated() {
            let (old, after) = before_and_after();
            let desired = desired_for(&after);
            let recorded = serving_old(Some((NEW, 60)));
            let new = replacement_for(&after, InstanceState::Running);
            let replaced = [old.clone()];
            let mut steps = plan(&desired, Some(&new), &recorded);
            steps.extend(retire(&desired, Some(&new), &replaced, &recorded));
            assert_eq!(steps, vec![Step::Terminate(OLD.into())]);
            let left = still_replaced(Some(&new), &replaced, &steps);
            assert!(left.is_empty(), "{left:?}");
            let serving = in_service(&desired, Some(&new), &left, &recorded);
            assert_eq!((serving, on_its_way(Some(&new), serving)), (Some(&new), None));
        }

        #[test]
        fn the_old_one_already_gone_leaves_the_new_one_alone() {
            // A crash after the old one's termination and before the status write.
            let (old, after) = before_and_after();
            let desired = desired_for(&after);
            let recorded = serving_old(Some((NEW, 60)));
            let dead = old.in_state(InstanceState::ShuttingDown);
            let new = replacement_for(&after, InstanceState::Running);
            let keep = |i: &ObservedInstance| desired.may_keep(i, &recorded);
            let (chosen, extras) = choose(vec![dead, new.clone()], Some(OLD), keep);
            assert_eq!((chosen.as_ref(), extras), (Some(&new), vec![]));
            assert_eq!(plan(&desired, Some(&new), &recorded), vec![]);
            assert_eq!(in_service(&desired, Some(&new), &[], &recorded), Some(&new));
        }

        #[test]
        fn a_crash_before_the_status_named_the_new_one_finds_it_or_repeats_the_same_launch() {
            let (old, after) = before_and_after();
            let desired = desired_for(&after);
            let unrecorded = serving_old(None);
            // EC2 shows it: found by its owner tag, chosen by its launch tag.
            let new = replacement_for(&after, InstanceState::Pending);
            let keep = |i: &ObservedInstance| desired.may_keep(i, &unrecorded);
            let (chosen, _) = choose(vec![old.clone(), new.clone()], Some(OLD), keep);
            assert_eq!(chosen, Some(new));
            // EC2 does not show it yet: the same launch, the same token, which EC2 answers with it.
            let again = plan(&desired, Some(&old), &unrecorded);
            assert_eq!(again, vec![replacement_launch(&after, None)]);
        }

        #[test]
        fn under_refuse_the_status_instance_stays_chosen_whatever_it_was_launched_from() {
            let (old, after) = before_and_after();
            let mut refused = after.clone();
            refused.update_policy = UpdatePolicy::Refuse;
            let desired = desired_for(&refused);
            let recorded = serving_old(None);
            let new = replacement_for(&after, InstanceState::Running);
            let keep = |i: &ObservedInstance| desired.may_keep(i, &recorded);
            let (chosen, extras) = choose(vec![new.clone(), old.clone()], Some(OLD), keep);
            assert_eq!(chosen, Some(old));
            let (replaced, duplicates) = replaced_and_duplicates(&desired, extras, &recorded);
            assert_eq!((replaced, duplicates), (vec![], vec![new]), "a duplicate, as before");
        }

        #[test]
        fn what_an_instance_was_launched_with_is_read_from_its_tag_then_status_then_ec2() {
            let (old, after) = before_and_after();
            let nothing = Recorded::default();
            assert!(launched_as_specified(&spec(), &old, &nothing), "its launch tag");
            assert!(!launched_as_specified(&after, &old, &nothing));
            // DescribeInstances does not show the root volume's settings: the tag does.
            let bigger = spec().replacing_on_change();
            let bigger = Ec2InstanceSpec {
                root_volume: Some(RootVolume {
                    size_gib: Some(64),
                    volume_type: Some(VolumeType::Gp3),
                    encrypted: None,
                }),
                ..bigger
            };
            assert!(!launched_as_specified(&bigger, &old, &nothing));

            // No tag (launched before it existed): what status recorded, else the shown fields.
            let untagged = old.clone().without_instance_tag(TAG_LAUNCH_SHA256);
            let recorded = Recorded {
                instance_id: Some(OLD.into()),
                launch_sha256: Some(launch_sha256(&spec())),
                ..Default::default()
            };
            assert!(!launched_as_specified(&bigger, &untagged, &recorded));
            assert!(
                launched_as_specified(&bigger, &untagged, &nothing),
                "the shown fields match"
            );
            assert!(!launched_as_specified(&after, &untagged, &nothing), "another image");
        }

        #[test]
        fn the_plan_preview_shows_the_replacement_before_and_after_its_launch() {
            let (old, after) = before_and_after();
            let desired = desired_for(&after);
            let recorded = serving_old(None);
            assert_eq!(
                preview(&desired, Some(&old), &[], &recorded).as_deref(),
                Some("launch t3.micro from ami-0bbbbbbbbbbbbbbbb → terminate i-0123456789abcdef0 once it runs")
            );
            let new = replacement_for(&after, InstanceState::Pending);
            assert_eq!(
                preview(&desired, Some(&new), std::slice::from_ref(&old), &recorded).as_deref(),
                Some("terminate i-0123456789abcdef0 once i-0fffffffffffffff1 runs")
            );
        }

        #[test]
        fn the_old_one_is_retired_only_after_a_launch_beside_it() {
            let (old, after) = before_and_after();
            let launch = replacement_launch(&after, None);
            let left = still_replaced(Some(&old), &[], std::slice::from_ref(&launch));
            assert_eq!(left, vec![old.clone()]);
            assert_eq!(still_replaced(Some(&old), &[], &[Step::Wait]), vec![]);
        }

        #[test]
        fn a_replacement_that_died_at_launch_fails_the_object_and_the_old_one_serves_on() {
            let (_, after) = before_and_after();
            let recorded = serving_old(Some((NEW, 60)));
            let mut died = replacement_for(&after, InstanceState::Terminated);
            died.state_reason = Some("Client.InternalError: Client error on launch".into());
            assert_eq!(
                replacement_failure(Some(&died), &recorded),
                Some((NEW.into(), "Client.InternalError: Client error on launch".into()))
            );
            let spec_changed = Recorded {
                same_generation: false,
                ..recorded.clone()
            };
            assert_eq!(replacement_failure(Some(&died), &spec_changed), None);
            let mut terminated = died.clone();
            terminated.state_reason = Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
            assert_eq!(
                replacement_failure(Some(&terminated), &recorded),
                None,
                "launched again"
            );
        }

        #[test]
        fn deleting_during_a_replacement_terminates_a_new_one_ec2_does_not_show_yet() {
            let (old, _) = before_and_after();
            let recorded = serving_old(Some((NEW, 1)));
            let cleanup = plan_cleanup(DeletionPolicy::Delete, std::slice::from_ref(&old), &recorded);
            assert_eq!(
                cleanup,
                Cleanup {
                    steps: vec![Step::Terminate(OLD.into()), Step::Terminate(NEW.into())],
                    release: false,
                }
            );
        }

        #[test]
        fn the_launch_event_names_the_old_and_the_new_instance_and_what_changed() {
            let (old, after) = before_and_after();
            let new = replacement_for(&after, InstanceState::Pending);
            let (reason, note) = event(&replacement_launch(&after, None), Some(&old), Some(&new)).unwrap();
            assert_eq!(reason, Reason::Launched);
            assert!(!reason.is_warning());
            assert_eq!(
                note,
                "replacing instance i-0123456789abcdef0 (imageId ami-760aaa0f→ami-0bbbbbbbbbbbbbbbb): launched \
                 i-0fffffffffffffff1; i-0123456789abcdef0 serves until i-0fffffffffffffff1 runs, then it is terminated"
            );
        }
    }

    // --- fields changed in place, while stopped, or at launch only (issue 12) ---------------

    fn modify(change: Change) -> Step {
        Step::Modify { id: ID.into(), change }
    }

    #[test]
    fn fields_ec2_changes_in_place_are_modified_without_a_stop() {
        use crate::crd::{HttpTokens, MetadataOptions};
        let wanted = spec()
            .setting(|s| s.monitoring = Some(Monitoring::Detailed))
            .setting(|s| s.source_dest_check = Some(false))
            .setting(|s| {
                s.metadata_options = Some(Box::new(MetadataOptions {
                    http_tokens: Some(HttpTokens::Optional),
                    http_put_response_hop_limit: Some(2),
                    ..Default::default()
                }))
            });
        for (state, want) in [
            (InstanceState::Running, DesiredState::Running),
            (InstanceState::Stopped, DesiredState::Stopped),
        ] {
            let wanted = wanted.clone().with_desired_state(want);
            let launched_plain = instance_for(&spec(), state);
            let steps = plan_for(&wanted, Some(&launched_plain), &[]);
            let metadata = MetadataInForce {
                http_tokens: Some("optional"),
                hop_limit: Some(2),
                ..Default::default()
            };
            assert_eq!(
                steps,
                vec![
                    modify(Change::MetadataOptions(metadata)),
                    modify(Change::Monitoring(true)),
                    modify(Change::SourceDestCheck(false)),
                ],
                "{state:?}: no stop, no start"
            );
            let done = steps.iter().fold(launched_plain, |i, step| i.after(step));
            assert_eq!(plan_for(&wanted, Some(&done), &[]), vec![], "{state:?}: settled");
        }
        let back = spec().setting(|s| s.monitoring = Some(Monitoring::Basic));
        let detailed = instance_for(&spec(), InstanceState::Running).with_details(|d| d.monitoring = Some("pending"));
        assert_eq!(
            plan_for(&back, Some(&detailed), &[]),
            vec![modify(Change::Monitoring(false))]
        );
        assert_eq!(
            plan_for(&spec(), Some(&detailed), &[]),
            vec![],
            "monitoring left out: left alone"
        );
    }

    #[test]
    fn the_preview_of_an_in_place_change_invents_no_change_of_attributes_it_did_not_read() {
        let wanted = spec()
            .setting(|s| s.monitoring = Some(Monitoring::Detailed))
            .setting(|s| s.termination_protection = Some(true));
        let unread = instance_for(&spec(), InstanceState::Running);
        assert_eq!(
            preview_for(&wanted, Some(&unread), &[]).as_deref(),
            Some("set monitoring Detailed")
        );
    }

    #[test]
    fn ebs_optimization_changes_on_a_stopped_instance_like_the_type() {
        let optimized = spec().setting(|s| s.ebs_optimized = Some(true));
        let running = instance_for(&spec(), InstanceState::Running);
        assert_eq!(plan_for(&optimized, Some(&running), &[]), vec![Step::Stop(ID.into())]);
        let stopped = running.in_state(InstanceState::Stopped);
        assert_eq!(
            plan_for(&optimized, Some(&stopped), &[]),
            vec![modify(Change::EbsOptimized(true)), Step::Start(ID.into())]
        );
    }

    #[test]
    fn hidden_attributes_are_read_only_when_the_spec_sets_them_and_status_has_not_verified_them() {
        let now: jiff::Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let every = Duration::from_secs(1800);
        let running = instance_for(&spec(), InstanceState::Running);
        assert_eq!(
            desired_for(&spec()).hidden_to_read(Some(&running), None, now, every),
            None,
            "nothing hidden in the spec: no call"
        );
        let protected = spec().setting(|s| s.termination_protection = Some(true));
        let desired = desired_for(&protected);
        let wanted = desired.hidden_to_read(Some(&running), None, now, every).unwrap();
        assert!(wanted.termination_protection && !wanted.stop_protection && !wanted.root_volume_size);
        let verified = |sha256: String, at: &str| VerifiedAttributes {
            sha256,
            verified_at: at.into(),
        };
        let just_now = verified(desired.hidden_sha256(ID), "2026-11-27T09:50:00Z");
        assert_eq!(
            desired.hidden_to_read(Some(&running), Some(&just_now), now, every),
            None
        );
        let long_ago = verified(desired.hidden_sha256(ID), "2026-11-27T09:00:00Z");
        assert!(
            desired
                .hidden_to_read(Some(&running), Some(&long_ago), now, every)
                .is_some()
        );
        let other_instance = verified(desired.hidden_sha256("i-0fffffffffffffff0"), "2026-11-27T09:50:00Z");
        assert!(
            desired
                .hidden_to_read(Some(&running), Some(&other_instance), now, every)
                .is_some()
        );
        let changed = desired_for(&spec().setting(|s| s.termination_protection = Some(false))).hidden_to_read(
            Some(&running),
            Some(&just_now),
            now,
            every,
        );
        assert!(changed.is_some(), "a new value is verified at once");
        let pending = running.in_state(InstanceState::Pending);
        assert_eq!(
            desired.hidden_to_read(Some(&pending), None, now, every),
            None,
            "read once settled"
        );
    }

    #[test]
    fn hidden_attributes_that_differ_are_set_and_the_root_volume_only_grows() {
        let wanted = spec()
            .with_root_size(30)
            .setting(|s| s.termination_protection = Some(true))
            .setting(|s| s.stop_protection = Some(false))
            .setting(|s| s.shutdown_behavior = Some(crate::crd::ShutdownBehavior::Terminate))
            .setting(|s| s.credit_specification = Some(crate::crd::CreditSpecification::Standard));
        let read = Hidden {
            termination_protection: Some(false),
            stop_protection: Some(false),
            shutdown_behavior: Some("stop".into()),
            credit_specification: Some("unlimited".into()),
            root_volume: Some(("vol-0123456789abcdef0".into(), 8)),
        };
        let running = instance_for(&wanted, InstanceState::Running).with_hidden(read.clone());
        let steps = plan_for(&wanted, Some(&running), &[]);
        assert_eq!(
            steps,
            vec![
                modify(Change::TerminationProtection(true)),
                modify(Change::ShutdownBehavior("terminate".into())),
                modify(Change::CreditSpecification("standard".into())),
                modify(Change::RootVolumeSize {
                    volume_id: "vol-0123456789abcdef0".into(),
                    size_gib: 30
                }),
            ]
        );
        let done = steps.iter().fold(running, |i, step| i.after(step));
        assert_eq!(plan_for(&wanted, Some(&done), &[]), vec![]);
        let bigger = Hidden {
            root_volume: Some(("vol-0123456789abcdef0".into(), 50)),
            ..read
        };
        let grown = instance_for(&spec().with_root_size(30), InstanceState::Running).with_hidden(bigger);
        assert_eq!(
            plan_for(&spec().with_root_size(30), Some(&grown), &[]),
            vec![],
            "a volume already bigger is never shrunk"
        );
        let unread = instance_for(&wanted, InstanceState::Running);
        assert_eq!(
            plan_for(&wanted, Some(&unread), &[]),
            vec![],
            "not read this time: no guess"
        );
    }

    #[test]
    fn the_instance_profile_is_associated_replaced_and_disassociated_only_if_the_spec_had_it() {
        let running = instance_for(&spec(), InstanceState::Running);
        let with_web = spec().with_profile("web");
        assert_eq!(
            plan_for(&with_web, Some(&running), &[]),
            vec![modify(Change::IamInstanceProfile(Some("web".into())))]
        );
        let has_web = instance_for(&with_web, InstanceState::Running);
        assert_eq!(
            plan_for(&with_web, Some(&has_web), &[]),
            vec![],
            "the ARN ends in the name"
        );
        let by_arn = spec().with_profile("arn:aws:iam::000000000000:instance-profile/web");
        assert_eq!(plan_for(&by_arn, Some(&has_web), &[]), vec![]);
        assert_eq!(
            plan_for(&spec().with_profile("api"), Some(&has_web), &[]),
            vec![modify(Change::IamInstanceProfile(Some("api".into())))]
        );
        let applied_before = Recorded {
            applied_iam_instance_profile: Some("web".into()),
            ..Default::default()
        };
        let without = spec();
        let desired = desired_for(&without);
        assert_eq!(
            plan(&desired, Some(&has_web), &applied_before),
            vec![modify(Change::IamInstanceProfile(None))]
        );
        assert_eq!(
            plan(&desired, Some(&has_web), &Recorded::default()),
            vec![],
            "a profile the spec never set (a launch template's, someone else's) stays"
        );
    }

    #[test]
    fn before_a_termination_the_specs_own_protection_goes_off_and_a_spot_request_is_cancelled() {
        let spot =
            instance_for(&spec(), InstanceState::Running).with_details(|d| d.spot_request_id = Some("sir-1".into()));
        let steps = vec![Step::Terminate(ID.into())];
        assert_eq!(
            before_terminating(&spec(), steps.clone(), [&spot]),
            vec![
                modify(Change::CancelSpotRequest("sir-1".into())),
                Step::Terminate(ID.into())
            ]
        );
        let protected = spec().setting(|s| s.termination_protection = Some(true));
        let on_demand = instance_for(&spec(), InstanceState::Running);
        assert_eq!(
            before_terminating(&protected, steps.clone(), [&on_demand]),
            vec![modify(Change::TerminationProtection(false)), Step::Terminate(ID.into())]
        );
        assert_eq!(before_terminating(&spec(), steps.clone(), [&on_demand]), steps);
    }

    #[test]
    fn an_interrupted_spot_instance_is_replaced_with_a_spot_warning_and_a_stopped_one_left_to_ec2() {
        let spot_spec = spec().setting(|s| s.spot = Some(Default::default()));
        let interrupted = instance_for(&spot_spec, InstanceState::Terminated)
            .with_state_reason("Server.SpotInstanceTermination: Spot instance termination");
        let steps = plan_for(&spot_spec, Some(&interrupted), &[]);
        assert_eq!(steps, vec![launch_of(&spot_spec, Some(ID))]);
        let new = instance_for(&spot_spec, InstanceState::Pending).with_id("i-0aaaaaaaaaaaaaaa1");
        let (reason, note) = event(&steps[0], Some(&interrupted), Some(&new)).unwrap();
        assert_eq!(reason, Reason::SpotInterrupted);
        assert!(
            reason.is_warning() && note.contains(ID) && note.contains("i-0aaaaaaaaaaaaaaa1"),
            "{note}"
        );
        assert_eq!(
            replacements(&Recorded::default(), &steps, false),
            1,
            "counted as a replacement: the same backoff"
        );
        let stopped_by_ec2 = instance_for(&spot_spec, InstanceState::Stopped)
            .with_state_reason("Server.SpotInstanceShutdown: Spot instance shutdown");
        assert_eq!(plan_for(&spot_spec, Some(&stopped_by_ec2), &[]), vec![Step::Wait]);
    }

    #[test]
    fn a_launch_carries_the_launch_only_fields_and_the_initial_live_ones() {
        use crate::crd::{NetworkInterface, Placement, Tenancy};
        let full = spec()
            .setting(|s| s.spot = Some(Box::default()))
            .setting(|s| {
                s.placement = Some(Box::new(Placement {
                    tenancy: Some(Tenancy::Dedicated),
                    ..Default::default()
                }))
            })
            .setting(|s| {
                s.network_interface = Some(Box::new(NetworkInterface {
                    associate_public_ip: Some(true),
                    ..Default::default()
                }))
            })
            .setting(|s| s.monitoring = Some(Monitoring::Detailed))
            .setting(|s| s.hibernation = Some(false));
        let Step::Launch { request, .. } = launch_of(&full, None) else {
            panic!("a launch")
        };
        let o = &request.options;
        assert_eq!(o.spot, full.spot);
        assert_eq!(o.placement, full.placement);
        assert_eq!(o.network_interface, full.network_interface);
        assert_eq!((o.monitoring, o.hibernation), (Some(Monitoring::Detailed), Some(false)));
    }

    #[test]
    fn the_launch_hash_is_unchanged_for_specs_without_launch_only_fields_and_old_hashes_still_count() {
        // The hash operators before issue 12 tagged instances with, for this spec.
        let plain = spec();
        assert_eq!(launch_sha256(&plain), legacy_launch_sha256(&plain));
        let with_launch_only = spec().setting(|s| s.enclave = Some(true));
        assert_ne!(launch_sha256(&with_launch_only), launch_sha256(&plain));
        let with_profile = spec().with_profile("web").with_root_size(20);
        assert_eq!(
            launch_sha256(&with_profile),
            launch_sha256(&spec().with_profile("api").with_root_size(30)),
            "the profile and the root size change in place: no replacement"
        );
        let tagged_before = instance_for(&with_profile, InstanceState::Running)
            .with_instance_tag(TAG_LAUNCH_SHA256, &legacy_launch_sha256(&with_profile));
        assert!(launched_as_specified(
            &with_profile.clone().replacing_on_change(),
            &tagged_before,
            &Recorded::default()
        ));
        let retag = tag_changes(&desired_for(&with_profile), &tagged_before, &Recorded::default()).unwrap();
        assert_eq!(
            retag,
            Step::Tag {
                id: ID.into(),
                set: BTreeMap::from([(TAG_LAUNCH_SHA256.into(), launch_sha256(&with_profile))]),
                remove: vec![],
            }
        );
    }

    #[test]
    fn an_image_from_an_ssm_parameter_is_not_compared_with_the_ami_it_resolved_to() {
        let resolved = spec().with_image("resolve:ssm:/k106/test/ami");
        let running = instance_for(&spec(), InstanceState::Running);
        assert!(shown_fields_differing(&resolved, &running).is_empty());
        assert_eq!(
            plan_for(&resolved.clone().replacing_on_change(), Some(&running), &[]).len(),
            1,
            "the launch hash still differs: the spec changed"
        );
    }
}
