//! API errors in the shape the AWS SDKs parse: an HTTP status, the `x-amzn-ErrorType`
//! header and a JSON body `{"message": …}` (rest-json protocol).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error_type: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type: error_type.into(),
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFoundException", message)
    }
    pub fn in_use(message: impl Into<String>) -> Self {
        Self::new(400, "ResourceInUseException", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidArgumentException", message)
    }
    pub fn client_limit(message: impl Into<String>) -> Self {
        Self::new(400, "ClientLimitExceededException", message)
    }
    pub fn connection_limit(message: impl Into<String>) -> Self {
        Self::new(400, "ConnectionLimitExceededException", message)
    }
    pub fn version_mismatch(message: impl Into<String>) -> Self {
        Self::new(400, "VersionMismatchException", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalFailure", message)
    }
    pub fn unknown_operation(path: &str) -> Self {
        Self::new(
            404,
            "UnknownOperationException",
            format!("no operation at {path}"),
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.error_type, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}
