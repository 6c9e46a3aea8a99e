//! Test fixtures that read like prose: `Ec2Instance::test().with_type("t3.large")`.

use kube::api::ObjectMeta;

use crate::crd::{
    DesiredState, Ec2Instance, Ec2InstanceSpec, Ec2InstanceStatus, HttpTokens, ManagementPolicy, Monitoring, Switch,
    UpdatePolicy,
};
use crate::decide::Desired;
use crate::model::{Details, Hidden, InstanceState, MetadataInForce, ObservedInstance, Owner};

pub const UID: &str = "6d1a2b3c-0000-4000-8000-00000000abcd";
pub const CLUSTER_ID: &str = "cluster-test";

/// Builder methods shared by the object and its spec.
pub trait SpecBuilder: Sized {
    fn spec_mut(&mut self) -> &mut Ec2InstanceSpec;

    fn with_type(mut self, instance_type: &str) -> Self {
        self.spec_mut().instance_type = instance_type.into();
        self
    }
    fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.spec_mut()
            .tags
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }
    fn with_user_data(mut self, user_data: &str) -> Self {
        self.spec_mut().user_data = Some(user_data.into());
        self
    }
    fn with_security_groups(mut self, groups: &[&str]) -> Self {
        self.spec_mut().security_group_ids = Some(groups.iter().map(|g| g.to_string()).collect());
        self
    }
    fn with_desired_state(mut self, state: DesiredState) -> Self {
        self.spec_mut().desired_state = state;
        self
    }
    fn with_subnet(mut self, subnet_id: &str) -> Self {
        self.spec_mut().subnet_id = Some(subnet_id.into());
        self
    }
    fn with_image(mut self, image_id: &str) -> Self {
        self.spec_mut().image_id = image_id.into();
        self
    }
    /// `updatePolicy: Replace`: a change of a field fixed at launch replaces the instance.
    fn replacing_on_change(mut self) -> Self {
        self.spec_mut().update_policy = UpdatePolicy::Replace;
        self
    }
    /// Any other field: `spec().setting(|s| s.monitoring = Some(Monitoring::Detailed))`.
    fn setting(mut self, change: impl FnOnce(&mut Ec2InstanceSpec)) -> Self {
        change(self.spec_mut());
        self
    }
    fn with_profile(mut self, profile: &str) -> Self {
        self.spec_mut().iam_instance_profile = Some(profile.into());
        self
    }
    fn with_root_size(mut self, size_gib: i32) -> Self {
        self.spec_mut()
            .root_volume
            .get_or_insert_with(Default::default)
            .size_gib = Some(size_gib);
        self
    }
    fn observe_only(mut self) -> Self {
        self.spec_mut().management_policy = ManagementPolicy::ObserveOnly;
        self
    }
}

impl SpecBuilder for Ec2InstanceSpec {
    fn spec_mut(&mut self) -> &mut Ec2InstanceSpec {
        self
    }
}

impl SpecBuilder for Ec2Instance {
    fn spec_mut(&mut self) -> &mut Ec2InstanceSpec {
        &mut self.spec
    }
}

impl Ec2Instance {
    /// `default/web`, a t3.micro running Amazon Linux, never reconciled.
    pub fn test() -> Self {
        let mut obj = Ec2Instance::new("web", spec());
        obj.metadata = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some(UID.into()),
            generation: Some(1),
            resource_version: Some("1".into()),
            ..Default::default()
        };
        obj
    }

    pub fn with_status(mut self, status: Ec2InstanceStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// As the operator leaves it once `instance` matches the spec: Ready for this generation.
    pub fn ready_on(self, instance: &ObservedInstance) -> Self {
        let readiness = crate::decide::Readiness::ready("InstanceRunning", "matches the spec");
        let status = crate::status::next_status(&self, Some(instance), vec![], readiness, jiff::Timestamp::now());
        self.with_status(status)
    }

    pub fn finalized(mut self) -> Self {
        self.metadata.finalizers = Some(vec![crate::reconcile::FINALIZER.into()]);
        self
    }
}

