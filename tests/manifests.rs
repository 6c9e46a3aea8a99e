//! Checks on the shipped manifests that need no cluster.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn argocd_patch_embeds_the_health_script_verbatim() {
    let script = read("deploy/argocd/resource_customizations/k106.com/Ec2Instance/health.lua");
    let patch: serde_json::Value = serde_saphyr::from_str(&read("deploy/argocd/argocd-cm-patch.yaml")).unwrap();
    let embedded = patch["data"]["resource.customizations.health.k106.com_Ec2Instance"]
        .as_str()
        .unwrap();
    assert_eq!(embedded.trim_end(), script.trim_end());
}

#[test]
fn kustomize_renders_the_install() {
    // kustomize refuses a file outside its root; crds/ is a kustomization of its own.
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/deploy")])
        .output()
        .expect("kubectl runs");
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for kind in ["CustomResourceDefinition", "Deployment", "ClusterRole", "Role"] {
        assert!(rendered.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
}

#[test]
fn kustomization_lists_files_that_exist() {
    let kustomization: serde_json::Value = serde_saphyr::from_str(&read("deploy/kustomization.yaml")).unwrap();
    for resource in kustomization["resources"].as_array().unwrap() {
        let path = format!("deploy/{}", resource.as_str().unwrap());
        assert!(std::path::Path::new(ROOT).join(&path).exists(), "{path} is missing");
    }
}

#[test]
fn examples_parse_as_ec2instances() {
    // examples/tutorial/ holds the tutorial's own manifests (an Alice CRD among them); make
    // test-docs applies those. examples/reference/ shows every field (not applied by `make demo`:
    // its ids are placeholders).
    let top = std::fs::read_dir(format!("{ROOT}/examples")).unwrap();
    let reference = std::fs::read_dir(format!("{ROOT}/examples/reference")).unwrap();
    for entry in top.chain(reference) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let obj: ec2_operator::crd::Ec2Instance =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(obj.spec.image_id.starts_with("ami-"));
    }
}

#[test]
fn the_iam_policy_lets_adoption_tag_only_untagged_instances_and_only_with_this_clusters_tag() {
    let policy: serde_json::Value = serde_json::from_str(&read("deploy/iam-policy.json")).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let adopt = statements
        .iter()
        .find(|s| s["Sid"] == "AdoptUntaggedInstances")
        .expect("a statement for k106.com/adopt-instance-id: the instance has none of our tags yet");
    assert_eq!(adopt["Action"], "ec2:CreateTags");
    let condition = &adopt["Condition"];
    assert_eq!(condition["Null"]["aws:ResourceTag/k106.com/cluster-id"], "true");
    assert_eq!(
        condition["StringEquals"]["aws:RequestTag/k106.com/cluster-id"],
        "CLUSTER_ID"
    );
}

/// Every `.rs` file under `src/`, as (path, text).
fn source_files() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, found: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                found.push((path.display().to_string(), text));
            }
        }
    }
    let mut found = Vec::new();
    walk(&std::path::Path::new(ROOT).join("src"), &mut found);
    found
}

fn iam_statements() -> Vec<serde_json::Value> {
    let policy: serde_json::Value = serde_json::from_str(&read("deploy/iam-policy.json")).unwrap();
    policy["Statement"].as_array().unwrap().clone()
}

/// A statement's `Action` or `Resource`, one string or a list, as a list.
fn strings(value: &serde_json::Value) -> Vec<&str> {
    match value {
        serde_json::Value::String(one) => vec![one.as_str()],
        serde_json::Value::Array(many) => many.iter().map(|v| v.as_str().unwrap()).collect(),
        _ => vec![],
    }
}

