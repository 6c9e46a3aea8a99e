//! The I/O shell: wrap the finalizer, observe, ask `decide` what to do, do it, write status,
//! requeue. Nothing here is remembered between reconciles except through EC2 tags and status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ResourceExt};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use tracing::{info, warn};

use crate::crd::{DesiredState, Ec2Instance};
use crate::decide::{
    self, Action as Step, Cleanup, Desired, Owner, TAG_CLUSTER_ID, TAG_OWNER_UID, TAG_USER_DATA_SHA256,
};
use crate::ec2::{Ec2, Ec2Regions, InstanceState, ObservedInstance};
use crate::error::{Error, Result, retry_delay};
use crate::events::Reason;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::status::{self, READY, Readiness};

pub const FINALIZER: &str = "k106.com/terminate-instance";

/// Timing knobs of the reconcile loop.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often the inventory polls EC2 (and so the longest a drift goes unnoticed).
    pub poll_interval: Duration,
    /// Requeue delay while an instance is changing state.
    pub transition_interval: Duration,
    /// Requeue delay after a terminal error (bad AMI, no permission): slow, no retry storm.
    pub terminal_retry_interval: Duration,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub ec2: Ec2Regions,
    pub inventory: Inventory,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
    pub cluster_id: String,
    /// Per-object backoff after failures; cleared on success. Losing it on restart only
    /// resets the backoff.
    backoff: Mutex<HashMap<ObjectRef<Ec2Instance>, Backoff>>,
}

/// Consecutive failures of one object and when it may be tried again.
struct Backoff {
    failures: u32,
    retry_at: Instant,
    /// The generation that failed: a changed spec is tried at once.
    generation: Option<i64>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        ec2: Ec2Regions,
        metrics: Arc<Metrics>,
        timing: Timing,
        cluster_id: String,
    ) -> Self {
        let inventory = Inventory::new(cluster_id.clone(), timing.poll_interval);
        Self {
            client,
            recorder,
            ec2,
            inventory,
            metrics,
            timing,
            cluster_id,
            backoff: Mutex::default(),
        }
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Ec2Instance>, Backoff>> {
        self.backoff.lock().expect("backoff map poisoned")
    }

    /// Time left before `obj` may be tried again after a failure of its current generation.
    fn backoff_remaining(&self, obj: &Ec2Instance) -> Option<Duration> {
        let backoff = self.backoff();
        let entry = backoff.get(&ObjectRef::from(obj))?;
        let wait = entry.retry_at.checked_duration_since(Instant::now())?;
        (entry.generation == obj.metadata.generation).then_some(wait)
    }

    fn record_failure(&self, obj: &Ec2Instance, err: &Error) {
        self.metrics.error(err.metric_label());
        let mut backoff = self.backoff();
        let entry = backoff.entry(ObjectRef::from(obj)).or_insert(Backoff {
            failures: 0,
            retry_at: Instant::now(),
            generation: obj.metadata.generation,
        });
        entry.failures += 1;
        entry.generation = obj.metadata.generation;
        let delay = retry_delay(err.is_transient(), entry.failures, self.timing.terminal_retry_interval);
        entry.retry_at = Instant::now() + delay;
        let failures = entry.failures;
        warn!(object = %ObjectRef::from(obj), error = %err, transient = err.is_transient(), failures, ?delay, "reconcile failed");
    }
}

pub async fn reconcile(obj: Arc<Ec2Instance>, ctx: Arc<Context>) -> Result<Action> {
    // Every trigger (inventory poll, our own status write, a requeue) passes this gate, so a
    // failing object is retried on its backoff schedule and never faster. A spec change or a
    // deletion is acted on at once.
    if obj.metadata.deletion_timestamp.is_none()
        && let Some(wait) = ctx.backoff_remaining(&obj)
    {
        return Ok(Action::requeue(wait));
    }
    let started = Instant::now();
    let namespace = obj
        .namespace()
        .ok_or_else(|| Error::Invalid("Ec2Instance must be namespaced".into()))?;
    let api: Api<Ec2Instance> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            Finalizer::Apply(obj) => Reconciler::new(&ctx, api.clone(), obj)?.apply().await,
            Finalizer::Cleanup(obj) => Reconciler::new(&ctx, api.clone(), obj)?.cleanup().await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            ctx.backoff().remove(&ObjectRef::from(obj.as_ref()));
        }
        Err(err) if matches!(err.root(), Error::Waiting(_)) => {}
        Err(err) => ctx.record_failure(&obj, err),
    }
    result
}

