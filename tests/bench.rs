//! `make bench` and `make bench-peers`: fleet scale, measured on the test bed.
//!
//! `bench_fleet` runs, for N objects (`N`, default 1000), each phase on a fresh LocalStack (its
//! cost grows with every instance it ever held) and through a strict EC2 of its own (the bed's
//! settings: 2 s until a new instance is visible), counting every EC2 request there:
//! 1. floor: the emulator alone, driven by a small client as fast as it answers;
//! 2. one object on an idle operator; 3. N objects created at once; 4. steady state;
//! 5. drift (1% terminated and 1% stopped out of band); 6. all deleted; 7. two shards.
//!
//! `bench_peers` runs create, steady, a drift probe and delete for this operator and for ACK's
//! ec2-controller (`hack/ack.sh`), each alone on a fresh LocalStack, and ACK once more with its
//! resync set to this operator's poll interval.
//!
//! Figures go to stdout and to `bench/results/` as JSON (`hack/bench.sh` plots them). Absolute
//! times on a shared machine are noise: compare them to the floor of the same run.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, InstanceStateName, ResourceType, Tag, TagSpecification};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::{Bed, FaultyEc2, Operator, ROOT};

/// Requests a client keeps in flight: the operator's default reconcile concurrency.
const IN_FLIGHT: usize = 16;
/// The operator's default poll interval, which ACK's resync is set to for the fair comparison.
const POLL_SECONDS: u64 = 30;
const PHASE_TIMEOUT: Duration = Duration::from_secs(3600);

