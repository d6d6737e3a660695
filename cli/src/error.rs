//! The CLI's errors, each with its own exit code.

use bramble_proto::wire::{ApiError, ErrorCode};

/// Exit codes: 0 ok, 1 error, 2 usage (clap), 3 cannot reach a leader, 4 not found, 5 refused,
/// 6 conflict (someone else changed the object meanwhile: look again and retry).
#[derive(Debug)]
pub enum CliError {
    Config(String),
    Unreachable(String),
    Api(ApiError),
    Other(String),
    /// Not an error: the command said what it had to and ends with this exit code.
    Exit(u8),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Config(m) | CliError::Unreachable(m) | CliError::Other(m) => f.write_str(m),
            CliError::Api(e) => f.write_str(&e.message),
            CliError::Exit(code) => write!(f, "exit code {code}"),
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable(_) => 3,
            CliError::Exit(code) => *code,
            CliError::Api(e) if e.code == ErrorCode::NotFound => 4,
            CliError::Api(e) if matches!(e.code, ErrorCode::Unauthenticated | ErrorCode::PermissionDenied) => 5,
            CliError::Api(e) if e.code == ErrorCode::Conflict => 6,
            _ => 1,
        }
    }
}
