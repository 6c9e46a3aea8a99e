//! End to end, the RunInstances fields: each live field reaches the instance without a stop,
//! each launch-only field reaches RunInstances, selectors and `resolve:ssm:` resolve at launch,
//! and an interrupted Spot instance is replaced. The operator talks to the strict EC2, which
//! emulates what LocalStack lacks (localstack/README.md), so these read through it too.
//! Run with `make test` (it starts the test bed); plain `cargo test` skips these.

mod support;

use std::time::Duration;

use aws_sdk_ec2::types::{Instance, InstanceAttributeName, Volume};
use serde_json::json;
use support::{Bed, Operator, eventually, state_of};

const MINUTE: Duration = Duration::from_secs(60);

/// A value the test bed's seed exports (bed/localstack.env).
fn seeded(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make test`"))
}

impl Bed {
    async fn attribute(
        &self,
        id: &str,
        name: InstanceAttributeName,
    ) -> aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput {
        self.strict_ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(name)
            .send()
            .await
            .expect("describe attribute")
    }

    async fn volume(&self, id: &str) -> Volume {
        let out = self
            .strict_ec2
            .describe_volumes()
            .volume_ids(id)
            .send()
            .await
            .expect("volume");
        out.volumes()[0].clone()
    }

    async fn credits(&self, id: &str) -> String {
        let out = self
            .strict_ec2
            .describe_instance_credit_specifications()
            .instance_ids(id)
            .send()
            .await
            .expect("credit specification");
        out.instance_credit_specifications()[0]
            .cpu_credits()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the object is Ready and `check` holds for the instance as EC2 shows it.
    async fn ready_and_shown(&self, ns: &str, name: &str, what: &str, check: impl Fn(&Instance) -> bool) -> Instance {
        let obj = self.ready(ns, name).await;
        let id = obj.status.and_then(|s| s.instance_id).expect("instance id");
        eventually(what, MINUTE, || async {
            let shown = self.shown(&id).await;
            check(&shown).then_some(shown)
        })
        .await
    }
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn live_fields_change_in_place_without_a_stop_and_status_reports_them() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("live").await;
    let _operator = Operator::start(&ns);
    let profile = seeded("TEST_INSTANCE_PROFILE");
    let profile_2 = seeded("TEST_INSTANCE_PROFILE_2");
    bed.create(
        &ns,
        "live",
        json!({"subnetId": bed.seed.subnet_id, "rootVolume": {"sizeGiB": 8}, "creditSpecification": "Unlimited"}),
    )
    .await;
    let launched = bed.ready(&ns, "live").await.status.unwrap();
    let id = launched.instance_id.clone().unwrap();
    assert_eq!(launched.lifecycle.as_deref(), Some("on-demand"));
    assert_eq!(
        launched
            .metadata_options
            .as_ref()
            .and_then(|m| m.http_tokens.as_deref()),
        Some("required")
    );
    let launch_time = bed.shown(&id).await.launch_time().cloned();

    bed.patch_spec(
        &ns,
        "live",
        json!({
            "metadataOptions": {"httpTokens": "Optional", "httpPutResponseHopLimit": 2, "instanceMetadataTags": "Enabled"},
            "monitoring": "Detailed",
            "sourceDestCheck": false,
            "terminationProtection": true,
            "stopProtection": true,
            "shutdownBehavior": "Terminate",
            "creditSpecification": "Standard",
            "iamInstanceProfile": profile,
            "rootVolume": {"sizeGiB": 12},
        }),
    )
    .await;
    let shown = bed
        .ready_and_shown(&ns, "live", "every live field on the instance", |i| {
            let metadata = i.metadata_options();
            metadata.and_then(|m| m.http_tokens()).map(|t| t.as_str()) == Some("optional")
                && metadata.and_then(|m| m.http_put_response_hop_limit()) == Some(2)
                && metadata.and_then(|m| m.instance_metadata_tags()).map(|t| t.as_str()) == Some("enabled")
                && i.monitoring().and_then(|m| m.state()).map(|s| s.as_str()) == Some("enabled")
                && i.source_dest_check() == Some(false)
                && i.iam_instance_profile()
                    .and_then(|p| p.arn())
                    .is_some_and(|arn| arn.ends_with(&format!("/{profile}")))
        })
        .await;
    assert_eq!(shown.launch_time(), launch_time.as_ref(), "never stopped and started");
    assert_eq!(state_of(&shown), "running");
    let protected = bed.attribute(&id, InstanceAttributeName::DisableApiTermination).await;
    assert_eq!(protected.disable_api_termination().and_then(|v| v.value()), Some(true));
    let unstoppable = bed.attribute(&id, InstanceAttributeName::DisableApiStop).await;
    assert_eq!(unstoppable.disable_api_stop().and_then(|v| v.value()), Some(true));
    let shutdown = bed
        .attribute(&id, InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .await;
    assert_eq!(
        shutdown.instance_initiated_shutdown_behavior().and_then(|v| v.value()),
        Some("terminate")
    );
    assert_eq!(bed.credits(&id).await, "standard");
    let root = shown
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == shown.root_device_name())
        .and_then(|m| m.ebs()?.volume_id())
        .expect("root volume")
        .to_owned();
    assert_eq!(bed.volume(&root).await.size(), Some(12));
    let status = bed.api(&ns).get("live").await.unwrap().status.unwrap();
    assert_eq!(status.monitoring.as_deref(), Some("enabled"));
    assert_eq!(status.source_dest_check, Some(false));
    assert_eq!(
        status
            .metadata_options
            .as_ref()
            .and_then(|m| m.http_put_response_hop_limit),
        Some(2)
    );
    assert!(
        status
            .iam_instance_profile_arn
            .as_deref()
            .is_some_and(|a| a.ends_with(&profile))
    );
    assert!(status.attributes.is_some(), "hidden attributes verified");
    assert_eq!(
        status.volumes.first().map(|v| v.volume_id.as_str()),
        Some(root.as_str())
    );

    // The profile is replaced, then disassociated once the spec drops it.
    bed.patch_spec(&ns, "live", json!({"iamInstanceProfile": profile_2}))
        .await;
    bed.ready_and_shown(&ns, "live", "the second profile", |i| {
        i.iam_instance_profile()
            .and_then(|p| p.arn())
            .is_some_and(|arn| arn.ends_with(&format!("/{profile_2}")))
    })
    .await;
    bed.patch_spec(&ns, "live", json!({"iamInstanceProfile": null})).await;
    bed.ready_and_shown(&ns, "live", "no profile", |i| i.iam_instance_profile().is_none())
        .await;

    // EC2 refuses to terminate it; deleting the object turns the protection off first.
    let refused = bed.strict_ec2.terminate_instances().instance_ids(&id).send().await;
    assert!(refused.is_err(), "termination protection holds");
    bed.delete(&ns, "live").await;
    let gone = state_of(&bed.shown(&id).await);
    assert!(gone == "terminated" || gone == "shutting-down", "{gone}");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn ebs_optimization_changes_through_a_stop_and_a_start() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("ebs-opt").await;
    let _operator = Operator::start(&ns);
    bed.create(
        &ns,
        "disk",
        json!({"subnetId": bed.seed.subnet_id, "instanceType": "m5.large"}),
    )
    .await;
    let id = bed.ready(&ns, "disk").await.status.unwrap().instance_id.unwrap();
    assert_ne!(bed.shown(&id).await.ebs_optimized(), Some(true));
    bed.patch_spec(&ns, "disk", json!({"ebsOptimized": true})).await;
    let shown = bed
        .ready_and_shown(&ns, "disk", "EBS-optimized and running", |i| {
            i.ebs_optimized() == Some(true) && state_of(i) == "running"
        })
        .await;
    assert_eq!(shown.instance_id(), Some(id.as_str()), "the same instance");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn launch_only_fields_reach_the_instance_and_cannot_change_after() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("launch-only").await;
    let _operator = Operator::start(&ns);
    let group = seeded("TEST_PLACEMENT_GROUP");
    let zone = bed
        .strict_ec2
        .describe_subnets()
        .subnet_ids(&bed.seed.subnet_id)
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .availability_zone()
        .unwrap()
        .to_owned();
    bed.create(
        &ns,
        "full",
        json!({
            "instanceType": "m5.large",
            "subnetId": bed.seed.subnet_id,
            "securityGroupIds": [bed.seed.security_group_id],
            "rootVolume": {"sizeGiB": 10, "encrypted": true},
            "blockDeviceMappings": [
                {"deviceName": "/dev/sdf", "sizeGiB": 20, "type": "gp3", "iops": 4000, "throughput": 250, "deleteOnTermination": true},
                {"deviceName": "/dev/sdg", "sizeGiB": 5, "type": "gp2", "encrypted": false}
            ],
            "networkInterface": {"associatePublicIp": true, "secondaryPrivateIpCount": 2},
            "placement": {"availabilityZone": zone, "tenancy": "dedicated", "groupName": group, "partitionNumber": 2},
            "cpuOptions": {"coreCount": 1, "threadsPerCore": 1},
            "hibernation": true,
            "enclave": true,
            "capacityReservation": {"preference": "None"},
        }),
    )
    .await;
    let status = bed.ready(&ns, "full").await.status.unwrap();
    let id = status.instance_id.clone().unwrap();
    let shown = bed.shown(&id).await;
    assert!(shown.public_ip_address().is_some(), "a public IP from the interface");
    let nic = &shown.network_interfaces()[0];
    assert_eq!(nic.private_ip_addresses().len(), 3, "primary + 2 secondary");
    assert_eq!(nic.groups()[0].group_id(), Some(bed.seed.security_group_id.as_str()));
    assert_eq!(status.network_interface_id.as_deref(), nic.network_interface_id());
    let placement = shown.placement().unwrap();
    assert_eq!(placement.availability_zone(), Some(zone.as_str()));
    assert_eq!(placement.tenancy().map(|t| t.as_str()), Some("dedicated"));
    assert_eq!(
        (placement.group_name(), placement.partition_number()),
        (Some(group.as_str()), Some(2))
    );
    let cpu = shown.cpu_options().unwrap();
    assert_eq!((cpu.core_count(), cpu.threads_per_core()), (Some(1), Some(1)));
    assert_eq!(shown.hibernation_options().and_then(|h| h.configured()), Some(true));
    assert_eq!(shown.enclave_options().and_then(|e| e.enabled()), Some(true));
    let reservation = shown.capacity_reservation_specification().unwrap();
    assert_eq!(
        reservation.capacity_reservation_preference().map(|p| p.as_str()),
        Some("none")
    );
    let volume_on = |device: &str| {
        shown
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some(device))
            .and_then(|m| m.ebs()?.volume_id())
            .unwrap_or_else(|| panic!("{device} attached"))
            .to_owned()
    };
    let fast = bed.volume(&volume_on("/dev/sdf")).await;
    assert_eq!(
        (
            fast.size(),
            fast.volume_type().map(|t| t.as_str()),
            fast.iops(),
            fast.throughput()
        ),
        (Some(20), Some("gp3"), Some(4000), Some(250))
    );
    let plain = bed.volume(&volume_on("/dev/sdg")).await;
    assert_eq!((plain.size(), plain.encrypted()), (Some(5), Some(false)));
    assert_eq!(status.volumes.len(), 3, "root and two extra: {:?}", status.volumes);

    // IPv6 addresses need a subnet with an IPv6 range.
    bed.create(
        &ns,
        "v6",
        json!({"subnetId": seeded("TEST_IPV6_SUBNET_ID"), "networkInterface": {"ipv6AddressCount": 2}}),
    )
    .await;
    let v6 = bed.ready(&ns, "v6").await.status.unwrap().instance_id.unwrap();
    let shown_v6 = bed.shown(&v6).await;
    assert_eq!(
        shown_v6.network_interfaces()[0].ipv6_addresses().len(),
        2,
        "{shown_v6:?}"
    );

    let refused = bed
        .patch_rejected(&ns, "full", &json!({"cpuOptions": {"coreCount": 2}}))
        .await;
    assert!(refused.contains("cpuOptions is immutable"), "{refused}");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_launch_template_a_fixed_address_and_a_capacity_reservation_reach_run_instances() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("template").await;
    let _operator = Operator::start(&ns);
    let template = seeded("TEST_LAUNCH_TEMPLATE_ID");
    let reservation = seeded("TEST_CAPACITY_RESERVATION_ID");
    // An address of the seeded subnet no interface holds (LocalStack keeps the addresses of
    // terminated instances: on a bed that ran this before, the last run's is taken).
    let subnet = &bed.seed.subnet_id;
    let interfaces = bed
        .strict_ec2
        .describe_network_interfaces()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("subnet-id")
                .values(subnet)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let taken: Vec<&str> = interfaces
        .network_interfaces()
        .iter()
        .flat_map(|n| n.private_ip_addresses())
        .filter_map(|a| a.private_ip_address())
        .collect();
    let subnets = bed
        .strict_ec2
        .describe_subnets()
        .subnet_ids(subnet)
        .send()
        .await
        .unwrap();
    let cidr = subnets.subnets()[0].cidr_block().unwrap();
    let prefix = cidr.rsplit_once('.').unwrap().0;
    let address = (200..=250)
        .map(|n| format!("{prefix}.{n}"))
        .find(|a| !taken.contains(&a.as_str()))
        .expect("a free address in .200-.250");
    let address = address.as_str();
    bed.create(
        &ns,
        "templated",
        json!({
            "subnetId": bed.seed.subnet_id,
            "launchTemplate": {"id": template, "version": "$Default"},
            "networkInterface": {"privateIp": address},
            "capacityReservation": {"reservationId": reservation},
        }),
    )
    .await;
    let id = bed.ready(&ns, "templated").await.status.unwrap().instance_id.unwrap();
    let shown = bed.shown(&id).await;
    let from_template = shown
        .tags()
        .iter()
        .any(|t| t.key() == Some("aws:ec2launchtemplate:id") && t.value() == Some(template.as_str()));
    assert!(from_template, "launched from the template: {:?}", shown.tags());
    assert_eq!(shown.private_ip_address(), Some(address));
    let target = shown
        .capacity_reservation_specification()
        .and_then(|c| c.capacity_reservation_target())
        .and_then(|t| t.capacity_reservation_id());
    assert_eq!(target, Some(reservation.as_str()));
    bed.delete(&ns, "templated").await;
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn selectors_and_an_ssm_image_are_resolved_at_launch_and_recorded() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("selectors").await;
    let _operator = Operator::start(&ns);
    let parameter = seeded("TEST_SSM_AMI_PARAMETER");
    bed.create(
        &ns,
        "picked",
        json!({
            "imageId": format!("resolve:ssm:{parameter}"),
            "subnetSelector": {"k106.com/testbed-role": "primary"},
            "securityGroupSelector": {"tier": "app"},
        }),
    )
    .await;
    let status = bed.ready(&ns, "picked").await.status.unwrap();
    assert_eq!(status.subnet_id.as_deref(), Some(bed.seed.subnet_id.as_str()));
    assert_eq!(status.security_group_ids, vec![bed.seed.security_group_id_2.clone()]);
    assert_eq!(
        status.image_id.as_deref(),
        Some(bed.seed.image_id.as_str()),
        "the AMI EC2 resolved"
    );
    let shown = bed.shown(status.instance_id.as_deref().unwrap()).await;
    assert_eq!(shown.image_id(), Some(bed.seed.image_id.as_str()));
    assert_eq!(shown.subnet_id(), Some(bed.seed.subnet_id.as_str()));
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn an_interrupted_spot_instance_is_replaced_with_a_warning() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("spot").await;
    let operator = Operator::start(&ns);
    let obj = bed
        .create(
            &ns,
            "cheap",
            json!({"subnetId": bed.seed.subnet_id, "spot": {"maxPrice": "0.05"}}),
        )
        .await;
    let status = bed.ready(&ns, "cheap").await.status.unwrap();
    let old = status.instance_id.clone().unwrap();
    assert_eq!(status.lifecycle.as_deref(), Some("spot"));
    assert!(
        status
            .spot_instance_request_id
            .as_deref()
            .is_some_and(|r| r.starts_with("sir-"))
    );

    support::strict_control(&format!("/_strict/interrupt?instance={old}")).await;
    let new = eventually("a replacement", MINUTE, || async {
        let id = bed.api(&ns).get("cheap").await.ok()?.status?.instance_id?;
        (id != old).then_some(id)
    })
    .await;
    bed.ready(&ns, "cheap").await;
    let interrupted = bed.shown(&old).await;
    assert_eq!(
        interrupted.state_reason().and_then(|r| r.code()),
        Some("Server.SpotInstanceTermination")
    );
    assert_eq!(
        bed.shown(&new).await.instance_lifecycle().map(|l| l.as_str()),
        Some("spot")
    );
    use kube::ResourceExt;
    assert_eq!(
        bed.live_instances_of(&obj.uid().unwrap()).await.len(),
        1,
        "exactly one live instance"
    );
    let described = bed.kubectl(&["describe", "ec2i", "cheap", "-n", &ns]);
    assert!(
        described.contains("Warning") && described.contains("SpotInterrupted"),
        "{described}"
    );

    // Deleting cancels the Spot request before terminating: a persistent one would launch again.
    bed.delete(&ns, "cheap").await;
    let cancelled = operator
        .metric("ec2_operator_actions_total{action=\"cancel_spot_request\"}")
        .await;
    assert_eq!(cancelled, 1.0);
    assert!(bed.live_instances_of(&obj.uid().unwrap()).await.is_empty());
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn a_spot_instance_ec2_stops_on_interruption_is_left_for_ec2_to_start() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("spot-stop").await;
    let operator = Operator::start(&ns);
    let spot = json!({"subnetId": bed.seed.subnet_id, "spot": {"interruptionBehavior": "Stop"}});
    bed.create(&ns, "patient", spot).await;
    let id = bed.ready(&ns, "patient").await.status.unwrap().instance_id.unwrap();
    support::strict_control(&format!("/_strict/interrupt?instance={id}")).await;
    let obj = bed
        .condition_until(&ns, "patient", "reported stopped, not Ready", |ready| {
            ready.status == "False" && ready.message.contains("stopped")
        })
        .await;
    let kept = obj.status.unwrap().instance_id;
    assert_eq!(kept.as_deref(), Some(id.as_str()), "kept, not replaced");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let shown = bed.shown(&id).await;
    assert_eq!(state_of(&shown), "stopped");
    let reason = shown.state_reason().and_then(|r| r.code());
    assert_eq!(reason, Some("Server.SpotInstanceShutdown"));
    let starts = operator.metric("ec2_operator_actions_total{action=\"start\"}").await;
    assert_eq!(starts, 0.0, "only EC2 restarts it");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn specs_ec2_would_refuse_are_rejected_at_admission() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("fields-invalid").await;
    let cases = [
        (
            json!({"subnetId": "subnet-12345678", "subnetSelector": {"a": "b"}}),
            "set subnetId or subnetSelector, not both",
        ),
        (
            json!({"securityGroupIds": ["sg-12345678"], "securityGroupSelector": {"a": "b"}}),
            "set securityGroupIds or securityGroupSelector, not both",
        ),
        (
            json!({"stopProtection": true, "desiredState": "Stopped"}),
            "EC2 refuses to stop a protected instance",
        ),
        (
            json!({"spot": {}, "desiredState": "Stopped"}),
            "a one-time Spot instance cannot be stopped",
        ),
        (
            json!({"spot": {}, "terminationProtection": true}),
            "neither termination nor stop protection on Spot",
        ),
        (json!({"spot": {"maxPrice": "cheap"}}), "spec.spot.maxPrice"),
        (
            json!({"instanceType": "m5.large", "creditSpecification": "Unlimited"}),
            "burstable instance types only",
        ),
        (
            json!({"blockDeviceMappings": [{"deviceName": "/dev/sdf", "sizeGiB": 10, "type": "io2"}]}),
            "io1 and io2 volumes need iops",
        ),
        (
            json!({"blockDeviceMappings": [{"deviceName": "/dev/sdf", "sizeGiB": 10, "type": "gp2", "throughput": 200}]}),
            "throughput applies to gp3 volumes only",
        ),
        (
            json!({"blockDeviceMappings": [{"deviceName": "/dev/sdf", "sizeGiB": 10, "kmsKeyId": "alias/x"}]}),
            "kmsKeyId needs encrypted: true",
        ),
        (
            json!({"blockDeviceMappings": [{"deviceName": "/dev/root", "sizeGiB": 10}]}),
            "deviceName",
        ),
        (
            json!({"launchTemplate": {"id": "lt-0123456789abcdef0", "name": "web"}}),
            "launchTemplate needs id or name, not both",
        ),
        (
            json!({"launchTemplate": {"version": "$Latest"}}),
            "launchTemplate needs id or name, not both",
        ),
        (
            json!({"capacityReservation": {}}),
            "capacityReservation needs preference or reservationId",
        ),
        (
            json!({"placement": {"partitionNumber": 2}}),
            "partitionNumber needs groupName",
        ),
        (
            json!({"metadataOptions": {"httpPutResponseHopLimit": 65}}),
            "httpPutResponseHopLimit",
        ),
        (json!({"networkInterface": {"privateIp": "10.0.0.300"}}), "privateIp"),
        (
            json!({"networkInterface": {"privateIp": "10.0.0.30"}, "updatePolicy": "Replace"}),
            "networkInterface.privateIp cannot go with updatePolicy: Replace",
        ),
        (json!({"imageId": "resolve:ssm:"}), "spec.imageId"),
        (
            json!({"cpuOptions": {"coreCount": 2, "threadsPerCore": 3}}),
            "threadsPerCore",
        ),
    ];
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let err = bed.create_rejected(&ns, &format!("bad-{i}"), &spec).await;
        assert!(err.contains(expected), "{spec}: expected {expected:?} in: {err}");
    }

    // Changes: a stop the spec forbids, a launch-only field.
    bed.create(
        &ns,
        "guarded",
        json!({"stopProtection": true, "blockDeviceMappings": [{"deviceName": "/dev/sdf", "sizeGiB": 10}]}),
    )
    .await;
    bed.create(&ns, "spot", json!({"spot": {}})).await;
    let changes = [
        (
            "guarded",
            json!({"instanceType": "t3.large"}),
            "stopProtection forbids the stop",
        ),
        (
            "guarded",
            json!({"userData": "echo hi"}),
            "stopProtection forbids the stop",
        ),
        (
            "guarded",
            json!({"blockDeviceMappings": [{"deviceName": "/dev/sdf", "sizeGiB": 20}]}),
            "blockDeviceMappings is immutable",
        ),
        (
            "spot",
            json!({"instanceType": "t3.large"}),
            "a one-time Spot instance cannot be stopped",
        ),
        ("spot", json!({"spot": {"maxPrice": "1"}}), "spot is immutable"),
    ];
    for (name, patch, expected) in changes {
        let err = bed.patch_rejected(&ns, name, &patch).await;
        assert!(
            err.contains(expected),
            "{name}: {patch}: expected {expected:?} in: {err}"
        );
    }
    // The reference example, every field set, is a valid object.
    let example = format!("{}/examples/reference/everything.yaml", support::ROOT);
    let applied = bed.kubectl(&["apply", "--server-side", "--dry-run=server", "-f", &example]);
    assert!(applied.contains("everything serverside-applied"), "{applied}");
    // Turning stop protection off in the same change lets the type change through.
    bed.patch_spec(
        &ns,
        "guarded",
        json!({"stopProtection": false, "instanceType": "t3.large"}),
    )
    .await;
}
