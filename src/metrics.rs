//! Prometheus metrics, served on the admin port at `/metrics`. Each is fed where its fact is
//! known, never kept twice: EC2 attempts by an SDK interceptor (`ec2::CountAttempts`), polls and
//! instance counts by the inventory.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

use crate::model::{InstanceState, ObservedInstance};

/// The `poll` label: the tag-filtered poll of the whole fleet.
pub const FLEET: &str = "fleet";
/// The `poll` label: the batched describe of the instances objects in transition asked about.
pub const TRANSITIONS: &str = "transitions";

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
    orphaned_instances: Gauge,
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
        let orphaned_instances = Gauge::default();
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
            "orphaned_instances",
            "Live instances of this cluster whose object is gone",
            orphaned_instances.clone(),
        );
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
            orphaned_instances,
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

    pub fn orphans_found(&self, count: usize) {
        self.orphaned_instances.set(count as i64);
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

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
