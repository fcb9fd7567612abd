//! The spec's error codes, their HTTP statuses, and the conversion of every
//! lower layer's error into the JSON body clients expect:
//! `{"errors":[{"code":"...","message":"...","detail":...}]}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::reference::ParseError;
use crate::storage::StorageError;

/// Error codes of the OCI Distribution Spec (and Docker's extensions that clients know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// Docker's `UNAVAILABLE` (503): the storage backend cannot be reached.
    Unavailable,
    /// Not in the spec's table: used for server-side failures, always with a 5xx.
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOO_MANY_REQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status a code is sent with unless the handler has a more specific one.
    pub fn default_status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error response: code, status, a message the user can act on, optional detail.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The policy that refused, for the access log.
    pub policy: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            status: code.default_status(),
            message: message.into(),
            detail: None,
            headers: Vec::new(),
            policy: None,
        }
    }

    /// Names the policy that decided this refusal (for the access log).
    pub fn by_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = Some(policy.into());
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn not_found_route() -> Self {
        Self::new(
            ErrorCode::Unsupported,
            "no such endpoint in the registry API",
        )
        .with_status(StatusCode::NOT_FOUND)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorCode::Unsupported,
            "method not allowed on this endpoint",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let refusal = matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
        .then(|| super::audit::Refusal {
            policy: self.policy,
            reason: self.message.clone(),
        });
        let mut entry = json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(detail) = self.detail {
            entry["detail"] = detail;
        }
        let body = json!({ "errors": [entry] }).to_string();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        if let Some(refusal) = refusal {
            response.extensions_mut().insert(refusal);
        }
        response
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        let code = match e {
            ParseError::Name(_) => ErrorCode::NameInvalid,
            ParseError::Tag(_) => ErrorCode::ManifestInvalid,
            ParseError::Digest(_) => ErrorCode::DigestInvalid,
            ParseError::UploadId(_) => ErrorCode::BlobUploadUnknown,
        };
        let status = match e {
            ParseError::UploadId(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(code, e.to_string()).with_status(status)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let message = e.to_string();
        match e {
            StorageError::BlobUnknown(d) => ApiError::new(ErrorCode::BlobUnknown, message)
                .with_detail(json!({ "digest": d.to_string() })),
            StorageError::UploadUnknown(_) => ApiError::new(ErrorCode::BlobUploadUnknown, message),
            StorageError::UploadOutOfOrder { expected, .. } => {
                let mut err = ApiError::new(ErrorCode::BlobUploadInvalid, message)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE);
                if let Ok(v) = HeaderValue::from_str(&super::upload_range(expected)) {
                    err = err.with_header(header::RANGE, v);
                }
                err
            }
            StorageError::DigestMismatch { .. } | StorageError::ManifestDigestMismatch { .. } => {
                ApiError::new(ErrorCode::DigestInvalid, message)
            }
            StorageError::SizeMismatch { .. } => ApiError::new(ErrorCode::SizeInvalid, message),
            StorageError::ManifestUnknown(_) => ApiError::new(ErrorCode::ManifestUnknown, message),
            StorageError::NameUnknown(_) => ApiError::new(ErrorCode::NameUnknown, message),
            StorageError::ManifestInvalid(_) => ApiError::new(ErrorCode::ManifestInvalid, message),
            StorageError::ManifestBlobUnknown(d) => {
                ApiError::new(ErrorCode::ManifestBlobUnknown, message)
                    .with_detail(json!({ "digest": d.to_string() }))
            }
            StorageError::Body(_) => ApiError::new(ErrorCode::BlobUploadInvalid, message),
            // Only reached when a tag kept changing under every retry.
            StorageError::TagChanged(_)
            | StorageError::DigestTagsChanged(_)
            | StorageError::TagSuperseded { .. } => {
                ApiError::new(ErrorCode::Denied, message).with_status(StatusCode::CONFLICT)
            }
            StorageError::Unavailable(_) => {
                tracing::error!(error = %message, "storage unavailable");
                ApiError::new(ErrorCode::Unavailable, message)
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
            }
            StorageError::Io(io) => {
                if io.kind() == std::io::ErrorKind::StorageFull {
                    tracing::error!(error = %io, "storage is full");
                    ApiError::new(
                        ErrorCode::Unknown,
                        "registry storage is full; free space on the storage volume and retry",
                    )
                    .with_status(StatusCode::INSUFFICIENT_STORAGE)
                } else {
                    tracing::error!(error = %io, "storage error");
                    ApiError::new(
                        ErrorCode::Unknown,
                        "registry storage failed; the operator's log has the cause",
                    )
                }
            }
        }
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;
