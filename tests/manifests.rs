//! Checks on the shipped manifests that need no cluster.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn argocd_patch_embeds_the_health_script_verbatim() {
    let script = read("deploy/argocd/health.lua");
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
    for entry in std::fs::read_dir(format!("{ROOT}/examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let obj: ec2_operator::crd::Ec2Instance =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(obj.spec.image_id.starts_with("ami-"));
    }
}

#[test]
fn the_iam_policy_allows_every_ec2_call_the_code_makes_and_no_wildcard_owner() {
    let policy = read("deploy/iam-policy.json");
    let code = read("src/ec2.rs");
    // Every request is counted by name (`self.count("Operation")`), so the code lists them.
    let calls: Vec<&str> = code
        .split("self.count(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(calls.len() >= 10, "found {calls:?}");
    for call in calls {
        assert!(
            policy.contains(&format!("\"ec2:{call}\"")),
            "deploy/iam-policy.json lacks ec2:{call}"
        );
    }
    assert!(
        !policy.contains("StringLike"),
        "ownership conditions must name this cluster's id"
    );
    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    for statement in policy["Statement"].as_array().unwrap() {
        if statement["Action"] == "iam:PassRole" {
            assert_ne!(
                statement["Resource"], "*",
                "PassRole is scoped to the operator's role path"
            );
        }
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
