use chaos_cgroup::CgroupError;

#[derive(Debug, thiserror::Error)]
pub enum StressError {
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("invalid stressor configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot map {bytes} bytes of anonymous memory: {source}")]
    Map {
        bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write progress: {0}")]
    Progress(#[source] std::io::Error),
}
