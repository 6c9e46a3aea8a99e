//! The shared fleet view: once per poll, one tag-filtered, paginated DescribeInstances per region
//! lists every instance of this cluster (1,000 per page). Steady-state reconciles read it instead
//! of calling EC2, so a fleet of N objects costs ceil(N/1000) calls per poll, not N.
//!
//! It is only a cache: empty after a restart, and an entry is distrusted as soon as the operator
//! changes that instance, until a poll that started after the change has seen it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::crd::Ec2Instance;
use crate::ec2::Ec2Regions;
use crate::error::Result;
use crate::metrics;
use crate::model::{ObservedInstance, Owner, TAG_CLUSTER_ID, TAG_NAME, TAG_NAMESPACE, TAG_OWNER_UID};

struct Snapshot {
    started_at: Instant,
    took: Duration,
    instances: HashMap<String, ObservedInstance>,
    /// Instance ids by owner uid, dead ones too: an object's instances (and duplicates) are
    /// found without another EC2 call or a scan of the fleet.
    by_owner: HashMap<String, Vec<String>>,
}

impl Snapshot {
    /// Every instance this poll saw with `owner_uid`'s tag, dead ones too.
    fn owned_by(&self, owner_uid: &str) -> impl Iterator<Item = &ObservedInstance> {
        let ids = self.by_owner.get(owner_uid).into_iter().flatten();
        ids.filter_map(|id| self.instances.get(id))
    }
}

/// One describe of every instance objects in transition asked about in a region.
struct Batch {
    started_at: Instant,
    took: Duration,
    asked: HashSet<String>,
    shown: HashMap<String, ObservedInstance>,
}

/// One describe of every instance carrying the owner tag of an object about to release its
/// finalizer, in a region.
struct OwnerBatch {
    started_at: Instant,
    took: Duration,
    asked: HashSet<String>,
    /// Every instance shown, by owner uid; an owner asked about and not here has none.
    shown: HashMap<String, Vec<ObservedInstance>>,
}

/// An object whose deletion waits for an owner batch, when it first asked (an answer must come
/// from a describe begun after that) and when it last asked (an ask not repeated expires).
struct OwnerAsk {
    object: ObjectRef<Ec2Instance>,
    since: Instant,
    last: Instant,
}

#[derive(Default)]
struct State {
    /// Regions to poll, with when an object last asked for each.
    regions: HashMap<String, Instant>,
    snapshots: HashMap<String, Snapshot>,
    /// Instances objects in transition asked about, by region, with when they last asked.
    watched: HashMap<String, HashMap<String, Instant>>,
    batches: HashMap<String, Batch>,
    /// Owners (by uid) whose every instance a deletion asked about, by region.
    watched_owners: HashMap<String, HashMap<String, OwnerAsk>>,
    owner_batches: HashMap<String, OwnerBatch>,
    /// Instances this process launched, by region and owner uid, until a poll begun after the
    /// launch shows them.
    launches: HashMap<String, HashMap<String, (String, Instant)>>,
}

/// How often the instances objects in transition asked about are described: one call per
/// region (and 200 instances) for all of them, however many objects wait.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many deletions are in one owner batch (one call per region); the others, oldest
/// asks first, wait for the next batch or for a fleet poll begun after they asked.
const OWNER_BATCH_SIZE: usize = 200;

/// An instance no object asked about for this long leaves the batches (objects settle or go
/// away and say so; this catches the ones that could not).
const WATCH_EXPIRY: Duration = Duration::from_secs(60);

/// What the batched describe says about one instance an object in transition watches.
#[derive(Clone, Debug, PartialEq)]
pub enum Watched {
    /// A batch begun after the operator last changed it showed it like this.
    Seen(Box<ObservedInstance>),
    /// A batch begun after the operator last changed it asked for it and EC2 did not show it.
    Missing,
    /// No such batch yet: ask again after the next one.
    Pending,
}

/// What the inventory can say about one instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Sighting {
    /// A recent poll, begun after the operator last changed it, saw it like this.
    Seen(Box<ObservedInstance>),
    /// This operator changed it (or launched it) after the poll began: the batched describes
    /// of instances in transition show it, not a call of its own.
    Changed,
    /// The fresh polls do not show it, though it was not changed since: ask EC2.
    AskEc2,
    /// The polls are failing: wait for the next one rather than turn a failing poll into one
    /// call per object.
    WaitForPoll,
}

pub struct Inventory {
    ec2: Arc<Ec2Regions>,
    cluster_id: String,
    poll_interval: Duration,
    state: Mutex<State>,
}

impl Inventory {
    /// An inventory of this cluster's instances, watching the default region from the start.
    pub fn new(ec2: Arc<Ec2Regions>, cluster_id: String, poll_interval: Duration) -> Self {
        let inventory = Self {
            cluster_id,
            poll_interval,
            state: Mutex::default(),
            ec2,
        };
        inventory.watch_region(inventory.ec2.default_region());
        inventory
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("inventory lock poisoned")
    }

