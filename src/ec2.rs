//! The I/O shell towards EC2: one trait with every call the operator makes, our own small model
//! of an observed instance, and the implementation on `aws_sdk_ec2::Client`.
//!
//! To add an EC2 call: add a method to [`Ec2`], implement it on [`AwsEc2`] with `self.count(..)`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    AttributeValue, BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, ResourceType,
    SecureBlobAttributeValue, Tag, TagSpecification,
};
use base64::Engine as _;

use crate::error::{AwsFault, Error, Result};
use crate::metrics::Metrics;

/// EC2 instance states, as EC2 names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }

    /// An instance that is gone or going away for good.
    pub fn is_dead(self) -> bool {
        matches!(self, InstanceState::ShuttingDown | InstanceState::Terminated)
    }

    fn from_sdk(name: &InstanceStateName) -> Self {
        match name {
            InstanceStateName::Pending => InstanceState::Pending,
            InstanceStateName::Running => InstanceState::Running,
            InstanceStateName::Stopping => InstanceState::Stopping,
            InstanceStateName::Stopped => InstanceState::Stopped,
            InstanceStateName::ShuttingDown => InstanceState::ShuttingDown,
            // An unknown future state is treated as in transition, never as gone.
            InstanceStateName::Terminated => InstanceState::Terminated,
            _ => InstanceState::Pending,
        }
    }
}

/// What DescribeInstances told us about one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedInstance {
    pub id: String,
    pub state: InstanceState,
    pub instance_type: String,
    pub security_group_ids: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub private_dns_name: Option<String>,
    pub public_dns_name: Option<String>,
    pub availability_zone: Option<String>,
    pub launch_time: Option<String>,
}

/// Everything RunInstances needs for one instance.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LaunchRequest {
    /// Makes the launch idempotent on AWS: the same token never launches twice.
    pub client_token: String,
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Option<Vec<String>>,
    pub key_name: Option<String>,
    pub iam_instance_profile: Option<String>,
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub root_volume: Option<RootVolumeRequest>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct RootVolumeRequest {
    pub size_gib: Option<i32>,
    pub volume_type: Option<String>,
    pub encrypted: Option<bool>,
}

/// The EC2 calls the operator makes, for one region.
#[async_trait]
pub trait Ec2: Send + Sync {
    /// Instances by id; ids EC2 does not know are simply absent from the answer.
    async fn describe_by_ids(&self, ids: &[String]) -> Result<Vec<ObservedInstance>>;
    /// Instances carrying every `key=value` tag given, all pages.
    async fn describe_by_tags(&self, tags: &[(&str, &str)]) -> Result<Vec<ObservedInstance>>;
    async fn run_instance(&self, request: &LaunchRequest) -> Result<ObservedInstance>;
    async fn start(&self, id: &str) -> Result<()>;
    async fn stop(&self, id: &str) -> Result<()>;
    /// Terminating an instance EC2 no longer knows succeeds.
    async fn terminate(&self, id: &str) -> Result<()>;
    async fn modify_instance_type(&self, id: &str, instance_type: &str) -> Result<()>;
    /// `user_data` is plain text; an empty string clears it.
    async fn modify_user_data(&self, id: &str, user_data: &str) -> Result<()>;
    async fn modify_security_groups(&self, id: &str, group_ids: &[String]) -> Result<()>;
    async fn create_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<()>;
    async fn delete_tags(&self, id: &str, keys: &[String]) -> Result<()>;
}

/// Makes the EC2 client for a region.
type MakeClient = Box<dyn Fn(&str) -> Arc<dyn Ec2> + Send + Sync>;

/// One EC2 client per region, made on first use.
pub struct Ec2Regions {
    default_region: String,
    make: MakeClient,
    clients: Mutex<HashMap<String, Arc<dyn Ec2>>>,
}

impl Ec2Regions {
    pub fn new(default_region: String, make: impl Fn(&str) -> Arc<dyn Ec2> + Send + Sync + 'static) -> Self {
        Self {
            default_region,
            make: Box::new(make),
            clients: Mutex::default(),
        }
    }