pub fn error_policy(obj: Arc<Ec2Instance>, err: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Waiting(what) = err.root() {
        info!(object = %ObjectRef::from(obj.as_ref()), "{what}");
        return Action::requeue(ctx.timing.transition_interval);
    }
    Action::requeue(ctx.backoff_remaining(&obj).unwrap_or(ctx.timing.transition_interval))
}

/// One reconcile of one object.
struct Reconciler<'a> {
    ctx: &'a Context,
    api: Api<Ec2Instance>,
    obj: Arc<Ec2Instance>,
    owner: Owner,
    region: String,
    ec2: Arc<dyn Ec2>,
    reference: ObjectReference,
}

impl<'a> Reconciler<'a> {
    fn new(ctx: &'a Context, api: Api<Ec2Instance>, obj: Arc<Ec2Instance>) -> Result<Self> {
        let owner = Owner {
            uid: obj.uid().ok_or_else(|| Error::Invalid("object has no uid".into()))?,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            cluster_id: ctx.cluster_id.clone(),
        };
        let region = ctx.ec2.region_of(obj.spec.region.as_deref()).to_owned();
        ctx.inventory.watch_region(&region);
        let ec2 = ctx.ec2.client(&region);
        let reference = obj.object_ref(&());
        Ok(Self {
            ctx,
            api,
            obj,
            owner,
            region,
            ec2,
            reference,
        })
    }

    fn status_id(&self) -> Option<&str> {
        self.obj.status.as_ref().and_then(|s| s.instance_id.as_deref())
    }

    fn applied_tag_keys(&self) -> Vec<String> {
        self.obj
            .status
            .as_ref()
            .map(|s| s.applied_tag_keys.clone())
            .unwrap_or_default()
    }

    /// Ready for the current generation: the last reconcile found nothing to do.
    fn is_steady(&self) -> bool {
        self.obj
            .status
            .as_ref()
            .and_then(|s| s.condition(READY))
            .is_some_and(|c| c.status == "True" && c.observed_generation == self.obj.metadata.generation)
    }

    async fn apply(&self) -> Result<Action> {
        let result = self.sync().await;
        if let Err(err) = &result {
            self.report_failure(err).await;
        }
        result
    }

    async fn sync(&self) -> Result<Action> {
        let steady = self.is_steady();
        let observed = match self.status_id() {
            Some(id) if steady => match self.ctx.inventory.lookup(&self.region, id) {
                Some(polled) => Some(polled),
                // An object that matched its spec waits for the next poll rather than calling
                // EC2 itself: a failing poll must not turn into one call per object.
                None if !self.ctx.inventory.is_fresh(&self.region) => {
                    return Ok(Action::requeue(self.ctx.timing.poll_interval));
                }
                None => self.find().await?,
            },
            _ => self.find().await?,
        };

        let desired = Desired {
            spec: &self.obj.spec,
            owner: &self.owner,
        };
        let steps = decide::plan(&desired, observed.as_ref(), self.status_id(), &self.applied_tag_keys());
        if steady && !steps.is_empty() {
            let id = observed.as_ref().map_or("(none)", |i| i.id.as_str());
            let state = observed.as_ref().map_or("missing", |i| i.state.as_str());
            self.publish(
                Reason::DriftDetected,
                format!("instance {id} ({state}) no longer matches the spec: {steps:?}"),
            )
            .await;
        }

        let mut current = observed;
        for step in &steps {
            self.execute(step, &desired, &mut current).await?;
        }

        let readiness = self.readiness(&steps, current.as_ref());
        let settled = readiness.ready;
        let status = status::next_status(
            &self.obj,
            current.as_ref(),
            decide::applied_tag_keys(&self.obj.spec),
            readiness,
            jiff::Timestamp::now(),
        );
        status::write(&self.api, &self.obj, status).await?;
        Ok(if settled && steps.is_empty() {
            // The inventory poll triggers every object; this is only a safety net.
            Action::requeue(self.ctx.timing.poll_interval * 5)
        } else {
            Action::requeue(self.ctx.timing.transition_interval)
        })
    }