    /// Include `region` in the next polls (every reconcile says so for its own region).
    pub fn watch_region(&self, region: &str) {
        self.state().regions.insert(region.to_owned(), Instant::now());
    }

    /// The regions to poll now. A region no object has asked for in ten polls (and at least ten
    /// minutes) is dropped, with its snapshot; the default region is always polled.
    fn regions_in_use(&self) -> Vec<String> {
        let unused_after = (self.poll_interval * 10).max(Duration::from_secs(600));
        let default = self.ec2.default_region();
        let mut state = self.state();
        state.regions.retain(|region, used| {
            let keep = region == default || used.elapsed() < unused_after;
            if !keep {
                self.ec2.metrics().region_dropped(region);
            }
            keep
        });
        let State { regions, snapshots, .. } = &mut *state;
        snapshots.retain(|region, _| regions.contains_key(region));
        regions.keys().cloned().collect()
    }

    /// A snapshot is trusted for two poll cycles (one poll may fail or run late), and no longer:
    /// then the polls are failing.
    fn is_fresh(&self, state: &State, region: &str) -> bool {
        state.snapshots.get(region).is_some_and(|s| {
            let cycle = s.took + pause_after(self.poll_interval, s.took);
            s.started_at.elapsed() <= cycle * 2 + Duration::from_secs(5)
        })
    }

    /// Whether a recent poll of every watched region succeeded.
    pub fn is_ready(&self) -> bool {
        let state = self.state();
        state.regions.keys().all(|region| self.is_fresh(&state, region))
    }

    /// What the last poll of `region` says about instance `id`.
    pub fn lookup(&self, region: &str, id: &str) -> Sighting {
        let state = self.state();
        let Some(snapshot) = state.snapshots.get(region).filter(|_| self.is_fresh(&state, region)) else {
            return Sighting::WaitForPoll;
        };
        if self.ec2.changes().since(id, snapshot.started_at) {
            return Sighting::Changed;
        }
        match snapshot.instances.get(id) {
            Some(instance) => Sighting::Seen(Box::new(instance.clone())),
            None => Sighting::AskEc2,
        }
    }

    /// Every instance the last poll of `region` saw with `owner_uid`'s tag, dead ones too; `None`
    /// when that poll is not fresh.
    pub fn owned(&self, region: &str, owner_uid: &str) -> Option<Vec<ObservedInstance>> {
        let state = self.state();
        let snapshot = state.snapshots.get(region).filter(|_| self.is_fresh(&state, region))?;
        Some(snapshot.owned_by(owner_uid).cloned().collect())
    }

    /// `id` was just launched for `owner_uid`. Until a poll begun after the launch shows it, a
    /// read of the object from before its own status write (the watch lags the write) finds it
    /// here instead of launching again.
    pub fn launched(&self, region: &str, owner_uid: &str, id: &str) {
        let mut state = self.state();
        let launches = state.launches.entry(region.to_owned()).or_default();
        launches.insert(owner_uid.to_owned(), (id.to_owned(), Instant::now()));
    }

    /// The instance this process launched for `owner_uid` since the last poll of `region` began.
    pub fn launched_for(&self, region: &str, owner_uid: &str) -> Option<String> {
        let state = self.state();
        let (id, at) = state.launches.get(region)?.get(owner_uid)?;
        let polled = state.snapshots.get(region).map(|s| s.started_at);
        polled.is_none_or(|polled| polled < *at).then(|| id.clone())
    }

    /// The operator changed one of `instances` after the last poll of `region` began.
    pub fn changed_since_poll(&self, region: &str, instances: &[ObservedInstance]) -> bool {
        let state = self.state();
        let Some(snapshot) = state.snapshots.get(region) else {
            return true;
        };
        instances
            .iter()
            .any(|i| self.ec2.changes().since(&i.id, snapshot.started_at))
    }

    /// Every instance the fresh polls saw, by region.
    pub fn instances(&self) -> Vec<(String, ObservedInstance)> {
        let state = self.state();
        state
            .snapshots
            .iter()
            .filter(|(region, _)| self.is_fresh(&state, region))
            .flat_map(|(region, s)| s.instances.values().map(|i| (region.clone(), i.clone())))
            .collect()
    }

    /// Other live instances the last poll of `region` saw with `owner_uid`'s tag, `id` aside.
    pub fn siblings(&self, region: &str, owner_uid: &str, id: &str) -> Vec<ObservedInstance> {
        let state = self.state();
        let Some(snapshot) = state.snapshots.get(region) else {
            return Vec::new();
        };
        snapshot
            .owned_by(owner_uid)
            .filter(|other| other.id != id && !other.state.is_dead())
            .cloned()
            .collect()
    }

