//! Wiring: clients, the controller, the inventory poll and the admin server, run together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ResourceExt};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::utils::{Predicate, PredicateConfig};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use crate::config::Settings;
use crate::crd::Ec2Instance;
use crate::ec2::Ec2Regions;
use crate::metrics::Metrics;
use crate::orphans::Sweep;
use crate::reconcile::{Context, error_policy, reconcile};
use kube_lease_manager::LeaseManagerBuilder;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ec2 = Arc::new(ec2_regions(&settings, metrics.clone()).await?);
    let cluster_id = cluster_id(&settings, &client).await?;
    info!(region = ec2.default_region(), %cluster_id, namespace = ?settings.namespace, "starting");
    let ctx = Arc::new(Context::new(
        client.clone(),
        ec2,
        metrics.clone(),
        settings.timing(),
        cluster_id,
    ));

    let lease = elect(&settings, &client).await?;
    let (controller, synced) = controller(&settings, client);
    metrics.watch_objects(controller.store());
    let orphans = Sweep {
        ctx: ctx.clone(),
        objects: controller.store(),
        listed: synced.clone(),
        namespace: settings.namespace.clone(),
        terminate_after: settings.terminate_orphans_after_seconds.map(Duration::from_secs),
    };
    // A replica standing by counts as ready: a rollout must not wait for it to lead.
    let leading = Arc::new(AtomicBool::new(lease.is_none()));
    let probe_ctx = ctx.clone();
    let probe_leading = leading.clone();
    let ready = Arc::new(move || {
        !probe_leading.load(Ordering::Relaxed) || (synced.load(Ordering::Relaxed) && probe_ctx.inventory.is_ready())
    });

    tokio::select! {
        outcome = work(lease, leading, controller, orphans, ctx) => outcome,
        served = crate::admin::serve(settings.admin_addr, metrics, ready) => served,
    }
}

/// Wait for the lease if there is one, then reconcile, poll and sweep for orphans until stopped
/// or the lease is lost.
async fn work(
    mut lease: Option<Lease>,
    leading: Arc<AtomicBool>,
    controller: Controller<Ec2Instance>,
    orphans: Sweep,
    ctx: Arc<Context>,
) -> anyhow::Result<()> {
    if let Some((standing, _)) = &mut lease {
        info!("standing by until this replica holds the leader lease");
        // A standby stops when told to, as fast as a leader: during a rollout it must not wait
        // out the grace period, nor take the lease its old leader just released.
        let stopped = tokio::select! {
            won = standing.wait_for(|leader| *leader) => {
                won?;
                false
            }
            () = stop_signal() => true,
        };
        if stopped {
            info!("stopped while standing by");
            release(lease).await;
            return Ok(());
        }
        info!("leading");
        leading.store(true, Ordering::Relaxed);
    }
    // After each inventory poll every object is reconciled against it (from memory); after each
    // batch of instances in transition, the objects whose instance changed.
    let (polled, polls) = tokio::sync::mpsc::channel::<()>(1);
    let (changed, changes) = tokio::sync::mpsc::channel(1024);
    let reconciles = controller
        .reconcile_all_on(ReceiverStream::new(polls))
        .reconcile_on(ReceiverStream::new(changes))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile round ended with an error");
            }
        });
    let lost = async {
        match &mut lease {
            Some((leader, _)) => leader.wait_for(|leader| !*leader).await.map(drop),
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = reconciles => {
            info!("controller stopped");
            Ok(())
        }
        _ = ctx.inventory.run(polled) => Ok(()),
        _ = ctx.inventory.run_watch(changed) => Ok(()),
        _ = orphans.run() => Ok(()),
        // Crash-only: a replica that lost the lease exits and comes back standing by.
        _ = lost => Err(anyhow::anyhow!("lost the leader lease")),
    };
    release(lease).await;
    outcome
}

async fn release(lease: Option<Lease>) {
    if let Some((leader, manager)) = lease {
        // Closing the channel releases the lease: the next replica need not wait it out.
        drop(leader);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), manager).await;
    }
}

/// SIGTERM (how Kubernetes stops a pod) or Ctrl-C: the signals `shutdown_on_signal` stops a
/// leading controller on.
async fn stop_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// With `--leader-elect`: a Lease manager and the channel that says whether this replica leads.
async fn elect(settings: &Settings, client: &Client) -> anyhow::Result<Option<Lease>> {
    if !settings.leader_elect {
        return Ok(None);
    }
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "ec2-operator".into());
    let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(format!("{host}-{}", std::process::id()))
        .with_duration(settings.lease_duration_seconds)
        .with_grace((settings.lease_duration_seconds / 3).max(1))
        .build()
        .await?;
    Ok(Some(manager.watch().await))
}

type Lease = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
);

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The controller over the watched objects, and a flag raised once their first list is in.
fn controller(settings: &Settings, client: Client) -> (Controller<Ec2Instance>, Arc<AtomicBool>) {
    let api: Api<Ec2Instance> = match &settings.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut watch = watcher::Config::default();
    if let Some(selector) = &settings.selector {
        watch = watch.labels(selector);
    }
    // Controller::new's own reflector, plus the flag (a second `Store::wait_until_ready` waiter
    // would steal the controller's wake-up: the store keeps only the last waiter's waker).
    let synced = Arc::new(AtomicBool::new(false));
    let listed = synced.clone();
    let (reader, writer) = reflector::store();
    // The cache keeps what reconcile reads: managedFields and kubectl's last-applied copy are
    // most of an object's bytes and none of its meaning, so they never enter memory twice.
    let watched = watcher(api, watch).modify(|object| {
        object.managed_fields_mut().clear();
        object.annotations_mut().remove(LAST_APPLIED);
    });
    // A reconcile follows a change of spec (generation; a deletion bumps it too) or finalizers,
    // not the operator's own status writes: what it waits for comes from EC2, through the
    // inventory's triggers and its own requeues.
    let objects = reflector(writer, watched)
        .inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                listed.store(true, Ordering::Relaxed);
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            PredicateConfig::default(),
        );
    let controller = Controller::for_stream(objects, reader)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency));
    (controller, synced)
}

/// EC2 clients on the standard AWS chain (credentials, endpoint) for the configured region.
async fn ec2_regions(settings: &Settings, metrics: Arc<Metrics>) -> anyhow::Result<Ec2Regions> {
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        // Adaptive retries share one client-side rate limiter per region across all objects,
        // so throttling slows the whole operator down instead of multiplying retries.
        .retry_config(aws_config::retry::RetryConfig::adaptive())
        .timeout_config(crate::ec2::timeout_config(crate::ec2::ATTEMPT_TIMEOUT))
        .load()
        .await;
    let region = settings
        .region
        .clone()
        .or_else(|| aws.region().map(ToString::to_string))
        .ok_or_else(|| anyhow::anyhow!("no AWS region: set --region, DEFAULT_REGION or AWS_REGION"))?;
    Ok(Ec2Regions::from_sdk_config(aws, region, metrics))
}

/// The flag's value, else the kube-system namespace's UID: stable for the cluster's life.
async fn cluster_id(settings: &Settings, client: &Client) -> anyhow::Result<String> {
    if let Some(id) = &settings.cluster_id {
        return Ok(id.clone());
    }
    Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await?
        .uid()
        .ok_or_else(|| anyhow::anyhow!("kube-system namespace has no uid"))
}