    /// Clients for the SDK config's credentials and endpoint, one per region.
    pub fn from_sdk_config(config: aws_config::SdkConfig, default_region: String, metrics: Arc<Metrics>) -> Self {
        Self::new(default_region, move |region| {
            let conf = aws_sdk_ec2::config::Builder::from(&config)
                .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
                .build();
            Arc::new(AwsEc2::new(aws_sdk_ec2::Client::from_conf(conf), metrics.clone())) as Arc<dyn Ec2>
        })
    }

    pub fn default_region(&self) -> &str {
        &self.default_region
    }

    /// The region an object lives in: its own, else the operator's default.
    pub fn region_of<'a>(&'a self, spec_region: Option<&'a str>) -> &'a str {
        spec_region.unwrap_or(&self.default_region)
    }

    pub fn client(&self, region: &str) -> Arc<dyn Ec2> {
        let mut clients = self.clients.lock().expect("ec2 client map poisoned");
        clients
            .entry(region.to_owned())
            .or_insert_with(|| (self.make)(region))
            .clone()
    }
}

/// [`Ec2`] on the AWS SDK. Counts every request (each page too) in the metrics.
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
    metrics: Arc<Metrics>,
}

impl AwsEc2 {
    pub fn new(client: aws_sdk_ec2::Client, metrics: Arc<Metrics>) -> Self {
        Self { client, metrics }
    }

    fn count(&self, operation: &'static str) {
        self.metrics.ec2_request(operation);
    }

    async fn describe(&self, ids: Option<Vec<String>>, filters: Option<Vec<Filter>>) -> Result<Vec<ObservedInstance>> {
        // EC2 refuses MaxResults together with InstanceIds; LocalStack pages id lists anyway,
        // so NextToken is followed in both cases.
        let max_results = if ids.is_some() { None } else { Some(1000) };
        let mut next_token: Option<String> = None;
        let mut found = Vec::new();
        loop {
            self.count("DescribeInstances");
            let page = self
                .client
                .describe_instances()
                .set_instance_ids(ids.clone())
                .set_filters(filters.clone())
                .set_max_results(max_results)
                .set_next_token(next_token.take())
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                Err(err) if ids.is_some() && is_unknown_instance(&err) => return Ok(Vec::new()),
                Err(err) => return Err(fault("DescribeInstances", err)),
            };
            for reservation in page.reservations() {
                found.extend(reservation.instances().iter().filter_map(observe));
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(found),
            }
        }
    }

    /// The AMI's root device name, needed to size or encrypt the root volume.
    async fn root_device_name(&self, image_id: &str) -> Result<String> {
        self.count("DescribeImages");
        let out = self
            .client
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| fault("DescribeImages", e))?;
        out.images()
            .first()
            .and_then(|image| image.root_device_name())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::Aws(AwsFault {
                    operation: "DescribeImages",
                    code: "InvalidAMIID.NotFound".into(),
                    message: format!("image {image_id} not found or has no root device"),
                    retryable: false,
                })
            })
    }
}

