//! Status: computed from what was observed (pure), written by server-side apply with one field
//! manager, and only when it changed.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams, ResourceExt};

use crate::crd::{AttachedVolume, Ec2Instance, Ec2InstanceStatus, MetadataOptionsInForce, Replacement, UpdatePolicy};
use crate::decide::{self, DRIFTED, PAUSED, READY, Readiness, STALLED};
use crate::error::Result;
use crate::model::{ObservedInstance, TAG_LAUNCH_SHA256, TAG_USER_DATA_SHA256};

pub const FIELD_MANAGER: &str = "ec2-operator";
/// kstatus: present (True) while the operator is still bringing the instance to the spec.
pub const RECONCILING: &str = "Reconciling";
/// The Ready reason of a terminal failure.
pub const FAILED: &str = "Failed";

/// The status to write: the observed instance's facts, the Ready condition, and the tag keys
/// applied. Keeps the condition's `lastTransitionTime` unless its value flips.
pub fn next_status(
    obj: &Ec2Instance,
    observed: Option<&ObservedInstance>,
    applied_tag_keys: Vec<String>,
    readiness: Readiness,
    now: jiff::Timestamp,
) -> Ec2InstanceStatus {
    let previous = obj.status.clone().unwrap_or_default();
    // kstatus (Flux, kpt, Argo CD's generic checks): Ready, plus Reconciling while work is under
    // way and Stalled on a terminal failure; each is present only while True.
    let stalled = readiness.reason == FAILED;
    // Paused or observe-only, nothing is under way.
    let hands_off = [PAUSED, DRIFTED].contains(&readiness.reason);
    let mut conditions = vec![condition(obj, &previous, READY, readiness.ready, &readiness, now)];
    if !readiness.ready && !stalled && !hands_off {
        conditions.push(condition(obj, &previous, RECONCILING, true, &readiness, now));
    }
    if stalled {
        conditions.push(condition(obj, &previous, STALLED, true, &readiness, now));
    }
    let mut status = match observed {
        Some(i) => Ec2InstanceStatus {
            instance_id: Some(i.id.clone()),
            state: Some(i.state.as_str().into()),
            instance_type: Some(i.instance_type.clone()).filter(|t| !t.is_empty()),
            private_ip: i.private_ip.clone(),
            public_ip: i.public_ip.clone(),
            private_dns_name: i.private_dns_name.clone(),
            public_dns_name: i.public_dns_name.clone(),
            availability_zone: i.availability_zone.clone(),
            launch_time: i.launch_time.clone(),
            // A missing tag (deleted out of band) does not erase what was last known.
            user_data_sha256: i
                .tags
                .get(TAG_USER_DATA_SHA256)
                .cloned()
                .or_else(|| previous.user_data_sha256.clone()),
            launch_sha256: launch_sha256(obj, &previous, i),
            image_id: i.image_id.clone(),
            subnet_id: i.subnet_id.clone(),
            security_group_ids: i.security_group_ids.iter().cloned().collect(),
            lifecycle: Some(i.details.lifecycle.unwrap_or("on-demand").to_owned()),
            spot_instance_request_id: i.details.spot_request_id.clone(),
            network_interface_id: i.details.network_interface_id.clone(),
            volumes: volumes(i),
            metadata_options: i.details.metadata.as_ref().map(|m| {
                Box::new(MetadataOptionsInForce {
                    http_tokens: m.http_tokens.map(str::to_owned),
                    http_put_response_hop_limit: m.hop_limit,
                    http_endpoint: m.http_endpoint.map(str::to_owned),
                    instance_metadata_tags: m.instance_tags.map(str::to_owned),
                    state: m.state.map(str::to_owned),
                })
            }),
            monitoring: i.details.monitoring.map(str::to_owned),
            iam_instance_profile_arn: i.details.iam_profile_arn.clone(),
            ebs_optimized: i.details.ebs_optimized,
            source_dest_check: i.details.source_dest_check,
            // Verified attributes belong to the instance they were verified on.
            attributes: previous
                .attributes
                .clone()
                .filter(|_| previous.instance_id.as_deref() == Some(i.id.as_str())),
            ..Default::default()
        },
        // Nothing observed this time (e.g. EC2 failed): keep the last known facts.
        None => previous.clone(),
    };
    status.replacements = previous.replacements;
    status.duplicates = previous.duplicates.clone();
    status.duplicates_since = previous.duplicates_since.clone();
    status.region = previous.region.clone();
    status.cluster_id = previous.cluster_id.clone();
    status.observed_generation = obj.metadata.generation;
    status.applied_tag_keys = applied_tag_keys;
    status.applied_iam_instance_profile = previous.applied_iam_instance_profile.clone();
    status.conditions = conditions;
    status
}

