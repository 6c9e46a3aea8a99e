//! Smoke test of the test bed itself: the real API server serves a CRD, a custom resource and a
//! watch; LocalStack runs, describes and terminates an instance. If this fails, nothing else
//! that `make test` reports can be trusted.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use support::{Bed, eventually, state_of};

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn api_server_serves_a_crd_a_custom_resource_and_a_watch() {
    let bed = Bed::connect().await;
    let crds: Api<CustomResourceDefinition> = Api::all(bed.client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.smoke.k106.com"},
        "spec": {
            "group": "smoke.k106.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"size": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.size >= 0", "message": "size must not be negative"}],
                }}}},
            }],
        },
    }))
    .unwrap();
    crds.patch(
        "widgets.smoke.k106.com",
        &PatchParams::apply("smoke").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    eventually("widgets established", Duration::from_secs(30), || async {
        let crd = crds.get("widgets.smoke.k106.com").await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;

    let ns = bed.namespace("smoke").await;
    let gvk = GroupVersionKind::gvk("smoke.k106.com", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), &ns, &ApiResource::from_gvk(&gvk));
    let mut events = watcher::watcher(widgets.clone(), watcher::Config::default()).boxed();
    let widget = |name: &str, size: i64| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "smoke.k106.com/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size},
        }))
        .unwrap()
    };
    // CEL runs in this API server: an invalid object is refused.
    let refused = widgets
        .create(&PostParams::default(), &widget("bad", -1))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("size must not be negative"), "{refused}");
    widgets
        .create(&PostParams::default(), &widget("good", 3))
        .await
        .unwrap();

    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.try_next().await.unwrap() {
            if let Event::Apply(obj) | Event::InitApply(obj) = event
                && obj.metadata.name.as_deref() == Some("good")
            {
                return obj;
            }
        }
        panic!("watch ended")
    })
    .await
    .expect("the watch delivers the new object");
    assert_eq!(seen.data["spec"]["size"], 3);
    crds.delete("widgets.smoke.k106.com", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn localstack_runs_describes_and_terminates_an_instance() {
    let bed = Bed::connect().await;
    let run = bed
        .ec2
        .run_instances()
        .image_id(&bed.seed.image_id)
        .instance_type("t3.micro".into())
        .subnet_id(&bed.seed.subnet_id)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("RunInstances");
    let id = run.instances()[0].instance_id().unwrap().to_owned();
    let described = bed.instance(&id).await;
    assert_eq!(described.subnet_id(), Some(bed.seed.subnet_id.as_str()));
    bed.ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("TerminateInstances");
    assert_eq!(state_of(&bed.instance(&id).await), "terminated");
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn the_strict_ec2_is_eventually_consistent_and_honours_client_tokens() {
    let bed = Bed::connect().await;
    let token = format!("testbed-{}", fastrand::u64(..));
    let launch = |instance_type: &str| {
        bed.strict_ec2
            .run_instances()
            .client_token(&token)
            .image_id(&bed.seed.image_id)
            .instance_type(instance_type.into())
            .min_count(1)
            .max_count(1)
            .send()
    };
    let first = launch("t3.micro").await.expect("RunInstances");
    let id = first.instances()[0].instance_id().unwrap().to_owned();

    // Unknown by id for a while after the launch, as AWS documents; LocalStack knows it at once.
    let unseen = bed.strict_ec2.describe_instances().instance_ids(&id).send().await;
    let code = unseen
        .map(|_| String::new())
        .unwrap_or_else(|e| e.into_service_error().meta().code().unwrap_or_default().to_owned());
    assert_eq!(code, "InvalidInstanceID.NotFound");
    assert!(!state_of(&bed.instance(&id).await).is_empty(), "LocalStack has it");

    // The same token and parameters: the same instance, not a new one. Other parameters: refused.
    let again = launch("t3.micro").await.expect("RunInstances again");
    assert_eq!(again.instances()[0].instance_id(), Some(id.as_str()));
    let mismatch = launch("t3.large").await.unwrap_err();
    assert_eq!(
        mismatch.into_service_error().meta().code(),
        Some("IdempotentParameterMismatch")
    );

    eventually("the instance becomes visible", Duration::from_secs(30), || async {
        bed.strict_ec2.describe_instances().instance_ids(&id).send().await.ok()
    })
    .await;
    bed.ec2.terminate_instances().instance_ids(&id).send().await.unwrap();
}