#[async_trait]
impl Ec2 for AwsEc2 {
    async fn describe_by_ids(&self, ids: &[String]) -> Result<Vec<ObservedInstance>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.describe(Some(ids.to_vec()), None).await
    }

    async fn describe_by_tags(&self, tags: &[(&str, &str)]) -> Result<Vec<ObservedInstance>> {
        let filters = tags
            .iter()
            .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(*v).build())
            .collect();
        self.describe(None, Some(filters)).await
    }

    async fn run_instance(&self, r: &LaunchRequest) -> Result<ObservedInstance> {
        let tags: Vec<Tag> = r
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let tag_spec = |resource| {
            TagSpecification::builder()
                .resource_type(resource)
                .set_tags(Some(tags.clone()))
                .build()
        };
        let block_devices = match &r.root_volume {
            Some(volume) => Some(vec![
                BlockDeviceMapping::builder()
                    .device_name(self.root_device_name(&r.image_id).await?)
                    .ebs(
                        EbsBlockDevice::builder()
                            .set_volume_size(volume.size_gib)
                            .set_volume_type(volume.volume_type.as_deref().map(Into::into))
                            .set_encrypted(volume.encrypted)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            ]),
            None => None,
        };
        let profile = r.iam_instance_profile.as_ref().map(|p| {
            let builder = IamInstanceProfileSpecification::builder();
            if p.starts_with("arn:") {
                builder.arn(p)
            } else {
                builder.name(p)
            }
            .build()
        });
        self.count("RunInstances");
        let out = self
            .client
            .run_instances()
            .client_token(&r.client_token)
            .image_id(&r.image_id)
            .instance_type(r.instance_type.as_str().into())
            .min_count(1)
            .max_count(1)
            .set_subnet_id(r.subnet_id.clone())
            .set_security_group_ids(r.security_group_ids.clone())
            .set_key_name(r.key_name.clone())
            .set_iam_instance_profile(profile)
            .set_user_data(
                r.user_data
                    .as_ref()
                    .map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
            )
            .set_block_device_mappings(block_devices)
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume))
            // IMDSv2 only: session tokens required for instance metadata.
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| fault("RunInstances", e))?;
        out.instances().iter().find_map(observe).ok_or_else(|| {
            Error::Aws(AwsFault {
                operation: "RunInstances",
                code: "EmptyResponse".into(),
                message: "RunInstances returned no instance".into(),
                retryable: true,
            })
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.count("StartInstances");
        self.client
            .start_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| fault("StartInstances", e))?;
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<()> {
        self.count("StopInstances");
        self.client
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| fault("StopInstances", e))?;
        Ok(())
    }

    async fn terminate(&self, id: &str) -> Result<()> {
        self.count("TerminateInstances");
        match self.client.terminate_instances().instance_ids(id).send().await {
            Ok(_) => Ok(()),
            Err(err) if is_unknown_instance(&err) => Ok(()),
            Err(err) => Err(fault("TerminateInstances", err)),
        }
    }

    async fn modify_instance_type(&self, id: &str, instance_type: &str) -> Result<()> {
        self.count("ModifyInstanceAttribute");
        self.client
            .modify_instance_attribute()
            .instance_id(id)
            .instance_type(AttributeValue::builder().value(instance_type).build())
            .send()
            .await
            .map_err(|e| fault("ModifyInstanceAttribute", e))?;
        Ok(())
    }

    async fn modify_user_data(&self, id: &str, user_data: &str) -> Result<()> {
        self.count("ModifyInstanceAttribute");
        // EC2 wants the attribute value itself base64-encoded (the SDK encodes the blob once
        // more for the wire); plain bytes answer InvalidUserData.Malformed.
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_data);
        let value = SecureBlobAttributeValue::builder()
            .value(aws_sdk_ec2::primitives::Blob::new(encoded))
            .build();
        self.client
            .modify_instance_attribute()
            .instance_id(id)
            .user_data(value)
            .send()
            .await
            .map_err(|e| fault("ModifyInstanceAttribute", e))?;
        Ok(())
    }

    async fn modify_security_groups(&self, id: &str, group_ids: &[String]) -> Result<()> {
        self.count("ModifyInstanceAttribute");
        self.client
            .modify_instance_attribute()
            .instance_id(id)
            .set_groups(Some(group_ids.to_vec()))
            .send()
            .await
            .map_err(|e| fault("ModifyInstanceAttribute", e))?;
        Ok(())
    }

    async fn create_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        self.count("CreateTags");
        self.client
            .create_tags()
            .resources(id)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| fault("CreateTags", e))?;
        Ok(())
    }

    async fn delete_tags(&self, id: &str, keys: &[String]) -> Result<()> {
        self.count("DeleteTags");
        self.client
            .delete_tags()
            .resources(id)
            .set_tags(Some(keys.iter().map(|k| Tag::builder().key(k).build()).collect()))
            .send()
            .await
            .map_err(|e| fault("DeleteTags", e))?;
        Ok(())
    }
}

fn observe(instance: &aws_sdk_ec2::types::Instance) -> Option<ObservedInstance> {
    let id = instance.instance_id()?.to_owned();
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(InstanceState::from_sdk)
        .unwrap_or(InstanceState::Pending);
    Some(ObservedInstance {
        id,
        state,
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        security_group_ids: instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
        tags: instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .collect(),
        private_ip: non_empty(instance.private_ip_address()),
        public_ip: non_empty(instance.public_ip_address()),
        private_dns_name: non_empty(instance.private_dns_name()),
        public_dns_name: non_empty(instance.public_dns_name()),
        availability_zone: non_empty(instance.placement().and_then(|p| p.availability_zone())),
        launch_time: instance
            .launch_time()
            .and_then(|t| t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime).ok()),
    })
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

