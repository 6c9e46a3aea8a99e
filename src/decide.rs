//! The decisions: what to do, given what the spec asks for and what EC2 shows. Pure functions,
//! no I/O: every branch is unit-tested below. The I/O shell (`reconcile.rs`) carries them out.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::crd::{DeletionPolicy, DesiredState, Ec2InstanceSpec, TAG_PREFIX};
use crate::ec2::{InstanceState, LaunchRequest, ObservedInstance, RootVolumeRequest};

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
}

pub fn user_data_sha256(user_data: &str) -> String {
    Sha256::digest(user_data.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One step towards the spec. A plan is an ordered list of these.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// No live instance: launch one. `replaces` names the instance that vanished, if any.
    /// Always the only step of its plan, so the status write that follows records the new id.
    Launch {
        replaces: Option<String>,
    },
    /// The instance is between states; look again soon.
    Wait,
    Start,
    Stop,
    ModifyInstanceType(String),
    /// Replace the user data (empty clears it) and record its hash in a tag (None removes it).
    ModifyUserData {
        user_data: String,
        sha256: Option<String>,
    },
    SetSecurityGroups(Vec<String>),
    Tag {
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
}

impl Action {
    /// Actions after which the instance changes state; the object is requeued quickly.
    pub fn starts_transition(&self) -> bool {
        matches!(
            self,
            Action::Launch { .. } | Action::Wait | Action::Start | Action::Stop
        )
    }
}

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
        tags
    }

    pub fn launch_request(&self, replaces: Option<&str>) -> LaunchRequest {
        let spec = self.spec;
        LaunchRequest {
            client_token: self.owner.client_token(replaces),
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
        }
    }
}

/// The ordered steps that bring `observed` to the spec. Empty means in sync.
///
/// `previous` is the instance the status last named; `applied_tag_keys` are the spec tag keys
/// the operator applied before (from status), so keys dropped from the spec get removed.
pub fn plan(
    desired: &Desired,
    observed: Option<&ObservedInstance>,
    previous: Option<&str>,
    applied_tag_keys: &[String],
) -> Vec<Action> {
    let instance = match observed {
        Some(instance) if !instance.state.is_dead() => instance,
        // Gone or terminated out of band: replace it, as a ReplicaSet replaces a deleted pod.
        Some(dead) => {
            return vec![Action::Launch {
                replaces: Some(dead.id.clone()),
            }];
        }
        None => {
            return vec![Action::Launch {
                replaces: previous.map(str::to_owned),
            }];
        }
    };

    let mut actions = Vec::new();
    if let Some(tagging) = tag_changes(desired, instance, applied_tag_keys) {
        actions.push(tagging);
    }
    let settled = match instance.state {
        InstanceState::Running | InstanceState::Stopped => instance.state,
        _ => {
            actions.push(Action::Wait);
            return actions;
        }
    };

    if let Some(groups) = &desired.spec.security_group_ids {
        let wanted: BTreeSet<&String> = groups.iter().collect();
        if wanted != instance.security_group_ids.iter().collect() {
            actions.push(Action::SetSecurityGroups(groups.clone()));
        }
    }

    let wrong_type = instance.instance_type != desired.spec.instance_type;
    let wanted_hash = desired.user_data_sha256();
    let wrong_user_data = instance.tags.get(TAG_USER_DATA_SHA256) != wanted_hash.as_ref();
    let want_running = desired.spec.desired_state == DesiredState::Running;

    if wrong_type || wrong_user_data {
        // EC2 changes type and user data only on a stopped instance: stop, modify, start.
        if settled == InstanceState::Running {
            actions.push(Action::Stop);
            return actions;
        }
        if wrong_type {
            actions.push(Action::ModifyInstanceType(desired.spec.instance_type.clone()));
        }
        if wrong_user_data {
            actions.push(Action::ModifyUserData {
                user_data: desired.spec.user_data.clone().unwrap_or_default(),
                sha256: wanted_hash,
            });
        }
        if want_running {
            actions.push(Action::Start);
        }
        return actions;
    }

    match (settled, want_running) {
        (InstanceState::Stopped, true) => actions.push(Action::Start),
        (InstanceState::Running, false) => actions.push(Action::Stop),
        _ => {}
    }
    actions
}