    /// Find the instance by status id, else by owner tag (a crash after RunInstances leaves an
    /// instance that status does not name yet; its tags were set atomically at launch).
    async fn find(&self) -> Result<Option<ObservedInstance>> {
        let status_id = self.status_id();
        let (chosen, extras) = decide::choose(self.describe_known(false).await?, status_id);
        if !extras.is_empty() {
            let ids: Vec<&str> = extras.iter().map(|i| i.id.as_str()).collect();
            self.publish(
                Reason::DuplicateInstances,
                format!(
                    "more live instances carry this object's owner tag: {ids:?}; managing {:?} only",
                    chosen.as_ref().map(|i| &i.id)
                ),
            )
            .await;
        }
        Ok(chosen)
    }

    /// The status's instance, plus every instance carrying this object's owner tag: always
    /// when `every_owned` (deletion must find them all), else only when the status's
    /// instance is gone or dead.
    async fn describe_known(&self, every_owned: bool) -> Result<Vec<ObservedInstance>> {
        let mut found = match self.status_id() {
            Some(id) => self.ec2.describe_by_ids(&[id.to_owned()]).await?,
            None => Vec::new(),
        };
        if every_owned || found.iter().all(|i| i.state.is_dead()) {
            for instance in self.describe_owned().await? {
                if !found.iter().any(|f| f.id == instance.id) {
                    found.push(instance);
                }
            }
        }
        Ok(found)
    }

    async fn describe_owned(&self) -> Result<Vec<ObservedInstance>> {
        self.ec2
            .describe_by_tags(&[
                (TAG_OWNER_UID, &self.owner.uid),
                (TAG_CLUSTER_ID, &self.owner.cluster_id),
            ])
            .await
    }