#[test]
fn the_iam_policy_allows_every_ec2_call_the_code_makes_and_no_wildcard_owner() {
    let policy = read("deploy/iam-policy.json");
    // Every request is counted by name (`self.call("Operation", ...)`, or `self.count("Operation")`
    // where the code reads EC2's error itself), so the code lists them.
    let mut calls: Vec<String> = source_files()
        .iter()
        .flat_map(|(_, code)| {
            [".count(", ".call("]
                .into_iter()
                .flat_map(|marker| code.split(marker).skip(1))
                .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
                .filter(|name| name.starts_with(|c: char| c.is_ascii_uppercase()))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    calls.sort();
    calls.dedup();
    assert!(calls.len() >= 10, "found {calls:?}");
    for call in calls {
        assert!(
            policy.contains(&format!("\"ec2:{call}\"")),
            "deploy/iam-policy.json lacks ec2:{call}"
        );
    }
    for statement in iam_statements() {
        let sid = statement["Sid"].as_str().unwrap_or("?");
        // Ownership conditions name this cluster's id: never a pattern (`StringLike`, `ArnLike`).
        for (operator, keys) in statement["Condition"].as_object().into_iter().flatten() {
            for key in keys.as_object().unwrap().keys() {
                if key.contains("k106.com/") {
                    assert!(
                        ["StringEquals", "Null"].contains(&operator.as_str()),
                        "{sid}: {operator} on {key}: ownership conditions must name this cluster's id"
                    );
                }
            }
        }
        if statement["Action"] == "iam:PassRole" {
            assert_ne!(
                statement["Resource"], "*",
                "PassRole is scoped to the operator's role path"
            );
        }
    }
}

#[test]
fn the_iam_policy_changes_only_instances_and_volumes_that_carry_this_clusters_tag() {
    // A statement that names instances or volumes either reads, or launches and tags them in
    // the same RunInstances, or needs the cluster's id on them (or, to adopt an instance, needs
    // its absence and sets it).
    for statement in iam_statements() {
        let sid = statement["Sid"].as_str().unwrap_or("?");
        let resources = strings(&statement["Resource"]);
        if !resources
            .iter()
            .any(|r| r.contains(":instance/") || r.contains(":volume/"))
        {
            continue;
        }
        let actions = strings(&statement["Action"]);
        let condition = &statement["Condition"];
        let reads = actions.iter().all(|a| a.starts_with("ec2:Describe"));
        let at_launch = condition["StringEquals"]["ec2:CreateAction"] == "RunInstances";
        let ours = condition["StringEquals"]["aws:ResourceTag/k106.com/cluster-id"] == "CLUSTER_ID"
            || condition["StringEquals"]["aws:RequestTag/k106.com/cluster-id"] == "CLUSTER_ID";
        assert!(
            reads || at_launch || ours,
            "{sid}: {actions:?} on {resources:?} without this cluster's id"
        );
    }
}

#[test]
fn the_iam_policy_lets_runinstances_tag_every_resource_type_the_code_tags_at_launch() {
    // `tag_specification(ResourceType::SpotInstancesRequest, ..)` tags `spot-instances-request`:
    // RunInstances needs ec2:CreateTags on each type it tags (ec2:CreateAction RunInstances).
    let tagged: Vec<String> = source_files()
        .iter()
        .flat_map(|(_, code)| {
            code.split("tag_specification(ResourceType::")
                .skip(1)
                .filter_map(|rest| rest.split(|c: char| !c.is_ascii_alphanumeric()).next())
                .map(|variant| {
                    let mut kebab = String::new();
                    for (i, c) in variant.chars().enumerate() {
                        if c.is_ascii_uppercase() && i > 0 {
                            kebab.push('-');
                        }
                        kebab.push(c.to_ascii_lowercase());
                    }
                    kebab
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(tagged.iter().any(|t| t == "instance"), "found {tagged:?}");
    let statements = iam_statements();
    let at_launch = statements
        .iter()
        .find(|s| s["Sid"] == "TagAtLaunch")
        .expect("a statement for tags set by RunInstances");
    assert_eq!(
        at_launch["Condition"]["StringEquals"]["ec2:CreateAction"],
        "RunInstances"
    );
    let resources = strings(&at_launch["Resource"]);
    for kind in tagged {
        assert!(
            resources.contains(&format!("arn:aws:ec2:*:*:{kind}/*").as_str()),
            "TagAtLaunch lacks {kind}/*: RunInstances tags it"
        );
    }
}

/// Every name the operator's `/metrics` serves: each family as rendered once it has a sample
/// (an empty family renders nothing), with the sample suffixes of its type (OpenMetrics: `_total`
/// for counters, `_bucket`, `_sum`, `_count` for histograms).
fn exposed_metrics() -> std::collections::BTreeSet<String> {
    let metrics = ec2_operator::metrics::Metrics::default();
    metrics.reconciled(0.1);
    metrics.error("kube".into());
    metrics.ec2_request("DescribeInstances");
    metrics.ec2_attempt("DescribeInstances", "ok".into());
    metrics.action("start");
    metrics.inventory_refreshed(0, 0.1);
    metrics.polled("us-east-1", ec2_operator::metrics::FLEET, true);
    metrics.fleet_seen("us-east-1", &[]);
    metrics.became_ready(std::time::Duration::from_secs(1));
    metrics.drift_repaired("started");
    metrics.orphans_found(0);
    let rendered = metrics.render();
    // Each family registered in src/metrics.rs was touched above.
    let code = read("src/metrics.rs");
    let registered = code.split("registry.register(").skip(1).map(|rest| {
        let name = rest.trim_start().trim_start_matches('"');
        &name[..name.find('"').unwrap()]
    });
    for name in registered {
        assert!(
            rendered.contains(&format!("# TYPE ec2_operator_{name} ")),
            "touch {name} in exposed_metrics"
        );
    }
    let families = rendered.lines().filter_map(|line| line.strip_prefix("# TYPE "));
    families
        .flat_map(|family| {
            let (name, kind) = family.split_once(' ').expect("# TYPE name type");
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().map(move |suffix| format!("{name}{suffix}"))
        })
        .collect()
}

/// The operator's metric names a PromQL expression reads.
fn metrics_read_by(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("ec2_operator_"))
        .collect()
}

/// Every `expr` string anywhere in a JSON document (Grafana panel targets).
fn exprs_in(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value.as_str() {
                    Some(expr) if key == "expr" => found.push(expr.to_owned()),
                    _ => exprs_in(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| exprs_in(item, found)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_alerts_read_only_metrics_the_operator_exposes() {
    let exposed = exposed_metrics();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/ec2-operator-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    exprs_in(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 15, "the dashboard's queries: {exprs:?}");

    let rule: serde_json::Value = serde_saphyr::from_str(&read("deploy/prometheus-rule.yaml")).unwrap();
    assert_eq!(
        (rule["apiVersion"].as_str(), rule["kind"].as_str()),
        (Some("monitoring.coreos.com/v1"), Some("PrometheusRule"))
    );
    let alerts: Vec<&serde_json::Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        let name = alert["alert"].as_str().expect("every rule is an alert");
        assert!(alert["annotations"]["summary"].is_string(), "{name} has a summary");
        exprs.push(alert["expr"].as_str().unwrap().to_owned());
    }

    for expr in &exprs {
        let read = metrics_read_by(expr);
        assert!(!read.is_empty(), "{expr} reads no operator metric");
        for name in read {
            assert!(
                exposed.contains(name),
                "{name} (in {expr}) is not served at /metrics; served: {exposed:?}"
            );
        }
    }
}

// The Helm chart (deploy/helm/ec2-operator) and the kustomize install (deploy/) side by side.

const CHART: &str = "deploy/helm/ec2-operator";
/// The release name and namespace the README installs with, and deploy/ hard-codes.
const RELEASE: &str = "ec2-operator";

/// Runs a program in the repository, with `stdin` as its input.
fn output(program: &str, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a program in the repository and returns its stdout; fails the test with its stderr.
fn run(program: &str, args: &[&str]) -> String {
    let out = output(program, args, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm ARGS`, with the pinned helm that `hack/helm.sh install` builds from the Go module proxy
/// into .cache/bin (`make test` builds it first; here it is built once per test binary if missing).
fn helm(args: &[&str]) -> String {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        run(&format!("{ROOT}/hack/helm.sh"), &["install"]);
    });
    run(&format!("{ROOT}/.cache/bin/helm"), args)
}

/// `helm template` of the chart as release `ec2-operator` in `namespace`, CRD included.
fn helm_template(namespace: &str, values: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", namespace, "--include-crds"];
    for value in values {
        args.extend(["--set", value]);
    }
    documents(&helm(&args))
}

fn kustomize_build() -> Vec<serde_json::Value> {
    documents(&run("kubectl", &["kustomize", "deploy"]))
}

/// The objects of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml)
        .unwrap_or_else(|e| panic!("{e}:\n{yaml}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// kind, namespace and name of each object.
fn identities(objects: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            let meta = &o["metadata"];
            let namespace = meta["namespace"].as_str().unwrap_or("-");
            format!(
                "{} {namespace}/{}",
                o["kind"].as_str().unwrap(),
                meta["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", identities(objects)))
}

/// The operator container's env, by name (a `valueFrom` entry maps to null).
fn operator_env(objects: &[serde_json::Value]) -> std::collections::BTreeMap<String, serde_json::Value> {
    let deployment = find(objects, "Deployment", RELEASE);
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect()
}

#[test]
fn helm_lint_passes_with_the_default_and_the_namespaced_values() {
    helm(&["lint", "--strict", CHART]);
    helm(&[
        "lint",
        "--strict",
        CHART,
        "--set",
        "rbac.namespaced=true,clusterId=test,replicas=1,region=eu-west-1",
        "--set",
        "credentials.accessKeyId=test,credentials.secretAccessKey=test,endpointUrl=http://localstack:4566",
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,terminateOrphansAfterSeconds=600",
    ]);
}

#[test]
fn helm_template_renders_the_operator_with_restricted_pods_and_probes_on_the_admin_port() {
    let objects = helm_template(RELEASE, &[]);
    let deployment = find(&objects, "Deployment", RELEASE);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], RELEASE);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"], "ghcr.io/k106/ec2-operator:0.1.0",
        "the tag is the appVersion"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let env = operator_env(&objects);
    assert_eq!(env["ADMIN_ADDR"], "0.0.0.0:8080");
    assert_eq!(
        env["LEADER_ELECT"], "true",
        "two replicas by default, so leader election is on"
    );
    // The CRD comes with --include-crds (from the chart's crds/), the rest from templates/.
    find(&objects, "CustomResourceDefinition", "ec2instances.k106.com");
    find(&objects, "Service", "ec2-operator-metrics");

    // One replica: no election, no Lease role.
    let single = helm_template(RELEASE, &["replicas=1"]);
    assert!(!operator_env(&single).contains_key("LEADER_ELECT"));
    assert!(!identities(&single).iter().any(|id| id.contains("-leader")));
}

#[test]
fn kustomize_and_helm_render_the_same_objects() {
    // `helm install --create-namespace` makes the namespace that deploy/namespace.yaml holds.
    let kustomized: std::collections::BTreeSet<String> = identities(&kustomize_build())
        .into_iter()
        .filter(|id| id != &format!("Namespace -/{RELEASE}"))
        .collect();
    let helmed = identities(&helm_template(RELEASE, &[]));
    assert_eq!(
        kustomized, helmed,
        "kubectl kustomize deploy/ vs helm template (default values)"
    );
}

#[test]
fn the_charts_crd_is_a_copy_of_the_generated_one() {
    // Helm installs crds/ of the chart; `make crds` regenerates crds/ec2instance.yaml and copies it.
    assert!(
        read(&format!("{CHART}/crds/ec2instance.yaml")) == read("crds/ec2instance.yaml"),
        "{CHART}/crds/ec2instance.yaml is stale: run `make crds`"
    );
}

#[test]
fn the_charts_alerts_are_those_of_deploy_prometheus_rule() {
    let kustomize_rule: serde_json::Value = serde_saphyr::from_str(&read("deploy/prometheus-rule.yaml")).unwrap();
    let objects = helm_template(RELEASE, &["prometheusRule.enabled=true", "serviceMonitor.enabled=true"]);
    assert_eq!(
        find(&objects, "PrometheusRule", RELEASE)["spec"],
        kustomize_rule["spec"]
    );
    let monitor = find(&objects, "ServiceMonitor", RELEASE);
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

#[test]
fn neither_install_sets_a_default_region_that_would_override_the_injected_aws_region() {
    for (install, objects) in [("helm", helm_template(RELEASE, &[])), ("kustomize", kustomize_build())] {
        let env = operator_env(&objects);
        assert!(!env.contains_key("DEFAULT_REGION"), "{install} sets DEFAULT_REGION");
        assert!(!env.contains_key("AWS_REGION"), "{install} sets AWS_REGION");
    }
    let env = operator_env(&helm_template(
        RELEASE,
        &["region=eu-west-1", "endpointUrl=http://localstack:4566"],
    ));
    assert_eq!(env["DEFAULT_REGION"], "eu-west-1");
    assert_eq!(env["AWS_ENDPOINT_URL"], "http://localstack:4566");
}

#[test]
fn a_namespaced_install_grants_a_role_in_the_watched_namespace_and_needs_a_cluster_id() {
    let objects = helm_template(
        "ops",
        &["rbac.namespaced=true", "clusterId=ops-1", "watchNamespace=team-a"],
    );
    let role = find(&objects, "Role", RELEASE);
    assert_eq!(role["metadata"]["namespace"], "team-a");
    assert!(!serde_json::to_string(role).unwrap().contains("kube-system"));
    assert_eq!(
        find(&objects, "RoleBinding", RELEASE)["subjects"][0]["namespace"],
        "ops"
    );
    assert!(!identities(&objects).contains(&format!("ClusterRole -/{RELEASE}")));
    let env = operator_env(&objects);
    assert_eq!(env["WATCH_NAMESPACE"], "team-a");
    assert_eq!(env["CLUSTER_ID"], "ops-1");

    helm(&["version"]);
    let out = output(
        &format!("{ROOT}/.cache/bin/helm"),
        &["template", RELEASE, CHART, "--set", "rbac.namespaced=true"],
        "",
    );
    assert!(!out.status.success(), "a namespaced install without clusterId renders");
    assert!(String::from_utf8_lossy(&out.stderr).contains("clusterId"));
}

#[test]
fn the_user_roles_aggregate_into_view_edit_and_admin() {
    let objects = helm_template(RELEASE, &[]);
    let label = |role: &serde_json::Value, to: &str| {
        role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")] == "true"
    };
    let view = find(&objects, "ClusterRole", "ec2-operator-view");
    assert!(["view", "edit", "admin"].iter().all(|to| label(view, to)));
    let edit = find(&objects, "ClusterRole", "ec2-operator-edit");
    assert!(label(edit, "edit") && label(edit, "admin") && !label(edit, "view"));
    assert!(
        !serde_json::to_string(view).unwrap().contains("patch"),
        "view only reads"
    );
}

/// Both renders, applied with `kubectl apply --dry-run=server` to the bed's API server: every
/// object passes validation and admission there, in a fresh namespace labeled for the
/// `restricted` Pod Security level (which warns about a Deployment whose pods it would refuse).
#[test]
#[ignore = "needs the test bed: run `make test`"]
fn both_renders_pass_a_server_side_dry_run_under_the_restricted_pod_security_level() {
    assert!(
        std::env::var("KUBECONFIG").is_ok(),
        "KUBECONFIG is not set: run `make test`"
    );
    let namespace = format!("install-{}", fastrand::u32(..) % 100_000);
    run("kubectl", &["create", "namespace", &namespace]);
    run(
        "kubectl",
        &[
            "label",
            "namespace",
            &namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted",
        ],
    );

    // deploy/ hard-codes its namespace: move its objects to the fresh one.
    let kustomized: Vec<serde_json::Value> = kustomize_build()
        .into_iter()
        .filter(|o| o["kind"] != "Namespace")
        .map(|mut o| {
            if o["metadata"]["namespace"].is_string() {
                o["metadata"]["namespace"] = namespace.clone().into();
            }
            if let Some(subjects) = o["subjects"].as_array_mut() {
                subjects
                    .iter_mut()
                    .for_each(|s| s["namespace"] = namespace.clone().into());
            }
            o
        })
        .collect();
    let helmed = helm_template(&namespace, &[]);
    for (install, objects) in [("kustomize", kustomized), ("helm", helmed)] {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let out = output("kubectl", &["apply", "--dry-run=server", "-f", "-"], &list.to_string());
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{install}: {stderr}");
        assert!(!stderr.contains("PodSecurity"), "{install}: {stderr}");
        assert!(
            stdout.contains("deployment.apps/ec2-operator created (server dry run)"),
            "{install}: {stdout}"
        );
    }
    run("kubectl", &["delete", "namespace", &namespace, "--wait=false"]);
}
