//! Errors of the agent, grouped by what the caller should do, and their one mapping to gRPC.
//!
//! Each layer (hypervisor, images, firewall) has its own error enum; they all convert into
//! [`AgentError`], whose variants are the categories a caller acts on. [`AgentError`] maps
//! to a `tonic::Status` in exactly one place (`From<AgentError> for Status`).

use tonic::{Code, Status};

/// The result type of the agent's logic.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// What went wrong, grouped by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request itself is wrong: fix it before retrying.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something with that name already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The thing is in the wrong state for the operation (e.g. a running domain).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The host cannot do this (driver or tool lacks support).
    #[error("{0}")]
    Unsupported(String),
    /// A dependency (libvirtd, a tool) is not reachable now: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The operation did not finish in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The host ran out of something (disk space, ports): free some, then retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A bug or an unexpected failure of the host's tools.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    pub fn exists(msg: impl Into<String>) -> Self {
        Self::AlreadyExists(msg.into())
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::FailedPrecondition(msg.into())
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    /// An error a peer agent answered with, in the same category.
    pub fn from_peer(s: Status) -> Self {
        let msg = format!("peer agent: {}", s.message());
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument(msg),
            Code::NotFound => Self::NotFound(msg),
            Code::AlreadyExists => Self::AlreadyExists(msg),
            Code::FailedPrecondition | Code::PermissionDenied | Code::Unauthenticated => {
                Self::FailedPrecondition(msg)
            }
            Code::Unimplemented => Self::Unsupported(msg),
            Code::DeadlineExceeded => Self::DeadlineExceeded(msg),
            Code::ResourceExhausted => Self::ResourceExhausted(msg),
            Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted => {
                Self::Unavailable(msg)
            }
            _ => Self::Internal(msg),
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unsupported(_) => Code::Unimplemented,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        io_category(&e, e.to_string())
    }
}

/// The category of an I/O error, with `msg` as its message.
fn io_category(e: &std::io::Error, msg: String) -> AgentError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => AgentError::NotFound(msg),
        K::AlreadyExists => AgentError::AlreadyExists(msg),
        K::StorageFull | K::QuotaExceeded => AgentError::ResourceExhausted(msg),
        K::PermissionDenied | K::ReadOnlyFilesystem => AgentError::FailedPrecondition(msg),
        _ => AgentError::Internal(msg),
    }
}

/// An I/O error on `path`, with the path in its message.
pub fn io_at(path: &std::path::Path, e: std::io::Error) -> AgentError {
    let msg = format!("{}: {e}", path.display());
    io_category(&e, msg)
}

impl From<tokio::task::JoinError> for AgentError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("worker thread failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_maps_to_its_status_code() {
        let cases = [
            (AgentError::invalid("x"), Code::InvalidArgument),
            (AgentError::not_found("x"), Code::NotFound),
            (AgentError::exists("x"), Code::AlreadyExists),
            (AgentError::precondition("x"), Code::FailedPrecondition),
            (AgentError::Unsupported("x".into()), Code::Unimplemented),
            (AgentError::Unavailable("x".into()), Code::Unavailable),
            (
                AgentError::DeadlineExceeded("x".into()),
                Code::DeadlineExceeded,
            ),
            (AgentError::internal("x"), Code::Internal),
            (
                AgentError::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "x");
        }
    }

    #[test]
    fn io_errors_keep_their_meaning() {
        let e: AgentError = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        assert_eq!(e.code(), Code::NotFound);
        let full = io_at(
            std::path::Path::new("/var/lib/corral/x.qcow2"),
            std::io::Error::from_raw_os_error(28),
        );
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(full.to_string().starts_with("/var/lib/corral/x.qcow2: "));
    }
}