    async fn execute(&self, step: &Step, desired: &Desired<'_>, current: &mut Option<ObservedInstance>) -> Result<()> {
        if let Step::Launch { replaces } = step {
            let instance = self
                .ec2
                .run_instance(&desired.launch_request(replaces.as_deref()))
                .await?;
            self.ctx.inventory.changed(&instance.id);
            self.ctx.metrics.action(step_label(step));
            match replaces {
                Some(old) => {
                    self.publish(
                        Reason::Replaced,
                        format!(
                            "instance {old} is gone (terminated out of band); launched {}",
                            instance.id
                        ),
                    )
                    .await
                }
                None => {
                    self.publish(Reason::Launched, format!("launched instance {}", instance.id))
                        .await
                }
            }
            *current = Some(instance);
            return Ok(());
        }
        let Some(instance) = current.as_mut() else {
            return Err(Error::Invalid(format!("cannot {step:?} without an instance")));
        };
        let id = instance.id.clone();
        match step {
            Step::Launch { .. } | Step::Wait => return Ok(()),
            Step::Start => {
                self.ec2.start(&id).await?;
                instance.state = InstanceState::Pending;
                self.publish(Reason::Started, format!("starting instance {id}")).await;
            }
            Step::Stop => {
                self.ec2.stop(&id).await?;
                instance.state = InstanceState::Stopping;
                self.publish(Reason::Stopped, format!("stopping instance {id}")).await;
            }
            Step::ModifyInstanceType(instance_type) => {
                self.ec2.modify_instance_type(&id, instance_type).await?;
                let note = format!("instance {id}: type {} -> {instance_type}", instance.instance_type);
                instance.instance_type = instance_type.clone();
                self.publish(Reason::Modified, note).await;
            }
            Step::ModifyUserData { user_data, sha256 } => {
                self.ec2.modify_user_data(&id, user_data).await?;
                match sha256 {
                    Some(hash) => {
                        let tag = [(TAG_USER_DATA_SHA256.to_owned(), hash.clone())].into();
                        self.ec2.create_tags(&id, &tag).await?;
                        instance.tags.insert(TAG_USER_DATA_SHA256.into(), hash.clone());
                    }
                    None => {
                        self.ec2.delete_tags(&id, &[TAG_USER_DATA_SHA256.to_owned()]).await?;
                        instance.tags.remove(TAG_USER_DATA_SHA256);
                    }
                }
                self.publish(Reason::Modified, format!("instance {id}: user data replaced"))
                    .await;
            }
            Step::SetSecurityGroups(groups) => {
                self.ec2.modify_security_groups(&id, groups).await?;
                instance.security_group_ids = groups.iter().cloned().collect();
                self.publish(
                    Reason::SecurityGroupsUpdated,
                    format!("instance {id}: security groups {groups:?}"),
                )
                .await;
            }
            Step::Tag { set, remove } => {
                if !set.is_empty() {
                    self.ec2.create_tags(&id, set).await?;
                    instance.tags.extend(set.clone());
                }
                if !remove.is_empty() {
                    self.ec2.delete_tags(&id, remove).await?;
                    instance.tags.retain(|k, _| !remove.contains(k));
                }
                let set: Vec<&String> = set.keys().collect();
                self.publish(
                    Reason::TagsUpdated,
                    format!("instance {id}: set tags {set:?}, removed {remove:?}"),
                )
                .await;
            }
        }
        self.ctx.inventory.changed(&id);
        self.ctx.metrics.action(step_label(step));
        Ok(())
    }

    /// The Ready condition after `steps` ran against the instance now in `current`.
    fn readiness(&self, steps: &[Step], current: Option<&ObservedInstance>) -> Readiness {
        let Some(instance) = current else {
            return Readiness::not_ready("Launching", "no instance yet");
        };
        let id = &instance.id;
        let want = self.obj.spec.desired_state;
        match (instance.state, want) {
            _ if steps.iter().any(|s| matches!(s, Step::Launch { .. })) => {
                Readiness::not_ready("Launching", format!("instance {id} launched, waiting for it to run"))
            }
            (InstanceState::Running, DesiredState::Running) if steps.iter().all(|s| !s.starts_transition()) => {
                Readiness::ready(
                    "InstanceRunning",
                    format!("instance {id} is running and matches the spec"),
                )
            }
            (InstanceState::Stopped, DesiredState::Stopped) if steps.iter().all(|s| !s.starts_transition()) => {
                Readiness::ready(
                    "InstanceStopped",
                    format!("instance {id} is stopped as desired and matches the spec"),
                )
            }
            (InstanceState::Stopping, DesiredState::Running) => Readiness::not_ready(
                "Modifying",
                format!("stopping instance {id} to change its type or user data"),
            ),
            (InstanceState::Pending, _) => Readiness::not_ready("Starting", format!("instance {id} is starting")),
            (InstanceState::Stopping, _) => Readiness::not_ready("Stopping", format!("instance {id} is stopping")),
            (state, _) => Readiness::not_ready("Reconciling", format!("instance {id} is {}", state.as_str())),
        }
    }

    async fn cleanup(&self) -> Result<Action> {
        let result = self.release().await;
        if let Err(err) = &result
            && !matches!(err, Error::Waiting(_))
        {
            self.report_failure(err).await;
        }
        result
    }

