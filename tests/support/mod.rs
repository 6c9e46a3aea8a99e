//! Harness for the tests that run against the test bed (`make test` starts it): a kube client
//! on the real API server, an EC2 client on LocalStack, and the operator as a real process.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, Instance};
use ec2_operator::crd::Ec2Instance;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Seed ids the bed wrote (localstack/seed.py).
pub struct Seed {
    pub image_id: String,
    pub subnet_id: String,
    pub security_group_id: String,
    pub security_group_id_2: String,
    pub key_name: String,
}

pub struct Bed {
    pub client: Client,
    /// LocalStack itself: consistent at once, the truth the tests check.
    pub ec2: aws_sdk_ec2::Client,
    /// The AWS-strict EC2 in front of it, as the operator sees EC2.
    pub strict_ec2: aws_sdk_ec2::Client,
    pub seed: Seed,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: these tests need the test bed; run `make test`"))
}

impl Bed {
    pub async fn connect() -> Bed {
        var("KUBECONFIG");
        var("AWS_ENDPOINT_URL");
        let client = Client::try_default().await.expect("kube client from KUBECONFIG");
        let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let strict = aws_sdk_ec2::config::Builder::from(&aws)
            .endpoint_url(var("STRICT_EC2_ENDPOINT"))
            .build();
        let bed = Bed {
            client,
            ec2: aws_sdk_ec2::Client::new(&aws),
            strict_ec2: aws_sdk_ec2::Client::from_conf(strict),
            seed: Seed {
                image_id: var("TEST_IMAGE_ID"),
                subnet_id: var("TEST_SUBNET_ID"),
                security_group_id: var("TEST_SECURITY_GROUP_ID"),
                security_group_id_2: var("TEST_SECURITY_GROUP_ID_2"),
                key_name: var("TEST_KEY_NAME"),
            },
        };
        bed.install_crd().await;
        bed
    }

