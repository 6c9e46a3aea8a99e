//! Orphans: live instances of this cluster whose object is gone (deleted with its finalizer
//! removed by hand, or while no operator ran). Found from the inventory after each poll,
//! reported by a metric, a log line and a dated tag, and terminated only when the operator was
//! told to (`--terminate-orphans-after-seconds`), that long after the tag's date.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::Store;
use tracing::{info, warn};

use crate::crd::Ec2Instance;
use crate::decide;
use crate::model::{ObservedInstance, Step, TAG_NAME, TAG_NAMESPACE, TAG_OWNER_UID};
use crate::reconcile::Context;

pub struct Sweep {
    pub ctx: Arc<Context>,
    pub objects: Store<Ec2Instance>,
    /// The watched objects' first list is in: before that, every instance looks orphaned.
    pub listed: Arc<AtomicBool>,
    /// The watched namespace, if only one.
    pub namespace: Option<String>,
    pub terminate_after: Option<Duration>,
}

impl Sweep {
    /// Every poll interval, look for orphans in the inventory. A candidate counts once it was a
    /// candidate on the sweep before too, and the API server confirms its object is gone.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.ctx.timing.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_before = HashSet::new();
        loop {
            ticker.tick().await;
            if self.listed.load(Ordering::Relaxed) {
                seen_before = self.sweep(&seen_before).await;
            }
        }
    }

    /// One sweep; returns this sweep's candidates.
    async fn sweep(&self, seen_before: &HashSet<String>) -> HashSet<String> {
        let objects = self.objects.state();
        let known: HashSet<&str> = objects.iter().filter_map(|o| o.metadata.uid.as_deref()).collect();
        let instances = self.ctx.inventory.instances();
        let mut candidates = HashSet::new();
        let mut orphans = 0;
        for (region, instance) in &instances {
            let found = decide::orphan_candidates([instance], &known, self.namespace.as_deref());
            let Some(candidate) = found.first() else { continue };
            candidates.insert(candidate.id.clone());
            if !seen_before.contains(&candidate.id) || !self.object_is_gone(candidate).await {
                continue;
            }
            orphans += 1;
            let steps = decide::orphan_steps(&[candidate], jiff::Timestamp::now(), self.terminate_after);
            for step in steps {
                self.act(region, candidate, &step).await;
            }
        }
        self.ctx.metrics.orphans_found(orphans);
        candidates
    }

    /// The object named by the instance's tags is gone (or is another object by that name).
    async fn object_is_gone(&self, instance: &ObservedInstance) -> bool {
        let (Some(ns), Some(name)) = (instance.tags.get(TAG_NAMESPACE), instance.tags.get(TAG_NAME)) else {
            return false;
        };
        let api: Api<Ec2Instance> = Api::namespaced(self.ctx.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(None) => true,
            Ok(Some(obj)) => obj.uid() != instance.tags.get(TAG_OWNER_UID).cloned(),
            // Unknown (no permission for that namespace, API server away): not an orphan.
            Err(_) => false,
        }
    }

    async fn act(&self, region: &str, orphan: &ObservedInstance, step: &Step) {
        let owner = |key| orphan.tags.get(key).map_or("?", String::as_str);
        let (ns, name) = (owner(TAG_NAMESPACE), owner(TAG_NAME));
        match step {
            Step::Terminate(_) => info!(instance = %orphan.id, %region, "terminating orphan of {ns}/{name}"),
            _ => warn!(
                instance = %orphan.id,
                %region,
                "orphan: {ns}/{name} is gone but its instance is live; tagged; terminated only with --terminate-orphans-after-seconds"
            ),
        }
        if let Err(err) = self.ctx.ec2.client(region).execute(step).await {
            warn!(instance = %orphan.id, error = %err, "could not {} the orphan", step.label());
        }
    }
}
