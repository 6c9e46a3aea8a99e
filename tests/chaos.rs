//! `make test-chaos`: the promise (one instance per object, none leaked, nothing stuck) under
//! faults, crashes and restarts, next to a fault-free run of the same waves.
//!
//! 200 objects are created, changed (type, tags, desiredState, userData) and deleted in three
//! waves. In the chaos run the operator talks to a strict EC2 that fails 15% of requests with
//! 5xx, drops 5% of answers after carrying the call out, throttles each action at 20 requests/s
//! and adds 50 ms to each; the operator is SIGKILLed 20 times (every other kill right after a
//! RunInstances reached EC2) and restarted; kube-apiserver is restarted once on the same etcd;
//! LocalStack is frozen (SIGSTOP) for 30 s. Then every live object must be Ready on an instance
//! that matches its spec, every deleted object gone, and LocalStack must hold exactly one
//! non-terminated instance per live object and none for deleted ones.
//!
//! Not part of `make test` (its name starts with `chaos_`, which `hack/test.sh` skips).
//! `CHAOS_OBJECTS` (default 200) and `CHAOS_SEED` change the size and the random choices.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, Instance};
use ec2_operator::crd::Ec2Instance;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use support::{Bed, FaultyEc2, Operator, ROOT, state_of, tags_of};

const KILLS: usize = 20;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(900);