    /// `id` joins the next batches: an object that just changed it (launched, started,
    /// stopped) is reconciled as soon as a batch shows the change.
    pub fn follow(&self, region: &str, id: &str) {
        let mut state = self.state();
        state
            .watched
            .entry(region.to_owned())
            .or_default()
            .insert(id.to_owned(), Instant::now());
    }

    /// What the last batch says about `id`, for an object in transition; the instance joins
    /// the next batches.
    pub fn watch(&self, region: &str, id: &str) -> Watched {
        self.follow(region, id);
        let state = self.state();
        let Some(batch) = state.batches.get(region) else {
            return Watched::Pending;
        };
        let current = batch.asked.contains(id)
            && recent(batch.started_at, batch.took)
            && !self.ec2.changes().since(id, batch.started_at);
        match batch.shown.get(id) {
            _ if !current => Watched::Pending,
            Some(instance) => Watched::Seen(Box::new(instance.clone())),
            None => Watched::Missing,
        }
    }

    /// Every instance carrying `owner`'s tag (uid), from a describe begun after the object first
    /// asked, for a deletion about to release its finalizer: a fleet poll (every instance carries
    /// the cluster and owner tags from its launch, TagSpecifications), or an owner batch, one
    /// call per region and tick for up to [`OWNER_BATCH_SIZE`] deletions, not a tag query each.
    /// `None`: ask again after the next batch or poll.
    pub fn watch_owner(&self, region: &str, owner: &Owner) -> Option<Vec<ObservedInstance>> {
        let mut state = self.state();
        let now = Instant::now();
        let asked = state.watched_owners.entry(region.to_owned()).or_default();
        let ask = asked.entry(owner.uid.clone()).or_insert_with(|| OwnerAsk {
            object: ObjectRef::new(&owner.name).within(&owner.namespace),
            since: now,
            last: now,
        });
        ask.last = now;
        let since = ask.since;
        if let Some(snapshot) = state.snapshots.get(region)
            && snapshot.started_at >= since
            && self.is_fresh(&state, region)
        {
            return Some(snapshot.owned_by(&owner.uid).cloned().collect());
        }
        let batch = state.owner_batches.get(region)?;
        let current =
            batch.asked.contains(&owner.uid) && batch.started_at >= since && recent(batch.started_at, batch.took);
        current.then(|| batch.shown.get(&owner.uid).cloned().unwrap_or_default())
    }

    /// `owner`'s deletion is done: it leaves the owner batches.
    pub fn unwatch_owner(&self, region: &str, owner_uid: &str) {
        if let Some(owners) = self.state().watched_owners.get_mut(region) {
            owners.remove(owner_uid);
        }
    }

    /// `id` is settled (or gone): it leaves the batches.
    pub fn unwatch(&self, region: &str, id: &str) {
        if let Some(ids) = self.state().watched.get_mut(region) {
            ids.remove(id);
        }
    }

    /// Every [`WATCH_INTERVAL`] (see [`pause_after`]), describe the watched instances (see [`Inventory::describe_watched`])
    /// and ask for the objects whose instance changed to be reconciled at once: a launch or a
    /// termination is seen within a second, not at the object's next requeue.
    pub async fn run_watch(&self, changed: mpsc::Sender<ObjectRef<Ec2Instance>>) {
        loop {
            let started = Instant::now();
            for owner in self.describe_watched().await {
                // Full: the objects' own requeues are the safety net. Closed: shutting down.
                if let Err(mpsc::error::TrySendError::Closed(_)) = changed.try_send(owner) {
                    return;
                }
            }
            tokio::time::sleep(pause_after(WATCH_INTERVAL, started.elapsed())).await;
        }
    }

    /// One batch: every instance an object asked about recently, one describe per region.
    /// Returns the owners of the instances that changed since the batch before.
    pub async fn describe_watched(&self) -> Vec<ObjectRef<Ec2Instance>> {
        let asked = {
            let mut state = self.state();
            let State { watched, batches, .. } = &mut *state;
            still_asked(watched, batches, |at| *at)
        };
        let batches = asked.iter().map(|(region, ids)| async move {
            let started_at = Instant::now();
            (started_at, self.ec2.client(region).describe_some(ids).await)
        });
        let results = futures::future::join_all(batches).await;
        let mut changed = self.describe_watched_owners().await;
        for ((region, ids), (started_at, result)) in asked.into_iter().zip(results) {
            self.ec2.metrics().polled(&region, metrics::TRANSITIONS, result.is_ok());
            match result {
                Ok(found) => {
                    let batch = Batch {
                        started_at,
                        took: started_at.elapsed(),
                        asked: ids.into_iter().collect(),
                        shown: found.into_iter().map(|i| (i.id.clone(), i)).collect(),
                    };
                    let mut state = self.state();
                    changed.extend(changed_owners(state.batches.get(&region), &batch));
                    state.batches.insert(region, batch);
                }
                Err(err) => {
                    warn!(%region, error = %err, "describing the instances in transition failed");
                }
            }
        }
        changed
    }

