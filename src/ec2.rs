//! The I/O shell towards EC2: every call the operator makes, on `aws_sdk_ec2::Client`, translated
//! to and from the domain model. Reads are `describe_*`; every change goes through
//! [`Ec2::execute`], one `match` from [`Step`] to EC2 call, which also counts the action and
//! remembers the change for the inventory, so no caller can forget either.
//!
//! To add an EC2 call: add a `Step` in `model.rs`, decide it in `decide.rs`, call it here.
//! Tests substitute the SDK client (aws-smithy-mocks), not this type.
//!
//! Every client also carries [`CountAttempts`], which counts each HTTP attempt by outcome,
//! including the SDK's own retries that no call here sees.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::{BoxError, ErrorMetadata, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    AttributeBooleanValue, AttributeValue, BlockDeviceMapping, CapacityReservationPreference,
    CapacityReservationSpecification, CapacityReservationTarget, CpuOptionsRequest, CreditSpecificationRequest,
    EbsBlockDevice, EnclaveOptionsRequest, Filter, HibernationOptionsRequest, HttpTokensState,
    IamInstanceProfileSpecification, InstanceAttributeName, InstanceCreditSpecificationRequest,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceMetadataTagsState, InstanceNetworkInterfaceSpecification,
    InstanceStateName, LaunchTemplateSpecification, MarketType, ResourceType, RunInstancesMonitoringEnabled,
    SecureBlobAttributeValue, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use base64::Engine as _;

use crate::crd::{self, InterruptionBehavior, Monitoring, ReservationPreference};
use crate::error::{AwsFault, Error, Result};
use crate::metrics::Metrics;
use crate::model::{
    Change, Details, Hidden, HiddenWanted, InstanceState, LaunchOptions, LaunchRequest, MetadataInForce,
    ObservedInstance, RootVolumeRequest, Step, TAG_USER_DATA_SHA256, ec2_word,
};

/// When the operator last changed each instance, across regions. The inventory distrusts a poll
/// of an instance that began before its last change.
#[derive(Default)]
pub struct Changes(Mutex<HashMap<String, Instant>>);

impl Changes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().expect("change log poisoned")
    }

    fn record(&self, id: &str) {
        self.map().insert(id.to_owned(), Instant::now());
    }

    /// Whether the operator changed `id` at or after `at`.
    pub fn since(&self, id: &str, at: Instant) -> bool {
        self.map().get(id).is_some_and(|changed| *changed >= at)
    }

    /// Drop changes older than `at`: no snapshot that old is trusted any more.
    pub fn forget_before(&self, at: Instant) {
        self.map().retain(|_, changed| *changed >= at);
    }
}

/// Values one DescribeInstances filter may carry.
const MAX_FILTER_VALUES: usize = 200;

/// How long one EC2 request may take before it is abandoned and retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A DescribeInstances page of up to 1,000 instances gets this many times the attempt timeout:
/// its answer grows with the fleet, and at 10 s a slow endpoint failed every fleet poll of 1,000
/// (every new or deleted object waits for a good poll).
const PAGE_TIMEOUT_FACTOR: u32 = 3;

/// Bounds on every EC2 call: without them a hung connection wedges its object and, for the
/// fleet poll, every object. An operation (all its retries) gets three attempts' worth.
pub fn timeout_config(attempt: Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(attempt.min(Duration::from_secs(3)))
        .operation_attempt_timeout(attempt)
        .operation_timeout(attempt * 3)
        .build()
}

/// Makes the SDK client for a region.
type MakeClient = Box<dyn Fn(&str) -> aws_sdk_ec2::Client + Send + Sync>;

/// Instance types EC2 was asked about, per region: whether each exists.
type KnownTypes = Arc<Mutex<HashMap<(String, String), bool>>>;

/// One EC2 client per region, made on first use, sharing metrics and the change log.
pub struct Ec2Regions {
    default_region: String,
    make: MakeClient,
    clients: Mutex<HashMap<String, aws_sdk_ec2::Client>>,
    metrics: Arc<Metrics>,
    changes: Arc<Changes>,
    instance_types: KnownTypes,
}

impl Ec2Regions {
    pub fn new(
        default_region: String,
        metrics: Arc<Metrics>,
        make: impl Fn(&str) -> aws_sdk_ec2::Client + Send + Sync + 'static,
    ) -> Self {
        Self {
            default_region,
            make: Box::new(make),
            clients: Mutex::default(),
            metrics,
            changes: Arc::default(),
            instance_types: Arc::default(),
        }
    }

    /// Clients for the SDK config's credentials and endpoint, one per region.
    pub fn from_sdk_config(config: aws_config::SdkConfig, default_region: String, metrics: Arc<Metrics>) -> Self {
        let attempts = CountAttempts(metrics.clone());
        Self::new(default_region, metrics, move |region| {
            let conf = aws_sdk_ec2::config::Builder::from(&config)
                .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
                .interceptor(attempts.clone())
                .build();
            aws_sdk_ec2::Client::from_conf(conf)
        })
    }

    pub fn default_region(&self) -> &str {
        &self.default_region
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    pub fn client(&self, region: &str) -> Ec2 {
        let client = self
            .clients
            .lock()
            .expect("ec2 client map poisoned")
            .entry(region.to_owned())
            .or_insert_with(|| (self.make)(region))
            .clone();
        Ec2 {
            client,
            region: region.to_owned(),
            metrics: self.metrics.clone(),
            changes: self.changes.clone(),
            instance_types: self.instance_types.clone(),
        }
    }
}

/// Counts every EC2 attempt, SDK retries included, by operation and outcome, when its answer or
/// failure arrives: the throttling and retries behind one call are seen only here.
#[derive(Clone, Debug)]
pub struct CountAttempts(pub Arc<Metrics>);

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "CountAttempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        self.0.ec2_attempt(operation, attempt_outcome(context));
        Ok(())
    }
}

