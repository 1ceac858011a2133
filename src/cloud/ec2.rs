//! A blocking EC2 handle. The AWS SDK is async (tokio); autopaxos' data plane is glommio. The two never
//! share a thread: [`Ec2`] owns one std thread running a current-thread tokio runtime, and each
//! blocking method sends that thread one job and waits for its answer. Every call is bounded twice:
//! by the SDK's own connect/operation timeouts and by a deadline on the answer, so a dead endpoint or a
//! missing credential is a clear error within seconds, never a hang.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, ImageState, InstanceAttributeName, InstanceType, ResourceType, ShutdownBehavior, Tag,
    TagSpecification,
};
use aws_sdk_ec2::Client;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Tag naming the cluster an instance belongs to.
pub const TAG_CLUSTER: &str = "autopaxos:cluster";
/// Tag naming the role an instance runs (`RoleKind::name`), or `builder` for a bake's builder.
pub const TAG_ROLE: &str = "autopaxos:role";
/// Tag listing the node ids an instance runs, comma-separated (acceptors: `id/group`).
pub const TAG_NODES: &str = "autopaxos:nodes";

/// Why an EC2 call failed. The message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No region from `--region`, `AWS_REGION`/`AWS_DEFAULT_REGION` or the profile.
    #[error("no AWS region: pass --region or set AWS_REGION")]
    NoRegion,
    /// The credential chain found nothing usable.
    #[error(
        "no AWS credentials: {0} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on an \
         instance with a role)"
    )]
    Credentials(String),
    /// The endpoint could not be reached (connection refused, DNS, TLS, timeout).
    #[error("{what}: cannot reach the EC2 endpoint {endpoint}: {detail}")]
    Unreachable {
        /// The operation.
        what: &'static str,
        /// The endpoint used (or `default for the region`).
        endpoint: String,
        /// The SDK's message.
        detail: String,
    },
    /// EC2 answered with an error (bad AMI, no capacity, not authorized, ...).
    #[error("{what}: EC2 refused: {detail}")]
    Service {
        /// The operation.
        what: &'static str,
        /// The service's code and message.
        detail: String,
    },
    /// A call or a wait took longer than allowed.
    #[error("{what}: timed out after {after:?}{detail}")]
    Timeout {
        /// What was being done.
        what: String,
        /// The limit.
        after: Duration,
        /// The last state seen, if any.
        detail: String,
    },
    /// The answer lacked something it must have (an instance id, an image id).
    #[error("{0}")]
    Unexpected(String),
    /// The SDK thread is gone.
    #[error("the EC2 client thread stopped")]
    ThreadGone,
}

/// Where and how to reach EC2. Unset fields fall back to the standard AWS environment
/// (`AWS_REGION`, `AWS_ENDPOINT_URL`, the credential chain).
#[derive(Debug, Clone)]
pub struct Ec2Options {
    /// Region (else `AWS_REGION`/`AWS_DEFAULT_REGION`/the profile).
    pub region: Option<String>,
    /// Endpoint URL (else `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_EC2`, else the region's endpoint).
    pub endpoint_url: Option<String>,
    /// Bound on one API call, retries included.
    pub call_timeout: Duration,
}

impl Default for Ec2Options {
    fn default() -> Self {
        Self { region: None, endpoint_url: None, call_timeout: Duration::from_secs(20) }
    }
}

/// How an instance behaves when its OS powers off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// The instance stops (a bake's builder: its disk becomes the image).
    Stop,
    /// The instance terminates.
    Terminate,
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The image.
    pub ami: String,
    /// e.g. `c5.xlarge`.
    pub instance_type: String,
    /// How many identical instances.
    pub count: u32,
    /// Tags put on each instance at launch.
    pub tags: Vec<(String, String)>,
    /// User-data as plain text (base64-encoded here).
    pub user_data: String,
    /// Instance-initiated shutdown behaviour.
    pub on_shutdown: OnShutdown,
    /// SSH key pair name.
    pub key_name: Option<String>,
    /// Subnet.
    pub subnet_id: Option<String>,
    /// Security groups (ids).
    pub security_group_ids: Vec<String>,
}

