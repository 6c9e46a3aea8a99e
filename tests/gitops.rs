//! GitOps with a real Argo CD: Ec2Instance objects synced from a git repository, judged healthy
//! or not by `deploy/argocd` in Argo CD's own Lua engine. Run with `make test-gitops`, which
//! builds Argo CD and starts it on the bed (hack/argocd.sh); plain `cargo test` skips these.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ec2_operator::crd::Ec2Instance;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use support::{Bed, Operator, ROOT, eventually, state_of};

const MINUTE: Duration = Duration::from_secs(60);
const HEALTH_DIR: &str = "deploy/argocd/resource_customizations/k106.com/Ec2Instance";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make test-gitops`"))
}

/// Every case of `health_test.yaml` (Argo CD's layout for resource customizations), through
/// Argo CD's own Lua engine: `argocd admin settings resource-overrides health` with our argocd-cm.
#[test]
#[ignore = "needs Argo CD (hack/argocd.sh build): run `make test-gitops`"]
fn gitops_health_script_gives_argo_cd_the_status_and_message_of_every_case() {
    let table: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(format!("{ROOT}/{HEALTH_DIR}/health_test.yaml")).unwrap())
            .expect("health_test.yaml parses");
    let cases = table["tests"].as_array().expect("a list of tests");
    assert!(
        cases.len() >= 10,
        "Healthy, Progressing, Degraded, Suspended and no status are covered"
    );
    for case in cases {
        let input = format!("{ROOT}/{HEALTH_DIR}/{}", case["inputPath"].as_str().unwrap());
        let out = Command::new(format!("{ROOT}/hack/argocd.sh"))
            .args(["health", &input])
            .output()
            .expect("hack/argocd.sh runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{input}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{input}: no {name} in Argo CD's answer:\n{stdout}"))
                .to_owned()
        };
        let expected = &case["healthStatus"];
        assert_eq!(field("STATUS"), expected["status"].as_str().unwrap(), "{input}");
        assert_eq!(field("MESSAGE"), expected["message"].as_str().unwrap(), "{input}");
    }
}

/// A clone of the bed's git repository (hack/argocd.sh up serves it with `git daemon`), writing
/// in a directory of its own: Applications of earlier runs on the same repository never see it.
struct Repo {
    dir: PathBuf,
    path: String,
}

impl Repo {
    fn clone_of(url: &str, path: &str) -> Repo {
        let dir = std::env::temp_dir().join(format!("gitops-{}", fastrand::u32(..)));
        git(Path::new("/"), &["clone", "-q", url, dir.to_str().unwrap()]);
        for (key, value) in [("user.name", "gitops test"), ("user.email", "gitops@k106.test")] {
            git(&dir, &["config", key, value]);
        }
        std::fs::create_dir_all(dir.join(path)).unwrap();
        Repo { dir, path: path.into() }
    }

    fn write(&self, file: &str, manifest: &Value) {
        let text = serde_json::to_string_pretty(manifest).unwrap();
        std::fs::write(self.dir.join(&self.path).join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(&self.path).join(file)).unwrap();
    }

    fn commit(&self, message: &str) {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "-m", message]);
        git(&self.dir, &["push", "-q", "origin", "HEAD:main"]);
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An Argo CD Application, read through the API server as Argo CD writes it.
struct App {
    api: Api<DynamicObject>,
    name: String,
}

impl App {
    /// An Application of `path` in the bed's repository, deploying to `namespace`.
    async fn create(bed: &Bed, name: &str, path: &str, namespace: &str) -> App {
        let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application");
        let api = Api::namespaced_with(
            bed.client.clone(),
            &var("ARGOCD_NAMESPACE"),
            &ApiResource::from_gvk(&gvk),
        );
        let app: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": { "name": name },
            "spec": {
                "project": "default",
                "source": { "repoURL": var("ARGOCD_GIT_URL"), "path": path, "targetRevision": "main" },
                "destination": { "server": var("ARGOCD_DEST_SERVER"), "namespace": namespace },
                "syncPolicy": {
                    "automated": { "prune": true, "selfHeal": true },
                    // The bed has no garbage collector: a foreground prune would never finish.
                    "syncOptions": ["PrunePropagationPolicy=background"],
                },
            },
        }))
        .unwrap();
        api.patch(name, &PatchParams::apply("gitops-test"), &Patch::Apply(&app))
            .await
            .expect("Application applies");
        App { api, name: name.into() }
    }

    /// Ask Argo CD to compare with git now rather than at its next resync.
    async fn refresh(&self) {
        let annotate = json!({ "metadata": { "annotations": { "argocd.argoproj.io/refresh": "normal" } } });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&annotate))
            .await
            .expect("refresh annotation");
    }

    async fn status(&self) -> Value {
        let app = self.api.get(&self.name).await.expect("Application");
        app.data.get("status").cloned().unwrap_or(Value::Null)
    }

    /// Waits until `check` holds for the Application's status, and returns that status.
    async fn until(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        eventually(what, timeout, || async {
            let status = self.status().await;
            check(&status).then_some(status)
        })
        .await
    }

    async fn synced_and_healthy(&self, revision: &str) -> Value {
        self.until(
            &format!("{} Synced and Healthy at {revision}", self.name),
            3 * MINUTE,
            |s| {
                s["sync"]["status"] == "Synced"
                    && s["sync"]["revision"] == revision
                    && s["health"]["status"] == "Healthy"
            },
        )
        .await
    }
}

/// `(health status, message)` Argo CD reports for one Ec2Instance of the Application.
fn health_of<'a>(status: &'a Value, name: &str) -> (&'a str, &'a str) {
    let resource = status["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["kind"] == "Ec2Instance" && r["name"] == name);
    let health = resource.map(|r| &r["health"]).unwrap_or(&Value::Null);
    (
        health["status"].as_str().unwrap_or(""),
        health["message"].as_str().unwrap_or(""),
    )
}

fn head(repo: &Repo) -> String {
    let out = Command::new("git")
        .current_dir(&repo.dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
#[ignore = "needs the test bed and Argo CD: run `make test-gitops`"]
async fn gitops_argo_cd_syncs_changes_reports_health_and_prunes_without_a_perpetual_diff() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("gitops").await;
    let _operator = Operator::start(&ns);
    let name = format!("fleet-{}", fastrand::u32(..) % 100_000);
    let repo = Repo::clone_of(&var("ARGOCD_GIT_URL"), &name);
    let manifest = |name: &str, spec: Value| {
        let mut object = serde_json::to_value(bed.manifest(name, spec)).unwrap();
        object["metadata"]["namespace"] = json!(ns);
        object
    };
    let subnet = bed.seed.subnet_id.clone();
    for name in ["web", "api", "worker"] {
        repo.write(
            &format!("{name}.json"),
            &manifest(name, json!({ "subnetId": subnet, "tags": { "app": name } })),
        );
    }
    repo.commit("three instances");
    let app = App::create(&bed, &name, &name, &ns).await;

    // 1. Synced, and Healthy through our health script once the operator has them running.
    let status = app.synced_and_healthy(&head(&repo)).await;
    for name in ["web", "api", "worker"] {
        let (health, message) = health_of(&status, name);
        assert_eq!(health, "Healthy", "{name}: {message}");
        assert!(message.contains("is running"), "{name}: {message}");
        let id = bed.instance_id(&ns, name).await;
        assert_eq!(state_of(&bed.instance(&id).await), "running");
    }
    println!("gitops: 3 objects Synced/Healthy");

    // 2. A new instance type in git: stop, modify, start; back to Synced/Healthy.
    let web_id = bed.instance_id(&ns, "web").await;
    repo.write(
        "web.json",
        &manifest(
            "web",
            json!({ "subnetId": subnet, "instanceType": "t3.small", "tags": { "app": "web" } }),
        ),
    );
    repo.commit("web: t3.small");
    app.refresh().await;
    let resized = eventually("web resized and running", 3 * MINUTE, || async {
        let instance = bed.instance(&web_id).await;
        let resized = instance.instance_type().map(|t| t.as_str()) == Some("t3.small");
        (resized && state_of(&instance) == "running").then_some(instance)
    })
    .await;
    assert_eq!(
        resized.instance_id(),
        Some(web_id.as_str()),
        "modified in place, not replaced"
    );
    let status = app.synced_and_healthy(&head(&repo)).await;
    println!(
        "gitops: instanceType change Synced/Healthy: {:?}",
        health_of(&status, "web")
    );

    // No perpetual diff: the operator writes only status (server-side apply), so Argo CD has
    // nothing to sync again; a hard refresh of the unchanged repo leaves every object as it was.
    let versions = |objects: Vec<Ec2Instance>| -> Vec<(String, Option<String>, Option<i64>)> {
        objects
            .into_iter()
            .map(|o| (o.name_any(), o.metadata.resource_version, o.metadata.generation))
            .collect()
    };
    let before_history = app.status().await["history"].as_array().map_or(0, Vec::len);
    let before = versions(bed.api(&ns).list(&Default::default()).await.unwrap().items);
    app.refresh().await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let status = app.status().await;
    assert_eq!(
        status["sync"]["status"], "Synced",
        "no diff after a refresh: {}",
        status["sync"]
    );
    let after = versions(bed.api(&ns).list(&Default::default()).await.unwrap().items);
    assert_eq!(before, after, "a sync of an unchanged repo changes nothing");
    assert_eq!(
        status["history"].as_array().map_or(0, Vec::len),
        before_history,
        "no new sync operation"
    );
    println!("gitops: unchanged repo: Synced, 0 objects changed, no new sync");

    // 3. A spec EC2 rejects: Degraded, with EC2's own message.
    repo.write(
        "bad.json",
        &manifest("bad", json!({ "imageId": "ami-0000000000badbad1" })),
    );
    repo.commit("an image EC2 does not have");
    app.refresh().await;
    let status = app
        .until("bad Degraded", 3 * MINUTE, |s| health_of(s, "bad").0 == "Degraded")
        .await;
    let (_, message) = health_of(&status, "bad");
    assert!(message.contains("InvalidAMIID.NotFound"), "{message}");
    assert_eq!(status["health"]["status"], "Degraded", "the app shows it");
    println!("gitops: bad AMI Degraded: {message}");

    // 4. Paused through git: Argo CD shows the object Suspended.
    let mut paused = manifest("api", json!({ "subnetId": subnet, "tags": { "app": "api" } }));
    paused["metadata"]["annotations"] = json!({ "k106.com/paused": "true" });
    repo.write("api.json", &paused);
    repo.commit("api: paused");
    app.refresh().await;
    let status = app
        .until("api Suspended", 3 * MINUTE, |s| health_of(s, "api").0 == "Suspended")
        .await;
    println!("gitops: paused: {:?}", health_of(&status, "api"));

    // 5. A new image through git under updatePolicy: Replace: a new instance, the old one ended,
    //    Synced and Healthy again with no diff.
    let api_id = bed.instance_id(&ns, "api").await;
    let image = bed.other_images(1).await.remove(0);
    let replaced = json!({ "subnetId": subnet, "imageId": image, "updatePolicy": "Replace", "tags": { "app": "api" } });
    repo.write("api.json", &manifest("api", replaced));
    repo.commit("api: a new image, replaced");
    app.refresh().await;
    let new_id = eventually("api on a new instance", 3 * MINUTE, || async {
        let obj = bed.api(&ns).get("api").await.ok()?;
        let id = obj.status?.instance_id?;
        (id != api_id).then_some(id)
    })
    .await;
    let new = bed.instance(&new_id).await;
    assert_eq!(new.image_id(), Some(image.as_str()));
    eventually("the old api instance terminated", MINUTE, || async {
        (state_of(&bed.instance(&api_id).await) == "terminated").then_some(())
    })
    .await;
    // The app as a whole stays Degraded by `bad` (until step 7).
    let revision = head(&repo);
    let status = app
        .until("api Synced and Healthy", 3 * MINUTE, |s| {
            s["sync"]["status"] == "Synced"
                && s["sync"]["revision"] == revision.as_str()
                && health_of(s, "api").0 == "Healthy"
        })
        .await;
    println!("gitops: replaced {api_id} by {new_id}: {:?}", health_of(&status, "api"));

    // 6. Observe-only through git: the spec no longer matches, so Degraded with the plan, and
    //    nothing changes in EC2.
    let observed = json!({ "subnetId": subnet, "instanceType": "t3.large", "managementPolicy": "ObserveOnly", "tags": { "app": "web" } });
    repo.write("web.json", &manifest("web", observed));
    repo.commit("web: observe only");
    app.refresh().await;
    let status = app
        .until("web Degraded with a plan", 3 * MINUTE, |s| {
            health_of(s, "web").1.contains("would")
        })
        .await;
    let (health, message) = health_of(&status, "web");
    assert_eq!(health, "Degraded", "{message}");
    assert!(message.contains("modify instanceType t3.small→t3.large"), "{message}");
    let web = bed.instance(&web_id).await;
    assert_eq!(web.instance_type().map(|t| t.as_str()), Some("t3.small"), "untouched");
    println!("gitops: observe-only: {health}: {message}");

    // 7. Pruned: the manifest leaves git, the instance is terminated and the object is gone.
    let worker_id = bed.instance_id(&ns, "worker").await;
    repo.remove("worker.json");
    repo.remove("bad.json");
    repo.commit("worker and bad removed");
    app.refresh().await;
    eventually("worker gone", 3 * MINUTE, || async {
        bed.api(&ns).get_opt("worker").await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(state_of(&bed.instance(&worker_id).await), "terminated");
    let status = app
        .until("app Synced without worker", 3 * MINUTE, |s| {
            s["sync"]["status"] == "Synced" && health_of(s, "worker").0.is_empty()
        })
        .await;
    println!("gitops: pruned worker terminated; app {}", status["health"]["status"]);
}
