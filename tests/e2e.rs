//! End to end: the operator binary against the real API server and LocalStack EC2.
//! Run with `make test` (it starts the test bed); plain `cargo test` skips these.

mod support;

use std::time::Duration;

use aws_sdk_ec2::types::InstanceAttributeName;
use base64::Engine as _;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{Bed, FaultyEc2, Operator, eventually, state_of, tags_of};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn apply_reaches_ready_with_status_columns_and_events() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("apply").await;
    let _operator = Operator::start(&ns);
    let seed = &bed.seed;
    let created = bed
        .create(
            &ns,
            "web",
            json!({
                "subnetId": seed.subnet_id,
                "securityGroupIds": [seed.security_group_id],
                "keyName": seed.key_name,
                "tags": {"team": "platform", "Name": "web"},
                "rootVolume": {"sizeGiB": 16, "type": "gp3", "encrypted": true},
            }),
        )
        .await;

    let obj = bed.ready(&ns, "web").await;
    let status = obj.status.clone().unwrap();
    let id = status.instance_id.clone().expect("instanceId in status");
    assert_eq!(status.state.as_deref(), Some("running"));
    assert_eq!(status.instance_type.as_deref(), Some("t3.micro"));
    assert!(
        status.private_ip.is_some() && status.availability_zone.is_some(),
        "{status:?}"
    );
    assert_eq!(status.observed_generation, Some(1));
    // The operator never writes the spec (GitOps tools must see no diff): generation is still 1
    // and the spec is exactly what was applied.
    assert_eq!(obj.metadata.generation, Some(1));
    assert_eq!(obj.spec, created.spec);

    let instance = bed.instance(&id).await;
    let tags = tags_of(&instance);
    assert_eq!(tags.get("k106.com/owner-uid"), created.uid().as_ref());
    assert_eq!(tags.get("k106.com/cluster-id"), Some(&format!("e2e-{ns}")));
    assert_eq!(tags.get("k106.com/namespace"), Some(&ns));
    assert_eq!(tags.get("team").map(String::as_str), Some("platform"));
    assert_eq!(instance.subnet_id(), Some(seed.subnet_id.as_str()));
    assert_eq!(instance.key_name(), Some(seed.key_name.as_str()));
    let http_tokens = instance
        .metadata_options()
        .and_then(|m| m.http_tokens())
        .map(|t| t.as_str());
    assert_eq!(http_tokens, Some("required"), "IMDSv2 is required by default");

    let table = bed.kubectl(&["get", "ec2i", "-n", &ns]);
    let row = table.lines().find(|l| l.starts_with("web")).expect("a row for web");
    for column in [
        id.as_str(),
        "t3.micro",
        "running",
        "True",
        status.private_ip.as_deref().unwrap(),
    ] {
        assert!(row.contains(column), "column {column} missing in: {table}");
    }
    let described = bed.kubectl(&["describe", "ec2i", "web", "-n", &ns]);
    assert!(described.contains("Launched") && described.contains(&id), "{described}");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn ready_only_with_a_fresh_view_of_ec2_metrics_in_openmetrics_and_json_logs_name_the_object() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("probes").await;
    // EC2 unreachable (a closed loopback port): alive, but not ready.
    let blind = Operator::start_with_env(&ns, &[], &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")]);
    eventually("healthz answers", MINUTE, || async {
        (blind.probe("/healthz").await == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(blind.probe("/readyz").await, 503, "no inventory poll has succeeded");
    let metrics = blind.get("/metrics").await;
    let failed_poll = |line: &str| {
        line.starts_with("ec2_operator_inventory_polls_total{") && line.contains("poll=\"fleet\",result=\"error\"")
    };
    assert!(metrics.lines().any(failed_poll), "{metrics}");
    let refused = "ec2_operator_ec2_attempts_total{operation=\"DescribeInstances\",outcome=\"io\"}";
    assert!(metrics.contains(refused), "every attempt, retries too: {metrics}");
    drop(blind);

    let operator = Operator::start_with(&ns, &["--log-format", "json"]);
    eventually("readyz", MINUTE, || async {
        (operator.probe("/readyz").await == 200).then_some(())
    })
    .await;
    let metrics = operator.get("/metrics").await;
    let head = metrics.split("\r\n\r\n").next().unwrap_or_default().to_lowercase();
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(
        metrics.contains("ec2_operator_build_info{version=\""),
        "build_info is served"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
    bed.create(&ns, "traced", json!({})).await;
    bed.ready(&ns, "traced").await;
    // The production wiring feeds them: the SDK interceptor, the controller's cache, the reconcile.
    for series in [
        "ec2_operator_ec2_attempts_total{operation=\"RunInstances\",outcome=\"ok\"}",
        "ec2_operator_objects{ready=\"True\",reason=\"InstanceRunning\"}",
        "ec2_operator_time_to_ready_seconds_count",
    ] {
        eventually(series, MINUTE, || async {
            (operator.metric(series).await >= 1.0).then_some(())
        })
        .await;
    }
    let launched = operator
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["reason"] == "Launched")
        .expect("a JSON log line for the launch");
    assert_eq!(launched["span"]["namespace"], ns.as_str(), "{launched}");
    assert_eq!(launched["span"]["object"], "traced", "{launched}");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn eventually_consistent_ec2_gets_one_instance_per_object_and_no_leak_on_early_delete() {
    // Through the strict EC2 a new instance is invisible for 2 s. Measured before the fix, with
    // the same mix: duplicate instances, and every early-deleted object's instance left running.
    let bed = Bed::connect().await;
    let ns = bed.namespace("strict").await;
    let operator = Operator::start(&ns);
    let mut kept = Vec::new();
    for i in 0..10 {
        let name = format!("keep-{i}");
        kept.push((name.clone(), bed.create(&ns, &name, json!({})).await.uid().unwrap()));
    }
    let mut doomed = Vec::new();
    for i in 0..5 {
        let name = format!("early-{i}");
        doomed.push((name.clone(), bed.create(&ns, &name, json!({})).await.uid().unwrap()));
    }
    // Delete each as soon as its instance is launched: EC2 does not show it yet.
    for (name, _) in &doomed {
        eventually(&format!("{name} launched"), MINUTE, || async {
            bed.api(&ns).get(name).await.ok()?.status?.instance_id
        })
        .await;
        bed.api(&ns).delete(name, &Default::default()).await.unwrap();
    }
    for (name, uid) in &doomed {
        eventually(&format!("{name} gone"), MINUTE, || async {
            bed.api(&ns).get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
        let ever = bed.all_instances_of(uid).await;
        assert_eq!(ever.len(), 1, "{name}: one instance was ever launched");
        assert_eq!(state_of(&ever[0]), "terminated", "{name}: and it is terminated");
    }
    for (name, uid) in &kept {
        bed.ready(&ns, name).await;
        let ever = bed.all_instances_of(uid).await;
        assert_eq!(ever.len(), 1, "{name}: one instance was ever launched");
    }
    // A reconcile that reads the object before its status write arrives looks by owner tag,
    // which EC2 does not answer yet, and asks again with the same ClientToken: EC2 answers
    // the original instance. Those replays are fine; a second instance is not.
    let launches = operator
        .metric("ec2_operator_ec2_requests_total{operation=\"RunInstances\"}")
        .await;
    println!("15 objects: {launches} RunInstances, each object one instance");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn delete_terminates_the_instance_then_releases_the_object() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("delete").await;
    let _operator = Operator::start(&ns);
    bed.create(&ns, "doomed", json!({})).await;
    let id = bed.ready(&ns, "doomed").await.status.unwrap().instance_id.unwrap();

    bed.delete(&ns, "doomed").await;
    assert_eq!(state_of(&bed.instance(&id).await), "terminated");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn an_instance_terminated_out_of_band_is_replaced_with_a_warning() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("replace").await;
    let _operator = Operator::start(&ns);
    let obj = bed.create(&ns, "phoenix", json!({})).await;
    let old = bed.ready(&ns, "phoenix").await.status.unwrap().instance_id.unwrap();

    bed.ec2.terminate_instances().instance_ids(&old).send().await.unwrap();
    let new = eventually("a replacement", MINUTE, || async {
        let obj = bed.api(&ns).get("phoenix").await.ok()?;
        let id = obj.status?.instance_id?;
        (id != old).then_some(id)
    })
    .await;
    bed.ready(&ns, "phoenix").await;
    assert_eq!(state_of(&bed.instance(&new).await), "running");
    assert_eq!(
        bed.live_instances_of(&obj.uid().unwrap()).await.len(),
        1,
        "exactly one live instance"
    );
    let described = bed.kubectl(&["describe", "ec2i", "phoenix", "-n", &ns]);
    assert!(
        described.contains("Warning") && described.contains("Replaced"),
        "{described}"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn an_instance_stopped_out_of_band_is_started_again() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("restart").await;
    let _operator = Operator::start(&ns);
    bed.create(&ns, "sleepy", json!({})).await;
    let id = bed.ready(&ns, "sleepy").await.status.unwrap().instance_id.unwrap();

    bed.ec2.stop_instances().instance_ids(&id).send().await.unwrap();
    // The stop is seen by the next inventory poll (2 s here) and undone.
    let api = bed.api(&ns);
    eventually("drift detected", MINUTE, || async {
        let described = bed.kubectl(&["describe", "ec2i", "sleepy", "-n", &ns]);
        described.contains("DriftDetected").then_some(())
    })
    .await;
    eventually("running again", MINUTE, || async {
        let obj = api.get("sleepy").await.ok()?;
        let ready = obj.status.as_ref()?.condition("Ready")?.status == "True";
        (ready && state_of(&bed.instance(&id).await) == "running").then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn desired_state_stopped_then_running() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("power").await;
    let _operator = Operator::start(&ns);
    bed.create(&ns, "switch", json!({})).await;
    let id = bed.ready(&ns, "switch").await.status.unwrap().instance_id.unwrap();

    bed.patch_spec(&ns, "switch", json!({"desiredState": "Stopped"})).await;
    let obj = bed.ready(&ns, "switch").await;
    assert_eq!(
        obj.status.as_ref().unwrap().condition("Ready").unwrap().reason,
        "InstanceStopped"
    );
    assert_eq!(state_of(&bed.instance(&id).await), "stopped");

    bed.patch_spec(&ns, "switch", json!({"desiredState": "Running"})).await;
    let obj = bed.ready(&ns, "switch").await;
    assert_eq!(
        obj.status.as_ref().unwrap().condition("Ready").unwrap().reason,
        "InstanceRunning"
    );
    assert_eq!(state_of(&bed.instance(&id).await), "running");
    assert_eq!(obj.status.unwrap().instance_id.unwrap(), id, "same instance throughout");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn instance_type_change_stops_modifies_and_starts() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("resize").await;
    let _operator = Operator::start(&ns);
    bed.create(&ns, "grow", json!({"instanceType": "t3.micro"})).await;
    let id = bed.ready(&ns, "grow").await.status.unwrap().instance_id.unwrap();

    bed.patch_spec(&ns, "grow", json!({"instanceType": "t3.small"})).await;
    let obj = bed.ready(&ns, "grow").await;
    assert_eq!(obj.status.unwrap().instance_type.as_deref(), Some("t3.small"));
    let instance = bed.instance(&id).await;
    assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t3.small"));
    assert_eq!(state_of(&instance), "running");
    let described = bed.kubectl(&["describe", "ec2i", "grow", "-n", &ns]);
    for reason in ["Stopped", "Modified", "Started"] {
        assert!(described.contains(reason), "event {reason} missing: {described}");
    }
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_type_the_ami_cannot_run_leaves_the_instance_running_on_its_old_type() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("refused").await;
    let mut operator = Operator::start(&ns);
    bed.create(&ns, "arm", json!({"instanceType": "t3.micro"})).await;
    let id = bed.ready(&ns, "arm").await.status.unwrap().instance_id.unwrap();

    // The strict EC2 refuses a1.medium at ModifyInstanceAttribute (an Arm type, an x86 AMI),
    // after DescribeInstanceTypes said it exists and the instance was stopped for it.
    bed.patch_spec(&ns, "arm", json!({"instanceType": "a1.medium"})).await;
    let stalled = eventually(
        "Stalled with the AWS error, the instance running again",
        MINUTE,
        || async {
            let obj = bed.api(&ns).get("arm").await.ok()?;
            let stalled = obj.status.as_ref()?.condition("Stalled")?.clone();
            let instance = bed.instance(&id).await;
            (state_of(&instance) == "running" && stalled.observed_generation == obj.metadata.generation)
                .then_some(stalled)
        },
    )
    .await;
    assert!(stalled.message.contains("InvalidParameterValue"), "{}", stalled.message);
    let instance = bed.instance(&id).await;
    assert_eq!(
        instance.instance_type().map(|t| t.as_str()),
        Some("t3.micro"),
        "its old type"
    );
    let stops = "ec2_operator_ec2_requests_total{operation=\"StopInstances\"}";
    assert_eq!(operator.metric(stops).await, 1.0);

    // A new operator (no backoff in memory) reads Stalled in status and does not stop it again.
    operator.kill();
    let operator = Operator::start(&ns);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(operator.metric(stops).await, 0.0, "no second stop for the same spec");
    assert_eq!(state_of(&bed.instance(&id).await), "running");

    // A spec change tries again.
    bed.patch_spec(&ns, "arm", json!({"instanceType": "t3.small"})).await;
    let obj = bed.ready(&ns, "arm").await;
    assert_eq!(obj.status.unwrap().instance_type.as_deref(), Some("t3.small"));
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn tags_follow_the_spec_both_ways_and_foreign_tags_stay() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("tags").await;
    let _operator = Operator::start(&ns);
    bed.create(&ns, "tagged", json!({"tags": {"a": "1", "b": "2"}})).await;
    let id = bed.ready(&ns, "tagged").await.status.unwrap().instance_id.unwrap();
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    bed.ec2
        .create_tags()
        .resources(&id)
        .tags(tag("foreign", "x"))
        .send()
        .await
        .unwrap();

    // Spec side: change a, remove b, add c.
    bed.patch_spec(&ns, "tagged", json!({"tags": {"a": "9", "b": null, "c": "3"}}))
        .await;
    bed.ready(&ns, "tagged").await;
    let tags = eventually("spec tags applied", MINUTE, || async {
        let tags = tags_of(&bed.instance(&id).await);
        (tags.get("a").map(String::as_str) == Some("9") && !tags.contains_key("b")).then_some(tags)
    })
    .await;
    assert_eq!(tags.get("c").map(String::as_str), Some("3"));
    assert_eq!(
        tags.get("foreign").map(String::as_str),
        Some("x"),
        "tags others added are left alone"
    );

    // EC2 side: someone changes a and deletes c; both come back within a poll.
    bed.ec2
        .create_tags()
        .resources(&id)
        .tags(tag("a", "tampered"))
        .send()
        .await
        .unwrap();
    let c = aws_sdk_ec2::types::Tag::builder().key("c").build();
    bed.ec2.delete_tags().resources(&id).tags(c).send().await.unwrap();
    eventually("out-of-band tag changes undone", MINUTE, || async {
        let tags = tags_of(&bed.instance(&id).await);
        (tags.get("a").map(String::as_str) == Some("9") && tags.get("c").map(String::as_str) == Some("3")).then_some(())
    })
    .await;
    assert_eq!(
        tags_of(&bed.instance(&id).await).get("foreign").map(String::as_str),
        Some("x")
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn security_groups_and_user_data_follow_the_spec() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("sg-ud").await;
    let _operator = Operator::start(&ns);
    let seed = &bed.seed;
    bed.create(
        &ns,
        "guarded",
        json!({"subnetId": seed.subnet_id, "securityGroupIds": [seed.security_group_id], "userData": "echo one"}),
    )
    .await;
    let id = bed.ready(&ns, "guarded").await.status.unwrap().instance_id.unwrap();

    bed.patch_spec(
        &ns,
        "guarded",
        json!({"securityGroupIds": [seed.security_group_id_2], "userData": "echo two"}),
    )
    .await;
    bed.ready(&ns, "guarded").await;
    let instance = bed.instance(&id).await;
    let groups: Vec<&str> = instance.security_groups().iter().filter_map(|g| g.group_id()).collect();
    assert_eq!(groups, vec![seed.security_group_id_2.as_str()]);
    let attribute = bed
        .ec2
        .describe_instance_attribute()
        .instance_id(&id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let stored = attribute.user_data().and_then(|u| u.value()).unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD.decode(stored).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), "echo two");
    assert_eq!(state_of(&instance), "running");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn user_data_secrets_never_reach_logs_or_events() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("secrets").await;
    // Planted credentials too (LocalStack takes any secret key and session token).
    let secret_key = format!("planted-secret-key-{}", fastrand::u64(..));
    let session_token = format!("planted-session-token-{}", fastrand::u64(..));
    let credentials = [
        ("AWS_SECRET_ACCESS_KEY", secret_key.as_str()),
        ("AWS_SESSION_TOKEN", session_token.as_str()),
    ];
    let operator = Operator::start_with_env(&ns, &[], &credentials);
    let first = format!("DB_PASSWORD=planted-{}", fastrand::u64(..));
    let second = format!("DB_PASSWORD=planted-{}", fastrand::u64(..));
    bed.create(&ns, "vault", json!({"userData": first})).await;
    bed.ready(&ns, "vault").await;
    // A change runs stop -> modify -> start: every step is logged and told as an event.
    bed.patch_spec(&ns, "vault", json!({"userData": second})).await;
    let old = bed.ready(&ns, "vault").await.status.unwrap().instance_id.unwrap();
    // Drift that needs a launch: the plan then carries the whole launch request, user data too.
    bed.ec2.terminate_instances().instance_ids(&old).send().await.unwrap();
    eventually("a replacement", MINUTE, || async {
        let id = bed.api(&ns).get("vault").await.ok()?.status?.instance_id?;
        (id != old).then_some(())
    })
    .await;
    bed.ready(&ns, "vault").await;

    let events = bed.kubectl(&["get", "events", "-n", &ns, "-o", "json"]);
    let logs = operator.log_text();
    assert!(events.contains("user data replaced"), "the change was told: {events}");
    assert!(events.contains("DriftDetected"), "the drift was told: {events}");
    for secret in [&first, &second, &secret_key, &session_token] {
        assert!(!events.contains(secret.as_str()), "an event carries a secret");
        assert!(!logs.contains(secret.as_str()), "the log carries a secret");
    }
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn sigterm_drains_the_reconcile_in_flight_and_exits_cleanly() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("sigterm").await;
    // Every EC2 answer takes 1.5 s: SIGTERM lands while RunInstances is on its way.
    let slow = FaultyEc2::start(&["--latency-ms", "1500"]);
    let mut operator = Operator::start_with_env(&ns, &[], &[("AWS_ENDPOINT_URL", &slow.endpoint)]);
    eventually("the first poll", MINUTE, || async {
        (operator.probe("/readyz").await == 200).then_some(())
    })
    .await;
    bed.create(&ns, "busy", json!({})).await;
    eventually("RunInstances sent", MINUTE, || async {
        (slow.stats().await["RunInstances"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let status = operator.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // Drained, not cut off: the launch in flight was recorded before the process ended.
    let recorded = bed
        .api(&ns)
        .get("busy")
        .await
        .unwrap()
        .status
        .and_then(|s| s.instance_id);
    assert!(recorded.is_some(), "the in-flight launch wrote its instance id");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_duplicate_instance_is_terminated_once_confirmed_and_the_original_kept() {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let bed = Bed::connect().await;
    let ns = bed.namespace("dupe").await;
    let _operator = Operator::start(&ns);
    let obj = bed.create(&ns, "single", json!({})).await;
    let original = bed.ready(&ns, "single").await.status.unwrap().instance_id.unwrap();

    // A second instance with this object's owner tags, as a lenient EC2 or a restored backup
    // could leave behind.
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(tag("k106.com/owner-uid", &obj.uid().unwrap()))
        .tags(tag("k106.com/cluster-id", &format!("e2e-{ns}")))
        .tags(tag("k106.com/namespace", &ns))
        .tags(tag("k106.com/name", "single"))
        .build();
    let run = bed
        .ec2
        .run_instances()
        .image_id(&bed.seed.image_id)
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let duplicate = run.instances()[0].instance_id().unwrap().to_owned();

    eventually("the duplicate terminated", MINUTE, || async {
        let state = state_of(&bed.instance(&duplicate).await);
        (state == "terminated" || state == "shutting-down").then_some(())
    })
    .await;
    let obj = bed.ready(&ns, "single").await;
    assert_eq!(obj.status.unwrap().instance_id.as_deref(), Some(original.as_str()));
    assert_eq!(state_of(&bed.instance(&original).await), "running");
    let described = bed.kubectl(&["describe", "ec2i", "single", "-n", &ns]);
    assert!(described.contains("DuplicateInstances"), "{described}");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn one_leader_acts_and_a_standby_takes_over_when_it_is_killed() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("leader").await;
    let lease = [
        "--leader-elect",
        "--lease-namespace",
        ns.as_str(),
        "--lease-duration-seconds",
        "5",
    ];
    let leads = |operator: &Operator| operator.log_text().contains("ec2_operator::operator: leading");
    let mut first = Operator::start_with(&ns, &lease);
    eventually("the first replica leads", MINUTE, || async {
        leads(&first).then_some(())
    })
    .await;
    let second = Operator::start_with(&ns, &lease);
    eventually("the second stands by", MINUTE, || async {
        second.log_text().contains("standing by").then_some(())
    })
    .await;

    let mut uids = Vec::new();
    for i in 0..3 {
        uids.push(bed.create(&ns, &format!("led-{i}"), json!({})).await.uid().unwrap());
        bed.ready(&ns, &format!("led-{i}")).await;
    }
    let reconciles = "ec2_operator_reconciles_total";
    assert!(first.metric(reconciles).await > 0.0);
    assert_eq!(second.metric(reconciles).await, 0.0, "only the leader reconciles");
    assert_eq!(second.probe("/readyz").await, 200, "a standby counts as ready");

    first.kill();
    let killed = std::time::Instant::now();
    for i in 3..5 {
        uids.push(bed.create(&ns, &format!("led-{i}"), json!({})).await.uid().unwrap());
    }
    eventually("the standby takes over", MINUTE, || async {
        leads(&second).then_some(())
    })
    .await;
    let took_over = killed.elapsed();
    for (i, uid) in uids.iter().enumerate() {
        bed.ready(&ns, &format!("led-{i}")).await;
        assert_eq!(bed.all_instances_of(uid).await.len(), 1, "led-{i}: one instance");
    }
    println!("standby took over {took_over:?} after the leader was killed (lease 5 s)");
    assert!(took_over < Duration::from_secs(15), "{took_over:?}");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_standby_stops_at_once_on_sigterm() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("standby").await;
    let lease = ["--leader-elect", "--lease-namespace", ns.as_str()];
    let leader = Operator::start_with(&ns, &lease);
    eventually("the first replica leads", MINUTE, || async {
        leader
            .log_text()
            .contains("ec2_operator::operator: leading")
            .then_some(())
    })
    .await;
    let mut standby = Operator::start_with(&ns, &lease);
    eventually("the second stands by", MINUTE, || async {
        standby.log_text().contains("standing by").then_some(())
    })
    .await;

    // Kubernetes stops a pod with SIGTERM and kills it 30 s later: a standby that ignored the
    // signal held every rollout up by the whole grace period.
    let asked = std::time::Instant::now();
    let exit = standby.terminate();
    let took = asked.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(standby.log_text().contains("stopped while standing by"));
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn faults_and_dropped_responses_cost_retries_not_duplicates_or_leaks() {
    // 15% of requests fail (5xx), 10% are carried out but their answer is dropped, 20 ms latency,
    // on top of the eventual consistency; and every object's first RunInstances is carried out
    // with its answer dropped: the classic way to a duplicate instance.
    let bed = Bed::connect().await;
    let ns = bed.namespace("faults").await;
    let faulty = FaultyEc2::start(&[
        "--fault-rate",
        "0.15",
        "--drop-rate",
        "0.1",
        "--latency-ms",
        "20",
        "--drop-first-launch",
    ]);
    let _operator = Operator::start_with_env(&ns, &[], &[("AWS_ENDPOINT_URL", faulty.endpoint.as_str())]);
    let mut uids = Vec::new();
    for i in 0..8 {
        uids.push(bed.create(&ns, &format!("rough-{i}"), json!({})).await.uid().unwrap());
    }
    for (i, uid) in uids.iter().enumerate() {
        eventually(&format!("rough-{i} Ready"), Duration::from_secs(180), || async {
            let obj = bed.api(&ns).get(&format!("rough-{i}")).await.ok()?;
            let ready = obj.status?.condition("Ready")?.status == "True";
            ready.then_some(())
        })
        .await;
        assert_eq!(bed.all_instances_of(uid).await.len(), 1, "rough-{i}: one instance ever");
    }
    for i in 0..4 {
        bed.api(&ns)
            .delete(&format!("rough-{i}"), &Default::default())
            .await
            .unwrap();
    }
    for (i, uid) in uids.iter().enumerate().take(4) {
        eventually(&format!("rough-{i} gone"), Duration::from_secs(180), || async {
            bed.api(&ns)
                .get_opt(&format!("rough-{i}"))
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        let ever = bed.all_instances_of(uid).await;
        assert_eq!(
            (ever.len(), state_of(&ever[0]).as_str()),
            (1, "terminated"),
            "rough-{i}"
        );
    }
    let stats = faulty.stats().await;
    println!("under faults: {stats}");
    let count = |key: &str| stats[key].as_u64().unwrap_or(0);
    assert!(
        count("fault:dropped-response") >= 8,
        "every first launch lost its answer: {stats}"
    );
    assert!(
        count("strict:idempotent-replay") >= 1,
        "retried launches got the original: {stats}"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn an_orphan_is_reported_and_terminated_only_when_asked_after_the_grace() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("orphan").await;
    let mut operator = Operator::start(&ns);
    bed.create(&ns, "forgotten", json!({})).await;
    let id = bed.ready(&ns, "forgotten").await.status.unwrap().instance_id.unwrap();

    // Deleted while no operator ran, its finalizer removed by hand: the instance lives on.
    operator.kill();
    let api = bed.api(&ns);
    let no_finalizers = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    api.patch("forgotten", &PatchParams::default(), &no_finalizers)
        .await
        .unwrap();
    bed.delete(&ns, "forgotten").await;

    let operator = Operator::start(&ns);
    let series = "ec2_operator_orphaned_instances";
    eventually("the orphan counted", MINUTE, || async {
        (operator.metric(series).await == 1.0).then_some(())
    })
    .await;
    let instance = eventually("the orphan dated by a tag", MINUTE, || async {
        let instance = bed.instance(&id).await;
        tags_of(&instance)
            .contains_key("k106.com/orphaned-since")
            .then_some(instance)
    })
    .await;
    assert!(operator.log_text().contains(&id), "a log line names the orphan");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(state_of(&instance), "running");
    assert_eq!(
        state_of(&bed.instance(&id).await),
        "running",
        "not terminated unless asked"
    );
    drop(operator);

    let _operator = Operator::start_with(&ns, &["--terminate-orphans-after-seconds", "5"]);
    eventually("the orphan terminated after the grace", MINUTE, || async {
        (state_of(&bed.instance(&id).await) == "terminated").then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn retain_leaves_the_instance_running_without_operator_tags() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("retain").await;
    let _operator = Operator::start(&ns);
    bed.create(
        &ns,
        "keeper",
        json!({"deletionPolicy": "Retain", "tags": {"team": "data"}}),
    )
    .await;
    let id = bed.ready(&ns, "keeper").await.status.unwrap().instance_id.unwrap();

    bed.delete(&ns, "keeper").await;
    let instance = bed.instance(&id).await;
    assert_eq!(state_of(&instance), "running");
    let tags = tags_of(&instance);
    assert!(
        tags.keys().all(|k| !k.starts_with("k106.com/")),
        "operator tags removed: {tags:?}"
    );
    assert_eq!(tags.get("team").map(String::as_str), Some("data"), "user tags stay");
    bed.ec2.terminate_instances().instance_ids(&id).send().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_killed_operator_leaves_no_duplicate_even_with_status_lost() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("kill9").await;
    // Both operators share one strict EC2, as they share one AWS account: it remembers tokens.
    // 800 ms per request widens the window between RunInstances and the status write.
    let ec2 = FaultyEc2::start(&["--latency-ms", "800"]);
    let through = [("AWS_ENDPOINT_URL", ec2.endpoint.as_str())];
    let names: Vec<String> = (0..5).map(|i| format!("vm-{i}")).collect();
    let mut first = Operator::start_with_env(&ns, &[], &through);
    let mut uids = Vec::new();
    for name in &names {
        uids.push(bed.create(&ns, name, json!({})).await.uid().unwrap());
    }
    // kill -9 as soon as the first RunInstances reaches EC2: it is carried out after the
    // operator is gone, so that instance exists while no status names it.
    eventually("a first RunInstances sent", MINUTE, || async {
        (ec2.stats().await["RunInstances"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    first.kill();
    tokio::time::sleep(Duration::from_secs(1)).await; // the in-flight launches land
    let mut in_the_window = 0;
    for (name, uid) in names.iter().zip(&uids) {
        let recorded = bed.api(&ns).get(name).await.unwrap().status.and_then(|s| s.instance_id);
        if recorded.is_none() && !bed.all_instances_of(uid).await.is_empty() {
            in_the_window += 1;
        }
    }
    assert!(
        in_the_window >= 1,
        "the kill fell between a launch and its status write"
    );
    // Lose every status too (as after a backup restore): identity must come from EC2 tags.
    for name in &names {
        let clear = json!({"apiVersion": "k106.com/v1alpha1", "kind": "Ec2Instance", "status": null});
        bed.api(&ns)
            .patch_status(name, &PatchParams::apply("ec2-operator").force(), &Patch::Apply(&clear))
            .await
            .unwrap();
    }

    let _second = Operator::start_with_env(&ns, &[], &through);
    for (name, uid) in names.iter().zip(&uids) {
        let obj = bed.ready(&ns, name).await;
        let ever = bed.all_instances_of(uid).await;
        assert_eq!(ever.len(), 1, "{name}: one instance ever, found {}", ever.len());
        assert_eq!(ever[0].instance_id(), obj.status.unwrap().instance_id.as_deref());
    }
    println!("kill -9 with {in_the_window} launches between RunInstances and the status write");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_terminal_error_is_reported_once_and_not_retried_in_a_storm() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("terminal").await;
    let operator = Operator::start(&ns);
    bed.create(&ns, "lost", json!({"subnetId": "subnet-00000000"})).await;

    let obj = eventually("Ready=False with the AWS error", MINUTE, || async {
        let obj = bed.api(&ns).get("lost").await.ok()?;
        let ready = obj.status.as_ref()?.condition("Ready")?.clone();
        (ready.status == "False" && ready.reason == "Failed").then_some(ready)
    })
    .await;
    assert!(obj.message.contains("InvalidSubnetID.NotFound"), "{}", obj.message);
    let stalled = bed.api(&ns).get("lost").await.unwrap().status.unwrap();
    let stalled = stalled
        .condition("Stalled")
        .expect("kstatus Stalled on a terminal error");
    assert_eq!(stalled.status, "True");
    let described = bed.kubectl(&["describe", "ec2i", "lost", "-n", &ns]);
    assert!(
        described.contains("Warning") && described.contains("Failed"),
        "{described}"
    );

    // Terminal errors wait TERMINAL_RETRY_SECONDS (300 s by default) between tries.
    let series = "ec2_operator_ec2_requests_total{operation=\"RunInstances\"}";
    let before = operator.metric(series).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = operator.metric(series).await;
    assert_eq!(
        (before, after),
        (1.0, 1.0),
        "one RunInstances, then no retry within the terminal interval"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn ec2_refusals_are_terminal_or_retried_as_aws_means_them() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("refusals").await;
    let _operator = Operator::start(&ns);
    // The bed's strict EC2 answers these AMIs and types as AWS would (localstack/README.md).
    let cases = [
        (
            "bad-ami",
            json!({"imageId": "ami-0000000000badbad1"}),
            "Failed",
            "InvalidAMIID.NotFound",
        ),
        (
            "no-permission",
            json!({"imageId": "ami-0000000000badbad2"}),
            "Failed",
            "UnauthorizedOperation",
        ),
        (
            "dies",
            json!({"imageId": "ami-0000000000badbad3"}),
            "Failed",
            "Client.InternalError",
        ),
        (
            "no-capacity",
            json!({"instanceType": "p5.48xlarge"}),
            "Retrying",
            "InsufficientInstanceCapacity",
        ),
    ];
    for (name, spec, _, _) in &cases {
        bed.create(&ns, name, spec.clone()).await;
    }
    for (name, _, reason, code) in cases {
        let ready = eventually(
            &format!("{name}: Ready=False {reason} naming {code}"),
            MINUTE,
            || async {
                let obj = bed.api(&ns).get(name).await.ok()?;
                let ready = obj.status.as_ref()?.condition("Ready")?.clone();
                (ready.reason == reason && ready.message.contains(code)).then_some(obj)
            },
        )
        .await;
        let stalled = ready.status.as_ref().unwrap().condition("Stalled").is_some();
        assert_eq!(
            stalled,
            reason == "Failed",
            "{name}: kstatus Stalled only when terminal"
        );
    }
    // The instance that died at launch is reported, not replaced.
    let dies = bed.api(&ns).get("dies").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        bed.all_instances_of(&dies.uid().unwrap()).await.len(),
        1,
        "launched once"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_steady_fleet_costs_one_describe_per_poll() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("fleet").await;
    let operator = Operator::start(&ns);
    let count = 100;
    for i in 0..count {
        bed.create(&ns, &format!("node-{i}"), json!({})).await;
    }
    for i in 0..count {
        bed.ready(&ns, &format!("node-{i}")).await;
    }
    // Let in-flight verification settle, then measure several polls.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let polls = "ec2_operator_inventory_refresh_duration_seconds_count";
    let calls = "ec2_operator_ec2_requests_total";
    let (polls_before, calls_before) = (operator.metric(polls).await, operator.metric_sum(calls).await);
    // Every 2 s, or as long again as a poll took on a loaded machine.
    let polls_after = eventually("three polls", MINUTE, || async {
        let now = operator.metric(polls).await;
        (now - polls_before >= 3.0).then_some(now)
    })
    .await;
    let calls_after = operator.metric_sum(calls).await;
    let (polled, called) = (polls_after - polls_before, calls_after - calls_before);
    println!("steady state, {count} instances: {called} EC2 calls in {polled} polls");
    // A request is counted when it is sent and a poll when it ends: one poll may straddle the
    // window's edge.
    assert!(
        (called - polled).abs() <= 1.0,
        "one DescribeInstances per poll for the whole fleet: {called} calls, {polled} polls"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn invalid_specs_are_rejected_at_admission() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("invalid").await;
    let long = "x".repeat(129);
    let many_tags: serde_json::Map<String, serde_json::Value> =
        (0..46).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        ("imageId required", json!({"imageId": null}), "imageId"),
        ("imageId format", json!({"imageId": "ubuntu"}), "spec.imageId"),
        (
            "instanceType format",
            json!({"instanceType": "Large"}),
            "spec.instanceType",
        ),
        ("subnetId format", json!({"subnetId": "sub-123"}), "spec.subnetId"),
        (
            "securityGroupIds format",
            json!({"securityGroupIds": ["default"]}),
            "spec.securityGroupIds",
        ),
        (
            "securityGroupIds unique",
            json!({"securityGroupIds": ["sg-12345678", "sg-12345678"]}),
            "Duplicate value",
        ),
        ("tag count", json!({"tags": many_tags}), "spec.tags"),
        (
            "tag key length",
            json!({"tags": {long.clone(): "v"}}),
            "tag keys must be 1-128 characters",
        ),
        ("tag value length", json!({"tags": {"k": "v".repeat(257)}}), "spec.tags"),
        ("aws: prefix", json!({"tags": {"aws:owner": "me"}}), "reserved by AWS"),
        (
            "operator prefix",
            json!({"tags": {"k106.com/owner-uid": "me"}}),
            "reserved by the operator",
        ),
        (
            "userData size",
            json!({"userData": "é".repeat(8193)}),
            "userData must be at most 16 KiB",
        ),
        (
            "desiredState enum",
            json!({"desiredState": "Paused"}),
            "spec.desiredState",
        ),
        (
            "deletionPolicy enum",
            json!({"deletionPolicy": "Orphan"}),
            "spec.deletionPolicy",
        ),
        (
            "rootVolume size",
            json!({"rootVolume": {"sizeGiB": 0}}),
            "spec.rootVolume.sizeGiB",
        ),
        (
            "rootVolume type",
            json!({"rootVolume": {"type": "ssd"}}),
            "spec.rootVolume.type",
        ),
        ("region format", json!({"region": "Mars"}), "spec.region"),
    ];
    for (i, (rule, spec, expected)) in cases.into_iter().enumerate() {
        let err = bed.create_rejected(&ns, &format!("bad-{i}"), &spec).await;
        assert!(err.contains(expected), "{rule}: expected {expected:?} in: {err}");
    }
    // The same manifest without the bad field is accepted: the rules reject only what they name.
    let good = serde_json::to_value(bed.manifest("good", json!({}))).unwrap();
    bed.raw_create(&ns, good).await.expect("a valid manifest is accepted");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn immutable_fields_cannot_change() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("immutable").await;
    let seed = &bed.seed;
    bed.create(
        &ns,
        "fixed",
        json!({"subnetId": seed.subnet_id, "keyName": "a", "rootVolume": {"sizeGiB": 8}, "region": "us-east-1"}),
    )
    .await;
    let cases = [
        (json!({"imageId": "ami-12345678"}), "imageId is immutable"),
        (json!({"subnetId": "subnet-12345678"}), "subnetId is immutable"),
        (json!({"subnetId": null}), "subnetId is immutable"),
        (json!({"keyName": "b"}), "keyName is immutable"),
        (
            json!({"rootVolume": {"sizeGiB": 8, "type": "io1"}}),
            "rootVolume is immutable",
        ),
        (
            json!({"rootVolume": {"sizeGiB": 7}}),
            "rootVolume.sizeGiB can only grow",
        ),
        (json!({"region": "eu-west-1"}), "region is immutable"),
    ];
    for (patch, expected) in cases {
        let err = bed.patch_rejected(&ns, "fixed", &patch).await;
        assert!(err.contains(expected), "{patch}: expected {expected:?} in: {err}");
    }
    // Mutable fields still change; the root volume grows, the instance profile changes in place.
    bed.patch_spec(
        &ns,
        "fixed",
        json!({"instanceType": "t3.large", "desiredState": "Stopped", "tags": {"a": "b"}, "rootVolume": {"sizeGiB": 9}, "iamInstanceProfile": "admin"}),
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn update_policy_replace_admits_changes_of_fields_fixed_at_launch_but_never_of_the_region() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("replaceable").await;
    let seed = &bed.seed;
    let fixed =
        json!({"subnetId": seed.subnet_id, "keyName": "a", "rootVolume": {"sizeGiB": 8}, "region": "us-east-1"});
    let refused = |name: &'static str, patch: serde_json::Value| {
        let (bed, ns) = (&bed, &ns);
        async move { bed.patch_rejected(ns, name, &patch).await }
    };
    bed.create(&ns, "refusing", fixed.clone()).await;
    let err = refused("refusing", json!({"imageId": "ami-12345678"})).await;
    assert!(
        err.contains("imageId is immutable"),
        "Refuse, the default, as before: {err}"
    );
    bed.patch_spec(
        &ns,
        "refusing",
        json!({"updatePolicy": "Replace", "imageId": "ami-12345678"}),
    )
    .await;

    let mut replacing = fixed;
    replacing["updatePolicy"] = json!("Replace");
    bed.create(&ns, "replacing", replacing).await;
    for patch in [
        json!({"imageId": "ami-12345678"}),
        json!({"subnetId": "subnet-12345678"}),
        json!({"subnetId": null}),
        json!({"keyName": "b"}),
        json!({"rootVolume": {"sizeGiB": 9}}),
        json!({"iamInstanceProfile": "admin"}),
    ] {
        bed.patch_spec(&ns, "replacing", patch).await;
    }
    let err = refused("replacing", json!({"region": "eu-west-1"})).await;
    assert!(err.contains("region is immutable"), "{err}");
    // Back to Refuse, the fields are fixed again.
    bed.patch_spec(&ns, "replacing", json!({"updatePolicy": "Refuse"}))
        .await;
    let err = refused("replacing", json!({"keyName": "c"})).await;
    assert!(err.contains("keyName is immutable"), "{err}");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn an_image_change_under_replace_runs_the_new_instance_before_the_old_one_is_terminated() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("rollover").await;
    let _operator = Operator::start(&ns);
    let spec = json!({"updatePolicy": "Replace", "subnetId": bed.seed.subnet_id, "tags": {"team": "a"}});
    let uid = bed.create(&ns, "web", spec).await.uid().unwrap();
    let old = bed.ready(&ns, "web").await.status.unwrap().instance_id.unwrap();
    let image = bed.other_images(1).await.remove(0);

    bed.patch_spec(&ns, "web", json!({"imageId": image})).await;
    // While the new instance comes up, the old one serves and status still describes it.
    let replacing = bed
        .condition_until(&ns, "web", "Replacing", |ready| ready.reason == "Replacing")
        .await;
    let status = replacing.status.unwrap();
    assert_eq!(status.instance_id.as_deref(), Some(old.as_str()));
    let new = status.replacement.expect("the replacement in status").instance_id;
    assert_eq!(status.plan, Some(format!("terminate {old} once {new} runs")));
    assert_eq!(state_of(&bed.instance(&old).await), "running", "the old one serves");

    let status = bed.ready(&ns, "web").await.status.unwrap();
    assert_eq!(
        status.instance_id.as_deref(),
        Some(new.as_str()),
        "status moved to the new one"
    );
    assert_eq!((status.replacement, status.plan), (None, None));
    let instance = bed.instance(&new).await;
    assert_eq!(instance.image_id(), Some(image.as_str()));
    assert_eq!(state_of(&instance), "running");
    assert_eq!(tags_of(&instance).get("team").map(String::as_str), Some("a"));
    only_live_instance(&bed, &uid, &new).await;
    assert_eq!(bed.all_instances_of(&uid).await.len(), 2, "one launch for the change");
    let described = bed.kubectl(&["describe", "ec2i", "web", "-n", &ns]);
    assert!(
        described.contains(&format!("replacing instance {old} (imageId")) && described.contains(&new),
        "{described}"
    );
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_replacement_killed_at_any_step_ends_with_exactly_one_instance_the_new_one() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("replace-kill").await;
    // A strict EC2 of its own that holds every request 300 ms: a request it has received is
    // carried out, and the operator killed meanwhile never hears the answer.
    let ec2 = FaultyEc2::start(&["--latency-ms", "300"]);
    let env = [("AWS_ENDPOINT_URL", ec2.endpoint.as_str())];
    let mut operator = Operator::start_with_env(&ns, &[], &env);
    let uid = bed
        .create(&ns, "web", json!({"updatePolicy": "Replace"}))
        .await
        .uid()
        .unwrap();
    let first = bed.ready(&ns, "web").await.status.unwrap().instance_id.unwrap();
    let images = bed.other_images(2).await;
    let status = || async { bed.api(&ns).get_status("web").await.unwrap().status.unwrap() };

    // Killed right after RunInstances reached EC2, before status heard of the new instance.
    let launches = received(&ec2, "RunInstances").await;
    bed.patch_spec(&ns, "web", json!({"imageId": images[0]})).await;
    kill_once_received(&mut operator, &ec2, "RunInstances", launches).await;
    let killed = status().await;
    assert_eq!(
        (killed.instance_id.as_deref(), killed.replacement),
        (Some(first.as_str()), None)
    );
    eventually("EC2 launched it all the same", MINUTE, || async {
        (bed.live_instances_of(&uid).await.len() == 2).then_some(())
    })
    .await;
    operator = Operator::start_with_env(&ns, &[], &env);
    let second = replaced(&bed, &ns, &uid, &images[0], 2).await;

    // Killed while status names the new instance as the replacement, before it runs.
    bed.patch_spec(&ns, "web", json!({"imageId": images[1]})).await;
    let named = eventually("the replacement in status", MINUTE, || async {
        status().await.replacement.map(|r| r.instance_id)
    })
    .await;
    operator.kill();
    operator = Operator::start_with_env(&ns, &[], &env);
    let third = replaced(&bed, &ns, &uid, &images[1], 3).await;
    assert_eq!(third, named);
    assert_ne!(third, second);

    // Killed right after TerminateInstances of the old one reached EC2, before status moved.
    let terminations = received(&ec2, "TerminateInstances").await;
    bed.patch_spec(&ns, "web", json!({"imageId": bed.seed.image_id})).await;
    kill_once_received(&mut operator, &ec2, "TerminateInstances", terminations).await;
    assert_eq!(
        status().await.instance_id,
        Some(third.clone()),
        "status still on the old one"
    );
    let _operator = Operator::start_with_env(&ns, &[], &env);
    let fourth = replaced(&bed, &ns, &uid, &bed.seed.image_id, 4).await;
    assert_eq!(state_of(&bed.instance(&third).await), "terminated");
    println!("replaced {first} → {second} → {third} → {fourth}, each killed once");
    println!("the strict EC2 counted {}", ec2.stats().await);
}

/// How many `action` requests the strict EC2 has received.
async fn received(ec2: &FaultyEc2, action: &str) -> u64 {
    ec2.stats().await[action].as_u64().unwrap_or(0)
}

/// SIGKILLs the operator as soon as the strict EC2 has received more `action` requests than
/// `before` (it then holds the request for its latency, so the answer never arrives).
async fn kill_once_received(operator: &mut Operator, ec2: &FaultyEc2, action: &str, before: u64) {
    let deadline = std::time::Instant::now() + MINUTE;
    while received(ec2, action).await <= before {
        assert!(std::time::Instant::now() < deadline, "no {action} within a minute");
        // Well within the strict EC2's latency: the kill lands before the answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    operator.kill();
}

/// Waits until the object is Ready on a new instance from `image`, which must be its only live
/// instance, with `launched` instances launched for it in all (no launch made twice).
async fn replaced(bed: &Bed, ns: &str, uid: &str, image: &str, launched: usize) -> String {
    let status = bed.ready(ns, "web").await.status.unwrap();
    let id = status.instance_id.unwrap();
    assert_eq!(status.replacement, None);
    assert_eq!(bed.instance(&id).await.image_id(), Some(image));
    only_live_instance(bed, uid, &id).await;
    assert_eq!(
        bed.all_instances_of(uid).await.len(),
        launched,
        "instances ever launched"
    );
    id
}

/// Waits until `id` is the only live (not terminated) instance with this owner tag.
async fn only_live_instance(bed: &Bed, uid: &str, id: &str) {
    eventually(&format!("{id} the only live instance"), MINUTE, || async {
        let live = bed.live_instances_of(uid).await;
        (live.len() == 1 && live[0].instance_id() == Some(id)).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn the_operator_needs_nothing_beyond_its_cluster_role() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("rbac").await;
    bed.kubectl(&["apply", "-f", &format!("{}/deploy/namespace.yaml", support::ROOT)]);
    bed.kubectl(&["apply", "-f", &format!("{}/deploy/rbac.yaml", support::ROOT)]);
    let token = bed.kubectl(&[
        "create",
        "token",
        "ec2-operator",
        "-n",
        "ec2-operator",
        "--duration",
        "1h",
    ]);
    let kubeconfig = support::kubeconfig_with_token(token.trim(), &ns);

    let _operator = Operator::start_as(&ns, &kubeconfig);
    bed.create(&ns, "least", json!({"tags": {"team": "sec"}})).await;
    let id = bed.ready(&ns, "least").await.status.unwrap().instance_id.unwrap();
    let described = bed.kubectl(&["describe", "ec2i", "least", "-n", &ns]);
    assert!(described.contains("Launched"), "events are written: {described}");
    bed.delete(&ns, "least").await;
    assert_eq!(state_of(&bed.instance(&id).await), "terminated");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_paused_object_changes_nothing_shows_its_plan_and_resuming_carries_it_out() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("pause").await;
    let operator = Operator::start(&ns);
    bed.create(&ns, "held", json!({})).await;
    let id = bed.ready(&ns, "held").await.status.unwrap().instance_id.unwrap();

    bed.kubectl(&["annotate", "ec2i", "held", "-n", &ns, "k106.com/paused=true"]);
    bed.patch_spec(&ns, "held", json!({"instanceType": "t3.small"})).await;
    let plan = "stop → modify instanceType t3.micro→t3.small → start";
    let paused = bed
        .condition_until(&ns, "held", "paused with a plan", |ready| {
            ready.reason == "Paused" && ready.message.contains("would")
        })
        .await;
    assert_eq!(paused.status.as_ref().unwrap().plan.as_deref(), Some(plan));
    let ready = paused.status.as_ref().unwrap().condition("Ready").unwrap();
    assert_eq!(ready.status, "False", "the instance differs from the spec");
    assert!(ready.message.contains(plan), "{}", ready.message);
    let wide = bed.kubectl(&["get", "ec2i", "held", "-n", &ns, "-o", "wide"]);
    assert!(wide.contains("PLAN") && wide.contains(plan), "{wide}");

    // Nothing happens while paused, over several polls.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let instance = bed.instance(&id).await;
    assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t3.micro"));
    assert_eq!(state_of(&instance), "running");
    let stops = "ec2_operator_ec2_requests_total{operation=\"StopInstances\"}";
    assert_eq!(operator.metric(stops).await, 0.0);

    bed.kubectl(&["annotate", "ec2i", "held", "-n", &ns, "k106.com/paused-"]);
    let resumed = bed.ready(&ns, "held").await;
    assert_eq!(resumed.status.as_ref().unwrap().plan, None, "in sync: no plan");
    let instance = bed.instance(&id).await;
    assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t3.small"));
    assert_eq!(operator.metric(stops).await, 1.0);
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn observe_only_reports_drift_with_a_plan_and_never_changes_or_terminates_the_instance() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("observe").await;
    let operator = Operator::start(&ns);
    let id = bed.launch_outside("t3.small").await;
    let spec = json!({"managementPolicy": "ObserveOnly", "subnetId": bed.seed.subnet_id, "tags": {"team": "a"}});
    bed.create_annotated(&ns, "watched", &[("k106.com/adopt-instance-id", &id)], spec)
        .await;

    let drifted = bed
        .condition_until(&ns, "watched", "drift reported", |ready| ready.reason == "Drifted")
        .await;
    let status = drifted.status.unwrap();
    assert_eq!(status.instance_id.as_deref(), Some(id.as_str()));
    assert_eq!(status.instance_type.as_deref(), Some("t3.small"));
    assert_eq!(
        status.plan.as_deref(),
        Some("tag +team → stop → modify instanceType t3.small→t3.micro → start")
    );
    assert!(status.condition("Reconciling").is_none(), "nothing is under way");

    // The spec follows the instance: in sync, and still untouched.
    bed.patch_spec(&ns, "watched", json!({"instanceType": "t3.small", "tags": null}))
        .await;
    let observed = bed
        .condition_until(&ns, "watched", "in sync", |ready| ready.reason == "Observed")
        .await;
    assert_eq!(observed.status.unwrap().condition("Ready").unwrap().status, "True");
    let instance = bed.instance(&id).await;
    assert!(tags_of(&instance).is_empty(), "never tagged: {:?}", tags_of(&instance));
    for write in ["StopInstances", "CreateTags", "ModifyInstanceAttribute", "RunInstances"] {
        let series = format!("ec2_operator_ec2_requests_total{{operation=\"{write}\"}}");
        assert_eq!(operator.metric(&series).await, 0.0, "{write}");
    }

    bed.delete(&ns, "watched").await;
    assert_eq!(state_of(&bed.instance(&id).await), "running", "never terminated");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn adoption_takes_over_a_free_instance_and_refuses_one_owned_or_launched_otherwise() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("adopt").await;
    let _operator = Operator::start(&ns);
    let id = bed.launch_outside("t3.micro").await;
    let adopt = [("k106.com/adopt-instance-id", id.as_str())];
    let spec = json!({"subnetId": bed.seed.subnet_id, "instanceType": "t3.small", "tags": {"team": "a"}});
    let adopter = bed.create_annotated(&ns, "adopter", &adopt, spec.clone()).await;

    let adopted = bed.ready(&ns, "adopter").await;
    assert_eq!(adopted.status.unwrap().instance_id.as_deref(), Some(id.as_str()));
    let instance = bed.instance(&id).await;
    assert_eq!(
        instance.instance_type().map(|t| t.as_str()),
        Some("t3.small"),
        "then managed"
    );
    let tags = tags_of(&instance);
    assert_eq!(tags.get("k106.com/owner-uid"), adopter.uid().as_ref());
    assert_eq!(tags.get("team").map(String::as_str), Some("a"));
    let live = bed.live_instances_of(&adopter.uid().unwrap()).await;
    assert_eq!(live.len(), 1, "adopted, not launched");
    let described = bed.kubectl(&["describe", "ec2i", "adopter", "-n", &ns]);
    assert!(described.contains("Adopted"), "{described}");

    // The same instance again: another object owns it now.
    bed.create_annotated(&ns, "second", &adopt, spec).await;
    let refused = bed
        .condition_until(&ns, "second", "refused", |ready| ready.reason == "Failed")
        .await;
    let message = &refused.status.as_ref().unwrap().condition("Stalled").unwrap().message;
    assert!(message.contains(&format!("is managed by {ns}/adopter")), "{message}");

    // Launched from another image than the spec says: reported, nothing replaced.
    let other = bed.launch_outside("t3.micro").await;
    let mismatched = json!({"imageId": "ami-0123456789abcdef0", "subnetId": bed.seed.subnet_id});
    bed.create_annotated(&ns, "mismatch", &[("k106.com/adopt-instance-id", &other)], mismatched)
        .await;
    let refused = bed
        .condition_until(&ns, "mismatch", "refused", |ready| ready.reason == "Failed")
        .await;
    let message = &refused.status.as_ref().unwrap().condition("Ready").unwrap().message;
    assert!(
        message.contains("imageId is ami-0123456789abcdef0 in the spec but"),
        "{message}"
    );
    assert!(tags_of(&bed.instance(&other).await).is_empty(), "left alone");

    bed.delete(&ns, "adopter").await;
    assert_eq!(
        state_of(&bed.instance(&id).await),
        "terminated",
        "deletionPolicy Delete"
    );
}