/// The attached volumes, the root volume first.
fn volumes(instance: &ObservedInstance) -> Vec<AttachedVolume> {
    let root = instance.details.root_device_name.as_deref();
    let mut volumes: Vec<AttachedVolume> = instance
        .details
        .volumes
        .iter()
        .map(|(device, id)| AttachedVolume {
            device_name: device.clone(),
            volume_id: id.clone(),
        })
        .collect();
    volumes.sort_by_key(|v| Some(v.device_name.as_str()) != root);
    volumes
}

/// The launch hash of `instance`: its tag, else what status last saw of it, else (launched before
/// the tag existed, or adopted) the spec's if `updatePolicy: Refuse`, which never let those fields
/// change. Kept so that a later `Replace` knows what the instance was launched with.
fn launch_sha256(obj: &Ec2Instance, previous: &Ec2InstanceStatus, instance: &ObservedInstance) -> Option<String> {
    let same_instance = previous.instance_id.as_deref() == Some(instance.id.as_str());
    instance
        .tags
        .get(TAG_LAUNCH_SHA256)
        .cloned()
        .or_else(|| previous.launch_sha256.clone().filter(|_| same_instance))
        .or_else(|| (obj.spec.update_policy == UpdatePolicy::Refuse).then(|| decide::launch_sha256(&obj.spec)))
}

/// What status records of a replacement on its way (`updatePolicy: Replace`).
pub fn replacement(new: &ObservedInstance) -> Replacement {
    Replacement {
        instance_id: new.id.clone(),
        launch_time: new.launch_time.clone(),
    }
}

/// How long the object took to become Ready, when `next` turns its Ready condition True: since
/// the condition last turned False, or since the object's creation if it had none.
pub fn became_ready(obj: &Ec2Instance, next: &Ec2InstanceStatus, now: jiff::Timestamp) -> Option<Duration> {
    next.condition(READY).filter(|c| c.status == "True")?;
    let since = match obj.status.as_ref().and_then(|s| s.condition(READY)) {
        Some(previous) if previous.status == "True" => return None,
        Some(previous) => previous.last_transition_time.0,
        None => obj.metadata.creation_timestamp.as_ref()?.0,
    };
    // A clock that went back counts as no time rather than losing the transition.
    Some(Duration::try_from(now.duration_since(since)).unwrap_or_default())
}

/// One condition; its `lastTransitionTime` moves only when its value flips.
fn condition(
    obj: &Ec2Instance,
    previous: &Ec2InstanceStatus,
    type_: &str,
    value: bool,
    readiness: &Readiness,
    now: jiff::Timestamp,
) -> Condition {
    let status = if value { "True" } else { "False" };
    let last_transition_time = previous
        .condition(type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: readiness.reason.into(),
        message: readiness.message.clone(),
        observed_generation: obj.metadata.generation,
        last_transition_time,
    }
}

