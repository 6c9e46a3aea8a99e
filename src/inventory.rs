//! The shared fleet view: once per poll, one tag-filtered, paginated DescribeInstances per region
//! lists every instance of this cluster (1,000 per page). Steady-state reconciles read it instead
//! of calling EC2, so a fleet of N objects costs ceil(N/1000) calls per poll, not N.
//!
//! It is only a cache: empty after a restart, and an entry is distrusted as soon as the operator
//! changes that instance, until a poll that started after the change has seen it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::decide::TAG_CLUSTER_ID;
use crate::ec2::{Ec2Regions, ObservedInstance};
use crate::error::Result;
use crate::metrics::Metrics;

struct Snapshot {
    started_at: Instant,
    instances: HashMap<String, ObservedInstance>,
}

#[derive(Default)]
struct State {
    regions: BTreeSet<String>,
    snapshots: HashMap<String, Snapshot>,
    /// When the operator last changed each instance.
    changed_at: HashMap<String, Instant>,
}

pub struct Inventory {
    cluster_id: String,
    /// A snapshot older than this is not trusted (the poll is failing).
    max_age: Duration,
    state: Mutex<State>,
}

impl Inventory {
    pub fn new(cluster_id: String, poll_interval: Duration) -> Self {
        Self {
            cluster_id,
            max_age: poll_interval * 2 + Duration::from_secs(5),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("inventory lock poisoned")
    }

    /// Include `region` in the next polls.
    pub fn watch_region(&self, region: &str) {
        self.state().regions.insert(region.to_owned());
    }

    /// Whether a recent poll of `region` succeeded.
    pub fn is_fresh(&self, region: &str) -> bool {
        self.state()
            .snapshots
            .get(region)
            .is_some_and(|s| s.started_at.elapsed() <= self.max_age)
    }

    /// The instance as last polled, if the poll is recent and started after the operator last
    /// changed it; `None` means: ask EC2 directly.
    pub fn lookup(&self, region: &str, id: &str) -> Option<ObservedInstance> {
        let state = self.state();
        let snapshot = state.snapshots.get(region)?;
        if snapshot.started_at.elapsed() > self.max_age {
            return None;
        }
        if state
            .changed_at
            .get(id)
            .is_some_and(|changed| *changed >= snapshot.started_at)
        {
            return None;
        }
        snapshot.instances.get(id).cloned()
    }

    /// The operator just changed (or launched) this instance: distrust polls that began before.
    pub fn changed(&self, id: &str) {
        self.state().changed_at.insert(id.to_owned(), Instant::now());
    }

    /// Poll every watched region once. Returns the number of instances seen.
    pub async fn refresh(&self, ec2: &Ec2Regions, metrics: &Metrics) -> Result<usize> {
        let regions: Vec<String> = self.state().regions.iter().cloned().collect();
        let started_at = Instant::now();
        let mut total = 0;
        for region in regions {
            let polled_at = Instant::now();
            let found = ec2
                .client(&region)
                .describe_by_tags(&[(TAG_CLUSTER_ID, &self.cluster_id)])
                .await?;
            total += found.len();
            let instances = found.into_iter().map(|i| (i.id.clone(), i)).collect();
            let mut state = self.state();
            state.snapshots.insert(
                region,
                Snapshot {
                    started_at: polled_at,
                    instances,
                },
            );
            // Changes older than every snapshot no longer matter.
            let oldest = state
                .snapshots
                .values()
                .map(|s| s.started_at)
                .min()
                .unwrap_or(polled_at);
            state.changed_at.retain(|_, changed| *changed >= oldest);
        }
        metrics.inventory_refreshed(total, started_at.elapsed().as_secs_f64());
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ec2::InstanceState;
    use crate::fixtures::*;

    #[test]
    fn nothing_is_known_before_the_first_poll() {
        let inventory = Inventory::new(CLUSTER_ID.into(), Duration::from_secs(30));
        assert!(!inventory.is_fresh("us-east-1"));
        assert_eq!(inventory.lookup("us-east-1", "i-0123456789abcdef0"), None);
    }

    #[test]
    fn a_change_after_the_poll_started_hides_the_entry() {
        let inventory = Inventory::new(CLUSTER_ID.into(), Duration::from_secs(30));
        let instance = instance_for(&spec(), InstanceState::Running);
        inventory.state().snapshots.insert(
            "us-east-1".into(),
            Snapshot {
                started_at: Instant::now(),
                instances: HashMap::from([(instance.id.clone(), instance.clone())]),
            },
        );
        assert_eq!(inventory.lookup("us-east-1", &instance.id), Some(instance.clone()));
        inventory.changed(&instance.id);
        assert_eq!(inventory.lookup("us-east-1", &instance.id), None);
    }

    #[tokio::test]
    async fn a_poll_is_one_filtered_describe_per_region() {
        use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
        use aws_sdk_ec2::types::{Instance, InstanceState as SdkState, InstanceStateName, Reservation};
        use aws_smithy_mocks::{RuleMode, mock, mock_client};

        let page = |ids: &[&str], next: Option<&str>| {
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
        };
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
        let client = mock_client!(aws_sdk_ec2, RuleMode::Sequential, [&first, &second]);
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        let ec2 = Ec2Regions::new("us-east-1".into(), move |_| {
            Arc::new(crate::ec2::AwsEc2::new(client.clone(), m.clone())) as Arc<dyn crate::ec2::Ec2>
        });
        let inventory = Inventory::new(CLUSTER_ID.into(), Duration::from_secs(30));
        inventory.watch_region("us-east-1");
        assert_eq!(
            inventory.refresh(&ec2, &metrics).await.unwrap(),
            3,
            "NextToken is followed"
        );
        assert_eq!(first.num_calls() + second.num_calls(), 2);
        assert!(inventory.lookup("us-east-1", "i-00000000000000003").is_some());
        assert!(
            metrics
                .render()
                .contains("ec2_operator_ec2_requests_total{operation=\"DescribeInstances\"} 2")
        );
    }
}
