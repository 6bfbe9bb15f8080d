//! The error codes of the HTTP API: one table maps each to its status, and one function turns
//! every failure into `{"error": {"code", "message", "request_id", "field"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_service::ServiceError;
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

macro_rules! error_codes {
    ($($variant:ident => $status:ident, $name:literal;)*) => {
        /// Stable error codes. Clients match on these names; none is ever renamed or removed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status),* }
            }

            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name),* }
            }
        }
    };
}

error_codes! {
    InvalidJson => BAD_REQUEST, "INVALID_JSON";
    InvalidField => BAD_REQUEST, "INVALID_FIELD";
    Unauthorized => UNAUTHORIZED, "UNAUTHORIZED";
    Forbidden => FORBIDDEN, "FORBIDDEN";
    NotFound => NOT_FOUND, "NOT_FOUND";
    MethodNotAllowed => METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED";
    RequestTimeout => REQUEST_TIMEOUT, "REQUEST_TIMEOUT";
    Conflict => CONFLICT, "CONFLICT";
    PayloadTooLarge => PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE";
    PolicyViolation => UNPROCESSABLE_ENTITY, "POLICY_VIOLATION";
    RateLimited => TOO_MANY_REQUESTS, "RATE_LIMITED";
    Sealed => SERVICE_UNAVAILABLE, "SEALED";
    Unavailable => SERVICE_UNAVAILABLE, "UNAVAILABLE";
    Internal => INTERNAL_SERVER_ERROR, "INTERNAL";
    Integrity => INTERNAL_SERVER_ERROR, "INTEGRITY";
}

impl ErrorCode {
    /// The code for a bare status produced below the handlers (router, timeout layer).
    pub fn for_status(status: StatusCode) -> ErrorCode {
        if status == StatusCode::BAD_REQUEST {
            // Bodies are parsed by our own extractor; a bare 400 is a path or query rejection.
            return ErrorCode::InvalidField;
        }
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.status() == status)
            .unwrap_or(if status.is_client_error() {
                ErrorCode::InvalidField
            } else {
                ErrorCode::Internal
            })
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code: INVALID_JSON, INVALID_FIELD, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, CONFLICT, …
    pub code: String,
    /// For people; never contains a secret or a presented value.
    pub message: String,
    /// Quote it when reporting a problem: it is in the server's logs too.
    pub request_id: String,
    /// With INVALID_FIELD: the offending field, e.g. `name` or `permissions[2]`; with
    /// POLICY_VIOLATION: the policy rule, e.g. `max_ttl_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The error answers every admin route may give, for the OpenAPI document.
#[derive(Debug, IntoResponses)]
pub enum ErrorResponses {
    #[response(
        status = 400,
        description = "INVALID_JSON or INVALID_FIELD (with `field`)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "UNAUTHORIZED: no or bad bearer key")]
    Unauthorized(ErrorBody),
    #[response(
        status = 403,
        description = "FORBIDDEN: the key lacks the route's permission"
    )]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "NOT_FOUND")]
    NotFound(ErrorBody),
    #[response(
        status = 409,
        description = "CONFLICT: the key's state does not allow this"
    )]
    Conflict(ErrorBody),
    #[response(status = 413, description = "PAYLOAD_TOO_LARGE")]
    PayloadTooLarge(ErrorBody),
    #[response(
        status = 422,
        description = "POLICY_VIOLATION: the environment's policy refuses it (`field` names the rule)"
    )]
    PolicyViolation(ErrorBody),
    #[response(
        status = 429,
        description = "RATE_LIMITED: too many failed attempts from this address (Retry-After)"
    )]
    RateLimited(ErrorBody),
    #[response(
        status = 503,
        description = "SEALED: the vault is sealed; UNAVAILABLE: the store cannot be reached"
    )]
    Unavailable(ErrorBody),
}

/// An error on its way to becoming a response. The request-id middleware renders it, so that
/// every error body carries the request id.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// For RATE_LIMITED: seconds for the `Retry-After` field.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        ApiError {
            code: ErrorCode::InvalidField,
            message: if field.is_empty() {
                message
            } else {
                format!("{field}: {message}")
            },
            field: Some(field),
            retry_after_s: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.code.status().into_response();
        response.extensions_mut().insert(self);
        response
    }
}

fn e_sealed_message() -> &'static str {
    "the vault is sealed; unseal it with POST /v1/sys/unseal or keyward operator unseal"
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Unauthorized => ApiError::new(
                ErrorCode::Unauthorized,
                "missing or invalid admin key: send 'Authorization: Bearer <admin key>'",
            ),
            ServiceError::Forbidden { permission } => ApiError::new(
                ErrorCode::Forbidden,
                format!("this key lacks the permission {permission}"),
            ),
            ServiceError::Refused(refusal) => {
                ApiError::new(ErrorCode::Forbidden, refusal.to_string())
            }
            ServiceError::NotFound { what } => ApiError::not_found(what),
            ServiceError::InvalidField { field, message } => ApiError::field(field, message),
            ServiceError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            // Every retry lost the log's head to writers on other nodes: busy, so retry later.
            ServiceError::Raced => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    ErrorCode::Unavailable,
                    "the store is busy with concurrent changes; retry",
                )
            },
            ServiceError::Policy(violation) => ApiError {
                code: ErrorCode::PolicyViolation,
                message: violation.to_string(),
                field: Some(violation.rule.to_owned()),
                retry_after_s: None,
            },
            ServiceError::TooManyFailures { retry_after_s } => ApiError {
                retry_after_s: Some(retry_after_s),
                ..ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "too many failed attempts from this address; retry in {retry_after_s} s"
                    ),
                )
            },
            ServiceError::Unavailable(cause) => {
                tracing::error!(error = %cause, "store unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the store is unavailable; retry later",
                )
            }
            ServiceError::Sealed => ApiError::new(ErrorCode::Sealed, e_sealed_message()),
            ServiceError::TooLarge(message) => ApiError::new(ErrorCode::PayloadTooLarge, message),
            ServiceError::Integrity(cause) => {
                tracing::error!(error = %cause, "integrity check failed");
                ApiError::new(
                    ErrorCode::Integrity,
                    format!("a stored value failed its integrity check and was not used: {cause}"),
                )
            }
            ServiceError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_client_errors_are_4xx() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            let server_side = matches!(
                code,
                ErrorCode::Internal
                    | ErrorCode::Unavailable
                    | ErrorCode::Sealed
                    | ErrorCode::Integrity
            );
            assert_eq!(code.status().is_server_error(), server_side, "{code:?}");
        }
    }
}
