//! Command-line flags, each with an environment variable fallback.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ec2-operator",
    version,
    about = "Reconciles Ec2Instance objects against AWS EC2"
)]
pub struct Settings {
    /// Namespace to watch; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Only reconcile objects matching this label selector, e.g. `team=web`.
    #[arg(long, env = "LABEL_SELECTOR")]
    pub selector: Option<String>,

    /// Region for objects that do not set `spec.region`; defaults to the AWS SDK's region chain.
    #[arg(long, env = "DEFAULT_REGION")]
    pub region: Option<String>,

    /// Identifies this cluster in instance tags; defaults to the kube-system namespace UID.
    #[arg(long, env = "CLUSTER_ID")]
    pub cluster_id: Option<String>,

    /// Seconds between inventory polls: the longest an out-of-band change goes unnoticed.
    #[arg(long, env = "POLL_INTERVAL_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_interval_seconds: u64,

    /// Seconds between checks while an instance changes state.
    #[arg(long, env = "TRANSITION_INTERVAL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub transition_interval_seconds: u64,

    /// Seconds between checks of the attributes DescribeInstances does not show
    /// (terminationProtection, stopProtection, shutdownBehavior, creditSpecification, root volume
    /// size), per object that sets them: each check costs a call per attribute.
    #[arg(long, env = "ATTRIBUTE_CHECK_SECONDS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub attribute_check_seconds: u64,

    /// Seconds before retrying an object after a terminal error (bad AMI, no permission).
    #[arg(long, env = "TERMINAL_RETRY_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub terminal_retry_seconds: u64,

    /// Objects reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:8080")]
    pub admin_addr: SocketAddr,

    /// Run as one of several replicas: only the holder of a Lease reconciles and polls; the
    /// others stand by and take over when it is gone.
    #[arg(long, env = "LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the leader Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "ec2-operator")]
    pub lease_name: String,

    /// Seconds a leader holds the Lease without renewing it: the longest a dead leader's
    /// objects wait for another replica.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_seconds: u64,

    /// Terminate an orphan (a live instance of this cluster whose object is gone, e.g. deleted
    /// with its finalizer removed by hand) this many seconds after it was first found. Unset:
    /// orphans are only reported (metric `ec2_operator_orphaned_instances`, a log line, a tag).
    #[arg(long, env = "TERMINATE_ORPHANS_AFTER_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub terminate_orphans_after_seconds: Option<u64>,

    /// Log format; the level comes from `RUST_LOG`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, with the reconcile span's namespace and name.
    Json,
}

impl Settings {
    pub fn timing(&self) -> crate::reconcile::Timing {
        crate::reconcile::Timing {
            poll_interval: Duration::from_secs(self.poll_interval_seconds),
            transition_interval: Duration::from_secs(self.transition_interval_seconds),
            terminal_retry_interval: Duration::from_secs(self.terminal_retry_seconds),
            attribute_check_interval: Duration::from_secs(self.attribute_check_seconds),
        }
    }
}