fn is_unknown_instance<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    matches!(
        err.code(),
        Some("InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed")
    )
}

/// EC2 error codes that mean "try again later" (throttling, capacity, eventual consistency).
const RETRYABLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "IncorrectInstanceState",
    "IncorrectState",
    "InsufficientInstanceCapacity",
    "InvalidInstanceID.NotFound",
];

/// Reduce an SDK error to an [`AwsFault`]: EC2's code and message, and whether to retry.
fn fault<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (code, message, retryable) = match &err {
        SdkError::ServiceError(service) => {
            let code = err.code().unwrap_or("Unknown").to_owned();
            let server_side = service.raw().status().is_server_error();
            let retryable = RETRYABLE_CODES.contains(&code.as_str()) || server_side;
            (code, err.message().unwrap_or_default().to_owned(), retryable)
        }
        SdkError::TimeoutError(_) => ("Timeout".into(), "request timed out".into(), true),
        SdkError::DispatchFailure(_) => ("DispatchFailure".into(), dispatch_message(&err), true),
        SdkError::ResponseError(_) => ("ResponseError".into(), dispatch_message(&err), true),
        _ => ("ConstructionFailure".into(), dispatch_message(&err), false),
    };
    Error::Aws(AwsFault {
        operation,
        code,
        message,
        retryable,
    })
}

fn dispatch_message<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        message = format!("{message}: {inner}");
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
    use aws_sdk_ec2::operation::run_instances::RunInstancesError;
    use aws_sdk_ec2::operation::stop_instances::StopInstancesError;
    use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    fn ec2(client: aws_sdk_ec2::Client) -> AwsEc2 {
        AwsEc2::new(client, Arc::new(Metrics::default()))
    }

    fn meta(code: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).message("from the mock").build()
    }

    fn fault_of(err: Error) -> AwsFault {
        match err {
            Error::Aws(fault) => fault,
            other => panic!("expected an AWS fault, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn describing_an_unknown_id_finds_nothing_instead_of_failing() {
        let rule = mock!(aws_sdk_ec2::Client::describe_instances)
            .then_error(|| DescribeInstancesError::generic(meta("InvalidInstanceID.NotFound")));
        let ec2 = ec2(mock_client!(aws_sdk_ec2, [&rule]));
        assert_eq!(
            ec2.describe_by_ids(&["i-0123456789abcdef0".into()]).await.unwrap(),
            vec![]
        );
    }

    #[tokio::test]
    async fn a_bad_ami_is_terminal_and_keeps_the_aws_code() {
        let rule = mock!(aws_sdk_ec2::Client::run_instances)
            .match_requests(|r| r.client_token() == Some("token") && r.metadata_options().is_some())
            .then_error(|| RunInstancesError::generic(meta("InvalidAMIID.NotFound")));
        let ec2 = ec2(mock_client!(aws_sdk_ec2, [&rule]));
        let request = LaunchRequest {
            client_token: "token".into(),
            image_id: "ami-12345678".into(),
            instance_type: "t3.micro".into(),
            ..Default::default()
        };
        let fault = fault_of(ec2.run_instance(&request).await.unwrap_err());
        assert_eq!(
            (fault.operation, fault.code.as_str(), fault.retryable),
            ("RunInstances", "InvalidAMIID.NotFound", false)
        );
        assert_eq!(
            rule.num_calls(),
            1,
            "the request carried the ClientToken and IMDSv2 options"
        );
    }

    #[tokio::test]
    async fn throttling_is_transient() {
        let rule = mock!(aws_sdk_ec2::Client::stop_instances)
            .then_error(|| StopInstancesError::generic(meta("RequestLimitExceeded")));
        let ec2 = ec2(mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&rule]));
        let fault = fault_of(ec2.stop("i-0123456789abcdef0").await.unwrap_err());
        assert!(fault.retryable, "{fault}");
    }

    #[tokio::test]
    async fn terminating_an_instance_ec2_no_longer_knows_succeeds() {
        let rule = mock!(aws_sdk_ec2::Client::terminate_instances)
            .then_error(|| TerminateInstancesError::generic(meta("InvalidInstanceID.NotFound")));
        let ec2 = ec2(mock_client!(aws_sdk_ec2, [&rule]));
        ec2.terminate("i-0123456789abcdef0").await.unwrap();
    }
}