pub fn spec() -> Ec2InstanceSpec {
    serde_json::from_value(serde_json::json!({"imageId": "ami-760aaa0f", "instanceType": "t3.micro"}))
        .expect("the minimal spec parses")
}

/// The test owner, for [`desired_for`].
pub static OWNER: std::sync::LazyLock<Owner> = std::sync::LazyLock::new(owner);

/// What `spec` asks of EC2 for the test owner.
pub fn desired_for(spec: &Ec2InstanceSpec) -> Desired<'_> {
    Desired { spec, owner: &OWNER }
}

pub fn owner() -> Owner {
    Owner {
        uid: UID.into(),
        namespace: "default".into(),
        name: "web".into(),
        cluster_id: CLUSTER_ID.into(),
    }
}

/// An instance exactly as the operator would have launched it for `spec`.
pub fn instance_for(spec: &Ec2InstanceSpec, state: InstanceState) -> ObservedInstance {
    let owner = owner();
    ObservedInstance {
        id: "i-0123456789abcdef0".into(),
        state,
        instance_type: spec.instance_type.clone(),
        security_group_ids: spec.security_group_ids.iter().flatten().cloned().collect(),
        tags: Desired { spec, owner: &owner }.launch_tags(),
        private_ip: Some("10.0.0.10".into()),
        public_ip: None,
        private_dns_name: Some("ip-10-0-0-10.ec2.internal".into()),
        public_dns_name: None,
        availability_zone: Some("us-east-1a".into()),
        launch_time: Some("2026-01-01T00:00:00Z".into()),
        state_reason: None,
        image_id: Some(spec.image_id.clone()),
        subnet_id: spec.subnet_id.clone(),
        key_name: spec.key_name.clone(),
        details: details_for(spec),
    }
}

/// What DescribeInstances shows of an instance launched for `spec` (hidden attributes unread).
fn details_for(spec: &Ec2InstanceSpec) -> Details {
    let metadata = spec.metadata_options.clone().unwrap_or_default();
    Details {
        lifecycle: spec.spot.as_ref().map(|_| "spot"),
        spot_request_id: spec.spot.as_ref().map(|_| "sir-0123abcd".into()),
        network_interface_id: Some("eni-0123456789abcdef0".into()),
        volumes: vec![("/dev/xvda".into(), "vol-0123456789abcdef0".into())],
        root_device_name: Some("/dev/xvda".into()),
        metadata: Some(MetadataInForce {
            http_tokens: Some(metadata.http_tokens.unwrap_or(HttpTokens::Required).as_ec2()),
            hop_limit: Some(metadata.http_put_response_hop_limit.unwrap_or(1)),
            http_endpoint: Some(metadata.http_endpoint.unwrap_or(Switch::Enabled).as_ec2()),
            instance_tags: Some(metadata.instance_metadata_tags.unwrap_or(Switch::Disabled).as_ec2()),
            state: Some("applied"),
        }),
        monitoring: Some(if spec.monitoring == Some(Monitoring::Detailed) {
            "enabled"
        } else {
            "disabled"
        }),
        ebs_optimized: Some(spec.ebs_optimized.unwrap_or(false)),
        source_dest_check: Some(spec.source_dest_check.unwrap_or(true)),
        iam_profile_arn: spec
            .iam_instance_profile
            .as_ref()
            .map(|p| format!("arn:aws:iam::000000000000:instance-profile/{p}")),
        hidden: None,
    }
}

