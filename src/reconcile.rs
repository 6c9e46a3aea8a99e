//! The reconcile shell: wrap the finalizer, observe, ask `decide` what to do, hand each step to
//! `ec2`, write status, requeue. Nothing is remembered between reconciles except through EC2 tags
//! and status (and the in-memory backoff, which a restart only resets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, ResourceExt};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use tracing::{debug, info, instrument, warn};

use crate::backoff::Backoff;
use crate::crd::{DeletionPolicy, Ec2Instance, Ec2InstanceStatus, ManagementPolicy, VerifiedAttributes};
use crate::decide::{self, Desired, Readiness, Recorded};
use crate::ec2::{Ec2, Ec2Regions};
use crate::error::{AwsFault, Error, Result};
use crate::events::Reason;
use crate::inventory::{Inventory, Sighting, WATCH_INTERVAL, Watched};
use crate::metrics::Metrics;
use crate::model::{InstanceState, ObservedInstance, Owner, Step, TAG_OWNER_UID};
use crate::recorder::Recorder;
use crate::status;

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
    /// How often an object's hidden attributes are read again (`--attribute-check-seconds`).
    pub attribute_check_interval: Duration,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub ec2: Arc<Ec2Regions>,
    pub inventory: Inventory,
    pub backoff: Backoff,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
    pub cluster_id: String,
}

impl Context {
    pub fn new(
        client: Client,
        ec2: Arc<Ec2Regions>,
        metrics: Arc<Metrics>,
        timing: Timing,
        cluster_id: String,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone()),
            inventory: Inventory::new(ec2.clone(), cluster_id.clone(), timing.poll_interval),
            backoff: Backoff::new(timing.terminal_retry_interval),
            client,
            ec2,
            metrics,
            timing,
            cluster_id,
        }
    }

    /// Everything a failure leaves behind, in one place: the error metric, the object's backoff,
    /// `Ready=False` with the error in status, and a Warning event. Best effort: the reconcile
    /// returns the error anyway.
    async fn failed(&self, obj: &Ec2Instance, err: &Error) {
        let transient = err.is_transient();
        self.metrics.error(err.metric_label());
        let (failures, delay) = self.backoff.failed(obj, transient);
        warn!(error = %err, transient, failures, ?delay, "reconcile failed");
        let reason = if transient { "Retrying" } else { status::FAILED };
        let recorded = Recorded::of(obj, jiff::Timestamp::now());
        let status = status::next_status(
            obj,
            None,
            recorded.applied_tag_keys,
            Readiness::not_ready(reason, err.to_string()),
            jiff::Timestamp::now(),
        );
        let api = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        if let Err(write_err) = status::write(&api, obj, status).await {
            warn!(error = %write_err, "could not record the failure in status");
        }
        self.publish(obj, Reason::Failed, err.to_string()).await;
    }

    async fn publish(&self, obj: &Ec2Instance, reason: Reason, note: String) {
        info!(reason = reason.as_str(), "{note}");
        if let Err(err) = self.recorder.publish(obj, reason, note).await {
            warn!(error = %err, "could not publish event");
        }
    }
}

// `object`, not `name`: a JSON log line already uses `name` for the span's own name.
#[instrument(skip_all, fields(namespace = %obj.namespace().unwrap_or_default(), object = %obj.name_any()))]
pub async fn reconcile(obj: Arc<Ec2Instance>, ctx: Arc<Context>) -> Result<Action> {
    // Whatever triggered it, a failing object waits out its backoff, a failing deletion too (or
    // every poll and status write would retry it). Starting a deletion bumps the generation, so
    // the first pass of a deletion is never held back by an earlier failure.
    if let Some(wait) = ctx.backoff.remaining(&obj) {
        return Ok(Action::requeue(wait));
    }
    let started = Instant::now();
    let result = reconcile_with_finalizer(&obj, &ctx).await;
    ctx.metrics.reconciled(started.elapsed().as_secs_f64());
    match result {
        Ok(action) => {
            ctx.backoff.succeeded(&obj);
            Ok(action)
        }
        Err(Error::Waiting(what)) => {
            debug!("{what}");
            Ok(Action::requeue(ctx.timing.transition_interval))
        }
        Err(Error::WaitingForPoll) => {
            debug!("waiting for a good poll of EC2");
            Ok(Action::requeue(ctx.timing.poll_interval))
        }
        Err(err) => {
            ctx.failed(&obj, &err).await;
            Err(err)
        }
    }
}

/// `failed` has recorded the failure; retry when the object's backoff says so.
pub fn error_policy(obj: Arc<Ec2Instance>, _err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff.remaining(&obj).unwrap_or(ctx.timing.transition_interval))
}

/// The finalizer goes on before any AWS call and comes off only when cleanup succeeds.
async fn reconcile_with_finalizer(obj: &Arc<Ec2Instance>, ctx: &Context) -> Result<Action> {
    let namespace = obj
        .namespace()
        .ok_or_else(|| Error::Invalid("Ec2Instance must be namespaced".into()))?;
    let api: Api<Ec2Instance> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            Finalizer::Apply(obj) => Reconciler::new(ctx, api.clone(), obj)?.apply().await,
            Finalizer::Cleanup(obj) => Reconciler::new(ctx, api.clone(), obj)?.cleanup().await,
        }
    })
    .await
    .map_err(Error::from)
}

/// One reconcile of one object.
struct Reconciler<'a> {
    ctx: &'a Context,
    api: Api<Ec2Instance>,
    obj: Arc<Ec2Instance>,
    recorded: Recorded,
    owner: Owner,
    region: String,
    ec2: Ec2,
}

impl<'a> Reconciler<'a> {
    fn new(ctx: &'a Context, api: Api<Ec2Instance>, obj: Arc<Ec2Instance>) -> Result<Self> {
        let (region, cluster_id) = decide::placement(&obj, ctx.ec2.default_region(), &ctx.cluster_id);
        let owner = Owner {
            uid: obj.uid().ok_or_else(|| Error::Invalid("object has no uid".into()))?,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            cluster_id,
        };
        ctx.inventory.watch_region(&region);
        Ok(Self {
            ec2: ctx.ec2.client(&region),
            recorded: Recorded::of(&obj, jiff::Timestamp::now()),
            ctx,
            api,
            obj,
            owner,
            region,
        })
    }

    fn status_id(&self) -> Option<&str> {
        self.recorded.instance_id.as_deref()
    }

