//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`: streamed reads with `Range`
//! support for resumed pulls, and unlinking.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult, ErrorCode};
use super::ranges::{parse_range, RangeError};
use super::{header_str, header_value, SharedState};
use crate::reference::{Digest, RepositoryName};

pub async fn get(
    state: &SharedState,
    name: &RepositoryName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    // Blob bytes may come straight from the object store (`storage.redirect`).
    if !head {
        if let Some(url) = state.storage.blob_url(name, digest).await? {
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .header(header::CONTENT_LENGTH, 0)
                .header("docker-content-digest", digest.to_string())
                .body(Body::empty())
                .map_err(|e| {
                    ApiError::new(ErrorCode::Unknown, format!("cannot build response: {e}"))
                });
        }
    }
    // HEAD needs only the size; GET opens the file once and takes it from there.
    let (size, reader) = if head {
        (state.storage.stat_blob(name, digest).await?.size, None)
    } else {
        let reader = state.storage.open_blob(name, digest).await?;
        (reader.size, Some(reader))
    };
    let span = match header_str(headers, header::RANGE) {
        Some(range) => match parse_range(range, size) {
            Ok(span) => span,
            Err(RangeError::Unsatisfiable(size)) => {
                // The blob exists, so not BLOB_UNKNOWN; the spec has no code
                // for this, and SIZE_INVALID says what is wrong: the range.
                return Err(ApiError::new(
                    ErrorCode::SizeInvalid,
                    format!("range {range:?} is outside the blob's {size} bytes"),
                )
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                .with_header(
                    header::CONTENT_RANGE,
                    header_value(format!("bytes */{size}"))?,
                ));
            }
            // A range we cannot read is ignored, as RFC 9110 says: the whole blob is sent.
            Err(RangeError::Malformed(_)) => None,
        },
        None => None,
    };
    let (start, length, status) = match span {
        Some((start, end)) => (start, end - start + 1, StatusCode::PARTIAL_CONTENT),
        None => (0, size, StatusCode::OK),
    };

    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    if let Some((start, end)) = span {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    let body = match reader {
        Some(reader) => Body::from_stream(reader.stream(start, length)),
        None => Body::empty(),
    };
    response
        .body(body)
        .map_err(|e| ApiError::new(ErrorCode::Unknown, format!("cannot build response: {e}")))
}

pub async fn delete(state: &SharedState, name: &RepositoryName, digest: &Digest) -> ApiResult {
    if !state.config.storage.delete_enabled {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "deletes are disabled on this registry (storage.delete_enabled = false)",
        ));
    }
    state.storage.delete_blob(name, digest).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}