/// `ok`, EC2's error code (`RequestLimitExceeded`), or the kind of failure that left none:
/// `timeout`, `io`, `connector`, or the HTTP status class (`http_5xx`) of an answer without a code.
fn attempt_outcome(context: &FinalizerInterceptorContextRef<'_>) -> String {
    let err = match context.output_or_error() {
        Some(Ok(_)) => return "ok".into(),
        Some(Err(err)) => err,
        None => return "unknown".into(),
    };
    if err.is_timeout_error() {
        return "timeout".into();
    }
    if let Some(connector) = err.as_connector_error() {
        return match () {
            _ if connector.is_timeout() => "timeout",
            _ if connector.is_io() => "io",
            _ => "connector",
        }
        .into();
    }
    // EC2 models no errors: every operation's error wraps the parsed code as its source.
    let code = err.as_operation_error().and_then(|err| {
        std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |e| e.source())
            .find_map(|e| e.downcast_ref::<ErrorMetadata>()?.code())
    });
    let status = context.response().map(|r| r.status().as_u16());
    match (code, status) {
        (Some(code), _) => code.to_owned(),
        (None, Some(status)) => format!("http_{}xx", status / 100),
        (None, None) => "other".into(),
    }
}

/// EC2 in one region. Counts every request (each page too) in the metrics.
#[derive(Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    region: String,
    metrics: Arc<Metrics>,
    changes: Arc<Changes>,
    instance_types: KnownTypes,
}

impl Ec2 {
    fn count(&self, operation: &'static str) {
        self.metrics.ec2_request(operation);
    }

    /// One EC2 request: counted, sent, and a failure reduced to an [`AwsFault`] of `operation`.
    async fn call<T, E>(
        &self,
        operation: &'static str,
        request: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.count(operation);
        request.await.map_err(|e| fault(operation, e))
    }

