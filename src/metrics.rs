//! Prometheus metrics, served on the admin port at `/metrics`. Each is fed where its fact is
//! known, never kept twice: EC2 attempts by an SDK interceptor (`ec2::CountAttempts`), polls and
//! instance counts by the inventory, repairs and readiness by the reconcile, and the objects by
//! readiness straight from the controller's cache at each scrape.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

use crate::crd::Ec2Instance;
use crate::decide::READY;
use crate::model::{InstanceState, ObservedInstance};
use crate::status::RECONCILING;

/// The `poll` label: the tag-filtered poll of the whole fleet.
pub const FLEET: &str = "fleet";
/// The `poll` label: the batched describe of the instances objects in transition asked about.
pub const TRANSITIONS: &str = "transitions";
/// The `poll` label: the batched describe, by owner tag, of the instances of deleted objects.
pub const OWNERS: &str = "owners";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    region: String,
    poll: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabel {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    region: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadinessLabels {
    ready: String,
    reason: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_duration: Histogram,
    errors: Family<ErrorLabel, Counter>,
    ec2_requests: Family<OperationLabel, Counter>,
    ec2_attempts: Family<AttemptLabels, Counter>,
    actions: Family<ActionLabel, Counter>,
    inventory_instances: Gauge,
    inventory_refresh_duration: Histogram,
    polls: Family<PollLabels, Counter>,
    last_success: Family<RegionLabel, Gauge<f64, AtomicU64>>,
    instances: Family<InstanceLabels, Gauge>,
    time_to_ready: Histogram,
    drift_repairs: Family<RepairLabel, Counter>,
    orphaned_instances: Gauge,
    objects: std::sync::Arc<Objects>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ec2_operator");
        let reconciles = Counter::default();
        let reconcile_duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let errors = Family::default();
        let ec2_requests = Family::default();
        let ec2_attempts = Family::default();
        let actions = Family::default();
        let inventory_instances = Gauge::default();
        let inventory_refresh_duration = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let polls = Family::default();
        let last_success = Family::default();
        let instances = Family::default();
        // LocalStack answers in under a second, AWS in tens of seconds; a stuck one in hours.
        let time_to_ready = Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]);
        let drift_repairs = Family::default();
        let orphaned_instances = Gauge::default();
        let objects = std::sync::Arc::new(Objects::default());
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running build (always 1)", build_info);
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconciliation",
            reconcile_duration.clone(),
        );
        registry.register(
            "errors",
            "Failed reconciliations by error label (failed polls are in inventory_polls)",
            errors.clone(),
        );
        registry.register(
            "ec2_requests",
            "EC2 API calls made, by operation, counted when sent: each page counts, SDK retries do not (see ec2_attempts)",
            ec2_requests.clone(),
        );
        registry.register(
            "ec2_attempts",
            "EC2 HTTP attempts, SDK retries included, by operation and outcome (ok; the AWS error code, \
             e.g. RequestLimitExceeded; or timeout, io, http_5xx), counted when the answer or failure arrives",
            ec2_attempts.clone(),
        );
        registry.register("actions", "Changes made to instances, by action", actions.clone());
        registry.register(
            "inventory_instances",
            "Instances in the last inventory poll, terminated ones included",
            inventory_instances.clone(),
        );
        registry.register(
            "inventory_refresh_duration_seconds",
            "Time per inventory poll",
            inventory_refresh_duration.clone(),
        );
        registry.register(
            "inventory_polls",
            "Inventory polls by region, poll (fleet: every instance of this cluster; transitions: the \
             batched describe of instances in transition) and result (ok, error)",
            polls.clone(),
        );
        registry.register(
            "inventory_last_success_timestamp_seconds",
            "Unix time of the last successful fleet poll, by region",
            last_success.clone(),
        );
        registry.register(
            "instances",
            "Instances of this cluster in the last successful fleet poll, by region and state \
             (terminated ones, which EC2 lists for a while after, left out)",
            instances.clone(),
        );
        registry.register(
            "time_to_ready_seconds",
            "Time an object took to become Ready: from its Ready condition turning False (for a new \
             object its first status write, moments after creation; its creation if it had no status) \
             to True; observed once per transition",
            time_to_ready.clone(),
        );
        registry.register(
            "drift_repairs",
            "Out-of-band changes repaired, by kind (replaced, started, stopped, resized, user_data, \
             security_groups, attributes, retagged, duplicate_terminated): the steps an object Ready for its \
             generation needs again, so never a spec change; counted when decided, with DriftDetected",
            drift_repairs.clone(),
        );
        registry.register(
            "orphaned_instances",
            "Live instances of this cluster whose object is gone",
            orphaned_instances.clone(),
        );
        registry.register_collector(Box::new(objects.clone()));
        Self {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            ec2_requests,
            ec2_attempts,
            actions,
            inventory_instances,
            inventory_refresh_duration,
            polls,
            last_success,
            instances,
            time_to_ready,
            drift_repairs,
            orphaned_instances,
            objects,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, seconds: f64) {
        self.reconciles.inc();
        self.reconcile_duration.observe(seconds);
    }

    pub fn error(&self, label: String) {
        self.errors.get_or_create(&ErrorLabel { error: label }).inc();
    }

    pub fn ec2_request(&self, operation: &'static str) {
        self.ec2_requests.get_or_create(&OperationLabel { operation }).inc();
    }

    pub fn ec2_attempt(&self, operation: &str, outcome: String) {
        let labels = AttemptLabels {
            operation: operation.to_owned(),
            outcome,
        };
        self.ec2_attempts.get_or_create(&labels).inc();
    }

    pub fn action(&self, action: &'static str) {
        self.actions.get_or_create(&ActionLabel { action }).inc();
    }

    pub fn inventory_refreshed(&self, instances: usize, seconds: f64) {
        self.inventory_instances.set(instances as i64);
        self.inventory_refresh_duration.observe(seconds);
    }

    /// One poll of `region` ended: `poll` is [`FLEET`] or [`TRANSITIONS`].
    pub fn polled(&self, region: &str, poll: &'static str, ok: bool) {
        let labels = PollLabels {
            region: region.to_owned(),
            poll,
            result: if ok { "ok" } else { "error" },
        };
        self.polls.get_or_create(&labels).inc();
    }

    /// A fleet poll of `region` succeeded and saw `instances`. Every live state is set, zero
    /// too, so a state no instance is in any more reads 0, not its last count.
    pub fn fleet_seen(&self, region: &str, instances: &[ObservedInstance]) {
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        let label = RegionLabel {
            region: region.to_owned(),
        };
        self.last_success.get_or_create(&label).set(now);
        for state in InstanceState::ALL
            .into_iter()
            .filter(|s| *s != InstanceState::Terminated)
        {
            let count = instances.iter().filter(|i| i.state == state).count();
            let labels = InstanceLabels {
                region: region.to_owned(),
                state: state.as_str(),
            };
            self.instances.get_or_create(&labels).set(count as i64);
        }
    }

    /// `region` is no longer polled: its gauges go too, or they would read as a stale poll.
    pub fn region_dropped(&self, region: &str) {
        for state in InstanceState::ALL {
            self.instances.remove(&InstanceLabels {
                region: region.to_owned(),
                state: state.as_str(),
            });
        }
        self.last_success.remove(&RegionLabel {
            region: region.to_owned(),
        });
    }

    pub fn became_ready(&self, took: Duration) {
        self.time_to_ready.observe(took.as_secs_f64());
    }

    pub fn drift_repaired(&self, kind: &'static str) {
        self.drift_repairs.get_or_create(&RepairLabel { kind }).inc();
    }

    pub fn orphans_found(&self, count: usize) {
        self.orphaned_instances.set(count as i64);
    }

    /// Count objects by readiness from the controller's cache (set once, by the leader's controller).
    pub fn watch_objects(&self, store: Store<Ec2Instance>) {
        let _ = self.objects.0.set(store);
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The objects by readiness, computed from the controller's cache at each scrape: right after a
/// restart or a deletion, with no count of its own to keep in step.
#[derive(Debug, Default)]
struct Objects(OnceLock<Store<Ec2Instance>>);

impl Collector for Objects {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let objects = self.0.get().map(Store::state).unwrap_or_default();
        let (by_readiness, longest) = readiness(objects.iter().map(AsRef::as_ref), jiff::Timestamp::now());
        let family = Family::<ReadinessLabels, Gauge>::default();
        for ((ready, reason), count) in by_readiness {
            family.get_or_create(&ReadinessLabels { ready, reason }).set(count);
        }
        let help = "Ec2Instance objects by Ready condition status (True, False; Unknown before the \
                    first status write, reason NoStatus) and reason, from the controller's cache";
        family.encode(encoder.encode_descriptor("objects", help, None, family.metric_type())?)?;
        let longest = ConstGauge::new(longest.as_secs_f64());
        let help = "How long the object reconciling the longest has been so: since its Reconciling \
                    condition turned True, or since its creation if it has no status yet (0: none is)";
        let name = "objects_reconciling_longest_seconds";
        longest.encode(encoder.encode_descriptor(name, help, None, longest.metric_type())?)
    }
}