/// What happened to one run, as the closing line reports it.
#[derive(Debug, Default)]
struct Outcome {
    duplicates: usize,
    leaks: usize,
    stuck: usize,
    ready: usize,
    live: usize,
    calls: u64,
    kills: usize,
    seconds: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test bed and ~10 minutes; run by `make test-chaos`"]
async fn chaos_many_objects_faults_kills_and_restarts_end_with_one_instance_each() {
    let objects: usize = std::env::var("CHAOS_OBJECTS").map_or(200, |n| n.parse().expect("CHAOS_OBJECTS is a number"));
    let seed: u64 = std::env::var("CHAOS_SEED").map_or_else(|_| fastrand::u64(..), |s| s.parse().expect("a number"));
    println!("chaos: {objects} objects, seed {seed} (CHAOS_SEED={seed} repeats the random choices)");
    let bed = Bed::connect().await;

    fastrand::seed(seed);
    let calm = run(&bed, objects, None).await;
    println!("fault-free: {calm:?}");

    fastrand::seed(seed);
    // AWS shows a terminated instance for about an hour; the operator waits up to
    // VISIBILITY_GRACE (600 s) for an instance it launched but never saw. With the bed's 60 s a
    // deletion whose terminate answer was dropped, slowed by kills and freezes past that minute,
    // found its instance forgotten and waited out the whole grace.
    let proxy = FaultyEc2::start(&[
        "--terminated-seconds",
        "900",
        "--fault-rate",
        "0.15",
        "--drop-rate",
        "0.05",
        "--throttle-rps",
        "20",
        "--latency-ms",
        "50",
    ]);
    let chaos = run(&bed, objects, Some(&proxy)).await;
    println!("chaos run: {chaos:?}");

    println!(
        "chaos: duplicates={} leaks={} stuck={} ready={}/{} calls={} fault_free_calls={} kills={}",
        chaos.duplicates, chaos.leaks, chaos.stuck, chaos.ready, chaos.live, chaos.calls, calm.calls, chaos.kills
    );
    for (name, outcome) in [("fault-free", &calm), ("chaos", &chaos)] {
        assert_eq!(outcome.duplicates, 0, "{name}: duplicate instances");
        assert_eq!(outcome.leaks, 0, "{name}: leaked instances");
        assert_eq!(outcome.stuck, 0, "{name}: objects stuck");
        assert_eq!(outcome.ready, outcome.live, "{name}: objects not Ready");
    }
    assert_eq!(chaos.kills, KILLS, "the operator was killed as planned");
    assert!(
        chaos.calls <= 3 * calm.calls,
        "faults cost {} EC2 calls against {} without: more than 3x",
        chaos.calls,
        calm.calls
    );
}

/// One run of the waves in a namespace of its own; with `chaos`, through that faulty EC2 and with
/// kills and restarts, else through the bed's strict EC2 with nothing injected.
async fn run(bed: &Bed, objects: usize, chaos: Option<&FaultyEc2>) -> Outcome {
    let started = Instant::now();
    let ns = bed.namespace(if chaos.is_some() { "chaos" } else { "calm" }).await;
    let calm_proxy;
    let proxy = match chaos {
        Some(proxy) => proxy,
        None => {
            calm_proxy = FaultyEc2::start(&[]);
            &calm_proxy
        }
    };
    let env = [("AWS_ENDPOINT_URL", proxy.endpoint.as_str())];
    let operator = Operator::start_with_env(&ns, &[], &env);
    let kills = if chaos.is_some() { KILLS } else { 0 };
    let monkey = tokio::spawn(monkey(ns.clone(), proxy.endpoint.clone(), operator, kills));
    let mut fleet = Fleet::new(bed, &ns);

    // Wave 1: the first half, a tenth of them stopped.
    fleet.create_range(0, objects / 2).await;
    tokio::time::sleep(Duration::from_secs(15)).await;

    // Wave 2: another quarter; changes and deletions among the first half.
    let tenth = objects / 20; // 10 of 200
    fleet.create_range(objects / 2, objects * 3 / 4).await;
    for i in 0..tenth {
        fleet.change(i, serde_json::json!({ "instanceType": "t3.small" })).await;
        fleet
            .change(
                tenth + i,
                serde_json::json!({ "tags": { "wave": "2", "team": "blue" } }),
            )
            .await;
        let flipped = if fleet.stopped(2 * tenth + i) {
            "Running"
        } else {
            "Stopped"
        };
        fleet
            .change(2 * tenth + i, serde_json::json!({ "desiredState": flipped }))
            .await;
    }
    fleet.delete_once_launched(3 * tenth..5 * tenth).await;
    if chaos.is_some() {
        restart_apiserver();
    }

    // Wave 3: the last quarter, a tenth of it deleted right after its creation; more changes,
    // and deletions of launched objects from wave 2.
    fleet.create_range(objects * 3 / 4, objects).await;
    for i in objects - tenth..objects {
        fleet.delete(i).await;
    }
    for i in 5 * tenth..6 * tenth {
        fleet
            .change(
                i,
                serde_json::json!({ "userData": format!("#!/bin/sh\necho wave 3 {i}\n") }),
            )
            .await;
        fleet
            .change(tenth + i, serde_json::json!({ "instanceType": "t3.medium" }))
            .await;
    }
    fleet.delete_once_launched(objects / 2..objects / 2 + tenth).await;
    if chaos.is_some() {
        freeze_localstack(Duration::from_secs(30)).await;
    }

    // The monkey's last restart runs undisturbed to the end.
    let (operator, kills) = monkey.await.expect("the monkey finishes");
    let mut outcome = fleet.converge().await;
    drop(operator);
    let stats = proxy.stats().await;
    println!("{ns}: the strict EC2 counted {stats}");
    outcome.calls = calls(&stats);
    outcome.kills = kills;
    outcome.seconds = started.elapsed().as_secs();
    outcome
}

/// The objects of one run as the test made them: what each should be, and which were deleted.
struct Fleet<'a> {
    bed: &'a Bed,
    ns: String,
    api: Api<Ec2Instance>,
    specs: BTreeMap<usize, serde_json::Value>,
    uids: BTreeMap<usize, String>,
    deleted: BTreeSet<usize>,
}

impl<'a> Fleet<'a> {
    fn new(bed: &'a Bed, ns: &str) -> Self {
        Fleet {
            bed,
            ns: ns.to_owned(),
            api: bed.api(ns),
            specs: BTreeMap::new(),
            uids: BTreeMap::new(),
            deleted: BTreeSet::new(),
        }
    }

    fn name(i: usize) -> String {
        format!("chaos-{i:03}")
    }

    fn stopped(&self, i: usize) -> bool {
        self.specs[&i]["desiredState"] == "Stopped"
    }

