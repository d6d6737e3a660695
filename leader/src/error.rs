//! The leader's error: typed inside the leader, turned into the wire's [`ApiError`] only at the
//! API edge (`From<Error> for ApiError`).

use crate::store::StoreError;
use bramble_proto::wire::{ApiError, ErrorCode, ObjectProblem};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// Objects a user sent that cannot be applied, each problem by object and field.
    #[error("nothing applied: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Problems(Vec<ObjectProblem>),
    /// Someone else changed the object meanwhile, or a name is taken.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A stored value that does not decode: the one place this is reported.
    #[error("stored object {key} is corrupt: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let code = match &e {
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Invalid(_) | Error::Problems(_) => ErrorCode::InvalidArgument,
            Error::Conflict(_) | Error::Store(StoreError::Conflict { .. }) => ErrorCode::Conflict,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::Store(_) => ErrorCode::Unavailable,
            Error::Corrupt { .. } | Error::Internal(_) => ErrorCode::Internal,
        };
        let mut out = ApiError::new(code, e.to_string());
        if let Error::Problems(p) = e {
            out.problems = p;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_message_and_get_a_code_at_the_edge() {
        let e: ApiError = Error::NotFound("app \"web\" not found".into()).into();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotFound, "app \"web\" not found"));
        let bad = serde_json::from_slice::<u32>(b"x").unwrap_err();
        let e: ApiError = Error::Corrupt { key: "/apps/web".into(), source: bad }.into();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.starts_with("stored object /apps/web is corrupt: "), "{}", e.message);
        let e: ApiError = Error::Store(StoreError::Backend("disk full".into())).into();
        assert_eq!(e.code, ErrorCode::Unavailable);
    }
}