    /// The owner batch of each region where a deletion asked; returns the objects whose answer
    /// is new.
    async fn describe_watched_owners(&self) -> Vec<ObjectRef<Ec2Instance>> {
        let asked = {
            let mut state = self.state();
            let State {
                watched_owners,
                owner_batches,
                ..
            } = &mut *state;
            let mut asked = still_asked(watched_owners, owner_batches, |ask| ask.last);
            for (region, uids) in &mut asked {
                let owners = &watched_owners[region.as_str()];
                uids.sort_by_key(|uid| owners[uid.as_str()].since);
                uids.truncate(OWNER_BATCH_SIZE);
            }
            asked
        };
        let batches = asked.iter().map(|(region, uids)| async move {
            let started_at = Instant::now();
            let found = self
                .ec2
                .client(region)
                .describe_by_tag_values(TAG_OWNER_UID, uids)
                .await;
            (started_at, found)
        });
        let results = futures::future::join_all(batches).await;
        let mut answered = Vec::new();
        for ((region, uids), (started_at, result)) in asked.into_iter().zip(results) {
            self.ec2.metrics().polled(&region, metrics::OWNERS, result.is_ok());
            let found = match result {
                Ok(found) => found,
                Err(err) => {
                    warn!(%region, error = %err, "describing the instances of deleted objects failed");
                    continue;
                }
            };
            let mut shown: HashMap<String, Vec<ObservedInstance>> = HashMap::new();
            for instance in found {
                if let Some(uid) = instance.tags.get(TAG_OWNER_UID) {
                    shown.entry(uid.clone()).or_default().push(instance);
                }
            }
            let mut state = self.state();
            // Each waiting object once per new answer, not every tick while it waits.
            let previous = state.owner_batches.get(&region);
            let new_answer =
                |uid: &String| previous.is_none_or(|p| !p.asked.contains(uid) || p.shown.get(uid) != shown.get(uid));
            if let Some(owners) = state.watched_owners.get(&region) {
                answered.extend(
                    uids.iter()
                        .filter(|uid| new_answer(uid))
                        .filter_map(|uid| owners.get(uid))
                        .map(|ask| ask.object.clone()),
                );
            }
            let batch = OwnerBatch {
                started_at,
                took: started_at.elapsed(),
                asked: uids.into_iter().collect(),
                shown,
            };
            state.owner_batches.insert(region, batch);
        }
        answered
    }

    /// Poll every `poll_interval` (or, when a poll takes longer than half of it, pause as long as
    /// the poll took), and after each poll that saw any region ask for every object to be
    /// reconciled against it (from memory). Runs until the receiver is gone.
    pub async fn run(&self, polled: mpsc::Sender<()>) {
        loop {
            let started = Instant::now();
            if let Ok(count) = self.refresh().await {
                debug!(count, "inventory polled");
                if let Err(mpsc::error::TrySendError::Closed(())) = polled.try_send(()) {
                    return;
                }
            }
            tokio::time::sleep(pause_after(self.poll_interval, started.elapsed())).await;
        }
    }

    /// Poll every region in use once, all at the same time and each on its own: a failing region
    /// is logged and counted and leaves the others fresh. Returns the instances seen, or the
    /// error when no region could be polled.
    pub async fn refresh(&self) -> Result<usize> {
        let started_at = Instant::now();
        let regions = self.regions_in_use();
        let polls = futures::future::join_all(regions.iter().map(|region| self.poll(region))).await;
        let (mut total, mut polled, mut last_error) = (0, 0, None);
        for (region, result) in regions.iter().zip(polls) {
            match result {
                Ok(count) => (total, polled) = (total + count, polled + 1),
                Err(err) => {
                    warn!(%region, error = %err, "inventory poll failed");
                    last_error = Some(err);
                }
            }
        }
        let oldest = {
            let state = self.state();
            let polls = state.snapshots.values().map(|s| s.started_at);
            polls.chain(state.batches.values().map(|b| b.started_at)).min()
        };
        if let Some(oldest) = oldest {
            // Changes older than every snapshot no longer matter.
            self.ec2.changes().forget_before(oldest);
        }
        self.ec2
            .metrics()
            .inventory_refreshed(total, started_at.elapsed().as_secs_f64());
        match last_error {
            Some(err) if polled == 0 => Err(err),
            _ => Ok(total),
        }
    }