    async fn create_range(&mut self, from: usize, to: usize) {
        for i in from..to {
            let state = if i % 10 == 9 { "Stopped" } else { "Running" };
            let spec = serde_json::json!({
                "instanceType": "t3.micro",
                "desiredState": state,
                "tags": { "wave": "1", "index": i.to_string() },
            });
            let manifest = self.bed.manifest(&Self::name(i), spec.clone());
            let created = retry(&format!("create {}", Self::name(i)), || async {
                match self.api.create(&PostParams::default(), &manifest).await {
                    Ok(obj) => Ok(obj),
                    // A retried create whose first attempt went through.
                    Err(kube::Error::Api(e)) if e.code == 409 => self.api.get(&Self::name(i)).await,
                    Err(e) => Err(e),
                }
            })
            .await;
            self.uids.insert(i, created.uid().expect("uid"));
            self.specs.insert(i, spec);
        }
    }

    async fn change(&mut self, i: usize, change: serde_json::Value) {
        let patch = Patch::Merge(serde_json::json!({ "spec": change }));
        let (name, params) = (Self::name(i), PatchParams::default());
        retry(&format!("patch {name}"), || self.api.patch(&name, &params, &patch)).await;
        let spec = self.specs.get_mut(&i).expect("changed objects exist");
        for (key, value) in change.as_object().expect("an object") {
            spec[key] = value.clone();
        }
    }

