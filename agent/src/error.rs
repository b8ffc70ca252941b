//! The agent's request errors and their gRPC status codes.

use tonic::{Code, Status};

/// Why a request was refused or failed. Every variant maps to one gRPC code, and
/// the message is written for the person who sent the request.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AgentError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The agent is draining (SIGTERM): it takes no new faults.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        AgentError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            AgentError::InvalidArgument { .. } => Code::InvalidArgument,
            AgentError::NotFound(_) => Code::NotFound,
            AgentError::FailedPrecondition(_) => Code::FailedPrecondition,
            AgentError::PermissionDenied(_) => Code::PermissionDenied,
            AgentError::Unimplemented(_) => Code::Unimplemented,
            AgentError::ResourceExhausted(_) => Code::ResourceExhausted,
            AgentError::Unavailable(_) => Code::Unavailable,
            AgentError::Internal(_) => Code::Internal,
        }
    }

    /// The code as a lowercase label for metrics.
    pub fn code_label(&self) -> &'static str {
        match self.code() {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::FailedPrecondition => "failed_precondition",
            Code::PermissionDenied => "permission_denied",
            Code::Unimplemented => "unimplemented",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unavailable => "unavailable",
            _ => "internal",
        }
    }
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        Status::new(err.code(), err.to_string())
    }
}