    /// One region's poll: every instance tagged with this cluster's id, all pages.
    async fn poll(&self, region: &str) -> Result<usize> {
        let polled_at = Instant::now();
        let found = self
            .ec2
            .client(region)
            .describe_by_tags(&[(TAG_CLUSTER_ID, &self.cluster_id)])
            .await;
        self.ec2.metrics().polled(region, metrics::FLEET, found.is_ok());
        let found = found?;
        self.ec2.metrics().fleet_seen(region, &found);
        let count = found.len();
        let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
        for instance in &found {
            if let Some(owner) = instance.tags.get(TAG_OWNER_UID) {
                by_owner.entry(owner.clone()).or_default().push(instance.id.clone());
            }
        }
        let instances = found.into_iter().map(|i| (i.id.clone(), i)).collect();
        let snapshot = Snapshot {
            started_at: polled_at,
            took: polled_at.elapsed(),
            instances,
            by_owner,
        };
        let mut state = self.state();
        state.snapshots.insert(region.to_owned(), snapshot);
        if let Some(launches) = state.launches.get_mut(region) {
            launches.retain(|_, (_, at)| *at > polled_at);
        }
        Ok(count)
    }
}

/// Drops the asks older than [`WATCH_EXPIRY`], and the batches of regions nobody asks about any
/// more; returns what is still asked, by region.
fn still_asked<A, B>(
    asked: &mut HashMap<String, HashMap<String, A>>,
    batches: &mut HashMap<String, B>,
    since: impl Fn(&A) -> Instant,
) -> Vec<(String, Vec<String>)> {
    asked.retain(|_, keys| {
        keys.retain(|_, ask| since(ask).elapsed() < WATCH_EXPIRY);
        !keys.is_empty()
    });
    batches.retain(|region, _| asked.contains_key(region));
    asked
        .iter()
        .map(|(region, keys)| (region.clone(), keys.keys().cloned().collect()))
        .collect()
}

/// A batch that began at `started_at` and took `took` is recent enough to act on: within five
/// ticks, or three times its own length when EC2 answers slowly (else, with a large fleet in
/// transition, every answer would be stale by the time its objects read it).
fn recent(started_at: Instant, took: Duration) -> bool {
    started_at.elapsed() <= (WATCH_INTERVAL * 5).max(took * 3)
}

/// The pause after a poll or batch that took `took`, meant to run every `interval`: the
/// interval's remainder, and never less than the call itself, so that when EC2 answers slowly (a
/// large fleet, a throttled account) reads take at most half of what it serves and launches,
/// terminations and other calls get the rest.
fn pause_after(interval: Duration, took: Duration) -> Duration {
    interval.saturating_sub(took).max(took)
}