/// One instance as DescribeInstances reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-...`.
    pub id: String,
    /// pending, running, stopping, stopped, shutting-down, terminated.
    pub state: String,
    /// e.g. `c5.xlarge`.
    pub instance_type: String,
    /// Private IPv4 address, once assigned.
    pub private_ip: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// The `autopaxos:role` tag, or `""`.
    pub fn role(&self) -> &str {
        self.tags.get(TAG_ROLE).map_or("", String::as_str)
    }
}

/// One image as DescribeImages reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `ami-...`.
    pub id: String,
    /// pending, available, failed, ...
    pub state: String,
    /// Its name.
    pub name: String,
}

type Job = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A blocking EC2 client whose SDK runs on a thread of its own. Dropping it stops that thread.
pub struct Ec2 {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    call_timeout: Duration,
    endpoint: String,
    region: String,
}

impl Ec2 {
    /// Starts the SDK thread, loads the AWS configuration (region, endpoint, credentials) and checks
    /// that credentials resolve, all within `opts.call_timeout`.
    pub fn connect(opts: &Ec2Options) -> Result<Self, CloudError> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(String, String), CloudError>>();
        let opts2 = opts.clone();
        let thread = std::thread::Builder::new()
            .name("ec2-sdk".into())
            .spawn(move || sdk_thread(opts2, jobs_rx, ready_tx))
            .map_err(|e| CloudError::Unexpected(format!("cannot start the EC2 client thread: {e}")))?;
        let ready = ready_rx.recv_timeout(opts.call_timeout + Duration::from_secs(2)).map_err(|_| {
            CloudError::Timeout {
                what: "loading the AWS configuration and credentials".into(),
                after: opts.call_timeout,
                detail: String::new(),
            }
        })?;
        let (region, endpoint) = match ready {
            Ok(x) => x,
            Err(e) => {
                drop(jobs_tx);
                let _ = thread.join();
                return Err(e);
            }
        };
        tracing::debug!(%region, %endpoint, "EC2 client ready");
        Ok(Self {
            jobs: Some(jobs_tx),
            thread: Some(thread),
            call_timeout: opts.call_timeout,
            endpoint,
            region,
        })
    }

    /// The region in use.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Runs `f` on the SDK thread and waits (bounded) for its result.
    fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, CloudError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, CloudError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let limit = self.call_timeout;
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let r = match tokio::time::timeout(limit, f(client)).await {
                    Ok(r) => r,
                    Err(_) => {
                        Err(CloudError::Timeout { what: what.into(), after: limit, detail: String::new() })
                    }
                };
                let _ = tx.send(r);
            })
        });
        self.jobs.as_ref().ok_or(CloudError::ThreadGone)?.send(job).map_err(|_| CloudError::ThreadGone)?;
        match rx.recv_timeout(limit + Duration::from_secs(2)) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(CloudError::Timeout { what: what.into(), after: limit, detail: String::new() })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(CloudError::ThreadGone),
        }
    }

    fn sdk_err<E>(&self, what: &'static str) -> impl Fn(SdkError<E>) -> CloudError + Send + 'static
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        let endpoint = self.endpoint.clone();
        move |e| classify(what, &endpoint, e)
    }

    /// Launches `spec.count` instances; returns their ids.
    pub fn run_instances(&self, spec: &LaunchSpec) -> Result<Vec<String>, CloudError> {
        let spec = spec.clone();
        let map = self.sdk_err("RunInstances");
        self.call("RunInstances", move |c| async move {
            let tags: Vec<Tag> =
                spec.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
            let count = i32::try_from(spec.count).unwrap_or(i32::MAX);
            let mut req = c
                .run_instances()
                .image_id(&spec.ami)
                .instance_type(InstanceType::from(spec.instance_type.as_str()))
                .min_count(count)
                .max_count(count)
                .instance_initiated_shutdown_behavior(match spec.on_shutdown {
                    OnShutdown::Stop => ShutdownBehavior::Stop,
                    OnShutdown::Terminate => ShutdownBehavior::Terminate,
                });
            if !spec.user_data.is_empty() {
                req = req.user_data(base64_encode(spec.user_data.as_bytes()));
            }
            if !tags.is_empty() {
                // EC2 refuses a tag specification without tags.
                req = req.tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Instance)
                        .set_tags(Some(tags))
                        .build(),
                );
            }
            if let Some(k) = &spec.key_name {
                req = req.key_name(k);
            }
            if let Some(s) = &spec.subnet_id {
                req = req.subnet_id(s);
            }
            for g in &spec.security_group_ids {
                req = req.security_group_ids(g);
            }
            let out = req.send().await.map_err(map)?;
            let ids: Vec<String> =
                out.instances().iter().filter_map(|i| i.instance_id().map(str::to_string)).collect();
            if ids.len() != spec.count as usize {
                return Err(CloudError::Unexpected(format!(
                    "RunInstances: asked for {} instances, got {}",
                    spec.count,
                    ids.len()
                )));
            }
            Ok(ids)
        })
    }

    /// Instances tagged `autopaxos:cluster = cluster` that are not terminated (nor shutting down).
    pub fn cluster_instances(&self, cluster: &str) -> Result<Vec<Instance>, CloudError> {
        let filters = vec![
            Filter::builder().name(format!("tag:{TAG_CLUSTER}")).values(cluster).build(),
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"].iter().map(|s| s.to_string()).collect(),
                ))
                .build(),
        ];
        self.describe_instances(filters, Vec::new())
    }

    /// Instances tagged `key = value`, in any state.
    pub fn instances_tagged(&self, key: &str, value: &str) -> Result<Vec<Instance>, CloudError> {
        self.describe_instances(
            vec![Filter::builder().name(format!("tag:{key}")).values(value).build()],
            Vec::new(),
        )
    }

    /// Instances by id (any state).
    pub fn instances(&self, ids: &[String]) -> Result<Vec<Instance>, CloudError> {
        self.describe_instances(Vec::new(), ids.to_vec())
    }

    fn describe_instances(
        &self,
        filters: Vec<Filter>,
        ids: Vec<String>,
    ) -> Result<Vec<Instance>, CloudError> {
        let map = self.sdk_err("DescribeInstances");
        self.call("DescribeInstances", move |c| async move {
            let mut found = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = c
                    .describe_instances()
                    .set_filters(if filters.is_empty() { None } else { Some(filters.clone()) })
                    .set_instance_ids(if ids.is_empty() { None } else { Some(ids.clone()) })
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(&map)?;
                for r in out.reservations() {
                    for i in r.instances() {
                        found.push(Instance {
                            id: i.instance_id().unwrap_or_default().to_string(),
                            state: i
                                .state()
                                .and_then(|s| s.name())
                                .map_or_else(|| "unknown".to_string(), |n| n.as_str().to_string()),
                            instance_type: i
                                .instance_type()
                                .map(|t| t.as_str().to_string())
                                .unwrap_or_default(),
                            private_ip: i.private_ip_address().map(str::to_string),
                            tags: i
                                .tags()
                                .iter()
                                .filter_map(|t| {
                                    Some((t.key()?.to_string(), t.value().unwrap_or("").to_string()))
                                })
                                .collect(),
                        });
                    }
                }
                match out.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_string()),
                    _ => break,
                }
            }
            found.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(found)
        })
    }

    /// Of the running instances `ids`, those whose instance or system status check is impaired
    /// (DescribeInstanceStatus): EC2 says the machine is failing.
    pub fn impaired(&self, ids: &[String]) -> Result<Vec<String>, CloudError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        let map = self.sdk_err("DescribeInstanceStatus");
        self.call("DescribeInstanceStatus", move |c| async move {
            let mut impaired = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = c
                    .describe_instance_status()
                    .set_instance_ids(Some(ids.clone()))
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(&map)?;
                for st in out.instance_statuses() {
                    let bad = |summary: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| {
                        summary.and_then(|s| s.status()).is_some_and(|s| s.as_str() == "impaired")
                    };
                    if bad(st.instance_status()) || bad(st.system_status()) {
                        impaired.extend(st.instance_id().map(str::to_string));
                    }
                }
                match out.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_string()),
                    _ => break,
                }
            }
            Ok(impaired)
        })
    }

    /// Terminates instances (no-op for an empty list).
    pub fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        let map = self.sdk_err("TerminateInstances");
        self.call("TerminateInstances", move |c| async move {
            c.terminate_instances().set_instance_ids(Some(ids)).send().await.map_err(map)?;
            Ok(())
        })
    }

    /// Stops instances (what a builder's own `poweroff` does with shutdown behaviour `stop`).
    pub fn stop(&self, ids: &[String]) -> Result<(), CloudError> {
        let ids = ids.to_vec();
        let map = self.sdk_err("StopInstances");
        self.call("StopInstances", move |c| async move {
            c.stop_instances().set_instance_ids(Some(ids)).send().await.map_err(map)?;
            Ok(())
        })
    }

    /// The user-data an instance was launched with, decoded (DescribeInstanceAttribute userData).
    pub fn user_data(&self, id: &str) -> Result<String, CloudError> {
        let id = id.to_string();
        let map = self.sdk_err("DescribeInstanceAttribute");
        self.call("DescribeInstanceAttribute", move |c| async move {
            let out = c
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(InstanceAttributeName::UserData)
                .send()
                .await
                .map_err(map)?;
            let b64 = out.user_data().and_then(|v| v.value()).unwrap_or("");
            let bytes = base64_decode(b64)
                .ok_or_else(|| CloudError::Unexpected(format!("{id}: user-data is not valid base64")))?;
            String::from_utf8(bytes)
                .map_err(|_| CloudError::Unexpected(format!("{id}: user-data is not UTF-8")))
        })
    }

    /// An instance's instance-initiated shutdown behaviour (`stop` or `terminate`).
    pub fn shutdown_behavior(&self, id: &str) -> Result<String, CloudError> {
        let id = id.to_string();
        let map = self.sdk_err("DescribeInstanceAttribute");
        self.call("DescribeInstanceAttribute", move |c| async move {
            let out = c
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
                .send()
                .await
                .map_err(map)?;
            Ok(out.instance_initiated_shutdown_behavior().and_then(|v| v.value()).unwrap_or("").to_string())
        })
    }

    /// Polls until instance `id` is in `state`, or fails after `timeout` naming the last state seen.
    /// Reaching `terminated` while waiting for something else fails at once.
    pub fn wait_instance_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<(), CloudError> {
        let start = Instant::now();
        let mut last = String::from("unknown");
        loop {
            match self.instances(&[id.to_string()]) {
                Ok(found) => {
                    if let Some(i) = found.first() {
                        last.clone_from(&i.state);
                    }
                    if last == state {
                        return Ok(());
                    }
                    if last == "terminated" {
                        return Err(CloudError::Unexpected(format!(
                            "instance {id} terminated while waiting for it to be {state}"
                        )));
                    }
                }
                Err(e @ (CloudError::Credentials(_) | CloudError::Unreachable { .. })) => return Err(e),
                Err(e) => tracing::warn!("while waiting for {id}: {e}"),
            }
            if start.elapsed() >= timeout {
                return Err(CloudError::Timeout {
                    what: format!("waiting for instance {id} to be {state}"),
                    after: timeout,
                    detail: format!(" (it is {last})"),
                });
            }
            std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())));
        }
    }

    /// CreateImage from an instance; returns the new AMI id.
    pub fn create_image(
        &self,
        instance_id: &str,
        name: &str,
        description: &str,
    ) -> Result<String, CloudError> {
        let (id, name, desc) = (instance_id.to_string(), name.to_string(), description.to_string());
        let map = self.sdk_err("CreateImage");
        self.call("CreateImage", move |c| async move {
            let out =
                c.create_image().instance_id(&id).name(&name).description(&desc).send().await.map_err(map)?;
            out.image_id()
                .map(str::to_string)
                .ok_or_else(|| CloudError::Unexpected("CreateImage returned no image id".into()))
        })
    }

    /// DescribeImages by id.
    pub fn images(&self, ids: &[String]) -> Result<Vec<Image>, CloudError> {
        let ids = ids.to_vec();
        let map = self.sdk_err("DescribeImages");
        self.call("DescribeImages", move |c| async move {
            let out = c.describe_images().set_image_ids(Some(ids)).send().await.map_err(map)?;
            Ok(out
                .images()
                .iter()
                .map(|i| Image {
                    id: i.image_id().unwrap_or_default().to_string(),
                    state: i.state().map_or_else(|| "unknown".into(), |s| s.as_str().to_string()),
                    name: i.name().unwrap_or_default().to_string(),
                })
                .collect())
        })
    }

    /// Polls until image `id` is `available`; fails at once if it is `failed`, or after `timeout`.
    pub fn wait_image_available(
        &self,
        id: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<(), CloudError> {
        let start = Instant::now();
        let mut last = String::from("unknown");
        loop {
            match self.images(&[id.to_string()]) {
                Ok(found) => {
                    if let Some(i) = found.first() {
                        last.clone_from(&i.state);
                    }
                    if last == ImageState::Available.as_str() {
                        return Ok(());
                    }
                    if last == ImageState::Failed.as_str() {
                        return Err(CloudError::Unexpected(format!("image {id} failed")));
                    }
                }
                Err(e @ (CloudError::Credentials(_) | CloudError::Unreachable { .. })) => return Err(e),
                Err(e) => tracing::warn!("while waiting for {id}: {e}"),
            }
            if start.elapsed() >= timeout {
                return Err(CloudError::Timeout {
                    what: format!("waiting for image {id} to be available"),
                    after: timeout,
                    detail: format!(" (it is {last})"),
                });
            }
            std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())));
        }
    }
}

