//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (start, monolithic with
//! `?digest=`, or cross-repository `?mount=&from=`), then `PATCH` (streamed or
//! chunked with `Content-Range`), `PUT ?digest=` to commit, `GET` for progress
//! and `DELETE` to cancel.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::access::{allows, authorize, Caller};
use super::error::{ApiError, ApiResult, ErrorCode};
use super::ranges::parse_content_range;
use super::{header_str, header_value, upload_range, Query, SharedState};
use crate::config::Action;
use crate::policy::request::Resource;
use crate::policy::Access;
use crate::reference::{Digest, Reference, RepositoryName, UploadId};
use crate::storage::uploads::ChunkBounds;

fn session_location(name: &RepositoryName, id: UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// 202 with where to send the next chunk and how much has arrived.
fn in_progress(status: StatusCode, name: &RepositoryName, id: UploadId, size: u64) -> ApiResult {
    Ok((
        status,
        [
            (header::LOCATION, header_value(session_location(name, id))?),
            (header::RANGE, header_value(upload_range(size))?),
            (header::CONTENT_LENGTH, header_value("0")?),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                header_value(id.to_string())?,
            ),
        ],
    )
        .into_response())
}

/// 201 for a blob now present in `name`.
fn created(name: &RepositoryName, digest: &Digest) -> ApiResult {
    Ok((
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                header_value(format!("/v2/{name}/blobs/{digest}"))?,
            ),
            (header::CONTENT_LENGTH, header_value("0")?),
            (
                header::HeaderName::from_static("docker-content-digest"),
                header_value(digest.to_string())?,
            ),
        ],
    )
        .into_response())
}

fn query_digest(query: &Query, what: &str) -> ApiResult<Option<Digest>> {
    match query.get(what) {
        None => Ok(None),
        Some(raw) => Ok(Some(Digest::parse(raw)?)),
    }
}

/// Reads `Content-Range` into where the chunk must start and how long it is.
fn chunk_bounds(headers: &HeaderMap) -> ApiResult<ChunkBounds> {
    let Some(raw) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(ChunkBounds::default());
    };
    let (start, length) = parse_content_range(raw).map_err(|e| {
        ApiError::new(ErrorCode::BlobUploadInvalid, format!("Content-Range: {e}"))
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    })?;
    let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared != length) {
        return Err(ApiError::new(
            ErrorCode::SizeInvalid,
            format!(
                "Content-Range covers {length} bytes but Content-Length is {}",
                declared.unwrap_or(0)
            ),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE));
    }
    Ok(ChunkBounds {
        start: Some(start),
        length: Some(length),
    })
}

pub async fn start(
    state: &SharedState,
    caller: &Caller,
    name: &RepositoryName,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let storage = &state.storage;
    let mount = query_digest(query, "mount")?;
    let from = query.get("from").map(RepositoryName::parse).transpose()?;
    let mut access = Access::new(Action::Push, Resource::Upload, name.clone());
    access.reference = query_digest(query, "digest")?
        .or_else(|| mount.clone())
        .map(Reference::Digest);
    access.mount_from = from.clone().filter(|_| mount.is_some());
    authorize(state, caller, &access)?;
    if let Some(mount) = mount {
        // Mounting reads the source: the caller must be allowed to pull it there.
        // If not, they get an upload session, and learn nothing about the source.
        let source_pull = from.as_ref().map(|from| {
            Access::new(Action::Pull, Resource::Blob, from.clone())
                .with_reference(Reference::Digest(mount.clone()))
        });
        if let (Some(from), Some(pull)) = (&from, source_pull) {
            if allows(state, caller, &pull)
                && storage.mount_blob(name, from, &mount).await?.is_some()
            {
                return created(name, &mount);
            }
        }
        // Not mountable: the client gets a session and uploads the blob.
        let id = storage.start_upload(name).await?;
        return in_progress(StatusCode::ACCEPTED, name, id, 0);
    }
    if let Some(digest) = query_digest(query, "digest")? {
        let id = storage.start_upload(name).await?;
        let bounds = ChunkBounds {
            start: None,
            length: header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        };
        let result = storage
            .commit_upload(name, id, &digest, bounds, body.into_data_stream())
            .await;
        if result.is_err() {
            // A one-shot upload has no session for the client to resume.
            let _ = storage.cancel_upload(name, id).await;
        }
        result?;
        return created(name, &digest);
    }
    let id = storage.start_upload(name).await?;
    in_progress(StatusCode::ACCEPTED, name, id, 0)
}

pub async fn patch(
    state: &SharedState,
    name: &RepositoryName,
    id: UploadId,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let bounds = chunk_bounds(headers)?;
    let status = state
        .storage
        .append_upload(name, id, bounds, body.into_data_stream())
        .await?;
    in_progress(StatusCode::ACCEPTED, name, id, status.size)
}

pub async fn put(
    state: &SharedState,
    name: &RepositoryName,
    id: UploadId,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let digest = query_digest(query, "digest")?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the upload's digest is required: PUT ...?digest=<algorithm>:<hex>",
        )
    })?;
    let bounds = chunk_bounds(headers)?;
    state
        .storage
        .commit_upload(name, id, &digest, bounds, body.into_data_stream())
        .await?;
    created(name, &digest)
}

pub async fn status(state: &SharedState, name: &RepositoryName, id: UploadId) -> ApiResult {
    let status = state.storage.upload_status(name, id).await?;
    in_progress(StatusCode::NO_CONTENT, name, id, status.size)
}

pub async fn cancel(
    state: &SharedState,
    name: &RepositoryName,
    id: UploadId,
) -> ApiResult<Response> {
    state.storage.cancel_upload(name, id).await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}
