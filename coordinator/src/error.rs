//! The coordinator's errors, grouped by what the caller should do, and their one mapping to
//! gRPC status codes.

use tonic::{Code, Status};

use crate::operations::OpError;
use crate::store::StoreError;

pub type Result<T, E = CoordError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CoordError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A host or the database cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// An agent's own answer, passed on with its code.
    #[error("{1}")]
    Agent(Code, String),
}

impl CoordError {
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
            Self::Agent(c, _) => *c,
        }
    }

    /// An agent's failure, with which host said it.
    pub fn from_agent(host: &str, s: &Status) -> Self {
        let msg = format!("host {host}: {}", s.message());
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => Self::Unavailable(msg),
            c => Self::Agent(c, msg),
        }
    }
}

impl From<CoordError> for Status {
    fn from(e: CoordError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for CoordError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(format!("{m} not found")),
            StoreError::AlreadyExists(m) => Self::AlreadyExists(format!("{m} already exists")),
            StoreError::Conflict(m) => Self::FailedPrecondition(m),
            StoreError::Database(m) => Self::Unavailable(format!("database: {m}")),
            StoreError::NotLeader(m) => Self::Unavailable(format!("not the leader: {m}")),
        }
    }
}

impl From<OpError> for CoordError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound(m) if m.ends_with("not found") => Self::NotFound(m),
            OpError::NotFound(m) => Self::NotFound(format!("{m} not found")),
            OpError::Invalid(m) => Self::FailedPrecondition(m),
            OpError::Exists(m) => Self::AlreadyExists(m),
            OpError::Failed(m) => Self::Internal(m),
            OpError::Cancelled => Self::FailedPrecondition("cancelled".into()),
            OpError::Store(m) => Self::Unavailable(m),
        }
    }
}

impl From<CoordError> for OpError {
    fn from(e: CoordError) -> Self {
        OpError::Failed(e.to_string())
    }
}

impl From<tokio::task::JoinError> for CoordError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("worker: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            Status::from(CoordError::PermissionDenied("x".into())).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            CoordError::from(StoreError::NotFound("vm".into())).code(),
            Code::NotFound
        );
        let agent = CoordError::from_agent("h1", &Status::failed_precondition("it is running"));
        assert_eq!(agent.code(), Code::FailedPrecondition);
        assert_eq!(agent.to_string(), "host h1: it is running");
        assert_eq!(
            CoordError::from_agent("h1", &Status::unavailable("down")).code(),
            Code::Unavailable
        );
    }
}