    /// Instances by id; ids EC2 does not know are simply absent from the answer.
    pub async fn describe_by_ids(&self, ids: &[String]) -> Result<Vec<ObservedInstance>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.describe(Some(ids.to_vec()), None).await
    }

    /// The instances among `ids` that EC2 shows, in as few calls as filters allow (an
    /// `instance-id` filter, unlike `InstanceIds`, leaves out ids EC2 does not show yet rather
    /// than failing the whole call).
    pub async fn describe_some(&self, ids: &[String]) -> Result<Vec<ObservedInstance>> {
        self.describe_matching("instance-id", ids).await
    }

    /// Instances whose `key` tag is any of `values`, in as few calls as filters allow.
    pub async fn describe_by_tag_values(&self, key: &str, values: &[String]) -> Result<Vec<ObservedInstance>> {
        self.describe_matching(&format!("tag:{key}"), values).await
    }

    /// Instances whose filter `name` is any of `values`, [`MAX_FILTER_VALUES`] values a call.
    async fn describe_matching(&self, name: &str, values: &[String]) -> Result<Vec<ObservedInstance>> {
        let mut found = Vec::new();
        for chunk in values.chunks(MAX_FILTER_VALUES) {
            let filter = Filter::builder().name(name).set_values(Some(chunk.to_vec())).build();
            found.extend(self.describe(None, Some(vec![filter])).await?);
        }
        Ok(found)
    }

    /// Instances carrying every `key=value` tag given, all pages.
    pub async fn describe_by_tags(&self, tags: &[(&str, &str)]) -> Result<Vec<ObservedInstance>> {
        let filters = tags
            .iter()
            .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(*v).build())
            .collect();
        self.describe(None, Some(filters)).await
    }

    /// Whether EC2 offers `instance_type` in this region; asked once per type and region.
    pub async fn instance_type_exists(&self, instance_type: &str) -> Result<bool> {
        let key = (self.region.clone(), instance_type.to_owned());
        if let Some(known) = self.instance_types.lock().expect("type cache poisoned").get(&key) {
            return Ok(*known);
        }
        self.count("DescribeInstanceTypes");
        let answer = self
            .client
            .describe_instance_types()
            .instance_types(instance_type.into())
            .send()
            .await;
        let exists = match answer {
            Ok(out) => !out.instance_types().is_empty(),
            Err(err) if matches!(err.code(), Some("InvalidInstanceType" | "InvalidParameterValue")) => false,
            Err(err) => return Err(fault("DescribeInstanceTypes", err)),
        };
        self.instance_types
            .lock()
            .expect("type cache poisoned")
            .insert(key, exists);
        Ok(exists)
    }

    /// Carry out one step. A launch returns the new instance; other steps return `None`.
    pub async fn execute(&self, step: &Step) -> Result<Option<ObservedInstance>> {
        let launched = match step {
            Step::Wait => return Ok(None),
            Step::Launch { request, .. } | Step::LaunchReplacement { request, .. } => {
                Some(self.run_instance(request).await?)
            }
            Step::Start(id) => self.start(id).await.map(|_| None)?,
            Step::Stop(id) => self.stop(id).await.map(|_| None)?,
            Step::Terminate(id) => self.terminate(id).await.map(|_| None)?,
            Step::ModifyInstanceType { id, instance_type } => {
                let value = AttributeValue::builder().value(instance_type).build();
                self.modify_attribute(id, |call| call.instance_type(value)).await?;
                None
            }
            Step::ModifyUserData { id, user_data, sha256 } => {
                self.modify_user_data(id, user_data).await?;
                match sha256 {
                    Some(hash) => {
                        let tag = [(TAG_USER_DATA_SHA256.to_owned(), hash.clone())].into();
                        self.create_tags(id, &tag).await?
                    }
                    None => self.delete_tags(id, &[TAG_USER_DATA_SHA256.to_owned()]).await?,
                }
                None
            }
            Step::SetSecurityGroups { id, groups } => {
                self.modify_attribute(id, |call| call.set_groups(Some(groups.clone())))
                    .await?;
                None
            }
            Step::Modify { id, change } => self.modify(id, change).await.map(|_| None)?,
            Step::Tag { id, set, remove } => {
                if !set.is_empty() {
                    self.create_tags(id, set).await?;
                }
                if !remove.is_empty() {
                    self.delete_tags(id, remove).await?;
                }
                None
            }
            Step::Release { id, keys } => self.delete_tags(id, keys).await.map(|_| None)?,
        };
        // A replacement changes the fate of the instance it replaces too: a poll that still shows
        // that one dead must not be trusted, or a reconcile reading a stale object launches again.
        let launched_id = launched.as_ref().map(|i| i.id.as_str());
        for id in launched_id.into_iter().chain(step.instance_id()) {
            self.changes.record(id);
        }
        self.metrics.action(step.label());
        Ok(launched)
    }

    async fn describe(&self, ids: Option<Vec<String>>, filters: Option<Vec<Filter>>) -> Result<Vec<ObservedInstance>> {
        // EC2 refuses MaxResults together with InstanceIds; LocalStack pages id lists anyway,
        // so NextToken is followed in both cases.
        let max_results = if ids.is_some() { None } else { Some(1000) };
        let mut next_token: Option<String> = None;
        let mut found = Vec::new();
        loop {
            self.count("DescribeInstances");
            let mut request = self
                .client
                .describe_instances()
                .set_instance_ids(ids.clone())
                .set_filters(filters.clone())
                .set_max_results(max_results)
                .set_next_token(next_token.take())
                .customize();
            let attempt = self
                .client
                .config()
                .timeout_config()
                .and_then(|t| t.operation_attempt_timeout());
            if let (Some(_), Some(attempt)) = (max_results, attempt) {
                let timeouts = timeout_config(attempt * PAGE_TIMEOUT_FACTOR);
                request = request.config_override(aws_sdk_ec2::config::Builder::default().timeout_config(timeouts));
            }
            let page = request.send().await;
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
        let out = self
            .call(
                "DescribeImages",
                self.client.describe_images().image_ids(image_id).send(),
            )
            .await?;
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

    async fn run_instance(&self, r: &LaunchRequest) -> Result<ObservedInstance> {
        let o = &r.options;
        let mut block_devices = match &r.root_volume {
            Some(volume) => vec![self.root_volume(&r.image_id, volume).await?],
            None => Vec::new(),
        };
        block_devices.extend(o.block_devices.iter().map(block_device));
        let zone = o.placement.as_ref().and_then(|p| p.availability_zone.as_deref());
        let (subnet_id, vpc_id) = match &o.subnet_selector {
            Some(selector) => {
                let (subnet, vpc) = self.subnet_by_tags(selector, zone).await?;
                (Some(subnet), vpc)
            }
            None => (r.subnet_id.clone(), None),
        };
        let groups = match &o.security_group_selector {
            Some(selector) => Some(self.security_groups_by_tags(selector, vpc_id.as_deref()).await?),
            None => r.security_group_ids.clone(),
        };
        // EC2 refuses an instance-level subnet or groups next to a network interface: they go in it.
        let (subnet_id, groups, interfaces) = match &o.network_interface {
            Some(nic) => (None, None, Some(vec![network_interface(nic, subnet_id, groups)])),
            None => (subnet_id, groups, None),
        };
        let request = self
            .client
            .run_instances()
            .client_token(&r.client_token)
            .image_id(&r.image_id)
            .instance_type(r.instance_type.as_str().into())
            .min_count(1)
            .max_count(1)
            .set_subnet_id(subnet_id)
            .set_security_group_ids(groups)
            .set_network_interfaces(interfaces)
            .set_key_name(r.key_name.clone())
            .set_iam_instance_profile(r.iam_instance_profile.as_deref().map(instance_profile))
            .set_user_data(
                r.user_data
                    .as_ref()
                    .map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
            )
            .set_block_device_mappings((!block_devices.is_empty()).then_some(block_devices))
            .tag_specifications(tag_specification(ResourceType::Instance, &r.tags))
            .tag_specifications(tag_specification(ResourceType::Volume, &r.tags))
            .set_metadata_options(launch_metadata_options(o))
            .set_launch_template(o.launch_template.as_deref().map(launch_template))
            .set_placement(o.placement.as_deref().map(placement))
            .set_instance_market_options(o.spot.as_deref().map(spot))
            .set_capacity_reservation_specification(o.capacity_reservation.as_deref().map(capacity_reservation))
            .set_cpu_options(o.cpu_options.as_ref().map(|c| {
                CpuOptionsRequest::builder()
                    .core_count(c.core_count)
                    .set_threads_per_core(c.threads_per_core)
                    .build()
            }))
            .set_hibernation_options(
                o.hibernation
                    .map(|on| HibernationOptionsRequest::builder().configured(on).build()),
            )
            .set_enclave_options(o.enclave.map(|on| EnclaveOptionsRequest::builder().enabled(on).build()))
            .set_monitoring(o.monitoring.map(|m| {
                RunInstancesMonitoringEnabled::builder()
                    .enabled(m == Monitoring::Detailed)
                    .build()
            }))
            .set_disable_api_termination(o.termination_protection)
            .set_disable_api_stop(o.stop_protection)
            .set_instance_initiated_shutdown_behavior(o.shutdown_behavior.map(|b| b.as_ec2().into()))
            .set_credit_specification(
                o.credit_specification
                    .map(|c| CreditSpecificationRequest::builder().cpu_credits(c.as_ec2()).build()),
            )
            .set_ebs_optimized(o.ebs_optimized)
            .send();
        let out = self.call("RunInstances", request).await?;
        let mut launched = out.instances().iter().find_map(observe).ok_or_else(|| {
            Error::Aws(AwsFault {
                operation: "RunInstances",
                code: "EmptyResponse".into(),
                message: "RunInstances returned no instance".into(),
                retryable: true,
            })
        })?;
        // EC2 set the request's tags with the launch (TagSpecifications) and launched the image
        // asked for: an answer that leaves them out still describes an instance that has them.
        for (key, value) in &r.tags {
            launched.tags.entry(key.clone()).or_insert_with(|| value.clone());
        }
        launched.image_id.get_or_insert_with(|| r.image_id.clone());
        Ok(launched)
    }

    /// The root volume's mapping: sizing or encrypting it needs the AMI's root device name.
    async fn root_volume(&self, image_id: &str, volume: &RootVolumeRequest) -> Result<BlockDeviceMapping> {
        let ebs = EbsBlockDevice::builder()
            .set_volume_size(volume.size_gib)
            .set_volume_type(volume.volume_type.as_deref().map(Into::into))
            .set_encrypted(volume.encrypted)
            .delete_on_termination(true)
            .build();
        Ok(BlockDeviceMapping::builder()
            .device_name(self.root_device_name(image_id).await?)
            .ebs(ebs)
            .build())
    }

    /// The subnet carrying every tag of `selector` (in `zone`, if given) with the most free
    /// addresses (ties: the lowest id), and its VPC.
    async fn subnet_by_tags(
        &self,
        selector: &BTreeMap<String, String>,
        zone: Option<&str>,
    ) -> Result<(String, Option<String>)> {
        let mut filters = tag_filters(selector);
        if let Some(zone) = zone {
            filters.push(Filter::builder().name("availability-zone").values(zone).build());
        }
        let out = self
            .call(
                "DescribeSubnets",
                self.client.describe_subnets().set_filters(Some(filters)).send(),
            )
            .await?;
        out.subnets()
            .iter()
            .filter(|s| s.subnet_id().is_some())
            .min_by(|a, b| {
                let free = |s: &&aws_sdk_ec2::types::Subnet| s.available_ip_address_count.unwrap_or(0);
                free(b).cmp(&free(a)).then(a.subnet_id().cmp(&b.subnet_id()))
            })
            .map(|s| (s.subnet_id().unwrap_or_default().to_owned(), non_empty(s.vpc_id())))
            .ok_or_else(|| nothing_matched("DescribeSubnets", "subnet", selector))
    }

    /// Every security group carrying every tag of `selector` (in `vpc`, if known), by id (EC2
    /// takes at most 16).
    async fn security_groups_by_tags(
        &self,
        selector: &BTreeMap<String, String>,
        vpc: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut filters = tag_filters(selector);
        if let Some(vpc) = vpc {
            filters.push(Filter::builder().name("vpc-id").values(vpc).build());
        }
        let out = self
            .call(
                "DescribeSecurityGroups",
                self.client.describe_security_groups().set_filters(Some(filters)).send(),
            )
            .await?;
        let mut ids: Vec<String> = out
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect();
        ids.sort();
        ids.truncate(16);
        if ids.is_empty() {
            return Err(nothing_matched("DescribeSecurityGroups", "security group", selector));
        }
        Ok(ids)
    }

    /// The attributes of `instance` DescribeInstances does not show, those `wanted` only: one call
    /// each.
    pub async fn read_hidden(&self, instance: &ObservedInstance, wanted: HiddenWanted) -> Result<Hidden> {
        let id = instance.id.as_str();
        let mut hidden = Hidden::default();
        if wanted.termination_protection {
            let out = self.attribute(id, InstanceAttributeName::DisableApiTermination).await?;
            hidden.termination_protection =
                Some(out.disable_api_termination().and_then(|v| v.value()).unwrap_or(false));
        }
        if wanted.stop_protection {
            let out = self.attribute(id, InstanceAttributeName::DisableApiStop).await?;
            hidden.stop_protection = Some(out.disable_api_stop().and_then(|v| v.value()).unwrap_or(false));
        }
        if wanted.shutdown_behavior {
            let out = self
                .attribute(id, InstanceAttributeName::InstanceInitiatedShutdownBehavior)
                .await?;
            hidden.shutdown_behavior = out
                .instance_initiated_shutdown_behavior()
                .and_then(|v| v.value())
                .map(str::to_owned);
        }
        if wanted.credit_specification {
            let out = self
                .call(
                    "DescribeInstanceCreditSpecifications",
                    self.client
                        .describe_instance_credit_specifications()
                        .instance_ids(id)
                        .send(),
                )
                .await?;
            hidden.credit_specification = out
                .instance_credit_specifications()
                .first()
                .and_then(|c| c.cpu_credits())
                .map(str::to_owned);
        }
        let details = &instance.details;
        let root = details
            .volumes
            .iter()
            .find(|(device, _)| Some(device) == details.root_device_name.as_ref());
        if wanted.root_volume_size
            && let Some((_, volume_id)) = root
        {
            let out = self
                .call(
                    "DescribeVolumes",
                    self.client.describe_volumes().volume_ids(volume_id).send(),
                )
                .await?;
            hidden.root_volume = out
                .volumes()
                .first()
                .and_then(|v| v.size())
                .map(|size| (volume_id.clone(), size));
        }
        Ok(hidden)
    }

    async fn attribute(
        &self,
        id: &str,
        name: InstanceAttributeName,
    ) -> Result<aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput> {
        self.call(
            "DescribeInstanceAttribute",
            self.client
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(name)
                .send(),
        )
        .await
    }

    /// One attribute change, by the EC2 call that makes it.
    async fn modify(&self, id: &str, change: &Change) -> Result<()> {
        match change {
            Change::MetadataOptions(m) => self
                .call(
                    "ModifyInstanceMetadataOptions",
                    self.client
                        .modify_instance_metadata_options()
                        .instance_id(id)
                        .set_http_tokens(m.http_tokens.map(HttpTokensState::from))
                        .set_http_put_response_hop_limit(m.hop_limit)
                        .set_http_endpoint(m.http_endpoint.map(InstanceMetadataEndpointState::from))
                        .set_instance_metadata_tags(m.instance_tags.map(InstanceMetadataTagsState::from))
                        .send(),
                )
                .await
                .map(drop),
            Change::Monitoring(true) => self
                .call(
                    "MonitorInstances",
                    self.client.monitor_instances().instance_ids(id).send(),
                )
                .await
                .map(drop),
            Change::Monitoring(false) => self
                .call(
                    "UnmonitorInstances",
                    self.client.unmonitor_instances().instance_ids(id).send(),
                )
                .await
                .map(drop),
            Change::TerminationProtection(on) => {
                self.modify_attribute(id, |call| call.disable_api_termination(boolean(*on)))
                    .await
            }
            Change::StopProtection(on) => {
                self.modify_attribute(id, |call| call.disable_api_stop(boolean(*on)))
                    .await
            }
            Change::ShutdownBehavior(value) => {
                let value = AttributeValue::builder().value(value).build();
                self.modify_attribute(id, |call| call.instance_initiated_shutdown_behavior(value))
                    .await
            }
            Change::SourceDestCheck(on) => {
                self.modify_attribute(id, |call| call.source_dest_check(boolean(*on)))
                    .await
            }
            Change::EbsOptimized(on) => self.modify_attribute(id, |call| call.ebs_optimized(boolean(*on))).await,
            Change::CreditSpecification(credits) => self.modify_credits(id, credits).await,
            Change::CancelSpotRequest(request) => {
                self.count("CancelSpotInstanceRequests");
                match self
                    .client
                    .cancel_spot_instance_requests()
                    .spot_instance_request_ids(request)
                    .send()
                    .await
                {
                    // A request EC2 does not know launches nothing.
                    Err(err) if err.code() == Some("InvalidSpotInstanceRequestID.NotFound") => Ok(()),
                    other => other.map(drop).map_err(|e| fault("CancelSpotInstanceRequests", e)),
                }
            }
            Change::IamInstanceProfile(profile) => self.set_instance_profile(id, profile.as_deref()).await,
            Change::RootVolumeSize { volume_id, size_gib } => self
                .call(
                    "ModifyVolume",
                    self.client.modify_volume().volume_id(volume_id).size(*size_gib).send(),
                )
                .await
                .map(drop),
        }
    }

    /// ModifyInstanceCreditSpecification answers a refusal inside a successful response.
    async fn modify_credits(&self, id: &str, credits: &str) -> Result<()> {
        let out = self
            .call(
                "ModifyInstanceCreditSpecification",
                self.client
                    .modify_instance_credit_specification()
                    .instance_credit_specifications(
                        InstanceCreditSpecificationRequest::builder()
                            .instance_id(id)
                            .cpu_credits(credits)
                            .build(),
                    )
                    .send(),
            )
            .await?;
        match out
            .unsuccessful_instance_credit_specifications()
            .first()
            .and_then(|u| u.error())
        {
            Some(error) => Err(Error::Aws(AwsFault {
                operation: "ModifyInstanceCreditSpecification",
                code: error.code().map_or("Unknown".into(), |c| c.as_str().to_owned()),
                message: error.message().unwrap_or_default().to_owned(),
                retryable: false,
            })),
            None => Ok(()),
        }
    }

    /// Associate `profile`, replace the current association with it, or (`None`) disassociate.
    async fn set_instance_profile(&self, id: &str, profile: Option<&str>) -> Result<()> {
        let out = self
            .call(
                "DescribeIamInstanceProfileAssociations",
                self.client
                    .describe_iam_instance_profile_associations()
                    .filters(Filter::builder().name("instance-id").values(id).build())
                    .filters(
                        Filter::builder()
                            .name("state")
                            .values("associating")
                            .values("associated")
                            .build(),
                    )
                    .send(),
            )
            .await?;
        let association = out
            .iam_instance_profile_associations()
            .first()
            .and_then(|a| a.association_id())
            .map(str::to_owned);
        match (profile, association) {
            (Some(profile), Some(association)) => self
                .call(
                    "ReplaceIamInstanceProfileAssociation",
                    self.client
                        .replace_iam_instance_profile_association()
                        .association_id(association)
                        .iam_instance_profile(instance_profile(profile))
                        .send(),
                )
                .await
                .map(drop),
            (Some(profile), None) => self
                .call(
                    "AssociateIamInstanceProfile",
                    self.client
                        .associate_iam_instance_profile()
                        .instance_id(id)
                        .iam_instance_profile(instance_profile(profile))
                        .send(),
                )
                .await
                .map(drop),
            (None, Some(association)) => self
                .call(
                    "DisassociateIamInstanceProfile",
                    self.client
                        .disassociate_iam_instance_profile()
                        .association_id(association)
                        .send(),
                )
                .await
                .map(drop),
            (None, None) => Ok(()),
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.call("StartInstances", self.client.start_instances().instance_ids(id).send())
            .await?;
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<()> {
        self.call("StopInstances", self.client.stop_instances().instance_ids(id).send())
            .await?;
        Ok(())
    }

    /// Terminating an instance EC2 no longer knows succeeds.
    async fn terminate(&self, id: &str) -> Result<()> {
        // An instance EC2 does not know (not shown yet) is an error, retried: success means EC2
        // knows the instance, which the reconcile records (Recorded::seen).
        self.call(
            "TerminateInstances",
            self.client.terminate_instances().instance_ids(id).send(),
        )
        .await
        .map(drop)
    }

    /// One ModifyInstanceAttribute call (EC2 takes one attribute per call).
    async fn modify_attribute(&self, id: &str, set: impl FnOnce(ModifyAttribute) -> ModifyAttribute) -> Result<()> {
        let request = set(self.client.modify_instance_attribute().instance_id(id));
        self.call("ModifyInstanceAttribute", request.send()).await?;
        Ok(())
    }

    /// `user_data` is plain text; an empty string clears it.
    async fn modify_user_data(&self, id: &str, user_data: &str) -> Result<()> {
        // EC2 wants the attribute value itself base64-encoded (the SDK encodes the blob once
        // more for the wire); plain bytes answer InvalidUserData.Malformed.
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_data);
        let value = SecureBlobAttributeValue::builder()
            .value(aws_sdk_ec2::primitives::Blob::new(encoded))
            .build();
        self.modify_attribute(id, |call| call.user_data(value)).await
    }

    async fn create_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        self.call(
            "CreateTags",
            self.client
                .create_tags()
                .resources(id)
                .set_tags(Some(
                    tags.iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .send(),
        )
        .await?;
        Ok(())
    }

    async fn delete_tags(&self, id: &str, keys: &[String]) -> Result<()> {
        self.call(
            "DeleteTags",
            self.client
                .delete_tags()
                .resources(id)
                .set_tags(Some(keys.iter().map(|k| Tag::builder().key(k).build()).collect()))
                .send(),
        )
        .await?;
        Ok(())
    }
}

/// RunInstances MetadataOptions: the spec's, each setting it leaves out at the secure default
/// (IMDSv2 required, endpoint on); none with a launch template and no spec settings (the
/// template's apply).
fn launch_metadata_options(o: &LaunchOptions) -> Option<InstanceMetadataOptionsRequest> {
    let m = match &o.metadata_options {
        Some(m) => (**m).clone(),
        None if o.launch_template.is_some() => return None,
        None => crd::MetadataOptions::default(),
    };
    Some(
        InstanceMetadataOptionsRequest::builder()
            .http_tokens(HttpTokensState::from(
                m.http_tokens.unwrap_or(crd::HttpTokens::Required).as_ec2(),
            ))
            .http_endpoint(InstanceMetadataEndpointState::from(
                m.http_endpoint.unwrap_or(crd::Switch::Enabled).as_ec2(),
            ))
            .set_http_put_response_hop_limit(m.http_put_response_hop_limit)
            .set_instance_metadata_tags(
                m.instance_metadata_tags
                    .map(|t| InstanceMetadataTagsState::from(t.as_ec2())),
            )
            .build(),
    )
}

fn launch_template(t: &crd::LaunchTemplate) -> LaunchTemplateSpecification {
    LaunchTemplateSpecification::builder()
        .set_launch_template_id(t.id.clone())
        .set_launch_template_name(t.name.clone())
        .set_version(t.version.clone())
        .build()
}

fn block_device(d: &crd::BlockDevice) -> BlockDeviceMapping {
    let ebs = EbsBlockDevice::builder()
        .volume_size(d.size_gib)
        .set_volume_type(d.volume_type.map(|t| t.as_str().into()))
        .set_iops(d.iops)
        .set_throughput(d.throughput)
        .set_encrypted(d.encrypted)
        .set_kms_key_id(d.kms_key_id.clone())
        .delete_on_termination(d.delete_on_termination.unwrap_or(true))
        .build();
    BlockDeviceMapping::builder()
        .device_name(&d.device_name)
        .ebs(ebs)
        .build()
}

fn network_interface(
    nic: &crd::NetworkInterface,
    subnet_id: Option<String>,
    groups: Option<Vec<String>>,
) -> InstanceNetworkInterfaceSpecification {
    InstanceNetworkInterfaceSpecification::builder()
        .device_index(0)
        .delete_on_termination(true)
        .set_subnet_id(subnet_id)
        .set_groups(groups)
        .set_associate_public_ip_address(nic.associate_public_ip)
        .set_private_ip_address(nic.private_ip.clone())
        .set_secondary_private_ip_address_count(nic.secondary_private_ip_count.filter(|n| *n > 0))
        .set_ipv6_address_count(nic.ipv6_address_count.filter(|n| *n > 0))
        .build()
}

fn placement(p: &crd::Placement) -> aws_sdk_ec2::types::Placement {
    aws_sdk_ec2::types::Placement::builder()
        .set_availability_zone(p.availability_zone.clone())
        .set_tenancy(p.tenancy.map(|t| match t {
            crd::Tenancy::Default => aws_sdk_ec2::types::Tenancy::Default,
            crd::Tenancy::Dedicated => aws_sdk_ec2::types::Tenancy::Dedicated,
            crd::Tenancy::Host => aws_sdk_ec2::types::Tenancy::Host,
        }))
        .set_group_name(p.group_name.clone())
        .set_partition_number(p.partition_number)
        .build()
}

/// A one-time request terminates on interruption; EC2 stops only instances of a persistent one.
fn spot(s: &crd::Spot) -> InstanceMarketOptionsRequest {
    let (kind, behavior) = match s.interruption_behavior {
        InterruptionBehavior::Terminate => (SpotInstanceType::OneTime, InstanceInterruptionBehavior::Terminate),
        InterruptionBehavior::Stop => (SpotInstanceType::Persistent, InstanceInterruptionBehavior::Stop),
    };
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(
            SpotMarketOptions::builder()
                .set_max_price(s.max_price.clone())
                .spot_instance_type(kind)
                .instance_interruption_behavior(behavior)
                .build(),
        )
        .build()
}

fn capacity_reservation(c: &crd::CapacityReservation) -> CapacityReservationSpecification {
    let builder = CapacityReservationSpecification::builder();
    match (&c.reservation_id, c.preference) {
        (Some(id), _) => builder
            .capacity_reservation_target(CapacityReservationTarget::builder().capacity_reservation_id(id).build()),
        (None, Some(ReservationPreference::None)) => {
            builder.capacity_reservation_preference(CapacityReservationPreference::None)
        }
        (None, _) => builder.capacity_reservation_preference(CapacityReservationPreference::Open),
    }
    .build()
}

fn tag_filters(selector: &BTreeMap<String, String>) -> Vec<Filter> {
    selector
        .iter()
        .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build())
        .collect()
}

/// A selector that matched nothing: terminal until the spec (or the tags) change.
fn nothing_matched(operation: &'static str, what: &str, selector: &BTreeMap<String, String>) -> Error {
    Error::Aws(AwsFault {
        operation,
        code: "NoMatch".into(),
        message: format!("no {what} carries the tags {selector:?}"),
        retryable: false,
    })
}

/// One ModifyInstanceAttribute boolean.
fn boolean(on: bool) -> AttributeBooleanValue {
    AttributeBooleanValue::builder().value(on).build()
}

type ModifyAttribute =
    aws_sdk_ec2::operation::modify_instance_attribute::builders::ModifyInstanceAttributeFluentBuilder;

/// The launch tags, for the instance or for its volumes: set atomically by RunInstances.
fn tag_specification(resource: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    let tags = tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build());
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(tags.collect()))
        .build()
}