impl Drop for Ec2 {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn classify<E>(what: &'static str, endpoint: &str, e: SdkError<E>) -> CloudError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    if let SdkError::ServiceError(se) = &e {
        let err = se.err();
        let detail =
            format!("{}: {}", err.code().unwrap_or("unknown error"), err.message().unwrap_or("(no message)"));
        return if err.code().is_some_and(|c| c.contains("AuthFailure") || c.contains("Credential")) {
            CloudError::Credentials(detail)
        } else {
            CloudError::Service { what, detail }
        };
    }
    let detail = root_cause(&e);
    match e {
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            CloudError::Unreachable { what, endpoint: endpoint.to_string(), detail }
        }
        SdkError::TimeoutError(_) => CloudError::Unreachable {
            what,
            endpoint: endpoint.to_string(),
            detail: format!("timed out: {detail}"),
        },
        SdkError::ServiceError(_) => CloudError::Service { what, detail },
        _ if detail.contains("credential") => CloudError::Credentials(detail),
        _ => CloudError::Service { what, detail },
    }
}

/// The innermost cause of an error chain (e.g. "Connection refused (os error 111)"), with the outermost
/// message when they differ: the SDK's full debug context is long and says the same thing.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    let (outer, inner) = (e.to_string(), inner.to_string());
    if outer == inner {
        outer
    } else {
        format!("{outer}: {inner}")
    }
}

