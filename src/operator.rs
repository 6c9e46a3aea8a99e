//! Wiring: clients, the controller, the inventory poll and the admin server, run together.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ResourceExt};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::config::Settings;
use crate::crd::Ec2Instance;
use crate::ec2::Ec2Regions;
use crate::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());

    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        // Adaptive retries share one client-side rate limiter per region across all objects,
        // so throttling slows the whole operator down instead of multiplying retries.
        .retry_config(aws_config::retry::RetryConfig::adaptive())
        .load()
        .await;
    let region = settings
        .region
        .clone()
        .or_else(|| aws.region().map(ToString::to_string))
        .ok_or_else(|| anyhow::anyhow!("no AWS region: set --region, DEFAULT_REGION or AWS_REGION"))?;
    let ec2 = Ec2Regions::from_sdk_config(aws, region.clone(), metrics.clone());

    let cluster_id = match &settings.cluster_id {
        Some(id) => id.clone(),
        None => Api::<Namespace>::all(client.clone())
            .get("kube-system")
            .await?
            .uid()
            .ok_or_else(|| anyhow::anyhow!("kube-system namespace has no uid"))?,
    };
    info!(%region, %cluster_id, namespace = ?settings.namespace, "starting");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ec2-operator".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        ec2,
        metrics.clone(),
        settings.timing(),
        cluster_id,
    ));

    let api: Api<Ec2Instance> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut watch = watcher::Config::default();
    if let Some(selector) = &settings.selector {
        watch = watch.labels(selector);
    }

    // After each inventory poll every object is reconciled against it (from memory).
    let (polled, polls) = tokio::sync::mpsc::channel::<()>(1);
    let poll_ctx = ctx.clone();
    let poll = async move {
        let mut ticker = tokio::time::interval(poll_ctx.timing.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match poll_ctx.inventory.refresh(&poll_ctx.ec2, &poll_ctx.metrics).await {
                Ok(count) => {
                    tracing::debug!(count, "inventory polled");
                    let _ = polled.try_send(());
                }
                Err(err) => {
                    poll_ctx.metrics.error(err.metric_label());
                    warn!(error = %err, "inventory poll failed");
                }
            }
        }
    };

    let controller = Controller::new(api, watch)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .reconcile_all_on(ReceiverStream::new(polls))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile round ended with an error");
            }
        });

    tokio::select! {
        _ = controller => info!("controller stopped"),
        _ = poll => {},
        served = crate::admin::serve(settings.admin_addr, metrics) => served?,
    }
    Ok(())
}
