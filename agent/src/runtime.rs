//! The container runtime (containerd) as the agent sees it: containers with their
//! Kubernetes labels and their tasks. Every call has a timeout, so a wedged runtime
//! makes a request fail, not hang.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chaos_proto::containerd::services::containers::v1::{
    ListContainersRequest, containers_client::ContainersClient,
};
use chaos_proto::containerd::services::tasks::v1::{
    GetRequest, ListTasksRequest, tasks_client::TasksClient,
};
use chaos_proto::containerd::services::version::v1::{Empty, version_client::VersionClient};
use chaos_proto::containerd::v1::types::Status as TaskStatus;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// The CRI plugin marks pod sandboxes (pause containers) with this label.
pub const LABEL_CRI_KIND: &str = "io.cri-containerd.kind";

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("containerd at {socket} is unreachable: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("containerd call {call} failed: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeContainer {
    pub id: String,
    pub runtime_namespace: String,
    pub labels: HashMap<String, String>,
}

impl RuntimeContainer {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }

    /// A pod sandbox (pause container) is plumbing, never a target.
    pub fn is_sandbox(&self) -> bool {
        self.label(LABEL_CRI_KIND) == "sandbox"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Stopped,
    Paused,
    Unknown,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Running => "running",
            TaskState::Stopped => "stopped",
            TaskState::Paused => "paused",
            TaskState::Unknown => "unknown",
        }
    }

    fn from_wire(status: i32) -> TaskState {
        match TaskStatus::try_from(status) {
            Ok(TaskStatus::Created) => TaskState::Created,
            Ok(TaskStatus::Running) => TaskState::Running,
            Ok(TaskStatus::Stopped) => TaskState::Stopped,
            Ok(TaskStatus::Paused | TaskStatus::Pausing) => TaskState::Paused,
            _ => TaskState::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeTask {
    pub pid: u32,
    pub state: TaskState,
}

#[derive(Debug, Clone)]
pub struct Containerd {
    socket: PathBuf,
    namespaces: Vec<String>,
    channel: Channel,
}

impl Containerd {
    /// Connects lazily: nothing is dialled until the first call, and a runtime that
    /// restarts is dialled again.
    pub fn new(socket: impl Into<PathBuf>, namespaces: Vec<String>) -> Containerd {
        let socket: PathBuf = socket.into();
        let dial_path = socket.clone();
        // The URI is required by the API but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://containerd.invalid")
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = dial_path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Containerd {
            socket,
            namespaces,
            channel,
        }
    }

    pub fn socket(&self) -> String {
        self.socket.display().to_string()
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn request<T>(namespace: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        request
    }

    fn error(&self, call: &'static str, status: tonic::Status) -> RuntimeError {
        // Transport failures surface as Unavailable/Unknown with no server behind them.
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ) {
            RuntimeError::Unreachable {
                socket: self.socket(),
                reason: status.message().to_string(),
            }
        } else {
            RuntimeError::Call { call, status }
        }
    }

    pub async fn version(&self) -> Result<String, RuntimeError> {
        let mut client = VersionClient::new(self.channel.clone());
        let response = client
            .version(tonic::Request::new(Empty {}))
            .await
            .map_err(|s| self.error("Version", s))?;
        Ok(response.into_inner().version)
    }

    /// Every container of every configured namespace. The namespaces are asked at once
    /// (one HTTP/2 connection carries the calls side by side): a target's lookup waits
    /// for one round trip to the runtime instead of one per namespace.
    pub async fn containers(&self) -> Result<Vec<RuntimeContainer>, RuntimeError> {
        let lists = self.namespaces.iter().map(|namespace| {
            let mut client = ContainersClient::new(self.channel.clone());
            async move {
                let response = client
                    .list(Self::request(
                        namespace,
                        ListContainersRequest { filters: vec![] },
                    ))
                    .await
                    .map_err(|s| self.error("Containers.List", s))?;
                Ok::<_, RuntimeError>(response.into_inner().containers.into_iter().map(|c| {
                    RuntimeContainer {
                        id: c.id,
                        runtime_namespace: namespace.clone(),
                        labels: c.labels,
                    }
                }))
            }
        });
        let mut all = Vec::new();
        for containers in futures::future::try_join_all(lists).await? {
            all.extend(containers);
        }
        Ok(all)
    }

    /// The container's main task, or None when it has none (never started, or removed).
    pub async fn task(
        &self,
        namespace: &str,
        container_id: &str,
    ) -> Result<Option<RuntimeTask>, RuntimeError> {
        let mut client = TasksClient::new(self.channel.clone());
        let request = Self::request(
            namespace,
            GetRequest {
                container_id: container_id.to_string(),
                exec_id: String::new(),
            },
        );
        match client.get(request).await {
            Ok(response) => Ok(response.into_inner().process.map(|p| RuntimeTask {
                pid: p.pid,
                state: TaskState::from_wire(p.status),
            })),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(self.error("Tasks.Get", status)),
        }
    }

    /// The tasks of one namespace, by container id.
    pub async fn tasks(
        &self,
        namespace: &str,
    ) -> Result<HashMap<String, RuntimeTask>, RuntimeError> {
        let mut client = TasksClient::new(self.channel.clone());
        let response = client
            .list(Self::request(
                namespace,
                ListTasksRequest {
                    filter: String::new(),
                },
            ))
            .await
            .map_err(|s| self.error("Tasks.List", s))?;
        Ok(response
            .into_inner()
            .tasks
            .into_iter()
            .map(|p| {
                // containerd fills `id` with the container id in listings; older
                // versions also set `container_id`.
                let id = if p.container_id.is_empty() {
                    p.id
                } else {
                    p.container_id
                };
                (
                    id,
                    RuntimeTask {
                        pid: p.pid,
                        state: TaskState::from_wire(p.status),
                    },
                )
            })
            .collect())
    }
}