impl ObservedInstance {
    pub fn with_type(mut self, instance_type: &str) -> Self {
        self.instance_type = instance_type.into();
        self
    }
    pub fn in_state(mut self, state: InstanceState) -> Self {
        self.state = state;
        self
    }
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id.into();
        self
    }
    pub fn with_instance_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
    pub fn without_instance_tag(mut self, key: &str) -> Self {
        self.tags.remove(key);
        self
    }
    /// What the reconcile read of the attributes DescribeInstances does not show.
    pub fn with_hidden(mut self, hidden: Hidden) -> Self {
        self.details.hidden = Some(Box::new(hidden));
        self
    }
    pub fn with_details(mut self, change: impl FnOnce(&mut Details)) -> Self {
        change(&mut self.details);
        self
    }
    pub fn with_state_reason(mut self, reason: &str) -> Self {
        self.state_reason = Some(reason.into());
        self
    }
    pub fn launched(mut self, at: &str) -> Self {
        self.launch_time = Some(at.into());
        self
    }
}

/// A mocked API server (tower-test) that answers every request the reconcile makes and
/// records them: events are accepted, patches echo the object back with the patch applied.
pub struct ApiServer {
    requests: std::sync::Arc<std::sync::Mutex<Vec<(http::Method, String, serde_json::Value)>>>,
}

impl ApiServer {
    /// A client for the mock, and the mock answering as if `obj` were stored.
    pub fn start(obj: Ec2Instance) -> (kube::Client, ApiServer) {
        Self::serve(obj, false)
    }

    /// The same, once `obj` is gone from the API server: a read of it answers 404.
    pub fn start_deleted(obj: Ec2Instance) -> (kube::Client, ApiServer) {
        Self::serve(obj, true)
    }

    fn serve(obj: Ec2Instance, deleted: bool) -> (kube::Client, ApiServer) {
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let path = parts.uri.path().to_owned();
                recorded
                    .lock()
                    .unwrap()
                    .push((parts.method.clone(), path.clone(), body.clone()));
                if deleted && parts.method == http::Method::GET && path.ends_with("/ec2instances/web") {
                    let gone = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "ec2instances.k106.com \"web\" not found"});
                    let mut response = http::Response::new(Body::from(serde_json::to_vec(&gone).unwrap()));
                    *response.status_mut() = http::StatusCode::NOT_FOUND;
                    respond.send_response(response);
                    continue;
                }
                let answer = if path.contains("/events") {
                    body
                } else {
                    let mut current = serde_json::to_value(&obj).unwrap();
                    if let Some(status) = body.get("status") {
                        current["status"] = status.clone();
                    }
                    current
                };
                respond.send_response(http::Response::new(Body::from(serde_json::to_vec(&answer).unwrap())));
            }
        });
        (kube::Client::new(service, "default"), ApiServer { requests })
    }

    /// `(method, path, body)` of every request so far.
    pub fn requests(&self) -> Vec<(http::Method, String, serde_json::Value)> {
        self.requests.lock().unwrap().clone()
    }

    /// Whether the object itself (not its status) was patched: the finalizer's removal.
    pub fn finalizer_removed(&self) -> bool {
        self.requests()
            .iter()
            .any(|(method, path, _)| method == http::Method::PATCH && path.ends_with("/ec2instances/web"))
    }

    pub fn status_patches(&self) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|(_, path, _)| path.ends_with("/status"))
            .map(|(_, _, body)| body)
            .collect()
    }
}

/// A Context on a mocked API server and a mocked EC2 client.
pub fn context(client: kube::Client, ec2: aws_sdk_ec2::Client) -> std::sync::Arc<crate::reconcile::Context> {
    use std::sync::Arc;
    use std::time::Duration;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let regions = crate::ec2::Ec2Regions::new("us-east-1".into(), metrics.clone(), move |_| ec2.clone());
    let timing = crate::reconcile::Timing {
        poll_interval: Duration::from_secs(30),
        transition_interval: Duration::from_secs(5),
        terminal_retry_interval: Duration::from_secs(300),
        attribute_check_interval: Duration::from_secs(1800),
    };
    Arc::new(crate::reconcile::Context::new(
        client,
        Arc::new(regions),
        metrics,
        timing,
        CLUSTER_ID.into(),
    ))
}