struct Settings {
    n: usize,
    steady: Duration,
    settle: Duration,
    drift_window: Duration,
    /// Run phase 7 (it creates and deletes the fleet once more).
    shards: bool,
    operator_bin: String,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str, default: u64| -> u64 {
            std::env::var(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        };
        Settings {
            n: number("N", 1000) as usize,
            steady: Duration::from_secs(number("BENCH_STEADY_SECONDS", 300)),
            settle: Duration::from_secs(number("BENCH_SETTLE_SECONDS", 60)),
            drift_window: Duration::from_secs(number("BENCH_DRIFT_WINDOW_SECONDS", 600)),
            shards: number("BENCH_SHARDS", 1) == 1,
            operator_bin: std::env::var("BENCH_OPERATOR_BIN")
                .unwrap_or_else(|_| format!("{ROOT}/target/release/ec2-operator")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test bed and a release build; run by `make bench`"]
async fn bench_fleet() {
    let settings = Settings::from_env();
    let n = settings.n;
    let bed = Bed::connect().await;
    let mut report = BTreeMap::<&str, Value>::new();
    // What is measured, as it was when the run began.
    report.insert("versions", versions(&bed).await);
    println!("bench: N={n}, steady {} s", settings.steady.as_secs());

    // Written after every phase: a long run stopped midway keeps what it measured.
    report.insert("n", json!(n));
    let save = |report: &BTreeMap<&str, Value>| write_results("fleet", n, report);

    // 1. The floor, for one instance and for N.
    let subnet = fresh_localstack();
    let proxy = FaultyEc2::start(&[]);
    let floor_one = floor(&bed, &proxy, 1, &subnet).await;
    let floor_n = floor(&bed, &proxy, n, &subnet).await;
    println!("floor: one {floor_one:?}\nfloor: N {floor_n:?}");
    drop(proxy);
    report.insert("floor_seconds", json!(floor_n.create_seconds));
    report.insert("floor_delete_seconds", json!(floor_n.delete_seconds));
    report.insert("floor_calls", json!(floor_n.calls));
    report.insert("single_floor_seconds", json!(floor_one.create_seconds));
    save(&report);

    // 2-6. One operator through everything, on a fresh emulator.
    let subnet = fresh_localstack();
    let ours = Run::start(&bed, Kind::Ours, &settings, "bench", subnet).await;
    let single = ours.create(&bed, "one", 1, &BTreeMap::new()).await;
    ours.delete_all(&bed).await;
    report.insert("single_ready_seconds", json!(single.seconds));

    let create = ours.create(&bed, "obj", n, &BTreeMap::new()).await;
    report.insert("create_seconds", json!(create.seconds));
    report.insert(
        "create_ratio_to_floor",
        json!(ratio(create.seconds, floor_n.create_seconds)),
    );
    report.insert("ready_p50_seconds", json!(create.percentile(50)));
    report.insert("ready_p90_seconds", json!(create.percentile(90)));
    report.insert("ready_p99_seconds", json!(create.percentile(99)));
    report.insert("ready_curve_seconds", json!(create.curve()));
    report.insert("create_calls", json!(create.calls));
    report.insert("create_status_writes", json!(create.status_writes));
    report.insert("create_cpu_seconds", json!(create.cpu_seconds));
    report.insert("peak_rss_mib", json!(ours.process().hwm_mib));
    report.insert("peak_rss_mib_after_create", json!(ours.process().hwm_mib));
    save(&report);

    let steady = ours.steady(&bed, settings.settle, settings.steady).await;
    report.insert("steady_polls", json!(steady.polls));
    report.insert("steady_calls", json!(steady.calls));
    report.insert("steady_calls_per_poll", json!(steady.calls_per_poll()));
    report.insert("steady_status_writes", json!(steady.status_writes));
    report.insert("cpu_seconds_steady_per_minute", json!(steady.cpu_per_minute()));
    report.insert("peak_rss_mib", json!(ours.process().hwm_mib));
    report.insert("peak_rss_mib_after_steady", json!(ours.process().hwm_mib));
    save(&report);

    let drift = ours.drift(&bed, settings.drift_window).await;
    report.insert("drift_instances", json!(drift.instances));
    report.insert("drift_repaired", json!(drift.repaired));
    report.insert("drift_repair_seconds", json!(drift.seconds));
    report.insert("drift_calls", json!(drift.calls));
    report.insert("peak_rss_mib", json!(ours.process().hwm_mib));
    report.insert("peak_rss_mib_after_drift", json!(ours.process().hwm_mib));
    save(&report);

    let delete = ours.delete_all(&bed).await;
    report.insert("delete_seconds", json!(delete.seconds));
    report.insert(
        "delete_ratio_to_floor",
        json!(ratio(delete.seconds, floor_n.delete_seconds)),
    );
    report.insert("delete_calls", json!(delete.calls));
    report.insert("peak_rss_mib", json!(ours.process().hwm_mib));
    report.insert("peak_rss_mib_after_delete", json!(ours.process().hwm_mib));
    report.insert("localstack_instances_at_end", json!(localstack_instances(&bed).await));
    drop(ours);
    save(&report);

    // 7. Two operators on disjoint label selectors, each through its own strict EC2.
    if settings.shards {
        let subnet = fresh_localstack();
        report.insert("shards", shards(&bed, &settings, &subnet).await);
    }

    print_table(&report);
    write_results("fleet", n, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test bed, a release build and ACK (hack/ack.sh build); run by `make bench-peers`"]
async fn bench_peers() {
    let settings = Settings::from_env();
    let bed = Bed::connect().await;
    let versions = versions(&bed).await;
    let mut rows = BTreeMap::<&str, Value>::new();
    println!("bench-peers: N={}, steady {} s", settings.n, settings.steady.as_secs());
    install_ack_crds();
    for (row, kind) in [
        ("ec2-operator", Kind::Ours),
        ("ack-ec2-controller", Kind::Ack { resync_seconds: 0 }),
        (
            "ack-ec2-controller-resync-30s",
            Kind::Ack {
                resync_seconds: POLL_SECONDS,
            },
        ),
    ] {
        let subnet = fresh_localstack();
        let run = Run::start(&bed, kind, &settings, "peers", subnet).await;
        let create = run.create(&bed, "obj", settings.n, &BTreeMap::new()).await;
        let steady = run.steady(&bed, settings.settle, settings.steady).await;
        let drift = run.drift(&bed, settings.drift_window).await;
        let delete = run.delete_all(&bed).await;
        let process = run.process();
        drop(run);
        let figures = json!({
            "create_seconds": create.seconds,
            "ready_p50_seconds": create.percentile(50),
            "ready_p99_seconds": create.percentile(99),
            "create_calls": create.calls,
            "steady_calls": steady.calls,
            "steady_calls_per_minute": steady.calls_per_minute(),
            "steady_status_writes": steady.status_writes,
            "cpu_seconds_steady_per_minute": steady.cpu_per_minute(),
            "drift_instances": drift.instances,
            "drift_repaired": drift.repaired,
            "drift_repair_seconds": drift.seconds,
            "delete_seconds": delete.seconds,
            "delete_calls": delete.calls,
            "instances_left_running": delete.instances_left,
            "peak_rss_mib": process.hwm_mib,
        });
        println!("{row}: {figures}");
        rows.insert(row, figures);
    }
    let mut report = BTreeMap::<&str, Value>::new();
    report.insert("n", json!(settings.n));
    report.insert("steady_seconds", json!(settings.steady.as_secs()));
    report.insert("rows", json!(rows));
    report.insert("versions", versions);
    write_results("peers", settings.n, &report);
}

// ---------------------------------------------------------------------------------------------
// The controllers under test

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ours,
    /// ACK's ec2-controller; a resync of 0 is its default (10 hours).
    Ack {
        resync_seconds: u64,
    },
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Ours => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("k106.com", "v1alpha1", "Ec2Instance"),
                "ec2instances",
            ),
            Kind::Ack { .. } => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("ec2.services.k8s.aws", "v1alpha1", "Instance"),
                "instances",
            ),
        }
    }

    fn manifest(self, bed: &Bed, name: &str, labels: &BTreeMap<String, String>, subnet: &str) -> DynamicObject {
        let image = &bed.seed.image_id;
        let spec = match self {
            Kind::Ours => json!({ "imageId": image, "instanceType": "t3.micro", "subnetId": subnet }),
            Kind::Ack { .. } => json!({ "imageID": image, "instanceType": "t3.micro", "subnetID": subnet }),
        };
        let mut object = DynamicObject::new(name, &self.resource()).data(json!({ "spec": spec }));
        object.metadata.labels = Some(labels.clone());
        object
    }

    /// Ready for the current generation: this operator's `Ready` condition, ACK's `ResourceSynced`.
    fn ready(self, object: &DynamicObject) -> bool {
        let status = &object.data["status"];
        let condition = match self {
            Kind::Ours => "Ready",
            Kind::Ack { .. } => "ACK.ResourceSynced",
        };
        let ready = status["conditions"]
            .as_array()
            .is_some_and(|all| all.iter().any(|c| c["type"] == condition && c["status"] == "True"));
        match self {
            Kind::Ours => ready && status["observedGeneration"].as_i64() == object.metadata.generation,
            Kind::Ack { .. } => ready && status["state"]["name"] == "running",
        }
    }

    fn instance_id(self, object: &DynamicObject) -> Option<String> {
        let field = match self {
            Kind::Ours => "instanceId",
            Kind::Ack { .. } => "instanceID",
        };
        object.data["status"][field].as_str().map(str::to_owned)
    }
}

/// One controller process, its private strict EC2, and a watch on its objects.
struct Run {
    kind: Kind,
    ns: String,
    /// Where its instances go (room for the whole fleet).
    subnet: String,
    api: Api<DynamicObject>,
    proxy: FaultyEc2,
    process: Process,
    track: Arc<Mutex<Track>>,
    watch: tokio::task::JoinHandle<()>,
}

enum Process {
    Ours(Operator),
    Ack(Child),
}

impl Run {
    async fn start(bed: &Bed, kind: Kind, settings: &Settings, label: &str, subnet: String) -> Run {
        let ns = bed.namespace(label).await;
        let proxy = FaultyEc2::start(&[]);
        let env = [("AWS_ENDPOINT_URL", proxy.endpoint.as_str())];
        let process = match kind {
            Kind::Ours => Process::Ours(Operator::start_bin(&settings.operator_bin, &ns, &[], &env)),
            Kind::Ack { resync_seconds } => Process::Ack(start_ack(&ns, &proxy.endpoint, resync_seconds)),
        };
        let api = Api::namespaced_with(bed.client.clone(), &ns, &kind.resource());
        let track = Arc::new(Mutex::new(Track::default()));
        let watch = tokio::spawn(follow(api.clone(), kind, track.clone()));
        Run {
            kind,
            ns,
            subnet,
            api,
            proxy,
            process,
            track,
            watch,
        }
    }