/// Tags to add or correct (spec and operator tags) and spec keys to remove.
fn tag_changes(desired: &Desired, instance: &ObservedInstance, applied_tag_keys: &[String]) -> Option<Action> {
    let mut wanted = desired.user_tags();
    wanted.extend(desired.owner.tags());
    let set: BTreeMap<String, String> = wanted
        .iter()
        .filter(|(k, v)| instance.tags.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove: Vec<String> = applied_tag_keys
        .iter()
        .filter(|k| !wanted.contains_key(*k) && instance.tags.contains_key(*k))
        .cloned()
        .collect();
    (!set.is_empty() || !remove.is_empty()).then_some(Action::Tag { set, remove })
}

/// The spec tag keys to remember as applied once a plan has run.
pub fn applied_tag_keys(spec: &Ec2InstanceSpec) -> Vec<String> {
    spec.tags.iter().flat_map(|t| t.keys().cloned()).collect()
}

/// Of the instances found for one owner, the one to manage: the status's own if still alive,
/// else the oldest live one, else the status's dead one, else the newest dead one (so that it
/// is replaced). Returns the
/// chosen instance and any other live ones (duplicates only a lenient EC2 would let through).
pub fn choose(
    mut found: Vec<ObservedInstance>,
    status_id: Option<&str>,
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
        (i.state.is_dead(), Some(i.id.as_str()) != status_id, order, i.id.clone())
    });
    let mut found = found.into_iter();
    let chosen = found.next();
    let extras = found.filter(|i| !i.state.is_dead()).collect();
    (chosen, extras)
}

/// What deleting the object does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Cleanup {
    /// Nothing of ours is left alive (or it is retained and released): drop the finalizer.
    Release,
    /// Terminate these instances, then look again.
    Terminate(Vec<String>),
    /// Termination under way; look again soon.
    Wait,
    /// `Retain`: remove the operator's tags from these instances, then drop the finalizer.
    Untag(Vec<(String, Vec<String>)>),
}