    /// Deletes objects `range` once their status names an instance (or after a minute for all
    /// of them): deletions that must terminate something, not ones that find nothing to do.
    async fn delete_once_launched(&mut self, range: std::ops::Range<usize>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in range {
            while Instant::now() < deadline {
                let launched = self
                    .api
                    .get(&Self::name(i))
                    .await
                    .ok()
                    .and_then(|o| o.status?.instance_id);
                if launched.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            self.delete(i).await;
        }
    }

    async fn delete(&mut self, i: usize) {
        retry(&format!("delete {}", Self::name(i)), || async {
            match self.api.delete(&Self::name(i), &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await;
        self.deleted.insert(i);
    }

    /// Waits until every live object is Ready for its generation and every deleted one is gone
    /// (or the timeout passes), then counts what LocalStack holds.
    async fn converge(&self) -> Outcome {
        let live: BTreeSet<usize> = self
            .uids
            .keys()
            .filter(|i| !self.deleted.contains(i))
            .copied()
            .collect();
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let (ready, stuck) = loop {
            let (ready, stuck) = self.census(&live).await;
            if (ready == live.len() && stuck == 0) || Instant::now() > deadline {
                break (ready, stuck);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let instances = self.instances().await;
        let mut outcome = Outcome {
            ready,
            stuck: stuck + live.len() - ready,
            live: live.len(),
            ..Default::default()
        };
        let owner_of: BTreeMap<&str, usize> = self.uids.iter().map(|(i, uid)| (uid.as_str(), *i)).collect();
        let mut per_object: BTreeMap<usize, Vec<&Instance>> = BTreeMap::new();
        for instance in instances.iter().filter(|i| state_of(i) != "terminated") {
            let tags = tags_of(instance);
            match tags
                .get("k106.com/owner-uid")
                .and_then(|uid| owner_of.get(uid.as_str()))
            {
                Some(i) if live.contains(i) => per_object.entry(*i).or_default().push(instance),
                _ => outcome.leaks += 1,
            }
        }
        for (i, instances) in &per_object {
            outcome.duplicates += instances.len().saturating_sub(1);
            if let [instance] = instances.as_slice() {
                self.matches_spec(*i, instance);
            }
        }
        let missing: Vec<_> = live.iter().filter(|i| !per_object.contains_key(i)).collect();
        assert!(
            missing.is_empty(),
            "{}: live objects without an instance: {missing:?}",
            self.ns
        );
        outcome
    }

    /// (Ready for their generation among `live`, deleted objects still present).
    async fn census(&self, live: &BTreeSet<usize>) -> (usize, usize) {
        let Ok(list) = self.api.list(&ListParams::default()).await else {
            return (0, self.deleted.len());
        };
        let mut ready = 0;
        let mut stuck = 0;
        for obj in list {
            let i: usize = obj.name_any()["chaos-".len()..].parse().expect("named by the test");
            if self.deleted.contains(&i) {
                stuck += 1;
            } else if live.contains(&i) && is_ready(&obj) {
                ready += 1;
            }
        }
        (ready, stuck)
    }

    /// The instance LocalStack holds for object `i` has the type, state and tags the spec asks for.
    fn matches_spec(&self, i: usize, instance: &Instance) {
        let spec = &self.specs[&i];
        let name = Self::name(i);
        let instance_type = instance.instance_type().map(|t| t.as_str().to_owned());
        assert_eq!(instance_type.as_deref(), spec["instanceType"].as_str(), "{name}: type");
        let state = if spec["desiredState"] == "Stopped" {
            "stopped"
        } else {
            "running"
        };
        assert_eq!(state_of(instance), state, "{name}: state");
        let tags = tags_of(instance);
        for (key, value) in spec["tags"].as_object().expect("tags") {
            assert_eq!(tags.get(key).map(String::as_str), value.as_str(), "{name}: tag {key}");
        }
    }

    /// Every instance this run's operator tagged with its cluster id, from LocalStack itself.
    async fn instances(&self) -> Vec<Instance> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .bed
                .ec2
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("tag:k106.com/cluster-id")
                        .values(format!("e2e-{}", self.ns))
                        .build(),
                )
                .set_next_token(token)
                .max_results(1000)
                .send()
                .await
                .expect("LocalStack answers");
            found.extend(page.reservations().iter().flat_map(|r| r.instances().iter().cloned()));
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return found;
            }
        }
    }
}

fn is_ready(obj: &Ec2Instance) -> bool {
    obj.status
        .as_ref()
        .and_then(|s| s.condition("Ready"))
        .is_some_and(|c| c.status == "True" && c.observed_generation == obj.metadata.generation)
}

/// Retries a call to the API server for up to 2 minutes (it may be restarting).
async fn retry<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// EC2 requests the proxy received, faulted ones included (each costs the account's rate budget).
fn calls(stats: &serde_json::Value) -> u64 {
    stats
        .as_object()
        .expect("stats are an object")
        .iter()
        .filter(|(key, _)| !key.contains(':'))
        .filter_map(|(_, count)| count.as_u64())
        .sum()
}

/// Kills the operator `planned` times and restarts it each time; every other kill comes right after
/// a RunInstances reached EC2, so the launch happened and the operator never saw its answer.
/// Returns the last operator and the number of kills.
async fn monkey(ns: String, endpoint: String, mut operator: Operator, planned: usize) -> (Operator, usize) {
    let env = [("AWS_ENDPOINT_URL", endpoint.as_str())];
    let mut kills = 0;
    while kills < planned {
        if kills % 2 == 0 {
            let before = run_instances(&endpoint).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            while run_instances(&endpoint).await == before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(1_000..8_000))).await;
        }
        operator.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(200..2_000))).await;
        operator = Operator::start_with_env(&ns, &[], &env);
    }
    (operator, kills)
}

async fn run_instances(endpoint: &str) -> u64 {
    support::strict_stats(endpoint).await["RunInstances"]
        .as_u64()
        .unwrap_or(0)
}

/// kube-apiserver stopped and started again on the same etcd (tests/cluster/cluster.sh).
fn restart_apiserver() {
    let status = std::process::Command::new(format!("{ROOT}/tests/cluster/cluster.sh"))
        .arg("restart-apiserver")
        .status()
        .expect("cluster.sh runs");
    assert!(status.success(), "kube-apiserver restarted");
}

/// LocalStack stopped (SIGSTOP) for `how_long`, then continued: EC2 unreachable, every call
/// times out, and nothing LocalStack holds is lost.
async fn freeze_localstack(how_long: Duration) {
    let pid = std::env::var("LOCALSTACK_PID").expect("LOCALSTACK_PID: the bed's env names LocalStack's pid");
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid}");
    };
    signal("STOP");
    tokio::time::sleep(how_long).await;
    signal("CONT");
}