/// An instance profile by ARN or by name.
fn instance_profile(profile: &str) -> IamInstanceProfileSpecification {
    let builder = IamInstanceProfileSpecification::builder();
    if profile.starts_with("arn:") {
        builder.arn(profile)
    } else {
        builder.name(profile)
    }
    .build()
}

fn state_from_sdk(name: &InstanceStateName) -> InstanceState {
    match name {
        InstanceStateName::Pending => InstanceState::Pending,
        InstanceStateName::Running => InstanceState::Running,
        InstanceStateName::Stopping => InstanceState::Stopping,
        InstanceStateName::Stopped => InstanceState::Stopped,
        InstanceStateName::ShuttingDown => InstanceState::ShuttingDown,
        InstanceStateName::Terminated => InstanceState::Terminated,
        // An unknown future state is treated as in transition, never as gone.
        _ => InstanceState::Pending,
    }
}

fn observe(instance: &aws_sdk_ec2::types::Instance) -> Option<ObservedInstance> {
    let id = instance.instance_id()?.to_owned();
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(state_from_sdk)
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
        image_id: non_empty(instance.image_id()),
        subnet_id: non_empty(instance.subnet_id()),
        key_name: non_empty(instance.key_name()),
        details: details(instance),
        state_reason: instance.state_reason().and_then(|r| {
            let code = r.code()?;
            // AWS's message usually repeats the code ("Client.InternalError: Client error on launch").
            Some(match r.message() {
                Some(message) if message.starts_with(code) => message.to_owned(),
                Some(message) => format!("{code}: {message}"),
                None => code.to_owned(),
            })
        }),
        launch_time: instance
            .launch_time()
            .and_then(|t| t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime).ok()),
    })
}