/// `owned` are all instances found by status id or owner tag.
pub fn plan_cleanup(policy: DeletionPolicy, owned: &[ObservedInstance]) -> Cleanup {
    let live: Vec<&ObservedInstance> = owned.iter().filter(|i| !i.state.is_dead()).collect();
    match policy {
        DeletionPolicy::Delete if !live.is_empty() => Cleanup::Terminate(live.iter().map(|i| i.id.clone()).collect()),
        DeletionPolicy::Delete if owned.iter().any(|i| i.state == InstanceState::ShuttingDown) => Cleanup::Wait,
        DeletionPolicy::Delete => Cleanup::Release,
        DeletionPolicy::Retain => {
            let untag: Vec<(String, Vec<String>)> = live
                .iter()
                .map(|i| {
                    (
                        i.id.clone(),
                        i.tags
                            .keys()
                            .filter(|k| k.starts_with(TAG_PREFIX))
                            .cloned()
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, keys)| !keys.is_empty())
                .collect();
            if untag.is_empty() {
                Cleanup::Release
            } else {
                Cleanup::Untag(untag)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    fn plan_for(spec: &Ec2InstanceSpec, observed: Option<&ObservedInstance>, applied: &[&str]) -> Vec<Action> {
        let owner = owner();
        let applied: Vec<String> = applied.iter().map(|s| s.to_string()).collect();
        plan(&Desired { spec, owner: &owner }, observed, None, &applied)
    }

    #[test]
    fn no_instance_means_launch() {
        let spec = spec();
        assert_eq!(plan_for(&spec, None, &[]), vec![Action::Launch { replaces: None }]);
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
        assert_eq!(
            plan_for(&spec, Some(&dead), &[]),
            vec![Action::Launch {
                replaces: Some(dead.id.clone())
            }]
        );
        let owner = owner();
        let vanished = plan(
            &Desired {
                spec: &spec,
                owner: &owner,
            },
            None,
            Some("i-0123456789abcdef0"),
            &[],
        );
        assert_eq!(
            vanished,
            vec![Action::Launch {
                replaces: Some("i-0123456789abcdef0".into())
            }]
        );
    }

    #[test]
    fn stopped_out_of_band_is_started() {
        let spec = spec();
        let stopped = instance_for(&spec, InstanceState::Stopped);
        assert_eq!(plan_for(&spec, Some(&stopped), &[]), vec![Action::Start]);
    }

    #[test]
    fn desired_state_is_honoured_both_ways() {
        let stopped_spec = spec().with_desired_state(DesiredState::Stopped);
        let running = instance_for(&stopped_spec, InstanceState::Running);
        assert_eq!(plan_for(&stopped_spec, Some(&running), &[]), vec![Action::Stop]);
        let stopped = instance_for(&stopped_spec, InstanceState::Stopped);
        assert_eq!(plan_for(&stopped_spec, Some(&stopped), &[]), vec![]);
    }

    #[test]
    fn instances_in_transition_are_waited_for() {
        let spec = spec();
        for state in [InstanceState::Pending, InstanceState::Stopping] {
            let instance = instance_for(&spec, state);
            assert_eq!(plan_for(&spec, Some(&instance), &[]), vec![Action::Wait], "{state:?}");
        }
    }

    #[test]
    fn instance_type_change_stops_then_modifies_then_starts() {
        let spec = spec().with_type("t3.large");
        let running = instance_for(&spec, InstanceState::Running).with_type("t3.micro");
        assert_eq!(plan_for(&spec, Some(&running), &[]), vec![Action::Stop]);
        let stopped = running.clone().in_state(InstanceState::Stopped);
        assert_eq!(
            plan_for(&spec, Some(&stopped), &[]),
            vec![Action::ModifyInstanceType("t3.large".into()), Action::Start]
        );
    }

    #[test]
    fn instance_type_change_while_stopped_stays_stopped() {
        let spec = spec().with_type("t3.large").with_desired_state(DesiredState::Stopped);
        let stopped = instance_for(&spec, InstanceState::Stopped).with_type("t3.micro");
        assert_eq!(
            plan_for(&spec, Some(&stopped), &[]),
            vec![Action::ModifyInstanceType("t3.large".into())]
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
                Action::ModifyUserData {
                    user_data: "#!/bin/sh\necho two".into(),
                    sha256: Some(user_data_sha256("#!/bin/sh\necho two")),
                },
                Action::Start
            ]
        );
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
                Action::ModifyUserData {
                    user_data: String::new(),
                    sha256: None
                },
                Action::Start
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
            vec![Action::SetSecurityGroups(vec![
                "sg-11111111".into(),
                "sg-22222222".into()
            ])]
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
        let actions = plan_for(&spec, Some(&instance), &["team", "env", "old"]);
        assert_eq!(
            actions,
            vec![Action::Tag {
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
            vec![Action::Tag {
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
        let actions = plan_for(&spec, Some(&pending), &[]);
        assert!(
            matches!(actions.as_slice(), [Action::Tag { .. }, Action::Wait]),
            "{actions:?}"
        );
    }

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
    fn launch_request_carries_owner_tags_token_and_hash() {
        let spec = spec().with_tag("team", "a").with_user_data("echo hi");
        let owner = owner();
        let request = Desired {
            spec: &spec,
            owner: &owner,
        }
        .launch_request(None);
        assert_eq!(request.client_token, owner.uid);
        assert_eq!(request.tags.get(TAG_OWNER_UID), Some(&owner.uid));
        assert_eq!(request.tags.get(TAG_CLUSTER_ID), Some(&owner.cluster_id));
        assert_eq!(request.tags.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            request.tags.get(TAG_USER_DATA_SHA256),
            Some(&user_data_sha256("echo hi"))
        );
    }

    #[test]
    fn choose_prefers_the_status_instance_then_the_oldest_live_one() {
        let spec = spec();
        let a = instance_for(&spec, InstanceState::Running)
            .with_id("i-aaaaaaaaaaaaaaaaa")
            .launched("2026-01-02T00:00:00Z");
        let b = instance_for(&spec, InstanceState::Running)
            .with_id("i-bbbbbbbbbbbbbbbbb")
            .launched("2026-01-01T00:00:00Z");
        let dead = instance_for(&spec, InstanceState::Terminated).with_id("i-ccccccccccccccccc");
        let (chosen, extras) = choose(vec![a.clone(), b.clone(), dead.clone()], Some("i-aaaaaaaaaaaaaaaaa"));
        assert_eq!(chosen.unwrap().id, a.id);
        assert_eq!(extras, vec![b.clone()]);
        let (chosen, _) = choose(vec![a.clone(), dead.clone(), b.clone()], Some("i-ccccccccccccccccc"));
        assert_eq!(
            chosen.unwrap().id,
            b.id,
            "a live instance wins over the dead status one"
        );
        let (chosen, extras) = choose(vec![dead.clone()], Some("i-ccccccccccccccccc"));
        assert_eq!(chosen.unwrap().id, dead.id);
        assert!(extras.is_empty());
        let older_dead = dead
            .clone()
            .with_id("i-ddddddddddddddddd")
            .launched("2025-01-01T00:00:00Z");
        let newer_dead = dead.with_id("i-eeeeeeeeeeeeeeeee").launched("2026-06-01T00:00:00Z");
        let (chosen, _) = choose(vec![older_dead, newer_dead.clone()], None);
        assert_eq!(
            chosen.unwrap().id,
            newer_dead.id,
            "status lost: replace the newest dead instance"
        );
    }

    #[test]
    fn delete_terminates_every_live_owned_instance_then_waits_then_releases() {
        let spec = spec();
        let a = instance_for(&spec, InstanceState::Running).with_id("i-aaaaaaaaaaaaaaaaa");
        let b = instance_for(&spec, InstanceState::Stopped).with_id("i-bbbbbbbbbbbbbbbbb");
        assert_eq!(
            plan_cleanup(DeletionPolicy::Delete, &[a.clone(), b.clone()]),
            Cleanup::Terminate(vec![a.id.clone(), b.id.clone()])
        );
        let going = a.clone().in_state(InstanceState::ShuttingDown);
        assert_eq!(plan_cleanup(DeletionPolicy::Delete, &[going]), Cleanup::Wait);
        let gone = a.in_state(InstanceState::Terminated);
        assert_eq!(plan_cleanup(DeletionPolicy::Delete, &[gone]), Cleanup::Release);
        assert_eq!(plan_cleanup(DeletionPolicy::Delete, &[]), Cleanup::Release);
    }

    #[test]
    fn retain_removes_only_operator_tags() {
        let spec = spec().with_tag("team", "a");
        let a = instance_for(&spec, InstanceState::Running);
        let Cleanup::Untag(untag) = plan_cleanup(DeletionPolicy::Retain, std::slice::from_ref(&a)) else {
            panic!("expected untag")
        };
        let keys = &untag[0].1;
        assert!(keys.contains(&TAG_OWNER_UID.to_string()) && keys.contains(&TAG_CLUSTER_ID.to_string()));
        assert!(!keys.contains(&"team".to_string()));
        let mut untagged = a;
        untagged.tags.retain(|k, _| !k.starts_with(TAG_PREFIX));
        assert_eq!(plan_cleanup(DeletionPolicy::Retain, &[untagged]), Cleanup::Release);
    }
}
