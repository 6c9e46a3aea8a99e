//! Test fixtures that read like prose: `Ec2Instance::test().with_type("t3.large")`.

use kube::api::ObjectMeta;

use crate::crd::{DesiredState, Ec2Instance, Ec2InstanceSpec, Ec2InstanceStatus};
use crate::decide::{Desired, Owner};
use crate::ec2::{InstanceState, ObservedInstance};

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

    pub fn finalized(mut self) -> Self {
        self.metadata.finalizers = Some(vec![crate::reconcile::FINALIZER.into()]);
        self
    }
}

pub fn spec() -> Ec2InstanceSpec {
    Ec2InstanceSpec {
        image_id: "ami-760aaa0f".into(),
        instance_type: "t3.micro".into(),
        subnet_id: None,
        security_group_ids: None,
        key_name: None,
        iam_instance_profile: None,
        user_data: None,
        tags: None,
        root_volume: None,
        region: None,
        desired_state: DesiredState::Running,
        deletion_policy: Default::default(),
    }
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
    pub fn launched(mut self, at: &str) -> Self {
        self.launch_time = Some(at.into());
        self
    }
}