    async fn release(&self) -> Result<Action> {
        let owned = self.describe_known(true).await?;
        match decide::plan_cleanup(self.obj.spec.deletion_policy, &owned) {
            Cleanup::Release => {
                if let Some(instance) = owned.first() {
                    self.publish(Reason::Terminated, format!("instance {} is terminated", instance.id))
                        .await;
                }
                Ok(Action::await_change())
            }
            Cleanup::Terminate(ids) => {
                for id in &ids {
                    self.ec2.terminate(id).await?;
                    self.ctx.inventory.changed(id);
                    self.ctx.metrics.action("terminate");
                }
                self.publish(Reason::Terminating, format!("terminating {ids:?}")).await;
                let status = status::next_status(
                    &self.obj,
                    owned.first(),
                    self.applied_tag_keys(),
                    Readiness::not_ready("Deleting", format!("terminating {ids:?}")),
                    jiff::Timestamp::now(),
                );
                status::write(&self.api, &self.obj, status).await?;
                Err(Error::Waiting(format!("terminating {ids:?}")))
            }
            Cleanup::Wait => Err(Error::Waiting("waiting for termination to finish".into())),
            Cleanup::Untag(untag) => {
                for (id, keys) in &untag {
                    self.ec2.delete_tags(id, keys).await?;
                    self.ctx.inventory.changed(id);
                    self.publish(
                        Reason::Retained,
                        format!("instance {id} retained; removed operator tags {keys:?}"),
                    )
                    .await;
                }
                Ok(Action::await_change())
            }
        }
    }

    /// Ready=False with the error, and a Warning event. Best effort: the error is returned anyway.
    async fn report_failure(&self, err: &Error) {
        let reason = if err.is_transient() { "Retrying" } else { "Failed" };
        let status = status::next_status(
            &self.obj,
            None,
            self.applied_tag_keys(),
            Readiness::not_ready(reason, err.to_string()),
            jiff::Timestamp::now(),
        );
        if let Err(write_err) = status::write(&self.api, &self.obj, status).await {
            warn!(error = %write_err, "could not record the failure in status");
        }
        self.publish(Reason::Failed, err.to_string()).await;
    }

    async fn publish(&self, reason: Reason, note: String) {
        info!(object = %ObjectRef::from(self.obj.as_ref()), reason = reason.as_str(), "{note}");
        if let Err(err) = self.ctx.recorder.publish(&reason.event(note), &self.reference).await {
            warn!(error = %err, "could not publish event");
        }
    }
}

