//! Prometheus metrics, served on the admin port at `/metrics`. Each is fed where its fact is
//! known, never kept twice: EC2 attempts by an SDK interceptor (`ec2::CountAttempts`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

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
        registry.register("errors", "Failed reconciliations by error label", errors.clone());
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
            "Instances in the last inventory poll",
            inventory_instances.clone(),
        );
        registry.register(
            "inventory_refresh_duration_seconds",
            "Time per inventory poll",
            inventory_refresh_duration.clone(),
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