/// The owners of the instances `batch` shows differently from `previous` (or for the first time).
fn changed_owners(previous: Option<&Batch>, batch: &Batch) -> Vec<ObjectRef<Ec2Instance>> {
    batch
        .shown
        .values()
        .filter(|instance| previous.and_then(|p| p.shown.get(&instance.id)) != Some(*instance))
        .filter_map(|instance| {
            let name = instance.tags.get(TAG_NAME)?;
            let namespace = instance.tags.get(TAG_NAMESPACE)?;
            Some(ObjectRef::new(name).within(namespace))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::types::{Instance, InstanceState as SdkState, InstanceStateName, Reservation};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::fixtures::*;
    use crate::metrics::Metrics;
    use crate::model::{InstanceState, Step};

    fn page(ids: &[&str], next: Option<&str>) -> DescribeInstancesOutput {
        let instances = ids
            .iter()
            .map(|id| {
                Instance::builder()
                    .instance_id(*id)
                    .state(SdkState::builder().name(InstanceStateName::Running).build())
                    .build()
            })
            .collect();
        DescribeInstancesOutput::builder()
            .reservations(Reservation::builder().set_instances(Some(instances)).build())
            .set_next_token(next.map(str::to_owned))
            .build()
    }

    fn inventory_on(client: aws_sdk_ec2::Client) -> Inventory {
        let ec2 = Ec2Regions::new("us-east-1".into(), Arc::new(Metrics::default()), move |_| {
            client.clone()
        });
        Inventory::new(Arc::new(ec2), CLUSTER_ID.into(), Duration::from_secs(30))
    }

    #[tokio::test]
    async fn nothing_is_known_before_the_first_poll() {
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, []));
        assert!(!inventory.is_ready());
        assert_eq!(
            inventory.lookup("us-east-1", "i-0123456789abcdef0"),
            Sighting::WaitForPoll
        );
    }

    #[tokio::test]
    async fn a_change_after_the_poll_started_sends_the_reader_to_ec2() {
        let instance = instance_for(&spec(), InstanceState::Running);
        let id = instance.id.clone();
        let polled = mock!(aws_sdk_ec2::Client::describe_instances).then_output(move || page(&[&id], None));
        let stopped = mock!(aws_sdk_ec2::Client::stop_instances)
            .then_output(|| aws_sdk_ec2::operation::stop_instances::StopInstancesOutput::builder().build());
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&polled, &stopped]));
        inventory.refresh().await.unwrap();
        assert!(inventory.is_ready());
        assert!(matches!(
            inventory.lookup("us-east-1", &instance.id),
            Sighting::Seen(i) if i.id == instance.id
        ));
        assert_eq!(
            inventory.lookup("us-east-1", "i-0ffffffffffffffff"),
            Sighting::AskEc2,
            "not in the poll"
        );
        let ec2 = inventory.ec2.client("us-east-1");
        ec2.execute(&Step::Stop(instance.id.clone())).await.unwrap();
        assert_eq!(inventory.lookup("us-east-1", &instance.id), Sighting::Changed);
        inventory.refresh().await.unwrap();
        assert!(
            matches!(inventory.lookup("us-east-1", &instance.id), Sighting::Seen(_)),
            "a poll begun after the change is trusted again"
        );
    }

    #[tokio::test]
    async fn deletions_about_to_release_share_one_owner_batch_and_are_answered_once() {
        const ALIVE: &str = "i-0aaaaaaaaaaaaaaaa";
        let tagged = |uid: &str| {
            Instance::builder()
                .instance_id(ALIVE)
                .state(SdkState::builder().name(InstanceStateName::ShuttingDown).build())
                .tags(aws_sdk_ec2::types::Tag::builder().key(TAG_OWNER_UID).value(uid).build())
                .build()
        };
        let owners = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| {
                r.filters()
                    .iter()
                    .any(|f| f.name() == Some("tag:k106.com/owner-uid") && f.values().len() == 2)
            })
            .then_output(move || {
                DescribeInstancesOutput::builder()
                    .reservations(Reservation::builder().instances(tagged("uid-web")).build())
                    .build()
            });
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&owners]));
        let web = Owner {
            uid: "uid-web".into(),
            ..owner()
        };
        let db = Owner {
            uid: "uid-db".into(),
            name: "db".into(),
            ..owner()
        };
        assert_eq!(inventory.watch_owner("us-east-1", &web), None, "no batch yet");
        assert_eq!(inventory.watch_owner("us-east-1", &db), None);

        let answered = inventory.describe_watched().await;
        assert_eq!(owners.num_calls(), 1, "both owners in one call");
        assert_eq!(answered.len(), 2, "both deletions are woken");
        let shown = inventory.watch_owner("us-east-1", &web).expect("answered");
        assert_eq!(shown.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec![ALIVE]);
        assert_eq!(inventory.watch_owner("us-east-1", &db), Some(vec![]), "asked, has none");

        assert!(
            inventory.describe_watched().await.is_empty(),
            "the same answer again wakes nobody"
        );
        inventory.unwatch_owner("us-east-1", "uid-web");
        inventory.unwatch_owner("us-east-1", "uid-db");
        inventory.describe_watched().await;
        assert_eq!(owners.num_calls(), 2, "no batch once every deletion is done");
    }

    #[test]
    fn a_slow_batch_stays_recent_for_three_times_its_length() {
        let ago = |secs| Instant::now() - Duration::from_secs(secs);
        assert!(recent(ago(4), Duration::ZERO), "within five ticks");
        assert!(!recent(ago(6), Duration::from_secs(1)), "a quick batch goes stale");
        assert!(
            recent(ago(12), Duration::from_secs(5)),
            "a 5 s batch is read up to 15 s on"
        );
    }

    #[test]
    fn polls_and_batches_keep_their_pace_and_never_take_more_than_half_of_ec2s_time() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after(WATCH_INTERVAL, ms(200)), ms(800), "the rest of the second");
        assert_eq!(pause_after(WATCH_INTERVAL, ms(700)), ms(700), "slower: as long again");
        assert_eq!(pause_after(WATCH_INTERVAL, ms(4000)), ms(4000));
        let s = Duration::from_secs;
        assert_eq!(pause_after(s(30), s(5)), s(25), "a fleet poll every 30 s");
        assert_eq!(pause_after(s(30), s(70)), s(70), "a 10,000-instance poll on a slow EC2");
    }

    #[test]
    fn a_slow_poll_is_trusted_for_two_of_its_own_cycles_a_quick_one_for_two_intervals() {
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, []));
        let polled = |ago: u64, took: u64| {
            let snapshot = Snapshot {
                started_at: Instant::now() - Duration::from_secs(ago),
                took: Duration::from_secs(took),
                instances: HashMap::new(),
                by_owner: HashMap::new(),
            };
            inventory.state().snapshots.insert("us-east-1".into(), snapshot);
            inventory.is_ready()
        };
        assert!(polled(60, 1), "interval 30 s: two intervals and 5 s");
        assert!(!polled(70, 1), "a quick poll that stopped coming: failing");
        assert!(polled(200, 60), "a 60 s poll comes every 120 s");
        assert!(!polled(250, 60));
    }

    #[tokio::test]
    async fn a_deletion_is_answered_by_a_fleet_poll_begun_after_it_asked() {
        let terminated = instance_for(&spec(), InstanceState::Terminated);
        let id = terminated.id.clone();
        let fleet = mock!(aws_sdk_ec2::Client::describe_instances).then_output(move || {
            let tags = [(TAG_CLUSTER_ID, CLUSTER_ID), (TAG_OWNER_UID, "uid-web")]
                .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
            let dead = SdkState::builder().name(InstanceStateName::Terminated).build();
            let instance = Instance::builder()
                .instance_id(&id)
                .state(dead)
                .set_tags(Some(tags.into()));
            DescribeInstancesOutput::builder()
                .reservations(Reservation::builder().instances(instance.build()).build())
                .build()
        });
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&fleet]));
        let web = Owner {
            uid: "uid-web".into(),
            ..owner()
        };
        inventory.refresh().await.unwrap();
        assert_eq!(
            inventory.watch_owner("us-east-1", &web),
            None,
            "that poll began before the ask"
        );
        inventory.refresh().await.unwrap();
        let shown = inventory.watch_owner("us-east-1", &web).expect("answered by the poll");
        assert_eq!(
            shown.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            vec![terminated.id]
        );
        assert_eq!(fleet.num_calls(), 2, "no owner batch");
    }

    #[tokio::test]
    async fn an_owner_batch_asks_for_the_oldest_deletions_first_one_call_at_most() {
        let owners = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| {
                r.filters().iter().any(|f| {
                    f.name() == Some("tag:k106.com/owner-uid")
                        && f.values().len() == OWNER_BATCH_SIZE
                        && !f.values().iter().any(|v| v == "uid-youngest")
                })
            })
            .then_output(|| DescribeInstancesOutput::builder().build());
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, RuleMode::Sequential, [&owners]));
        let deleting = |uid: String| Owner { uid, ..owner() };
        for n in 0..OWNER_BATCH_SIZE {
            assert_eq!(inventory.watch_owner("us-east-1", &deleting(format!("uid-{n}"))), None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let youngest = deleting("uid-youngest".into());
        assert_eq!(inventory.watch_owner("us-east-1", &youngest), None);

        inventory.describe_watched().await;
        assert_eq!(owners.num_calls(), 1);
        assert_eq!(
            inventory.watch_owner("us-east-1", &deleting("uid-0".into())),
            Some(vec![])
        );
        assert_eq!(
            inventory.watch_owner("us-east-1", &youngest),
            None,
            "left for the next batch"
        );
    }

    #[test]
    fn a_batch_asks_for_the_objects_whose_instance_changed_and_no_others() {
        let batch_of = |instances: &[ObservedInstance]| Batch {
            started_at: Instant::now(),
            took: Duration::ZERO,
            asked: instances.iter().map(|i| i.id.clone()).collect(),
            shown: instances.iter().map(|i| (i.id.clone(), i.clone())).collect(),
        };
        let pending = instance_for(&spec(), InstanceState::Pending);
        let web = ObjectRef::<Ec2Instance>::new("web").within("default");

        let first = batch_of(std::slice::from_ref(&pending));
        assert_eq!(
            changed_owners(None, &first),
            vec![web.clone()],
            "shown for the first time"
        );
        let same = batch_of(std::slice::from_ref(&pending));
        assert!(changed_owners(Some(&first), &same).is_empty(), "nothing new");
        let running = batch_of(&[pending.clone().in_state(InstanceState::Running)]);
        assert_eq!(changed_owners(Some(&same), &running), vec![web], "pending to running");

        let mut untagged = pending.in_state(InstanceState::Stopped);
        untagged.tags.clear();
        assert!(
            changed_owners(Some(&running), &batch_of(&[untagged])).is_empty(),
            "no owner tags, no object to ask for"
        );
    }

    #[tokio::test]
    async fn instances_in_transition_cost_one_describe_per_batch_however_many_wait() {
        const SHOWN: &str = "i-0aaaaaaaaaaaaaaaa";
        const NOT_YET: &str = "i-0bbbbbbbbbbbbbbbb";
        let batch = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| {
                r.filters()
                    .iter()
                    .any(|f| f.name() == Some("instance-id") && f.values().len() == 2)
            })
            .then_output(|| page(&[SHOWN], None));
        let stopped = mock!(aws_sdk_ec2::Client::stop_instances)
            .then_output(|| aws_sdk_ec2::operation::stop_instances::StopInstancesOutput::builder().build());
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&batch, &stopped]));
        assert_eq!(inventory.watch("us-east-1", SHOWN), Watched::Pending, "no batch yet");
        assert_eq!(inventory.watch("us-east-1", NOT_YET), Watched::Pending);

        inventory.describe_watched().await;
        assert_eq!(batch.num_calls(), 1, "both in one call");
        assert!(matches!(inventory.watch("us-east-1", SHOWN), Watched::Seen(i) if i.id == SHOWN));
        assert_eq!(
            inventory.watch("us-east-1", NOT_YET),
            Watched::Missing,
            "asked, not shown"
        );

        let ec2 = inventory.ec2.client("us-east-1");
        ec2.execute(&Step::Stop(SHOWN.into())).await.unwrap();
        assert_eq!(
            inventory.watch("us-east-1", SHOWN),
            Watched::Pending,
            "changed since the batch"
        );
        inventory.describe_watched().await;
        assert!(
            matches!(inventory.watch("us-east-1", SHOWN), Watched::Seen(_)),
            "a later batch is trusted"
        );

        inventory.unwatch("us-east-1", SHOWN);
        inventory.unwatch("us-east-1", NOT_YET);
        inventory.describe_watched().await;
        assert_eq!(batch.num_calls(), 2, "settled instances cost nothing");
        let polls = "ec2_operator_inventory_polls_total{region=\"us-east-1\",poll=\"transitions\",result=\"ok\"} 2";
        assert!(inventory.ec2.metrics().render().contains(polls));
    }

    #[tokio::test]
    async fn a_failing_region_leaves_the_others_fresh() {
        use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
        let healthy =
            mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| page(&["i-00000000000000001"], None));
        let failing = mock!(aws_sdk_ec2::Client::describe_instances).then_error(|| {
            let meta = aws_sdk_ec2::error::ErrorMetadata::builder()
                .code("UnauthorizedOperation")
                .build();
            DescribeInstancesError::generic(meta)
        });
        let east = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&healthy]);
        let west = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&failing]);
        let ec2 = Ec2Regions::new("us-east-1".into(), Arc::new(Metrics::default()), move |region| {
            if region == "us-east-1" {
                east.clone()
            } else {
                west.clone()
            }
        });
        let inventory = Inventory::new(Arc::new(ec2), CLUSTER_ID.into(), Duration::from_secs(30));
        inventory.watch_region("eu-west-1");

        assert_eq!(inventory.refresh().await.unwrap(), 1, "the healthy region counts");
        assert!(matches!(
            inventory.lookup("us-east-1", "i-00000000000000001"),
            Sighting::Seen(_)
        ));
        assert_eq!(
            inventory.lookup("eu-west-1", "i-00000000000000002"),
            Sighting::WaitForPoll
        );
        assert!(!inventory.is_ready(), "one region is not seen");

        let metrics = inventory.ec2.metrics().render();
        for line in [
            "ec2_operator_inventory_polls_total{region=\"us-east-1\",poll=\"fleet\",result=\"ok\"} 1",
            "ec2_operator_inventory_polls_total{region=\"eu-west-1\",poll=\"fleet\",result=\"error\"} 1",
            "ec2_operator_inventory_last_success_timestamp_seconds{region=\"us-east-1\"} ",
            "ec2_operator_instances{region=\"us-east-1\",state=\"running\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} in\n{metrics}");
        }
        assert!(
            !metrics.contains("last_success_timestamp_seconds{region=\"eu-west-1\"}"),
            "never polled successfully"
        );
        assert!(
            !metrics.contains("ec2_operator_errors_total{"),
            "a failed poll is not a failed reconcile"
        );
    }

    #[test]
    fn a_region_no_object_uses_any_more_is_dropped_but_never_the_default() {
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, []));
        inventory.watch_region("eu-west-1");
        let long_ago = Instant::now() - Duration::from_secs(3600);
        inventory.state().regions.insert("eu-west-1".into(), long_ago);
        inventory.state().regions.insert("us-east-1".into(), long_ago);
        assert_eq!(inventory.regions_in_use(), vec!["us-east-1".to_owned()]);
    }

    #[tokio::test]
    async fn a_poll_is_one_filtered_describe_per_region() {
        let first = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| {
                r.next_token().is_none()
                    && r.max_results() == Some(1000)
                    && r.filters().iter().any(|f| f.name() == Some("tag:k106.com/cluster-id"))
            })
            .then_output(move || page(&["i-00000000000000001", "i-00000000000000002"], Some("more")));
        let second = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| r.next_token() == Some("more"))
            .then_output(move || page(&["i-00000000000000003"], None));
        let inventory = inventory_on(mock_client!(aws_sdk_ec2, RuleMode::Sequential, [&first, &second]));
        assert_eq!(inventory.refresh().await.unwrap(), 3, "NextToken is followed");
        assert_eq!(first.num_calls() + second.num_calls(), 2);
        assert!(matches!(
            inventory.lookup("us-east-1", "i-00000000000000003"),
            Sighting::Seen(_)
        ));
        assert!(
            inventory
                .ec2
                .metrics()
                .render()
                .contains("ec2_operator_ec2_requests_total{operation=\"DescribeInstances\"} 2")
        );
    }
}