/// The SDK thread: builds the runtime and the client, reports readiness, then serves jobs until the
/// handle is dropped.
fn sdk_thread(
    opts: Ec2Options,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(String, String), CloudError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(CloudError::Unexpected(format!("cannot start tokio: {e}"))));
            return;
        }
    };
    let setup = rt.block_on(async {
        tokio::time::timeout(opts.call_timeout, load(&opts)).await.unwrap_or_else(|_| {
            Err(CloudError::Timeout {
                what: "loading the AWS configuration and credentials".into(),
                after: opts.call_timeout,
                detail: String::new(),
            })
        })
    });
    let client = match setup {
        Ok((client, region, endpoint)) => {
            let _ = ready.send(Ok((region, endpoint)));
            client
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(job) = jobs.recv() {
        rt.block_on(job(client.clone()));
    }
}

async fn load(opts: &Ec2Options) -> Result<(Client, String, String), CloudError> {
    use aws_sdk_ec2::config::ProvideCredentials as _;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let per_attempt = (opts.call_timeout / 2).max(Duration::from_secs(1));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3).min(per_attempt))
                .operation_attempt_timeout(per_attempt)
                .operation_timeout(opts.call_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2));
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(u) = &opts.endpoint_url {
        loader = loader.endpoint_url(u.clone());
    }
    let config = loader.load().await;
    let region = config.region().ok_or(CloudError::NoRegion)?.to_string();
    let endpoint = config.endpoint_url().map_or_else(|| format!("default for {region}"), str::to_string);
    let creds = config
        .credentials_provider()
        .ok_or_else(|| CloudError::Credentials("no credential provider configured".into()))?;
    creds.provide_credentials().await.map_err(|e| CloudError::Credentials(root_cause(&e)))?;
    Ok((Client::new(&config), region, endpoint))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (EC2 wants user-data so).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional, whitespace ignored); `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "cluster = \"x\"\nrole = \"batcher\"\n"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(e.len() % 4, 0);
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert_eq!(base64_decode("TWE="), Some(b"Ma".to_vec()));
        assert_eq!(base64_decode("T*E="), None);
    }
}