fn step_label(step: &Step) -> &'static str {
    match step {
        Step::Launch { .. } => "launch",
        Step::Wait => "wait",
        Step::Start => "start",
        Step::Stop => "stop",
        Step::ModifyInstanceType(_) => "modify_instance_type",
        Step::ModifyUserData { .. } => "modify_user_data",
        Step::SetSecurityGroups(_) => "set_security_groups",
        Step::Tag { .. } => "tag",
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::operation::run_instances::RunInstancesOutput;
    use aws_sdk_ec2::types::{Instance, InstanceState as SdkState, InstanceStateName, Reservation, Tag};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::fixtures::*;

    fn sdk_instance(id: &str, state: InstanceStateName, owner: &str) -> Instance {
        Instance::builder()
            .instance_id(id)
            .instance_type("t3.micro".into())
            .state(SdkState::builder().name(state).build())
            .tags(Tag::builder().key(TAG_OWNER_UID).value(owner).build())
            .build()
    }

    fn described(instances: Vec<Instance>) -> DescribeInstancesOutput {
        DescribeInstancesOutput::builder()
            .reservations(Reservation::builder().set_instances(Some(instances)).build())
            .build()
    }

    #[tokio::test]
    async fn a_new_object_launches_once_with_its_token_and_records_the_id_at_once() {
        let obj = Ec2Instance::test().finalized();
        let none_owned = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| r.filters().iter().any(|f| f.name() == Some("tag:k106.com/owner-uid")))
            .then_output(|| described(vec![]));
        let launch = mock!(aws_sdk_ec2::Client::run_instances)
            .match_requests(|r| {
                r.client_token() == Some(UID)
                    && r.tag_specifications().iter().all(|spec| {
                        spec.tags()
                            .iter()
                            .any(|t| t.key() == Some(TAG_OWNER_UID) && t.value() == Some(UID))
                    })
            })
            .then_output(|| {
                RunInstancesOutput::builder()
                    .instances(sdk_instance("i-0aaaaaaaaaaaaaaaa", InstanceStateName::Pending, UID))
                    .build()
            });
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::Sequential, [&none_owned, &launch]);
        let (client, server) = ApiServer::start(obj.clone());

        let action = reconcile(Arc::new(obj), context(client, ec2)).await.unwrap();

        assert_eq!(
            launch.num_calls(),
            1,
            "RunInstances carried the UID token and owner tags"
        );
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(5)),
            "a launching instance is checked again soon"
        );
        let first_status = &server.status_patches()[0]["status"];
        assert_eq!(
            first_status["instanceId"], "i-0aaaaaaaaaaaaaaaa",
            "the id is the first thing written"
        );
        assert_eq!(first_status["conditions"][0]["reason"], "Launching");
        let events: Vec<String> = server
            .requests()
            .iter()
            .filter(|(_, path, _)| path.contains("/events"))
            .map(|(_, _, body)| body["reason"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(events, vec!["Launched"]);
    }

    #[tokio::test]
    async fn an_instance_found_by_owner_tag_is_adopted_not_duplicated() {
        let obj = Ec2Instance::test().finalized();
        let owned = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| {
            described(vec![sdk_instance(
                "i-0bbbbbbbbbbbbbbbb",
                InstanceStateName::Running,
                UID,
            )])
        });
        let launch = mock!(aws_sdk_ec2::Client::run_instances).then_output(|| RunInstancesOutput::builder().build());
        let tags = mock!(aws_sdk_ec2::Client::create_tags)
            .then_output(|| aws_sdk_ec2::operation::create_tags::CreateTagsOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&owned, &launch, &tags]);
        let (client, server) = ApiServer::start(obj.clone());

        reconcile(Arc::new(obj), context(client, ec2)).await.unwrap();

        assert_eq!(launch.num_calls(), 0, "no RunInstances when the owner tag finds one");
        let last = server.status_patches().pop().unwrap();
        assert_eq!(last["status"]["instanceId"], "i-0bbbbbbbbbbbbbbbb");
    }

    #[tokio::test]
    async fn deleting_keeps_the_finalizer_until_the_instance_is_terminated() {
        let mut obj = Ec2Instance::test().finalized();
        obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let running = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| {
            described(vec![sdk_instance(
                "i-0ccccccccccccccccc",
                InstanceStateName::Running,
                UID,
            )])
        });
        let terminate = mock!(aws_sdk_ec2::Client::terminate_instances)
            .then_output(|| aws_sdk_ec2::operation::terminate_instances::TerminateInstancesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&running, &terminate]);
        let (client, server) = ApiServer::start(obj.clone());

        let err = reconcile(Arc::new(obj), context(client, ec2)).await.unwrap_err();

        assert!(matches!(err.root(), Error::Waiting(_)), "{err}");
        assert_eq!(terminate.num_calls(), 1);
        let finalizer_removed = server
            .requests()
            .iter()
            .any(|(method, path, _)| method == http::Method::PATCH && path.ends_with("/ec2instances/web"));
        assert!(
            !finalizer_removed,
            "the finalizer stays while the instance is not terminated"
        );
    }

    #[tokio::test]
    async fn deleting_an_object_without_any_instance_releases_it_after_one_lookup() {
        let mut obj = Ec2Instance::test().finalized();
        obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let nothing = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let ec2 = mock_client!(aws_sdk_ec2, [&nothing]);
        let (client, server) = ApiServer::start(obj.clone());

        reconcile(Arc::new(obj), context(client, ec2)).await.unwrap();

        assert_eq!(nothing.num_calls(), 1, "one owner-tag lookup, no other EC2 call");
        let removal = server
            .requests()
            .into_iter()
            .find(|(method, path, _)| method == http::Method::PATCH && path.ends_with("/ec2instances/web"));
        let (_, _, patch) = removal.expect("finalizer removed");
        assert!(patch.to_string().contains("remove"), "{patch}");
    }
}