    /// The committed CRD, applied server-side (idempotent across tests).
    async fn install_crd(&self) {
        let yaml = std::fs::read_to_string(format!("{ROOT}/crds/ec2instance.yaml")).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        crds.patch(&crd.name_any(), &PatchParams::apply("e2e").force(), &Patch::Apply(&crd))
            .await
            .expect("CRD applies");
        eventually("CRD established", Duration::from_secs(30), || async {
            let crd = crds.get(&crd.name_any()).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }

    /// A fresh namespace for one test.
    pub async fn namespace(&self, test: &str) -> String {
        let name = format!("e2e-{test}-{}", fastrand::u32(..) % 100_000);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace");
        name
    }

    pub fn api(&self, namespace: &str) -> Api<Ec2Instance> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// A manifest as a user writes it, with the seeded AMI.
    pub fn manifest(&self, name: &str, spec: serde_json::Value) -> Ec2Instance {
        let mut spec = spec;
        let fields = spec.as_object_mut().expect("spec is an object");
        fields.entry("imageId").or_insert(self.seed.image_id.clone().into());
        fields.entry("instanceType").or_insert("t3.micro".into());
        serde_json::from_value(serde_json::json!({
            "apiVersion": "k106.com/v1alpha1",
            "kind": "Ec2Instance",
            "metadata": { "name": name },
            "spec": spec,
        }))
        .expect("valid manifest")
    }

    pub async fn create(&self, namespace: &str, name: &str, spec: serde_json::Value) -> Ec2Instance {
        self.api(namespace)
            .create(&PostParams::default(), &self.manifest(name, spec))
            .await
            .expect("object is accepted")
    }

    /// A merge patch of the spec, as `kubectl patch --type merge` sends it.
    pub async fn patch_spec(&self, namespace: &str, name: &str, spec: serde_json::Value) -> Ec2Instance {
        self.api(namespace)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .expect("patch is accepted")
    }

    /// Waits until the object is Ready for its current generation.
    pub async fn ready(&self, namespace: &str, name: &str) -> Ec2Instance {
        let api = self.api(namespace);
        eventually(
            &format!("{namespace}/{name} Ready"),
            Duration::from_secs(60),
            || async {
                let obj = api.get(name).await.ok()?;
                let status = obj.status.as_ref()?;
                let ready = status.condition("Ready")?;
                (ready.status == "True" && ready.observed_generation == obj.metadata.generation).then_some(obj)
            },
        )
        .await
    }

    /// The instance the object's status names now.
    pub async fn instance_id(&self, namespace: &str, name: &str) -> String {
        let obj = self.api(namespace).get(name).await.expect("object");
        obj.status
            .and_then(|s| s.instance_id)
            .unwrap_or_else(|| panic!("{namespace}/{name}: no instance in status"))
    }

    /// Deletes the object and waits until it is gone (its finalizer released).
    pub async fn delete(&self, namespace: &str, name: &str) {
        let api = self.api(namespace);
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete is accepted");
        eventually(&format!("{namespace}/{name} gone"), Duration::from_secs(60), || async {
            api.get_opt(name).await.expect("get").is_none().then_some(())
        })
        .await;
    }

    /// The instance as LocalStack holds it.
    pub async fn instance(&self, id: &str) -> Instance {
        one_instance(&self.ec2, id).await
    }

    /// The instance as the strict EC2 shows it (with the fields it emulates).
    pub async fn shown(&self, id: &str) -> Instance {
        one_instance(&self.strict_ec2, id).await
    }

    /// Every instance ever launched with this owner tag, terminated ones too.
    pub async fn all_instances_of(&self, uid: &str) -> Vec<Instance> {
        let out = self
            .ec2
            .describe_instances()
            .filters(Filter::builder().name("tag:k106.com/owner-uid").values(uid).build())
            .max_results(1000)
            .send()
            .await
            .expect("describe by tag");
        out.reservations()
            .iter()
            .flat_map(|r| r.instances().iter().cloned())
            .collect()
    }

    /// AMIs LocalStack knows besides the seeded one (its built-in catalogue), `n` of them, the
    /// same ones on every run: for changes of `imageId`.
    pub async fn other_images(&self, n: usize) -> Vec<String> {
        let out = self.ec2.describe_images().send().await.expect("describe images");
        let mut ids: Vec<String> = out
            .images()
            .iter()
            .filter_map(|image| image.image_id())
            .filter(|id| *id != self.seed.image_id && id.len() == "ami-12345678".len())
            .map(str::to_owned)
            .collect();
        ids.sort();
        assert!(ids.len() >= n, "LocalStack knows only {ids:?}");
        ids.truncate(n);
        ids
    }

    /// Instances (any state but terminated) carrying this owner tag.
    pub async fn live_instances_of(&self, uid: &str) -> Vec<Instance> {
        let mut all = self.all_instances_of(uid).await;
        all.retain(|i| state_of(i) != "terminated");
        all
    }

    /// An instance launched by someone else (straight at LocalStack, no operator tags) in the
    /// seeded subnet, once the strict EC2 the operator reads shows it.
    pub async fn launch_outside(&self, instance_type: &str) -> String {
        let run = self
            .ec2
            .run_instances()
            .image_id(&self.seed.image_id)
            .instance_type(instance_type.into())
            .subnet_id(&self.seed.subnet_id)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect("run an instance");
        let id = run.instances()[0].instance_id().unwrap().to_owned();
        eventually("the strict EC2 shows it", Duration::from_secs(30), || async {
            let shown = self
                .strict_ec2
                .describe_instances()
                .instance_ids(&id)
                .send()
                .await
                .ok()?;
            (!shown.reservations().is_empty()).then_some(())
        })
        .await;
        id
    }

    /// Creates the object with `annotations`.
    pub async fn create_annotated(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
        spec: serde_json::Value,
    ) -> Ec2Instance {
        let mut obj = self.manifest(name, spec);
        obj.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self.api(namespace)
            .create(&PostParams::default(), &obj)
            .await
            .expect("object is accepted")
    }

    /// Waits until the object's Ready condition, for its current generation, passes `check`.
    pub async fn condition_until(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Condition) -> bool,
    ) -> Ec2Instance {
        let api = self.api(namespace);
        eventually(what, Duration::from_secs(60), || async {
            let obj = api.get(name).await.ok()?;
            let ready = obj.status.as_ref()?.condition("Ready")?;
            (ready.observed_generation == obj.metadata.generation && check(ready)).then_some(obj)
        })
        .await
    }

    /// Creates an object from raw JSON, as kubectl would send it (the typed client cannot express
    /// most invalid manifests). A null spec field is dropped, i.e. left out.
    pub async fn raw_create(&self, ns: &str, mut body: serde_json::Value) -> Result<(), String> {
        use kube::api::{DynamicObject, GroupVersionKind};
        let (resource, _) = kube::discovery::pinned_kind(
            &self.client,
            &GroupVersionKind::gvk("k106.com", "v1alpha1", "Ec2Instance"),
        )
        .await
        .unwrap();
        if let Some(spec) = body["spec"].as_object_mut() {
            spec.retain(|_, v| !v.is_null());
        }
        let api: kube::Api<DynamicObject> = kube::Api::namespaced_with(self.client.clone(), ns, &resource);
        let obj: DynamicObject = serde_json::from_value(body).unwrap();
        api.create(&Default::default(), &obj)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The error admission answers to creating `name` with the fields of `spec` set over a valid
    /// manifest (a null field is left out); panics if the object is accepted.
    pub async fn create_rejected(&self, ns: &str, name: &str, spec: &serde_json::Value) -> String {
        let mut body = serde_json::to_value(self.manifest(name, serde_json::json!({}))).unwrap();
        for (key, value) in spec.as_object().unwrap() {
            body["spec"][key] = value.clone();
        }
        self.raw_create(ns, body)
            .await
            .expect_err(&format!("{name}: {spec} should be rejected"))
    }

    /// The error admission answers to a merge patch of `name`'s spec; panics if it is accepted.
    pub async fn patch_rejected(&self, ns: &str, name: &str, spec: &serde_json::Value) -> String {
        let patch = Patch::Merge(serde_json::json!({ "spec": spec }));
        self.api(ns)
            .patch(name, &PatchParams::default(), &patch)
            .await
            .expect_err(&format!("{name}: {spec} should be rejected"))
            .to_string()
    }

    /// `kubectl` against the bed, returning stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl").args(args).output().expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

async fn one_instance(ec2: &aws_sdk_ec2::Client, id: &str) -> Instance {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("describe");
    out.reservations()[0].instances()[0].clone()
}

pub fn state_of(instance: &Instance) -> String {
    instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default()
}

pub fn tags_of(instance: &Instance) -> BTreeMap<String, String> {
    instance
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Polls `check` every 250 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator binary, running against the bed for one namespace. Killed (SIGKILL) on drop.
pub struct Operator {
    child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(namespace: &str) -> Operator {
        Self::start_with(namespace, &[])
    }

    pub fn start_with(namespace: &str, extra: &[&str]) -> Operator {
        Self::spawn(namespace, extra, &[])
    }

    /// Runs the operator with this kubeconfig instead of the bed's admin one.
    pub fn start_as(namespace: &str, kubeconfig: &std::path::Path) -> Operator {
        Self::spawn(namespace, &[], &[("KUBECONFIG", kubeconfig.to_str().unwrap())])
    }

    /// Runs the operator with these environment variables changed.
    pub fn start_with_env(namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        Self::spawn(namespace, extra, env)
    }

    fn spawn(namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        // Short intervals, so the tests see drift and transitions within seconds.
        let tuned = ["--poll-interval-seconds", "2", "--transition-interval-seconds", "1"];
        let args: Vec<&str> = tuned.iter().chain(extra).copied().collect();
        Self::spawn_bin(
            env!("CARGO_BIN_EXE_ec2-operator"),
            namespace,
            &args,
            env,
            "info,ec2_operator=debug",
        )
    }

    /// This operator binary (e.g. the release build) with its default intervals, as users run it.
    pub fn start_bin(bin: &str, namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        Self::spawn_bin(bin, namespace, extra, env, "info")
    }

    fn spawn_bin(bin: &str, namespace: &str, extra: &[&str], env: &[(&str, &str)], log_level: &str) -> Operator {
        let admin_port = free_port();
        let dir = PathBuf::from(ROOT).join(".cache/e2e-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{namespace}-{}.log", fastrand::u32(..)));
        // The operator talks to the AWS-strict EC2 in front of LocalStack; the tests check the
        // outcome straight at LocalStack (AWS_ENDPOINT_URL), which is consistent at once.
        let strict = var("STRICT_EC2_ENDPOINT");
        let child = Command::new(bin)
            .env("AWS_ENDPOINT_URL", strict)
            .envs(env.iter().copied())
            .args(["--namespace", namespace, "--cluster-id", &format!("e2e-{namespace}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(extra)
            .env("RUST_LOG", log_level)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .expect("operator starts");
        Operator { child, admin_port, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as Kubernetes stops a pod, and the exit status once it has ended.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        self.child.wait().expect("the operator exits")
    }

    /// SIGKILL: no chance to clean up, as in a node failure.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The value of one metric line from /metrics, e.g. `ec2_operator_ec2_requests_total{operation="RunInstances"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let body = http_get(self.admin_port, "/metrics").await;
        body.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// The HTTP status code of an admin endpoint, e.g. `/readyz`.
    pub async fn probe(&self, path: &str) -> u16 {
        let answer = http_get(self.admin_port, path).await;
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status line in: {answer}"))
    }

    /// The raw HTTP answer of an admin endpoint, headers included.
    pub async fn get(&self, path: &str) -> String {
        http_get(self.admin_port, path).await
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sum of every series of a metric family, e.g. all `ec2_operator_ec2_requests_total{...}`.
    pub async fn metric_sum(&self, family: &str) -> f64 {
        let body = http_get(self.admin_port, "/metrics").await;
        body.lines()
            .filter(|line| line.starts_with(family))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private strict EC2 in front of LocalStack with faults of its own, for one test; killed on drop.
pub struct FaultyEc2 {
    child: Child,
    pub endpoint: String,
}

impl FaultyEc2 {
    /// `faults`: strict_ec2.py flags, e.g. `["--fault-rate", "0.2", "--drop-rate", "0.1"]`.
    pub fn start(faults: &[&str]) -> FaultyEc2 {
        let port = free_port();
        let dir = PathBuf::from(ROOT).join(".cache/e2e-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join(format!("faulty-ec2-{port}.log"))).unwrap();
        let child = Command::new("python3")
            .arg(format!("{ROOT}/localstack/strict_ec2.py"))
            .args(["--port", &port.to_string(), "--upstream", &var("AWS_ENDPOINT_URL")])
            .args(faults)
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("strict_ec2.py starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "strict_ec2.py did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        FaultyEc2 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// What it counted: requests by action, and `fault:*` / `strict:*` answers.
    pub async fn stats(&self) -> serde_json::Value {
        strict_stats(&self.endpoint).await
    }
}

/// What a strict_ec2.py at `endpoint` counted: requests by action, and `fault:*` / `strict:*` answers.
/// A control request to the bed's strict EC2 (e.g. `/_strict/interrupt?instance=i-...`); its answer.
pub async fn strict_control(path: &str) -> String {
    let endpoint = var("STRICT_EC2_ENDPOINT");
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let answer = http_request(port, "POST", path).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{path}: {answer}"
    );
    answer
}

pub async fn strict_stats(endpoint: &str) -> serde_json::Value {
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let answer = http_get(port, "/_strict/stats").await;
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("{}")).unwrap_or_default()
}

impl Drop for FaultyEc2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn http_get(port: u16, path: &str) -> String {
    http_request(port, "GET", path).await
}

async fn http_request(port: u16, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut body = String::new();
            stream.read_to_string(&mut body).await.unwrap();
            return body;
        }
        assert!(Instant::now() < deadline, "admin server on port {port} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A kubeconfig for the bed's API server that authenticates with `token` only.
pub fn kubeconfig_with_token(token: &str, name: &str) -> PathBuf {
    let admin = kube::config::Kubeconfig::read().expect("admin kubeconfig");
    let cluster = admin.clusters[0].clone();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster.name, "user": "sa"}}],
        "current-context": "sa",
    });
    let path = PathBuf::from(ROOT).join(format!(".cache/e2e-logs/kubeconfig-{name}"));
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    path
}
