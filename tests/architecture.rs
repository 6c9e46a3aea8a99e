//! The layout's one hard rule, checked: the pure core (model, decide, events) does no I/O, so
//! every decision stays testable without a cluster or an AWS account.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_pure_core_imports_no_io() {
    for file in ["src/model.rs", "src/decide.rs", "src/events.rs"] {
        let code = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
        for forbidden in [
            "aws_sdk_",
            "aws_config",
            "kube::Client",
            "kube::api",
            "kube::runtime",
            "crate::ec2",
            "crate::inventory",
            "crate::reconcile",
            "crate::status",
            "tokio",
        ] {
            let found = code.lines().any(|line| {
                let line = line.trim_start();
                !line.starts_with("//") && line.contains(forbidden)
            });
            assert!(!found, "{file} must not use {forbidden}: the core stays pure");
        }
    }
}