fn details(instance: &aws_sdk_ec2::types::Instance) -> Details {
    let primary = instance
        .network_interfaces()
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
    Details {
        lifecycle: instance.instance_lifecycle().map(|l| ec2_word(l.as_str())),
        spot_request_id: non_empty(instance.spot_instance_request_id()),
        network_interface_id: primary.and_then(|n| non_empty(n.network_interface_id())),
        volumes: instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| Some((m.device_name()?.to_owned(), m.ebs()?.volume_id()?.to_owned())))
            .collect(),
        root_device_name: non_empty(instance.root_device_name()),
        metadata: instance.metadata_options().map(|m| MetadataInForce {
            http_tokens: m.http_tokens().map(|v| ec2_word(v.as_str())),
            hop_limit: m.http_put_response_hop_limit(),
            http_endpoint: m.http_endpoint().map(|v| ec2_word(v.as_str())),
            instance_tags: m.instance_metadata_tags().map(|v| ec2_word(v.as_str())),
            state: m.state().map(|v| ec2_word(v.as_str())),
        }),
        monitoring: instance
            .monitoring()
            .and_then(|m| m.state())
            .map(|s| ec2_word(s.as_str())),
        ebs_optimized: instance.ebs_optimized(),
        source_dest_check: instance.source_dest_check(),
        iam_profile_arn: instance.iam_instance_profile().and_then(|p| non_empty(p.arn())),
        hidden: None,
    }
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
    // A volume modification still in progress, or the six hours EC2 wants between two.
    "IncorrectModificationState",
    "VolumeModificationRateExceeded",
    // This object's launch token was used with other parameters: a launch whose answer was lost
    // before the spec changed. That instance shows up under the owner tag soon and is adopted.
    "IdempotentParameterMismatch",
    // Credentials rotated under a running process (IRSA, Pod Identity): the next request signs
    // with the fresh ones.
    "RequestExpired",
    "ExpiredToken",
    "ExpiredTokenException",
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

    fn ec2(client: aws_sdk_ec2::Client) -> Ec2 {
        Ec2 {
            client,
            region: "us-east-1".into(),
            metrics: Arc::new(Metrics::default()),
            changes: Arc::default(),
            instance_types: Arc::default(),
        }
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
    async fn every_attempt_is_counted_with_its_outcome_sdk_retries_included() {
        use aws_sdk_ec2::config::retry::RetryConfig;
        use aws_sdk_ec2::operation::stop_instances::StopInstancesOutput;
        // EC2's own throttling answer, parsed by the SDK as in production.
        let throttled = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit \
                         exceeded.</Message></Error></Errors><RequestID>r</RequestID></Response>";
        let throttled_then_ok = mock!(aws_sdk_ec2::Client::stop_instances)
            .sequence()
            .http_status(503, Some(throttled.into()))
            .output(|| StopInstancesOutput::builder().build())
            .build();
        let metrics = Arc::new(Metrics::default());
        let attempts = CountAttempts(metrics.clone());
        let client = mock_client!(aws_sdk_ec2, RuleMode::Sequential, [&throttled_then_ok], move |conf| {
            let retry = RetryConfig::standard().with_initial_backoff(Duration::from_millis(1));
            conf.interceptor(attempts.clone()).retry_config(retry)
        });
        let ec2 = Ec2 { metrics, ..ec2(client) };

        ec2.stop("i-0123456789abcdef0").await.unwrap();

        assert_eq!(
            throttled_then_ok.num_calls(),
            2,
            "the SDK retried the throttled attempt"
        );
        let rendered = ec2.metrics.render();
        for line in [
            "ec2_operator_ec2_requests_total{operation=\"StopInstances\"} 1",
            "ec2_operator_ec2_attempts_total{operation=\"StopInstances\",outcome=\"RequestLimitExceeded\"} 1",
            "ec2_operator_ec2_attempts_total{operation=\"StopInstances\",outcome=\"ok\"} 1",
        ] {
            assert!(rendered.contains(line), "{line} in\n{rendered}");
        }
    }

    #[tokio::test]
    async fn terminating_an_instance_ec2_does_not_know_yet_is_tried_again_not_taken_as_done() {
        let rule = mock!(aws_sdk_ec2::Client::terminate_instances)
            .then_error(|| TerminateInstancesError::generic(meta("InvalidInstanceID.NotFound")));
        let ec2 = ec2(mock_client!(aws_sdk_ec2, [&rule]));
        let err = ec2.terminate("i-0123456789abcdef0").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn every_executed_step_is_counted_and_remembered_for_the_inventory() {
        use aws_sdk_ec2::operation::create_tags::CreateTagsOutput;
        use aws_sdk_ec2::operation::modify_instance_attribute::ModifyInstanceAttributeOutput;
        let modify = mock!(aws_sdk_ec2::Client::modify_instance_attribute)
            .match_requests(|r| r.instance_id() == Some("i-0123456789abcdef0") && r.user_data().is_some())
            .then_output(|| ModifyInstanceAttributeOutput::builder().build());
        let hash = mock!(aws_sdk_ec2::Client::create_tags)
            .match_requests(|r| r.tags().iter().any(|t| t.key() == Some(TAG_USER_DATA_SHA256)))
            .then_output(|| CreateTagsOutput::builder().build());
        let ec2 = ec2(mock_client!(aws_sdk_ec2, RuleMode::Sequential, [&modify, &hash]));
        let before = Instant::now();
        let step = Step::ModifyUserData {
            id: "i-0123456789abcdef0".into(),
            user_data: "echo hi".into(),
            sha256: Some("abc".into()),
        };
        assert_eq!(ec2.execute(&step).await.unwrap(), None);
        assert_eq!((modify.num_calls(), hash.num_calls()), (1, 1));
        assert!(ec2.changes.since("i-0123456789abcdef0", before));
        let metrics = ec2.metrics.render();
        assert!(
            metrics.contains("ec2_operator_actions_total{action=\"modify_user_data\"} 1"),
            "{metrics}"
        );
        assert!(ec2.execute(&Step::Wait).await.unwrap().is_none());
        assert!(
            !ec2.metrics.render().contains("action=\"wait\""),
            "waiting calls nothing"
        );
    }

    #[tokio::test]
    async fn expired_credentials_are_transient() {
        for code in ["RequestExpired", "ExpiredToken"] {
            let rule =
                mock!(aws_sdk_ec2::Client::stop_instances).then_error(move || StopInstancesError::generic(meta(code)));
            let ec2 = ec2(mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&rule]));
            let fault = fault_of(ec2.stop("i-0123456789abcdef0").await.unwrap_err());
            assert!(fault.retryable, "{code}: {fault}");
        }
    }

    #[tokio::test]
    async fn a_hung_endpoint_times_out_instead_of_wedging() {
        // Accepts connections and never answers, as a half-dead proxy would.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let metrics = Arc::new(Metrics::default());
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("a", "b", None, None, "test"))
            .endpoint_url(endpoint)
            .timeout_config(timeout_config(Duration::from_millis(300)))
            .interceptor(CountAttempts(metrics.clone()))
            .build();
        let ec2 = Ec2 {
            metrics,
            ..ec2(aws_sdk_ec2::Client::from_conf(conf))
        };
        let started = Instant::now();
        let err = ec2.describe_by_tags(&[("k", "v")]).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(fault_of(err).retryable, "a timeout is transient");
        let timed_out = "ec2_operator_ec2_attempts_total{operation=\"DescribeInstances\",outcome=\"timeout\"}";
        assert!(ec2.metrics.render().contains(timed_out), "{}", ec2.metrics.render());
        silent.abort();
    }

    #[tokio::test]
    async fn a_network_interface_takes_the_subnet_and_groups_ec2_refuses_beside_it() {
        use crate::crd::NetworkInterface;
        let rule = mock!(aws_sdk_ec2::Client::run_instances)
            .match_requests(|r| {
                let nic = &r.network_interfaces()[0];
                r.subnet_id().is_none()
                    && r.security_group_ids().is_empty()
                    && nic.subnet_id() == Some("subnet-0123abcd")
                    && nic.groups() == ["sg-0123abcd"]
                    && nic.associate_public_ip_address() == Some(true)
                    && nic.device_index() == Some(0)
            })
            .then_error(|| RunInstancesError::generic(meta("Matched")));
        let ec2 = ec2(mock_client!(aws_sdk_ec2, [&rule]));
        let request = LaunchRequest {
            client_token: "token".into(),
            image_id: "ami-12345678".into(),
            instance_type: "t3.micro".into(),
            subnet_id: Some("subnet-0123abcd".into()),
            security_group_ids: Some(vec!["sg-0123abcd".into()]),
            options: LaunchOptions {
                network_interface: Some(Box::new(NetworkInterface {
                    associate_public_ip: Some(true),
                    ..Default::default()
                })),
                ..Default::default()
            },
            ..Default::default()
        };
        let fault = fault_of(ec2.run_instance(&request).await.unwrap_err());
        assert_eq!(
            fault.code, "Matched",
            "the request had the subnet and groups inside the interface"
        );
    }
}
