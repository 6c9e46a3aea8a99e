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