/// Objects counted by Ready status and reason, and the longest any has been reconciling.
fn readiness<'a>(
    objects: impl Iterator<Item = &'a Ec2Instance>,
    now: jiff::Timestamp,
) -> (std::collections::BTreeMap<(String, String), i64>, Duration) {
    let mut counts = std::collections::BTreeMap::new();
    let mut longest = Duration::ZERO;
    for obj in objects {
        let status = obj.status.as_ref();
        let ready = status.and_then(|s| s.condition(READY));
        let key = match ready {
            Some(c) => (c.status.clone(), c.reason.clone()),
            None => ("Unknown".to_owned(), "NoStatus".to_owned()),
        };
        *counts.entry(key).or_insert(0) += 1;
        let reconciling = status
            .and_then(|s| s.condition(RECONCILING))
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.0);
        let since = match ready {
            None => obj.metadata.creation_timestamp.as_ref().map(|t| t.0),
            Some(_) => reconciling,
        };
        if let Some(since) = since {
            longest = longest.max(Duration::try_from(now.duration_since(since)).unwrap_or_default());
        }
    }
    (counts, longest)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::{reflector, watcher};

    use super::*;
    use crate::decide::Readiness;
    use crate::fixtures::*;
    use crate::model::InstanceState;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn objects_are_counted_by_readiness_from_the_cache_at_each_scrape() {
        let metrics = Metrics::default();
        let (store, mut writer) = reflector::store();
        metrics.watch_objects(store);
        let running = instance_for(&spec(), InstanceState::Running);
        let named = |name: &str, mut obj: Ec2Instance| {
            obj.metadata.name = Some(name.into());
            obj.metadata.uid = Some(name.into());
            obj
        };
        let mut new = named("new", Ec2Instance::test());
        new.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
        let launching = crate::status::next_status(
            &Ec2Instance::test(),
            None,
            vec![],
            Readiness::not_ready("Launching", "x"),
            at("2026-01-01T00:10:00Z"),
        );
        let objects = [
            named("a", Ec2Instance::test().ready_on(&running)),
            named("b", Ec2Instance::test().ready_on(&running)),
            named("launching", Ec2Instance::test().with_status(launching)),
            new,
        ];
        for obj in &objects {
            writer.apply_watcher_event(&watcher::Event::Apply(obj.clone()));
        }
        let rendered = metrics.render();
        for line in [
            "ec2_operator_objects{ready=\"True\",reason=\"InstanceRunning\"} 2",
            "ec2_operator_objects{ready=\"False\",reason=\"Launching\"} 1",
            "ec2_operator_objects{ready=\"Unknown\",reason=\"NoStatus\"} 1",
        ] {
            assert!(rendered.contains(line), "{line} in\n{rendered}");
        }

        let (_, longest) = readiness(objects.iter(), at("2026-01-01T01:00:00Z"));
        assert_eq!(longest, Duration::from_secs(3600), "the new one, from its creation");
        let (_, longest) = readiness(objects[..3].iter(), at("2026-01-01T01:00:00Z"));
        assert_eq!(longest, Duration::from_secs(3000), "since Reconciling turned True");

        writer.apply_watcher_event(&watcher::Event::Delete(objects[0].clone()));
        assert!(
            metrics
                .render()
                .contains("ec2_operator_objects{ready=\"True\",reason=\"InstanceRunning\"} 1"),
            "a deleted object is no longer counted"
        );
    }

    #[test]
    fn instances_are_counted_by_live_state_and_a_dropped_region_leaves_no_stale_gauges() {
        let metrics = Metrics::default();
        let instance = |state| instance_for(&spec(), state);
        let fleet = [
            instance(InstanceState::Running),
            instance(InstanceState::Running),
            instance(InstanceState::Terminated),
        ];
        metrics.fleet_seen("us-east-1", &fleet);
        metrics.fleet_seen("eu-west-1", &fleet[..1]);
        metrics.region_dropped("eu-west-1");
        let rendered = metrics.render();
        for line in [
            "ec2_operator_instances{region=\"us-east-1\",state=\"running\"} 2",
            "ec2_operator_instances{region=\"us-east-1\",state=\"stopped\"} 0",
            "ec2_operator_inventory_last_success_timestamp_seconds{region=\"us-east-1\"} ",
        ] {
            assert!(rendered.contains(line), "{line} in\n{rendered}");
        }
        assert!(
            !rendered.contains("state=\"terminated\""),
            "terminated instances are not managed"
        );
        assert!(!rendered.contains("eu-west-1"), "{rendered}");
    }
}