/// Write `status` if it differs from the object's; server-side apply, one field manager.
pub async fn write(api: &Api<Ec2Instance>, obj: &Ec2Instance, status: Ec2InstanceStatus) -> Result<bool> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": "k106.com/v1alpha1",
        "kind": "Ec2Instance",
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::model::InstanceState;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn status_carries_the_observed_facts_and_a_ready_condition() {
        let obj = Ec2Instance::test();
        let running = instance_for(&obj.spec, InstanceState::Running);
        let status = next_status(
            &obj,
            Some(&running),
            vec!["team".into()],
            Readiness::ready("InstanceRunning", "running"),
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(status.instance_id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(status.state.as_deref(), Some("running"));
        assert_eq!(status.private_ip.as_deref(), Some("10.0.0.10"));
        assert_eq!(status.observed_generation, Some(1));
        let ready = status.condition(READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "InstanceRunning")
        );
        assert_eq!(ready.observed_generation, Some(1));
    }

    #[test]
    fn transition_time_moves_only_when_the_value_flips() {
        let obj = Ec2Instance::test();
        let running = instance_for(&obj.spec, InstanceState::Running);
        let first = next_status(
            &obj,
            Some(&running),
            vec![],
            Readiness::not_ready("Launching", "x"),
            at("2026-01-01T00:00:00Z"),
        );
        let obj = obj.with_status(first);
        let second = next_status(
            &obj,
            Some(&running),
            vec![],
            Readiness::not_ready("Starting", "y"),
            at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(
            second.condition(READY).unwrap().last_transition_time.0,
            at("2026-01-01T00:00:00Z")
        );
        let obj = obj.with_status(second);
        let third = next_status(
            &obj,
            Some(&running),
            vec![],
            Readiness::ready("InstanceRunning", "z"),
            at("2026-01-01T00:02:00Z"),
        );
        assert_eq!(
            third.condition(READY).unwrap().last_transition_time.0,
            at("2026-01-01T00:02:00Z")
        );
    }

    #[test]
    fn a_failed_observation_keeps_the_last_known_facts() {
        let obj = Ec2Instance::test();
        let running = instance_for(&obj.spec, InstanceState::Running);
        let known = next_status(
            &obj,
            Some(&running),
            vec![],
            Readiness::ready("InstanceRunning", ""),
            at("2026-01-01T00:00:00Z"),
        );
        let obj = obj.with_status(known);
        let failed = next_status(
            &obj,
            None,
            vec![],
            Readiness::not_ready("Retrying", "throttled"),
            at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(failed.instance_id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(failed.condition(READY).unwrap().status, "False");
    }

    #[test]
    fn time_to_ready_runs_from_creation_or_from_turning_not_ready_and_is_taken_once() {
        let mut obj = Ec2Instance::test();
        obj.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
        let running = instance_for(&obj.spec, InstanceState::Running);
        let ready_at = |obj: &Ec2Instance, now| {
            let status = next_status(
                obj,
                Some(&running),
                vec![],
                Readiness::ready("InstanceRunning", ""),
                now,
            );
            (became_ready(obj, &status, now), status)
        };
        let (took, _) = ready_at(&obj, at("2026-01-01T00:00:40Z"));
        assert_eq!(took, Some(Duration::from_secs(40)), "no status yet: from creation");

        let starting = next_status(
            &obj,
            Some(&running),
            vec![],
            Readiness::not_ready("Starting", ""),
            at("2026-01-01T01:00:00Z"),
        );
        let obj = obj.with_status(starting);
        let (took, ready) = ready_at(&obj, at("2026-01-01T01:00:25Z"));
        assert_eq!(took, Some(Duration::from_secs(25)), "from turning False");

        let obj = obj.with_status(ready);
        assert_eq!(ready_at(&obj, at("2026-01-01T02:00:00Z")).0, None, "already Ready");
        let not_ready = next_status(
            &obj,
            None,
            vec![],
            Readiness::not_ready("Retrying", ""),
            at("2026-01-01T02:00:00Z"),
        );
        assert_eq!(became_ready(&obj, &not_ready, at("2026-01-01T02:00:00Z")), None);
    }

    #[test]
    fn the_launch_hash_follows_the_tag_else_what_was_seen_else_a_spec_that_never_changed() {
        let obj = Ec2Instance::test();
        let now = at("2026-01-01T00:00:00Z");
        let ready = || Readiness::ready("InstanceRunning", "");
        let tagged = instance_for(&obj.spec, InstanceState::Running);
        let hash = decide::launch_sha256(&obj.spec);
        let status = next_status(&obj, Some(&tagged), vec![], ready(), now);
        assert_eq!(status.launch_sha256.as_deref(), Some(hash.as_str()));

        // Launched before the tag existed: under Refuse the spec's fields are the launch's.
        let old = tagged.clone().without_instance_tag(TAG_LAUNCH_SHA256);
        let status = next_status(&obj, Some(&old), vec![], ready(), now);
        assert_eq!(status.launch_sha256.as_deref(), Some(hash.as_str()));

        // Under Replace the spec may have changed since: what was seen is kept, nothing made up.
        let seen = obj
            .clone()
            .with_status(status)
            .replacing_on_change()
            .with_image("ami-0bbbbbbbbbbbbbbbb");
        let status = next_status(&seen, Some(&old), vec![], ready(), now);
        assert_eq!(
            status.launch_sha256.as_deref(),
            Some(hash.as_str()),
            "the same instance"
        );
        let other = old.clone().with_id("i-0ffffffffffffffff");
        assert_eq!(
            next_status(&seen, Some(&other), vec![], ready(), now).launch_sha256,
            None
        );
    }

    #[test]
    fn kstatus_sees_work_under_way_and_terminal_failures() {
        let obj = Ec2Instance::test();
        let types =
            |status: &Ec2InstanceStatus| -> Vec<String> { status.conditions.iter().map(|c| c.type_.clone()).collect() };
        let now = at("2026-01-01T00:00:00Z");
        let launching = next_status(&obj, None, vec![], Readiness::not_ready("Launching", "x"), now);
        assert_eq!(types(&launching), ["Ready", "Reconciling"]);
        let failed = next_status(&obj, None, vec![], Readiness::not_ready(FAILED, "bad AMI"), now);
        assert_eq!(types(&failed), ["Ready", "Stalled"]);
        assert_eq!(failed.condition(STALLED).unwrap().message, "bad AMI");
        let running = instance_for(&obj.spec, InstanceState::Running);
        let ready = next_status(
            &obj,
            Some(&running),
            vec![],
            Readiness::ready("InstanceRunning", "y"),
            now,
        );
        assert_eq!(types(&ready), ["Ready"]);
    }
}