    fn desired(&self) -> Desired<'_> {
        Desired {
            spec: &self.obj.spec,
            owner: &self.owner,
        }
    }

    /// Of `found`, the instance to manage and the other live ones (see [`decide::choose`]).
    fn choose(&self, found: Vec<ObservedInstance>) -> (Option<ObservedInstance>, Vec<ObservedInstance>) {
        let desired = self.desired();
        decide::choose(found, self.status_id(), |i| desired.may_keep(i, &self.recorded))
    }

    async fn apply(&self) -> Result<Action> {
        if self.obj.paused() || self.obj.spec.management_policy == ManagementPolicy::ObserveOnly {
            return self.hands_off().await;
        }
        let steady = decide::is_steady(&self.obj);
        // `None`: wait for the next poll (steady) or the next batch of instances in transition.
        let wait = if steady {
            self.ctx.timing.poll_interval
        } else {
            WATCH_INTERVAL * 2
        };
        let Some((observed, extras)) = self.observe(steady).await? else {
            return Ok(Action::requeue(wait));
        };
        let mut found: Vec<ObservedInstance> = observed.into_iter().chain(extras).collect();
        let Some(replacement) = self.replacement(&found) else {
            return Ok(Action::requeue(wait));
        };
        if let Some(new) = replacement.as_ref().filter(|r| !found.iter().any(|i| i.id == r.id)) {
            found.push(new.clone());
        }
        let (mut observed, extras) = self.choose(found);
        let desired = self.desired();
        let now = jiff::Timestamp::now();
        let verified = self.obj.status.as_ref().and_then(|s| s.attributes.as_deref());
        let hidden = desired.hidden_to_read(
            observed.as_ref(),
            verified,
            now,
            self.ctx.timing.attribute_check_interval,
        );
        if let (Some(wanted), Some(instance)) = (hidden, observed.as_mut()) {
            instance.details.hidden = Some(Box::new(self.ec2.read_hidden(instance, wanted).await?));
        }
        let (replaced, duplicates) = decide::replaced_and_duplicates(&desired, extras, &self.recorded);
        self.report_duplicates(observed.as_ref(), &duplicates).await;
        self.preflight(&desired, observed.as_ref(), replacement.as_ref())
            .await?;
        let mut steps = decide::duplicates_to_terminate(&duplicates, &self.recorded, self.ctx.timing.poll_interval);
        steps.extend(decide::plan(&desired, observed.as_ref(), &self.recorded));
        steps.extend(decide::retire(&desired, observed.as_ref(), &replaced, &self.recorded));
        let known = observed.iter().chain(&replaced).chain(&duplicates);
        let steps = decide::before_terminating(&self.obj.spec, steps, known);
        if decide::held_back(&steps, &self.recorded) {
            return Ok(Action::await_change());
        }
        if steps.iter().any(Step::launches) && !self.still_wanted().await? {
            return Ok(Action::await_change());
        }
        if let Some((reason, note)) = decide::drift(steady, observed.as_ref(), &steps) {
            for kind in decide::drift_repairs(&self.obj.spec, observed.as_ref(), &steps) {
                self.ctx.metrics.drift_repaired(kind);
            }
            self.publish(reason, note).await;
        }
        let current = self.execute(&steps, observed.clone()).await?;
        let replaced = decide::still_replaced(observed.as_ref(), &replaced, &steps);
        // Until a replacement runs, status describes the instance it replaces, which serves.
        let serving = decide::in_service(&desired, current.as_ref(), &replaced, &self.recorded);
        let replacing = decide::on_its_way(current.as_ref(), serving);
        let mut readiness = match (replacing, serving) {
            (Some(new), Some(old)) => decide::replacing(new, old),
            _ => decide::readiness(self.obj.spec.desired_state, &steps, current.as_ref()),
        };
        let applied = decide::applied_tag_keys(&self.obj.spec);
        let left = Recorded {
            applied_tag_keys: applied.clone(),
            ..self.recorded.clone()
        };
        let plan = decide::preview(&desired, current.as_ref(), &replaced, &left);
        if let Some(plan) = plan.as_ref().filter(|_| !readiness.ready) {
            readiness.message = format!("{}; next: {plan}", readiness.message);
        }
        let settled = readiness.ready && steps.is_empty();
        match &current {
            Some(instance) if settled => self.ctx.inventory.unwatch(&self.region, &instance.id),
            Some(instance) => self.ctx.inventory.follow(&self.region, &instance.id),
            None => {}
        }
        let ready = readiness.ready;
        let mut status = self.next_status(serving, applied, readiness);
        status.applied_iam_instance_profile = self.obj.spec.iam_instance_profile.clone();
        if let Some(instance) = observed.as_ref().filter(|_| hidden.is_some()) {
            // Read and, by the steps just carried out, made as the spec says.
            status.attributes = Some(Box::new(VerifiedAttributes {
                sha256: desired.hidden_sha256(&instance.id),
                verified_at: now.to_string(),
            }));
        }
        status.replacement = replacing.map(status::replacement);
        status.plan = plan;
        status.replacements = decide::replacements(&self.recorded, &steps, ready);
        (status.duplicates, status.duplicates_since) =
            decide::duplicates_seen(&duplicates, &steps, &self.recorded, jiff::Timestamp::now());
        let became_ready = status::became_ready(&self.obj, &status, jiff::Timestamp::now());
        status::write(&self.api, &self.obj, status).await?;
        if let Some(took) = became_ready {
            self.ctx.metrics.became_ready(took);
        }
        Ok(Action::requeue(match self.recorded.replacement_wait() {
            // The inventory poll triggers every object; this is only a safety net.
            _ if settled => self.ctx.timing.poll_interval * 5,
            Some(wait) if steps == [Step::Wait] => wait.max(self.ctx.timing.transition_interval),
            _ => self.ctx.timing.transition_interval,
        }))
    }

    /// Paused or `ObserveOnly`: status follows the instance and shows the plan `Full` would
    /// carry out; nothing in EC2 changes. A paused object reads only the shared poll.
    async fn hands_off(&self) -> Result<Action> {
        let paused = self.obj.paused();
        let observed = if paused {
            self.polled_only()
        } else {
            Some(self.observed_only().await?)
        };
        let desired = self.desired();
        // Under `updatePolicy: Replace` the poll may show a replacement next to the instance.
        let (observed, replaced) = match observed {
            Some(Some(instance)) => {
                let mut found = self.ctx.inventory.siblings(&self.region, &self.owner.uid, &instance.id);
                found.push(instance);
                let (chosen, others) = self.choose(found);
                (
                    Some(chosen),
                    decide::replaced_and_duplicates(&desired, others, &self.recorded).0,
                )
            }
            other => (other, Vec::new()),
        };
        let plan = observed.as_ref().and_then(|found| {
            let mut found = found.clone();
            if !paused && let Some(instance) = &mut found {
                // Observe-only never tags: its own tags missing are no difference.
                instance.tags.extend(self.owner.tags());
            }
            decide::preview(&desired, found.as_ref(), &replaced, &self.recorded)
        });
        let readiness = decide::hands_off_readiness(paused, observed.as_ref().map(Option::as_ref), plan.as_deref());
        let current = observed.flatten();
        let serving = decide::in_service(&desired, current.as_ref(), &replaced, &self.recorded);
        let mut status = self.next_status(serving, self.recorded.applied_tag_keys.clone(), readiness);
        // Nothing moves while hands off: a replacement the poll does not show stays recorded.
        status.replacement = decide::on_its_way(current.as_ref(), serving)
            .map(status::replacement)
            .or_else(|| {
                let serves = |r: &crate::crd::Replacement| serving.is_some_and(|s| s.id == r.instance_id);
                self.recorded.replacement.clone().filter(|r| !serves(r))
            });
        status.plan = plan;
        status::write(&self.api, &self.obj, status).await?;
        Ok(Action::requeue(self.ctx.timing.poll_interval))
    }

    /// Whether the API server still has this object, not being deleted, right before a launch. The
    /// store can lag: a reconcile queued by an earlier change may run after the deletion's cleanup
    /// released the object, and would launch an instance nothing owns. One read per launch.
    async fn still_wanted(&self) -> Result<bool> {
        let current = self.api.get_opt(&self.obj.name_any()).await?;
        Ok(current.is_some_and(|now| now.uid() == self.obj.uid() && now.metadata.deletion_timestamp.is_none()))
    }

    /// The instance this object names (status, else the adoption annotation), else its own.
    fn named_instance(&self) -> Option<&str> {
        self.status_id().or(self.obj.adopt_instance_id())
    }

    /// Paused: the instance as the shared poll shows it, without an EC2 call of its own; `None`
    /// when the poll does not show it (or is not fresh).
    fn polled_only(&self) -> Option<Option<ObservedInstance>> {
        match self.named_instance() {
            Some(id) => match self.ctx.inventory.lookup(&self.region, id) {
                Sighting::Seen(instance) => Some(Some(*instance)),
                _ => None,
            },
            None => {
                let owned = self.ctx.inventory.owned(&self.region, &self.owner.uid)?;
                Some(self.choose(owned).0)
            }
        }
    }

    /// `ObserveOnly`: the instance from the shared poll, else by id from EC2 (an adopted instance
    /// carries no tag of this cluster, so the poll never shows it); `None` when there is none.
    async fn observed_only(&self) -> Result<Option<ObservedInstance>> {
        match self.named_instance() {
            Some(id) => match self.ctx.inventory.lookup(&self.region, id) {
                Sighting::Seen(instance) => Ok(Some(*instance)),
                _ => Ok(self.ec2.describe_by_ids(&[id.to_owned()]).await?.into_iter().next()),
            },
            None => match self.ctx.inventory.owned(&self.region, &self.owner.uid) {
                Some(owned) => Ok(self.choose(owned).0),
                None => Err(Error::WaitingForPoll),
            },
        }
    }

    /// A new object naming an existing instance to adopt: that instance once checked (alive,
    /// free, launched as the spec says); the plan then tags it as this object's.
    async fn adopt(&self, id: &str) -> Result<(Option<ObservedInstance>, Vec<ObservedInstance>)> {
        let instance = self.ec2.describe_by_ids(&[id.to_owned()]).await?.into_iter().next();
        if let Some(reason) = decide::adoption_refusal(&self.obj.spec, &self.owner, instance.as_ref()) {
            return Err(Error::AdoptionRefused {
                id: id.to_owned(),
                reason,
            });
        }
        if instance
            .as_ref()
            .is_some_and(|i| i.tags.get(TAG_OWNER_UID) != Some(&self.owner.uid))
        {
            self.publish(Reason::Adopted, format!("adopting instance {id}")).await;
        }
        Ok((instance, Vec::new()))
    }

    /// The instance to manage and any other live instances of this owner, from the inventory
    /// for an object that matched its spec, else from the batched describe of instances in
    /// transition, else from EC2. `None`: wait for the next poll or batch.
    async fn observe(&self, steady: bool) -> Result<Option<(Option<ObservedInstance>, Vec<ObservedInstance>)>> {
        Ok(match self.status_id() {
            Some(id) if steady => match self.ctx.inventory.lookup(&self.region, id) {
                Sighting::Seen(instance) if decide::belongs_to(&instance, &self.owner) => {
                    let siblings = self.ctx.inventory.siblings(&self.region, &self.owner.uid, id);
                    Some((Some(*instance), siblings))
                }
                Sighting::Seen(_) | Sighting::AskEc2 => Some(self.find().await?),
                // Launched or changed after the poll began (a poll of a big fleet takes a while,
                // and every object is reconciled after it): the batches vouch for it.
                Sighting::Changed => self.in_transition(id, false).await?,
                Sighting::WaitForPoll => None,
            },
            Some(id) => self.in_transition(id, false).await?,
            None => self.unrecorded().await?,
        })
    }

    /// The replacement status names (`updatePolicy: Replace`), as EC2 shows it, dead ones too:
    /// among `found`, else from the batched describe of instances in transition (no call of its
    /// own); not shown yet, as RunInstances left it ([`decide::presumed_replacement`]). Inner
    /// `None`: there is none; outer `None`: wait for the next batch.
    fn replacement(&self, found: &[ObservedInstance]) -> Option<Option<ObservedInstance>> {
        let Some(id) = self.recorded.replacement_id() else {
            return Some(None);
        };
        if let Some(instance) = found.iter().find(|i| i.id == id) {
            return Some(Some(instance.clone()));
        }
        match self.ctx.inventory.watch(&self.region, id) {
            Watched::Seen(instance) if decide::belongs_to(&instance, &self.owner) => Some(Some(*instance)),
            Watched::Seen(_) | Watched::Missing => Some(decide::presumed_replacement(&self.desired(), &self.recorded)),
            Watched::Pending => None,
        }
    }

    /// A Warning for live duplicates not reported before.
    async fn report_duplicates(&self, managed: Option<&ObservedInstance>, duplicates: &[ObservedInstance]) {
        let new: Vec<&str> = duplicates
            .iter()
            .map(|i| i.id.as_str())
            .filter(|id| !self.recorded.duplicates.iter().any(|d| d == id))
            .collect();
        if !new.is_empty() {
            let managed = managed.map(|i| &i.id);
            let note = format!(
                "more live instances carry this object's owner tag: {new:?}; managing {managed:?}, terminating the others if still there at the next poll"
            );
            self.publish(Reason::DuplicateInstances, note).await;
        }
    }

    /// No instance recorded: the fleet poll shows any instance a predecessor launched and
    /// recorded nowhere. A failing poll makes new objects wait for the next one rather than each
    /// query EC2.
    async fn unrecorded(&self) -> Result<Option<(Option<ObservedInstance>, Vec<ObservedInstance>)>> {
        // Launched by this process moments ago, and this read of the object predates its status
        // write: the batches show the instance (a second RunInstances would only be answered by
        // its ClientToken).
        if let Some(id) = self.ctx.inventory.launched_for(&self.region, &self.owner.uid) {
            return self.in_transition(&id, true).await;
        }
        if let Some(id) = self.obj.adopt_instance_id() {
            return self.adopt(id).await.map(Some);
        }
        match self.ctx.inventory.owned(&self.region, &self.owner.uid) {
            Some(owned) if !self.ctx.inventory.changed_since_poll(&self.region, &owned) => Ok(Some(self.choose(owned))),
            Some(_) => Ok(Some(self.find().await?)),
            None => Err(Error::WaitingForPoll),
        }
    }

    /// An instance in transition, from the batched describe of every watched instance rather
    /// than a call of its own. `None`: wait for the next batch. `launched_here`: this process
    /// launched it moments ago, so a batch that does not show it yet is waited out.
    async fn in_transition(
        &self,
        id: &str,
        launched_here: bool,
    ) -> Result<Option<(Option<ObservedInstance>, Vec<ObservedInstance>)>> {
        Ok(Some(match self.ctx.inventory.watch(&self.region, id) {
            // A dead one is about to be replaced, which is a launch: the recovery path's owner tag
            // query first, since a replacement may be out already (this object read stale).
            Watched::Seen(instance) if decide::belongs_to(&instance, &self.owner) && !instance.state.is_dead() => {
                let siblings = self.ctx.inventory.siblings(&self.region, &self.owner.uid, id);
                (Some(*instance), siblings)
            }
            // Launched moments ago and not shown yet: the plan waits for it.
            Watched::Missing if launched_here => return Ok(None),
            Watched::Missing if self.recorded.fresh() => (None, Vec::new()),
            // Gone, or not this object's: the recovery path (by id, then by owner tag).
            Watched::Seen(_) | Watched::Missing => self.find().await?,
            Watched::Pending => return Ok(None),
        }))
    }

    /// Refusals before any change: an instance (or its replacement) that died at launch, a type
    /// EC2 does not offer.
    async fn preflight(
        &self,
        desired: &Desired<'_>,
        observed: Option<&ObservedInstance>,
        replacement: Option<&ObservedInstance>,
    ) -> Result<()> {
        let died = decide::launch_failure(observed, &self.recorded)
            .or_else(|| decide::replacement_failure(replacement, &self.recorded));
        if let Some((id, reason)) = died {
            return Err(Error::InstanceDied { id, reason });
        }
        if let Some(instance_type) = decide::type_to_confirm(desired, observed)
            && !self.ec2.instance_type_exists(instance_type).await?
        {
            return Err(Error::Aws(AwsFault {
                operation: "DescribeInstanceTypes",
                code: "InvalidInstanceType".into(),
                message: format!(
                    "EC2 does not offer instance type {instance_type} in {}; the instance keeps its type",
                    self.region
                ),
                retryable: false,
            }));
        }
        Ok(())
    }

    async fn cleanup(&self) -> Result<Action> {
        if self.obj.spec.management_policy == ManagementPolicy::ObserveOnly {
            // Observe-only never changes EC2, deletion included: the instance stays as it is.
            return Ok(Action::await_change());
        }
        let mut owned = self.owned_while_deleting().await?;
        let mut cleanup = decide::plan_cleanup(self.obj.spec.deletion_policy, &owned, &self.recorded);
        if cleanup.release {
            // Before the finalizer goes, EC2 itself is asked for every instance with this
            // object's owner tag, not a poll up to an interval old: in one describe per tick
            // shared by every deletion.
            let Some(found) = self.ctx.inventory.watch_owner(&self.region, &self.owner) else {
                return Err(Error::Waiting(
                    "waiting for EC2 to show every instance of this object".into(),
                ));
            };
            owned = decide::owned(found, &self.owner);
            cleanup = decide::plan_cleanup(self.obj.spec.deletion_policy, &owned, &self.recorded);
        }
        let steps = decide::before_terminating(&self.obj.spec, cleanup.steps.clone(), &owned);
        self.execute(&steps, None).await?;
        if cleanup.release {
            self.ctx.inventory.unwatch_owner(&self.region, &self.owner.uid);
            if let Some(id) = self.status_id() {
                self.ctx.inventory.unwatch(&self.region, id);
            }
            if cleanup.steps.is_empty()
                && self.obj.spec.deletion_policy == DeletionPolicy::Delete
                && let Some(instance) = self.last_of(&owned)
            {
                let note = format!("instance {} is terminated", instance.id);
                self.publish(Reason::Terminated, note).await;
            }
            return Ok(Action::await_change());
        }
        if cleanup.steps.is_empty() {
            return Err(Error::Waiting("waiting for termination to finish".into()));
        }
        let ids: Vec<&str> = cleanup.steps.iter().filter_map(Step::instance_id).collect();
        let what = format!("terminating {ids:?}");
        let readiness = Readiness::not_ready("Deleting", what.clone());
        let mut status = self.next_status(self.last_of(&owned), self.recorded.applied_tag_keys.clone(), readiness);
        // A replacement EC2 does not show yet is still terminated before the finalizer goes.
        status.replacement = self.obj.status.as_ref().and_then(|s| s.replacement.clone());
        if owned.is_empty() && decide::terminates(&cleanup.steps, self.status_id()) {
            // EC2 accepted it, so it knows it: once describe stops showing it (terminated long
            // enough ago), it is gone, not still on its way (Recorded::seen).
            status.state = Some(InstanceState::ShuttingDown.as_str().into());
        }
        status::write(&self.api, &self.obj, status).await?;
        Err(Error::Waiting(what))
    }

    /// Of the instances a deletion found (dead ones too: an instance replaced before may still be
    /// listed), the one status names, else the first.
    fn last_of<'o>(&self, owned: &'o [ObservedInstance]) -> Option<&'o ObservedInstance> {
        let named = owned.iter().find(|i| Some(i.id.as_str()) == self.status_id());
        named.or(owned.first())
    }

    /// Carry out `steps` in order, telling the user what each did; returns the instance as the
    /// steps left it.
    async fn execute(&self, steps: &[Step], mut current: Option<ObservedInstance>) -> Result<Option<ObservedInstance>> {
        for step in steps {
            let launched = match self.ec2.execute(step).await {
                Ok(launched) => launched,
                Err(err) => {
                    if !err.is_transient()
                        && let Some(restart) = decide::restart_after(step, steps)
                        && let Err(restart_err) = self.ec2.execute(&restart).await
                    {
                        warn!(error = %restart_err, "could not start the instance again after a refused change");
                    }
                    return Err(err);
                }
            };
            if let Some(instance) = &launched {
                self.ctx.inventory.launched(&self.region, &self.owner.uid, &instance.id);
            }
            let after = launched.or_else(|| current.clone().map(|i| i.after(step)));
            if let Some((reason, note)) = decide::event(step, current.as_ref(), after.as_ref()) {
                self.publish(reason, note).await;
            }
            current = after;
        }
        Ok(current)
    }

    /// Find the instance by status id, else by owner tag (a crash after RunInstances leaves an
    /// instance that status does not name yet; its tags were set atomically at launch), and the
    /// other live instances found with it.
    async fn find(&self) -> Result<(Option<ObservedInstance>, Vec<ObservedInstance>)> {
        Ok(self.choose(self.describe_known(false).await?))
    }

    /// Every instance of this object while it is being deleted: the status's own from the
    /// batched describe of instances in transition, the others from the fleet poll (a deletion waits several passes for termination; an
    /// owner-tag query on each would cost a call per pass and object). While the poll is
    /// failing, the deletion waits for it.
    async fn owned_while_deleting(&self) -> Result<Vec<ObservedInstance>> {
        let Some(polled) = self.ctx.inventory.owned(&self.region, &self.owner.uid) else {
            return Err(Error::WaitingForPoll);
        };
        let mut found = match self.status_id().map(|id| self.ctx.inventory.watch(&self.region, id)) {
            Some(Watched::Seen(instance)) => decide::owned(vec![*instance], &self.owner),
            // No batch yet: the poll's view will do for terminating (idempotent), unless the
            // operator changed one of these instances since that poll began.
            Some(Watched::Pending) if self.ctx.inventory.changed_since_poll(&self.region, &polled) => {
                return Err(Error::Waiting("waiting for EC2 to show the instance".into()));
            }
            Some(Watched::Pending | Watched::Missing) | None => Vec::new(),
        };
        for instance in polled {
            if !found.iter().any(|f| f.id == instance.id) {
                found.push(instance);
            }
        }
        Ok(found)
    }

    /// The status's instance if it is ours, plus every instance carrying this object's owner tag: always
    /// when `every_owned` (deletion must find them all), else only when the status's
    /// instance is gone or dead.
    async fn describe_known(&self, every_owned: bool) -> Result<Vec<ObservedInstance>> {
        let mut found = match self.status_id() {
            Some(id) => decide::owned(self.ec2.describe_by_ids(&[id.to_owned()]).await?, &self.owner),
            None => Vec::new(),
        };
        // Launched moments ago and not shown yet: a tag query would not show it either (the same
        // eventual consistency), and the plan waits for it.
        let unseen_yet = found.is_empty() && self.recorded.fresh();
        if every_owned || (!unseen_yet && found.iter().all(|i| i.state.is_dead())) {
            for instance in self.ec2.describe_by_tags(&self.owner.filter()).await? {
                if !found.iter().any(|f| f.id == instance.id) {
                    found.push(instance);
                }
            }
        }
        Ok(found)
    }

    /// The status to write: observed facts and readiness, plus where the instance lives.
    fn next_status(
        &self,
        observed: Option<&ObservedInstance>,
        applied_tag_keys: Vec<String>,
        readiness: Readiness,
    ) -> Ec2InstanceStatus {
        let mut status = status::next_status(&self.obj, observed, applied_tag_keys, readiness, jiff::Timestamp::now());
        status.region = Some(self.region.clone());
        status.cluster_id = Some(self.owner.cluster_id.clone());
        status
    }

    async fn publish(&self, reason: Reason, note: String) {
        self.ctx.publish(&self.obj, reason, note).await;
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
    use crate::model::TAG_OWNER_UID;

    fn sdk_instance(id: &str, state: InstanceStateName, owner: &str) -> Instance {
        Instance::builder()
            .instance_id(id)
            .instance_type("t3.micro".into())
            .state(SdkState::builder().name(state).build())
            .tags(Tag::builder().key(TAG_OWNER_UID).value(owner).build())
            .build()
    }

    /// The inventory's DescribeInstances: one filter, this cluster's id.
    fn fleet_poll(r: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesInput) -> bool {
        r.filters().len() == 1 && r.filters()[0].name() == Some("tag:k106.com/cluster-id")
    }

    /// A DescribeInstances of given instances: by id, or the batch of instances in transition.
    fn by_id(r: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesInput) -> bool {
        !r.instance_ids().is_empty() || watched_batch(r)
    }

    /// The batched DescribeInstances of the instances in transition (an `instance-id` filter).
    fn watched_batch(r: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesInput) -> bool {
        r.filters().iter().any(|f| f.name() == Some("instance-id"))
    }

    /// The context after one batch that asked for `id`, as for an object in transition.
    /// CreateTags, answered.
    fn tagged() -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_ec2::Client::create_tags)
            .then_output(|| aws_sdk_ec2::operation::create_tags::CreateTagsOutput::builder().build())
    }

    /// RunInstances, answered with a pending `id` of this object.
    fn launches(id: &'static str) -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_ec2::Client::run_instances).then_output(move || {
            RunInstancesOutput::builder()
                .instances(sdk_instance(id, InstanceStateName::Pending, UID))
                .build()
        })
    }

    async fn in_transition(ctx: Arc<Context>, id: &str) -> Arc<Context> {
        ctx.inventory.watch("us-east-1", id);
        ctx.inventory.describe_watched().await;
        ctx
    }

    /// One object's DescribeInstances by its owner tag.
    fn owner_query(r: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesInput) -> bool {
        r.filters().iter().any(|f| f.name() == Some("tag:k106.com/owner-uid"))
    }

    /// A deletion about to release asks for the owner batch and waits; after the batch it goes
    /// on with the answer.
    async fn reconcile_deletion(obj: &Ec2Instance, ctx: &Arc<Context>) -> Result<Action> {
        let waiting = reconcile(Arc::new(obj.clone()), ctx.clone()).await?;
        assert_eq!(
            waiting,
            Action::requeue(Duration::from_secs(5)),
            "waits for the owner batch"
        );
        ctx.inventory.describe_watched().await;
        reconcile(Arc::new(obj.clone()), ctx.clone()).await
    }

    /// The context after one fleet poll (answered by the mock like any DescribeInstances).
    async fn polled(ctx: Arc<Context>) -> Arc<Context> {
        ctx.inventory.refresh().await.expect("the fleet poll");
        ctx
    }

    fn described(instances: Vec<Instance>) -> DescribeInstancesOutput {
        DescribeInstancesOutput::builder()
            .reservations(Reservation::builder().set_instances(Some(instances)).build())
            .build()
    }

    #[tokio::test]
    async fn a_reconcile_of_an_object_the_api_server_no_longer_has_launches_nothing() {
        // The store still holds the object as it was before a deletion whose cleanup already
        // released it: the API server answers 404.
        let obj = Ec2Instance::test().finalized();
        let poll = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(fleet_poll)
            .then_output(|| described(vec![]));
        let launch = mock!(aws_sdk_ec2::Client::run_instances).then_output(|| RunInstancesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&poll, &launch]);
        let (client, server) = ApiServer::start_deleted(obj.clone());

        let action = reconcile(Arc::new(obj), polled(context(client, ec2)).await)
            .await
            .unwrap();

        assert_eq!(launch.num_calls(), 0, "no instance for an object that is gone");
        assert_eq!(action, Action::await_change());
        assert!(server.status_patches().is_empty());
    }

    #[tokio::test]
    async fn a_new_object_launches_once_with_its_token_and_records_the_id_at_once() {
        let obj = Ec2Instance::test().finalized();
        // The fleet poll shows another object's instance only; no owner-tag query follows.
        let poll = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(fleet_poll)
            .then_output(|| {
                described(vec![sdk_instance(
                    "i-0bbbbbbbbbbbbbbbb",
                    InstanceStateName::Running,
                    "other",
                )])
            });
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
        // Sequential: any other EC2 call (an owner-tag query) would find no rule and fail.
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::Sequential, [&poll, &launch]);
        let (client, server) = ApiServer::start(obj.clone());

        let action = reconcile(Arc::new(obj), polled(context(client, ec2)).await)
            .await
            .unwrap();

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

    /// The object right after its first launch: status names an instance EC2 may not show yet.
    fn just_launched(id: &str) -> Ec2Instance {
        Ec2Instance::test()
            .finalized()
            .with_status(crate::crd::Ec2InstanceStatus {
                instance_id: Some(id.into()),
                launch_time: Some(jiff::Timestamp::now().to_string()),
                ..Default::default()
            })
    }

    fn not_found() -> aws_sdk_ec2::error::ErrorMetadata {
        aws_sdk_ec2::error::ErrorMetadata::builder()
            .code("InvalidInstanceID.NotFound")
            .message("eventual consistency")
            .build()
    }

    #[tokio::test]
    async fn an_instance_ec2_does_not_show_yet_is_waited_for_not_launched_again() {
        use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
        let obj = just_launched("i-0aaaaaaaaaaaaaaaa");
        let by_id = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| !r.instance_ids().is_empty())
            .then_error(|| DescribeInstancesError::generic(not_found()));
        let batch = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(watched_batch)
            .then_output(|| described(vec![]));
        let by_owner = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let launch = mock!(aws_sdk_ec2::Client::run_instances).then_output(|| RunInstancesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&batch, &by_id, &by_owner, &launch]);
        let (client, _server) = ApiServer::start(obj.clone());

        let action = reconcile(
            Arc::new(obj),
            in_transition(context(client, ec2), "i-0aaaaaaaaaaaaaaaa").await,
        )
        .await
        .unwrap();

        assert_eq!(launch.num_calls(), 0, "NotFound right after a launch is not 'gone'");
        assert_eq!(
            by_owner.num_calls(),
            0,
            "nor worth a tag query: it would not show it either"
        );
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn deleting_right_after_a_launch_keeps_the_finalizer_until_ec2_shows_the_instance() {
        use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
        use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError;
        let mut obj = just_launched("i-0aaaaaaaaaaaaaaaa");
        obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let by_id = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| !r.instance_ids().is_empty())
            .then_error(|| DescribeInstancesError::generic(not_found()));
        let batch = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(watched_batch)
            .then_output(|| described(vec![]));
        let by_owner = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let terminate = mock!(aws_sdk_ec2::Client::terminate_instances)
            .match_requests(|r| r.instance_ids() == ["i-0aaaaaaaaaaaaaaaa".to_owned()])
            .then_error(|| TerminateInstancesError::generic(not_found()));
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&batch, &by_id, &by_owner, &terminate]);
        let (client, server) = ApiServer::start(obj.clone());

        let err = reconcile(
            Arc::new(obj),
            polled(in_transition(context(client, ec2), "i-0aaaaaaaaaaaaaaaa").await).await,
        )
        .await
        .unwrap_err();

        assert!(err.is_transient(), "NotFound for a new instance is tried again: {err}");
        assert_eq!(terminate.num_calls(), 1, "the unseen instance is terminated anyway");
        let finalizer_removed = server.finalizer_removed();
        assert!(!finalizer_removed, "the finalizer stays until EC2 shows it terminated");
    }

    #[tokio::test]
    async fn an_unseen_instance_ec2_accepted_to_terminate_is_released_once_ec2_forgets_it() {
        let mut obj = just_launched("i-0aaaaaaaaaaaaaaaa");
        obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let terminated = || aws_sdk_ec2::operation::terminate_instances::TerminateInstancesOutput::builder().build();
        let nothing = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let terminate = mock!(aws_sdk_ec2::Client::terminate_instances).then_output(terminated);
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&nothing, &terminate]);
        let (client, server) = ApiServer::start(obj.clone());
        let ctx = polled(in_transition(context(client, ec2), "i-0aaaaaaaaaaaaaaaa").await).await;

        reconcile(Arc::new(obj.clone()), ctx).await.unwrap();
        assert_eq!(
            terminate.num_calls(),
            1,
            "the instance no describe showed yet is terminated"
        );
        let written = &server.status_patches()[0]["status"];
        assert_eq!(written["state"], "shutting-down", "EC2 accepted it: it exists");

        // EC2 has forgotten it since (terminated long enough ago): gone, not still on its way.
        obj.status.as_mut().unwrap().state = Some("shutting-down".into());
        let nothing = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let terminate = mock!(aws_sdk_ec2::Client::terminate_instances).then_output(terminated);
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&nothing, &terminate]);
        let (client, server) = ApiServer::start(obj.clone());
        let ctx = polled(in_transition(context(client, ec2), "i-0aaaaaaaaaaaaaaaa").await).await;
        reconcile_deletion(&obj, &ctx).await.unwrap();
        assert_eq!(terminate.num_calls(), 0, "not terminated again and again");
        let released = server.finalizer_removed();
        assert!(released, "the finalizer is removed");
    }

    #[tokio::test]
    async fn an_instance_of_another_object_named_in_status_is_left_alone() {
        const THEIRS: &str = "i-0fffffffffffffff0";
        // A status restored from another object's backup names that object's instance.
        let obj = Ec2Instance::test()
            .finalized()
            .with_status(crate::crd::Ec2InstanceStatus {
                instance_id: Some(THEIRS.into()),
                ..Default::default()
            });
        let by_id = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(by_id)
            .then_output(|| {
                described(vec![sdk_instance(
                    THEIRS,
                    InstanceStateName::Running,
                    "another-objects-uid",
                )])
            });
        let by_owner = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let launch = mock!(aws_sdk_ec2::Client::run_instances).then_output(|| {
            RunInstancesOutput::builder()
                .instances(sdk_instance("i-0aaaaaaaaaaaaaaaa", InstanceStateName::Pending, UID))
                .build()
        });
        let retag = tagged();
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&by_id, &by_owner, &launch, &retag]);
        let (client, _server) = ApiServer::start(obj.clone());

        reconcile(Arc::new(obj), in_transition(context(client, ec2), THEIRS).await)
            .await
            .unwrap();

        assert_eq!(retag.num_calls(), 0, "never retag another object's instance");
        assert_eq!(launch.num_calls(), 1, "this object gets its own instance");
    }

    #[tokio::test]
    async fn an_instance_that_died_at_launch_is_reported_not_relaunched() {
        use aws_sdk_ec2::types::StateReason;
        const DIED: &str = "i-0aaaaaaaaaaaaaaaa";
        let launched = instance_for(&spec(), crate::model::InstanceState::Pending).with_id(DIED);
        let obj = Ec2Instance::test().finalized().ready_on(&launched);
        let died = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| {
            let mut instance = sdk_instance(DIED, InstanceStateName::Terminated, UID);
            instance.state_reason = Some(
                StateReason::builder()
                    .code("Client.InternalError")
                    .message("Client.InternalError: Client error on launch")
                    .build(),
            );
            described(vec![instance])
        });
        let launch = mock!(aws_sdk_ec2::Client::run_instances).then_output(|| RunInstancesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&died, &launch]);
        let (client, server) = ApiServer::start(obj.clone());
        let ctx = in_transition(context(client, ec2), DIED).await;

        // Not steady (it never became Ready): the reconcile asks EC2 and sees it dead.
        let mut launching = obj.clone();
        launching.status.as_mut().unwrap().conditions[0].status = "False".into();
        let err = reconcile(Arc::new(launching), ctx).await.unwrap_err();

        assert!(matches!(err, Error::InstanceDied { .. }), "{err}");
        assert!(!err.is_transient());
        assert_eq!(launch.num_calls(), 0, "no relaunch into the same failure");
        let last = server.status_patches().pop().unwrap();
        assert_eq!(last["status"]["conditions"][0]["reason"], "Failed");
        assert_eq!(last["status"]["conditions"][1]["type"], "Stalled");
    }

    #[tokio::test]
    async fn an_unknown_instance_type_fails_before_the_instance_is_stopped() {
        use aws_sdk_ec2::operation::describe_instance_types::DescribeInstanceTypesError;
        const ID: &str = "i-0aaaaaaaaaaaaaaaa";
        let running = instance_for(&spec(), crate::model::InstanceState::Running).with_id(ID);
        let mut obj = Ec2Instance::test().finalized().ready_on(&running).with_type("t9.nope");
        obj.metadata.generation = Some(2); // the spec changed
        let described_running = mock!(aws_sdk_ec2::Client::describe_instances)
            .then_output(|| described(vec![sdk_instance(ID, InstanceStateName::Running, UID)]));
        let unknown = mock!(aws_sdk_ec2::Client::describe_instance_types)
            .match_requests(|r| r.instance_types().iter().any(|t| t.as_str() == "t9.nope"))
            .then_error(|| {
                let meta = aws_sdk_ec2::error::ErrorMetadata::builder()
                    .code("InvalidInstanceType")
                    .build();
                DescribeInstanceTypesError::generic(meta)
            });
        let stop = mock!(aws_sdk_ec2::Client::stop_instances)
            .then_output(|| aws_sdk_ec2::operation::stop_instances::StopInstancesOutput::builder().build());
        let tags = tagged();
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&described_running, &unknown, &stop, &tags]
        );
        let (client, _server) = ApiServer::start(obj.clone());

        let err = reconcile(Arc::new(obj), in_transition(context(client, ec2), ID).await)
            .await
            .unwrap_err();

        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("t9.nope"), "{err}");
        assert_eq!(
            stop.num_calls(),
            0,
            "a running instance is not stopped for a type EC2 lacks"
        );
    }

    #[tokio::test]
    async fn a_stale_object_after_a_replacement_does_not_launch_again() {
        const OLD: &str = "i-0dddddddddddddddd";
        const NEW: &str = "i-0eeeeeeeeeeeeeeee";
        // The object as the watch cache still shows it while the replacement's status write
        // is on its way: Ready on the old instance, which the last poll saw terminated.
        let old = instance_for(&spec(), crate::model::InstanceState::Running).with_id(OLD);
        let stale = Ec2Instance::test().finalized().ready_on(&old);
        let poll = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(fleet_poll)
            .then_output(|| described(vec![sdk_instance(OLD, InstanceStateName::Terminated, UID)]));
        let by_id = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| r.instance_ids() == [OLD.to_owned()])
            .then_output(|| described(vec![sdk_instance(OLD, InstanceStateName::Terminated, UID)]));
        let by_owner = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| r.filters().iter().any(|f| f.name() == Some("tag:k106.com/owner-uid")))
            .then_output(|| {
                described(vec![
                    sdk_instance(OLD, InstanceStateName::Terminated, UID),
                    sdk_instance(NEW, InstanceStateName::Pending, UID),
                ])
            });
        let batch = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(watched_batch)
            .then_output(|| {
                described(vec![
                    sdk_instance(OLD, InstanceStateName::Terminated, UID),
                    sdk_instance(NEW, InstanceStateName::Pending, UID),
                ])
            });
        let launch = launches(NEW);
        let tags = tagged();
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&poll, &batch, &by_id, &by_owner, &launch, &tags]
        );
        let (client, _server) = ApiServer::start(stale.clone());
        let ctx = context(client, ec2);
        ctx.inventory.refresh().await.unwrap();

        reconcile(Arc::new(stale.clone()), ctx.clone()).await.unwrap();
        // The replacement was launched after the poll began: the next reconcile waits for the
        // batch of instances in transition, and the batch shows the old one dead.
        reconcile(Arc::new(stale.clone()), ctx.clone()).await.unwrap();
        assert_eq!(launch.num_calls(), 1, "no launch on a poll older than the replacement");
        assert_eq!(by_id.num_calls() + by_owner.num_calls(), 0, "no describe of its own");
        ctx.inventory.describe_watched().await;
        reconcile(Arc::new(stale), ctx).await.unwrap();

        assert_eq!(launch.num_calls(), 1, "the third reconcile finds the replacement");
        assert_eq!(by_owner.num_calls(), 1);
    }

    #[tokio::test]
    async fn an_object_read_before_its_own_status_write_does_not_launch_again() {
        const NEW: &str = "i-0eeeeeeeeeeeeeeee";
        // A round of reconciles after a poll can read an object from the watch cache before
        // the status write of its launch arrives: no instance recorded, none in the poll.
        let stale = Ec2Instance::test().finalized();
        let poll = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(fleet_poll)
            .then_output(|| described(vec![]));
        let batch = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(watched_batch)
            .then_output(|| described(vec![sdk_instance(NEW, InstanceStateName::Pending, UID)]));
        let other_describes = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let launch = launches(NEW);
        let tags = tagged();
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&poll, &batch, &other_describes, &launch, &tags]
        );
        let (client, _server) = ApiServer::start(stale.clone());
        let ctx = context(client, ec2);
        ctx.inventory.refresh().await.unwrap();

        reconcile(Arc::new(stale.clone()), ctx.clone()).await.unwrap();
        reconcile(Arc::new(stale.clone()), ctx.clone()).await.unwrap();
        ctx.inventory.describe_watched().await;
        reconcile(Arc::new(stale), ctx).await.unwrap();

        assert_eq!(launch.num_calls(), 1, "the launch is found, not repeated");
        assert_eq!(other_describes.num_calls(), 0, "no describe of its own either");
    }

    #[tokio::test]
    async fn an_instance_found_by_owner_tag_is_adopted_not_duplicated() {
        let mut obj = Ec2Instance::test().finalized();
        obj.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let owned = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| {
            described(vec![sdk_instance(
                "i-0bbbbbbbbbbbbbbbb",
                InstanceStateName::Running,
                UID,
            )])
        });
        let launch = mock!(aws_sdk_ec2::Client::run_instances).then_output(|| RunInstancesOutput::builder().build());
        let tags = tagged();
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&owned, &launch, &tags]);
        let (client, server) = ApiServer::start(obj.clone());
        let ctx = polled(context(client, ec2)).await;

        reconcile(Arc::new(obj), ctx.clone()).await.unwrap();

        assert_eq!(launch.num_calls(), 0, "no RunInstances when the owner tag finds one");
        let last = server.status_patches().pop().unwrap();
        assert_eq!(last["status"]["instanceId"], "i-0bbbbbbbbbbbbbbbb");
        let metrics = ctx.metrics.render();
        assert!(
            metrics.contains("ec2_operator_time_to_ready_seconds_count 1"),
            "Ready at once, timed from creation: {metrics}"
        );
        assert!(
            !metrics.contains("ec2_operator_drift_repairs_total{"),
            "a new object does not drift"
        );
    }

    #[tokio::test]
    async fn under_replace_a_new_image_is_launched_beside_the_old_instance_which_status_keeps_naming() {
        const OLD: &str = "i-0aaaaaaaaaaaaaaaa";
        const NEW: &str = "i-0bbbbbbbbbbbbbbbb";
        let old = instance_for(&spec(), crate::model::InstanceState::Running).with_id(OLD);
        let mut obj = Ec2Instance::test()
            .finalized()
            .ready_on(&old)
            .replacing_on_change()
            .with_image("ami-0cccccccccccccccc");
        obj.metadata.generation = Some(2); // the image changed
        // EC2 shows no launch tag here: status remembers what the old instance was launched with.
        let shown = mock!(aws_sdk_ec2::Client::describe_instances)
            .then_output(|| described(vec![sdk_instance(OLD, InstanceStateName::Running, UID)]));
        let launch = mock!(aws_sdk_ec2::Client::run_instances)
            .match_requests(|r| {
                let token = r.client_token().unwrap_or_default();
                r.image_id() == Some("ami-0cccccccccccccccc") && token.starts_with(UID) && token != UID
            })
            .then_output(|| {
                RunInstancesOutput::builder()
                    .instances(sdk_instance(NEW, InstanceStateName::Pending, UID))
                    .build()
            });
        let terminate = mock!(aws_sdk_ec2::Client::terminate_instances)
            .then_output(|| aws_sdk_ec2::operation::terminate_instances::TerminateInstancesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&shown, &launch, &terminate]);
        let (client, server) = ApiServer::start(obj.clone());
        let ctx = polled(in_transition(context(client, ec2), OLD).await).await;

        reconcile(Arc::new(obj), ctx).await.unwrap();

        assert_eq!(
            (launch.num_calls(), terminate.num_calls()),
            (1, 0),
            "the old one serves on"
        );
        let status = &server.status_patches().pop().unwrap()["status"];
        assert_eq!(status["instanceId"], OLD);
        assert_eq!(status["replacement"]["instanceId"], NEW);
        assert_eq!(status["conditions"][0]["reason"], "Replacing");
        assert_eq!(status["plan"], format!("terminate {OLD} once {NEW} runs"));
    }

    #[tokio::test]
    async fn a_ready_instance_stopped_out_of_band_is_started_and_counted_as_drift() {
        const ID: &str = "i-0aaaaaaaaaaaaaaaa";
        let running = instance_for(&spec(), crate::model::InstanceState::Running).with_id(ID);
        let steady = Ec2Instance::test().finalized().ready_on(&running);
        // Stopped, and otherwise as launched: its tags intact.
        let tags: Vec<Tag> = running
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let poll = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(fleet_poll)
            .then_output(move || {
                let mut instance = sdk_instance(ID, InstanceStateName::Stopped, UID);
                instance.tags = Some(tags.clone());
                described(vec![instance])
            });
        let start = mock!(aws_sdk_ec2::Client::start_instances)
            .then_output(|| aws_sdk_ec2::operation::start_instances::StartInstancesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&poll, &start]);
        let (client, _server) = ApiServer::start(steady.clone());
        let ctx = polled(context(client, ec2)).await;

        reconcile(Arc::new(steady), ctx.clone()).await.unwrap();

        assert_eq!(start.num_calls(), 1);
        let metrics = ctx.metrics.render();
        assert!(
            metrics.contains("ec2_operator_drift_repairs_total{kind=\"started\"} 1"),
            "{metrics}"
        );
        assert!(!metrics.contains("kind=\"retagged\""), "its tags were intact");
        assert!(
            !metrics.contains("ec2_operator_time_to_ready_seconds_count 1"),
            "not Ready yet"
        );
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

        let action = reconcile(Arc::new(obj), polled(context(client, ec2)).await)
            .await
            .unwrap();

        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(5)),
            "termination is checked again soon"
        );
        assert_eq!(terminate.num_calls(), 1);
        let finalizer_removed = server.finalizer_removed();
        assert!(
            !finalizer_removed,
            "the finalizer stays while the instance is not terminated"
        );
    }

    #[tokio::test]
    async fn a_deletion_waits_on_the_fleet_poll_and_asks_the_owner_batch_only_before_releasing() {
        let mut obj = Ec2Instance::test()
            .finalized()
            .with_status(crate::crd::Ec2InstanceStatus {
                instance_id: Some("i-0ccccccccccccccccc".into()),
                ..Default::default()
            });
        obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let instance = |state: InstanceStateName| described(vec![sdk_instance("i-0ccccccccccccccccc", state, UID)]);
        let poll = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(fleet_poll)
            .then_output(move || instance(InstanceStateName::ShuttingDown));
        let shown = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(by_id)
            .then_output(move || instance(InstanceStateName::ShuttingDown));
        let by_tag = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(owner_query)
            .then_output(move || instance(InstanceStateName::Terminated));
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&poll, &shown, &by_tag]);
        let (client, _server) = ApiServer::start(obj.clone());
        let ctx = polled(in_transition(context(client, ec2), "i-0ccccccccccccccccc").await).await;

        let waiting = reconcile(Arc::new(obj.clone()), ctx).await.unwrap();
        assert_eq!(waiting, Action::requeue(Duration::from_secs(5)), "shutting down: wait");
        assert_eq!(
            (shown.num_calls(), by_tag.num_calls()),
            (1, 0),
            "the batch, no call of its own"
        );

        // Terminated: the owner-tag query confirms nothing else lives, then the finalizer goes.
        let terminated = move || instance(InstanceStateName::Terminated);
        let poll = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(fleet_poll)
            .then_output(terminated);
        let shown = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(by_id)
            .then_output(terminated);
        let by_tag = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(owner_query)
            .then_output(terminated);
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&poll, &shown, &by_tag]);
        let (client, server) = ApiServer::start(obj.clone());
        let ctx = polled(in_transition(context(client, ec2), "i-0ccccccccccccccccc").await).await;

        reconcile_deletion(&obj, &ctx).await.unwrap();
        assert_eq!(
            by_tag.num_calls(),
            1,
            "EC2 itself is asked before the release, in the owner batch"
        );
        let released = server.finalizer_removed();
        assert!(released, "the finalizer is removed");
    }

    #[tokio::test]
    async fn deleting_an_object_without_any_instance_releases_it_after_one_lookup() {
        let mut obj = Ec2Instance::test().finalized();
        obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        let nothing = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| described(vec![]));
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&nothing]);
        let (client, server) = ApiServer::start(obj.clone());

        reconcile_deletion(&obj, &polled(context(client, ec2)).await)
            .await
            .unwrap();

        assert_eq!(
            nothing.num_calls(),
            2,
            "the poll, then the owner batch; no other EC2 call"
        );
        let removal = server
            .requests()
            .into_iter()
            .find(|(method, path, _)| method == http::Method::PATCH && path.ends_with("/ec2instances/web"));
        let (_, _, patch) = removal.expect("finalizer removed");
        assert!(patch.to_string().contains("remove"), "{patch}");
    }
}