    fn pid(&self) -> u32 {
        match &self.process {
            Process::Ours(operator) => operator.pid(),
            Process::Ack(child) => child.id(),
        }
    }

    fn process(&self) -> ProcessStats {
        ProcessStats::of(self.pid())
    }

    async fn calls(&self) -> u64 {
        calls(&self.proxy.stats().await)
    }

    /// `count` objects named `{prefix}-{i}`, created at once; returns when every one is Ready.
    async fn create(&self, bed: &Bed, prefix: &str, count: usize, labels: &BTreeMap<String, String>) -> Created {
        let before = self.snapshot(bed).await;
        let started = Instant::now();
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:05}")).collect();
        let created_at = create_all(bed, &self.api, self.kind, &names, labels, &self.subnet).await;
        wait_for(&format!("{count} {prefix} objects Ready"), || {
            let track = self.track.lock().unwrap();
            names.iter().all(|name| track.ready_at.contains_key(name))
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let mut ready: Vec<f64> = {
            let track = self.track.lock().unwrap();
            names
                .iter()
                .map(|name| (track.ready_at[name] - created_at[name]).as_secs_f64())
                .collect()
        };
        ready.sort_by(f64::total_cmp);
        let after = self.snapshot(bed).await;
        let created = Created {
            seconds,
            ready,
            calls: after.calls - before.calls,
            status_writes: after.status_writes - before.status_writes,
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        };
        println!(
            "{:?} create {count}: {:.1} s, p50 {:.1} s, p99 {:.1} s, {} EC2 calls, {} status writes",
            self.kind,
            seconds,
            created.percentile(50),
            created.percentile(99),
            created.calls,
            created.status_writes
        );
        created
    }

    /// Nothing changes: after `settle`, what a window of `length` costs.
    async fn steady(&self, bed: &Bed, settle: Duration, length: Duration) -> Steady {
        tokio::time::sleep(settle).await;
        let before = self.snapshot(bed).await;
        tokio::time::sleep(length).await;
        let after = self.snapshot(bed).await;
        let steady = Steady {
            seconds: length.as_secs_f64(),
            polls: after.polls - before.polls,
            calls: after.calls - before.calls,
            status_writes: after.status_writes - before.status_writes,
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        };
        println!("{:?} steady: {steady:?}", self.kind);
        steady
    }

    /// 1% of the instances terminated and 1% stopped behind the controller's back: how long until
    /// each terminated one is replaced by a running instance and each stopped one runs again.
    async fn drift(&self, bed: &Bed, window: Duration) -> Drift {
        let ids: Vec<(String, String)> = {
            let track = self.track.lock().unwrap();
            let mut all: Vec<_> = track.instance.iter().map(|(n, i)| (n.clone(), i.clone())).collect();
            all.sort();
            all
        };
        let share = (ids.len() / 100).max(1);
        let terminated: Vec<_> = ids[..share].to_vec();
        let stopped: Vec<_> = ids[share..2 * share].to_vec();
        let before = self.calls().await;
        bed.ec2
            .terminate_instances()
            .set_instance_ids(Some(terminated.iter().map(|(_, id)| id.clone()).collect()))
            .send()
            .await
            .expect("terminate out of band");
        bed.ec2
            .stop_instances()
            .set_instance_ids(Some(stopped.iter().map(|(_, id)| id.clone()).collect()))
            .send()
            .await
            .expect("stop out of band");
        let started = Instant::now();
        let mut repaired = 0;
        while started.elapsed() < window {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let current: Vec<String> = {
                let track = self.track.lock().unwrap();
                terminated
                    .iter()
                    .chain(&stopped)
                    .filter_map(|(name, _)| track.instance.get(name).cloned())
                    .collect()
            };
            let states = states_of(bed, &current).await;
            let running = |id: &str| states.get(id) == Some(&InstanceStateName::Running);
            let replaced = {
                let track = self.track.lock().unwrap();
                terminated
                    .iter()
                    .filter(|(name, old)| track.instance.get(name).is_some_and(|new| new != old && running(new)))
                    .count()
            };
            let restarted = stopped.iter().filter(|(_, id)| running(id)).count();
            repaired = replaced + restarted;
            if repaired == terminated.len() + stopped.len() {
                break;
            }
        }
        let drift = Drift {
            instances: terminated.len() + stopped.len(),
            repaired,
            seconds: (repaired == terminated.len() + stopped.len()).then(|| started.elapsed().as_secs_f64()),
            calls: self.calls().await - before,
        };
        println!("{:?} drift: {drift:?}", self.kind);
        drift
    }

    /// Every object deleted at once: how long until all are gone, and what is left running.
    async fn delete_all(&self, bed: &Bed) -> Deleted {
        let before = self.calls().await;
        let started = Instant::now();
        let names: Vec<String> = self.track.lock().unwrap().present.iter().cloned().collect();
        let params = DeleteParams::default();
        futures::stream::iter(names.iter().map(|name| self.api.delete(name, &params)))
            .buffer_unordered(IN_FLIGHT * 2)
            .try_collect::<Vec<_>>()
            .await
            .expect("objects delete");
        wait_for(&format!("{} objects gone", names.len()), || {
            self.track.lock().unwrap().present.is_empty()
        })
        .await;
        let deleted = Deleted {
            seconds: started.elapsed().as_secs_f64(),
            calls: self.calls().await - before,
            instances_left: live_instances(bed).await,
        };
        println!("{:?} delete {}: {deleted:?}", self.kind, names.len());
        deleted
    }

    async fn snapshot(&self, bed: &Bed) -> Snapshot {
        let polls = match &self.process {
            Process::Ours(operator) => {
                operator
                    .metric_sum("ec2_operator_inventory_refresh_duration_seconds_count")
                    .await
            }
            Process::Ack(_) => 0.0,
        };
        Snapshot {
            calls: self.calls().await,
            status_writes: status_writes(&bed.client, &self.kind.resource()).await,
            cpu_seconds: self.process().cpu_seconds,
            polls: polls as u64,
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.watch.abort();
        if let Process::Ack(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
        println!("{:?} in namespace {} stopped", self.kind, self.ns);
    }
}

/// ACK as `hack/ack.sh run` starts it: its defaults (one worker), this namespace only.
fn start_ack(ns: &str, endpoint: &str, resync_seconds: u64) -> Child {
    let log = std::fs::File::create(format!("{ROOT}/.cache/e2e-logs/ack-{ns}.log")).unwrap();
    Command::new(format!("{ROOT}/hack/ack.sh"))
        .arg("run")
        .env("ACK_ENDPOINT_URL", endpoint)
        .env("ACK_WATCH_NAMESPACE", ns)
        .env("ACK_RESYNC_SECONDS", resync_seconds.to_string())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("hack/ack.sh run starts ACK")
}

// ---------------------------------------------------------------------------------------------
// What the watch saw

#[derive(Default)]
struct Track {
    present: HashSet<String>,
    /// When each object was first seen Ready.
    ready_at: HashMap<String, Instant>,
    /// The instance each object's status names now.
    instance: HashMap<String, String>,
}

async fn follow(api: Api<DynamicObject>, kind: Kind, track: Arc<Mutex<Track>>) {
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let mut track = track.lock().unwrap();
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let name = object.name_any();
                if kind.ready(&object) {
                    track.ready_at.entry(name.clone()).or_insert_with(Instant::now);
                }
                if let Some(id) = kind.instance_id(&object) {
                    track.instance.insert(name.clone(), id);
                }
                track.present.insert(name);
            }
            Ok(watcher::Event::Delete(object)) => {
                track.present.remove(&object.name_any());
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

struct Snapshot {
    calls: u64,
    status_writes: u64,
    cpu_seconds: f64,
    polls: u64,
}

struct Created {
    seconds: f64,
    /// Each object's creation to Ready, sorted.
    ready: Vec<f64>,
    calls: u64,
    status_writes: u64,
    cpu_seconds: f64,
}

impl Created {
    fn percentile(&self, p: usize) -> f64 {
        let index = ((self.ready.len() * p).div_ceil(100)).clamp(1, self.ready.len()) - 1;
        self.ready[index]
    }

    /// Time-to-Ready at every whole percentile, 0 to 100: the curve the plot draws.
    fn curve(&self) -> Vec<f64> {
        (0..=100).map(|p| self.percentile(p)).collect()
    }
}

#[derive(Debug)]
struct Steady {
    seconds: f64,
    polls: u64,
    calls: u64,
    status_writes: u64,
    cpu_seconds: f64,
}

impl Steady {
    fn calls_per_poll(&self) -> Option<f64> {
        (self.polls > 0).then(|| self.calls as f64 / self.polls as f64)
    }

    fn calls_per_minute(&self) -> f64 {
        self.calls as f64 * 60.0 / self.seconds
    }

    fn cpu_per_minute(&self) -> f64 {
        self.cpu_seconds * 60.0 / self.seconds
    }
}

#[derive(Debug)]
struct Drift {
    instances: usize,
    repaired: usize,
    /// None when not everything was repaired within the window.
    seconds: Option<f64>,
    calls: u64,
}

#[derive(Debug)]
struct Deleted {
    seconds: f64,
    calls: u64,
    instances_left: usize,
}

#[derive(Debug)]
struct FloorRun {
    create_seconds: f64,
    delete_seconds: f64,
    calls: u64,
}

struct ProcessStats {
    cpu_seconds: f64,
    hwm_mib: f64,
}

impl ProcessStats {
    /// CPU time (user + system) and peak resident memory, from /proc.
    fn of(pid: u32) -> ProcessStats {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        ProcessStats {
            // Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the command name.
            cpu_seconds: (ticks(11) + ticks(12)) / clock_ticks(),
            hwm_mib: hwm_kib / 1024.0,
        }
    }
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

// ---------------------------------------------------------------------------------------------
// Phases that are not one controller

/// The emulator alone: `n` RunInstances (one instance each, with a ClientToken, as the operator
/// sends them), describes until all run, `n` TerminateInstances, describes until all are gone.
async fn floor(bed: &Bed, proxy: &FaultyEc2, n: usize, subnet: &str) -> FloorRun {
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&aws)
            .endpoint_url(&proxy.endpoint)
            .build(),
    );
    let run = format!("{}", fastrand::u32(..));
    let before = calls(&proxy.stats().await);
    let started = Instant::now();
    let ids: Vec<String> = futures::stream::iter((0..n).map(|i| {
        let ec2 = ec2.clone();
        let token = format!("floor-{run}-{i}");
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key("bench-floor").value(&run).build())
            .build();
        let image = bed.seed.image_id.clone();
        async move {
            let out = ec2
                .run_instances()
                .image_id(image)
                .instance_type("t3.micro".into())
                .subnet_id(subnet)
                .min_count(1)
                .max_count(1)
                .client_token(token)
                .tag_specifications(tags)
                .send()
                .await
                .expect("RunInstances");
            out.instances()[0].instance_id().unwrap().to_owned()
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect()
    .await;
    let filter = Filter::builder().name("tag:bench-floor").values(&run).build();
    wait_for_states(&ec2, &filter, n, &[InstanceStateName::Running]).await;
    let create_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    futures::stream::iter(ids.iter().map(|id| ec2.terminate_instances().instance_ids(id).send()))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await
        .expect("TerminateInstances");
    wait_for_states(&ec2, &filter, n, &[InstanceStateName::Terminated]).await;
    FloorRun {
        create_seconds,
        delete_seconds: started.elapsed().as_secs_f64(),
        calls: calls(&proxy.stats().await) - before,
    }
}

/// Describes (every page, 1,000 a page) until `n` instances matching `filter` are in `states`.
async fn wait_for_states(ec2: &aws_sdk_ec2::Client, filter: &Filter, n: usize, states: &[InstanceStateName]) {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let pages: Vec<_> = ec2
            .describe_instances()
            .filters(filter.clone())
            .max_results(1000)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .expect("DescribeInstances");
        let matching = pages
            .iter()
            .flat_map(|page| page.reservations())
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|s| states.contains(s)))
            .count();
        if matching == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "floor: {matching} of {n} instances in {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two operators, selectors `shard=a` and `shard=b`, half the objects each.
async fn shards(bed: &Bed, settings: &Settings, subnet: &str) -> Value {
    let ns = bed.namespace("shards").await;
    let start = |shard: &str| {
        let proxy = FaultyEc2::start(&[]);
        let env = [("AWS_ENDPOINT_URL", proxy.endpoint.as_str())];
        let selector = format!("shard={shard}");
        let operator = Operator::start_bin(&settings.operator_bin, &ns, &["--selector", &selector], &env);
        (proxy, operator)
    };
    let (proxy_a, operator_a) = start("a");
    let (proxy_b, operator_b) = start("b");
    let api = Api::namespaced_with(bed.client.clone(), &ns, &Kind::Ours.resource());
    let track = Arc::new(Mutex::new(Track::default()));
    let watch = tokio::spawn(follow(api.clone(), Kind::Ours, track.clone()));

    let started = Instant::now();
    for shard in ["a", "b"] {
        let labels = BTreeMap::from([("shard".to_owned(), shard.to_owned())]);
        let names: Vec<String> = (0..settings.n / 2).map(|i| format!("{shard}-{i:05}")).collect();
        create_all(bed, &api, Kind::Ours, &names, &labels, subnet).await;
    }
    let total = settings.n / 2 * 2;
    wait_for(&format!("{total} sharded objects Ready"), || {
        track.lock().unwrap().ready_at.len() == total
    })
    .await;
    let create_seconds = started.elapsed().as_secs_f64();
    let launches = |stats: &Value| stats["RunInstances"].as_u64().unwrap_or(0);
    let (stats_a, stats_b) = (proxy_a.stats().await, proxy_b.stats().await);

    let started = Instant::now();
    let names: Vec<String> = track.lock().unwrap().present.iter().cloned().collect();
    for name in &names {
        api.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    wait_for("sharded objects gone", || track.lock().unwrap().present.is_empty()).await;
    let delete_seconds = started.elapsed().as_secs_f64();
    let figures = json!({
        "create_seconds": create_seconds,
        "delete_seconds": delete_seconds,
        "run_instances": [launches(&stats_a), launches(&stats_b)],
        "calls": [calls(&proxy_a.stats().await), calls(&proxy_b.stats().await)],
        "peak_rss_mib": [ProcessStats::of(operator_a.pid()).hwm_mib, ProcessStats::of(operator_b.pid()).hwm_mib],
        "instances_left_running": live_instances(bed).await,
    });
    println!("shards: {figures}");
    watch.abort();
    figures
}

// ---------------------------------------------------------------------------------------------
// The bed

async fn create_all(
    bed: &Bed,
    api: &Api<DynamicObject>,
    kind: Kind,
    names: &[String],
    labels: &BTreeMap<String, String>,
    subnet: &str,
) -> HashMap<String, Instant> {
    futures::stream::iter(names.iter().map(|name| {
        let object = kind.manifest(bed, name, labels, subnet);
        async move {
            api.create(&PostParams::default(), &object)
                .await
                .expect("object creates");
            (name.clone(), Instant::now())
        }
    }))
    .buffer_unordered(IN_FLIGHT * 2)
    .collect()
    .await
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "bench: gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ACK's Instance CRD (and its common ones) from the module `hack/ack.sh build` fetched.
fn install_ack_crds() {
    let out = Command::new(format!("{ROOT}/hack/ack.sh"))
        .arg("crds")
        .output()
        .expect("hack/ack.sh crds");
    assert!(
        out.status.success(),
        "hack/ack.sh crds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for crd in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let status = Command::new("kubectl")
            .args(["apply", "--server-side", "-f", crd])
            .stdout(Stdio::null())
            .status()
            .expect("kubectl runs");
        assert!(status.success(), "kubectl apply -f {crd}");
    }
    let status = Command::new("kubectl")
        .args([
            "wait",
            "--for=condition=Established",
            "crd/instances.ec2.services.k8s.aws",
            "--timeout=60s",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("kubectl runs");
    assert!(status.success(), "ACK's Instance CRD is established");
}

/// Restarts LocalStack (and the bed's strict EC2) with nothing in it: its describes cost more
/// with every instance it ever held, so every run starts from the same empty emulator. Returns
/// the seeded subnet with room for the fleet (its id is new with every start).
fn fresh_localstack() -> String {
    for step in ["down", "up"] {
        let status = Command::new(format!("{ROOT}/localstack/localstack.sh"))
            .arg(step)
            .stdout(Stdio::null())
            .status()
            .expect("localstack.sh runs");
        assert!(status.success(), "localstack.sh {step} failed");
    }
    let env = Command::new(format!("{ROOT}/localstack/localstack.sh"))
        .arg("env")
        .output()
        .expect("localstack.sh runs");
    String::from_utf8_lossy(&env.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("export TEST_FLEET_SUBNET_ID="))
        .expect("the seed prints TEST_FLEET_SUBNET_ID")
        .trim_matches(['"', '\''])
        .to_owned()
}

/// States of these instances, straight from LocalStack.
async fn states_of(bed: &Bed, ids: &[String]) -> HashMap<String, InstanceStateName> {
    if ids.is_empty() {
        return HashMap::new();
    }
    let pages: Vec<_> = bed
        .ec2
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .unwrap_or_default();
    pages
        .iter()
        .flat_map(|page| page.reservations())
        .flat_map(|r| r.instances())
        .filter_map(|i| Some((i.instance_id()?.to_owned(), i.state()?.name()?.clone())))
        .collect()
}

/// Instances LocalStack holds in any state, and those not yet terminated.
async fn localstack_instances(bed: &Bed) -> usize {
    all_instances(bed).await.len()
}

async fn live_instances(bed: &Bed) -> usize {
    all_instances(bed)
        .await
        .iter()
        .filter(|(_, state)| *state != InstanceStateName::Terminated)
        .count()
}

async fn all_instances(bed: &Bed) -> Vec<(String, InstanceStateName)> {
    let pages: Vec<_> = bed
        .ec2
        .describe_instances()
        .max_results(1000)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .expect("DescribeInstances at LocalStack");
    pages
        .iter()
        .flat_map(|page| page.reservations())
        .flat_map(|r| r.instances())
        .filter_map(|i| Some((i.instance_id()?.to_owned(), i.state()?.name()?.clone())))
        .collect()
}

/// EC2 requests a strict EC2 counted, all actions (its `x:y` keys count answers, not requests).
fn calls(stats: &Value) -> u64 {
    stats
        .as_object()
        .map(|all| {
            all.iter()
                .filter(|(key, _)| !key.contains(':'))
                .filter_map(|(_, count)| count.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes to objects of this resource the API server has served (status and metadata, any
/// verb that changes an object), from its own request counter: no-op writes count too.
async fn status_writes(client: &Client, resource: &ApiResource) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("kube-apiserver /metrics");
    let group = format!("group=\"{}\"", resource.group);
    let plural = format!("resource=\"{}\"", resource.plural);
    text.lines()
        .filter(|line| line.starts_with("apiserver_request_total{"))
        .filter(|line| line.contains(&group) && line.contains(&plural) && line.contains("subresource=\"status\""))
        .filter(|line| {
            ["PATCH", "APPLY", "UPDATE"]
                .iter()
                .any(|v| line.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn versions(bed: &Bed) -> Value {
    let command = |program: &str, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .current_dir(ROOT)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let apiserver = bed
        .client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    let pins = std::fs::read_to_string(format!("{ROOT}/localstack/requirements.txt")).unwrap_or_default();
    let localstack = pins
        .lines()
        .find(|l| l.starts_with("localstack-core"))
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "ec2_operator": format!("{} ({})", env!("CARGO_PKG_VERSION"), command("git", &["describe", "--always", "--dirty"])),
        "kube_apiserver": apiserver,
        "localstack": localstack,
        "strict_ec2": "localstack/strict_ec2.py, bed settings (visibility 2 s, terminated kept 60 s)",
        "ack_ec2_controller": "v1.9.2",
        "rustc": command("rustc", &["--version"]),
        "machine": format!("{} CPUs, {cpu}", command("nproc", &[])),
    })
}

fn print_table(report: &BTreeMap<&str, Value>) {
    println!("\nfigure                             value");
    for (key, value) in report {
        if matches!(*key, "ready_curve_seconds" | "versions") {
            continue;
        }
        let shown = match value.as_f64() {
            Some(v) if value.is_f64() => format!("{v:.2}"),
            _ => value.to_string(),
        };
        println!("{key:<34} {shown}");
    }
}

fn write_results(name: &str, n: usize, report: &BTreeMap<&str, Value>) {
    let dir = format!("{ROOT}/bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    let text = serde_json::to_string_pretty(report).unwrap() + "\n";
    let latest = if name == "fleet" { "latest" } else { name };
    for file in [format!("{dir}/{latest}.json"), format!("{dir}/{name}-n{n}.json")] {
        std::fs::write(&file, &text).unwrap();
        println!("bench: wrote {file}");
    }
}
