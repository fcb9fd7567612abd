//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (start, monolithic with
//! `?digest=`, or cross-repository `?mount=&from=`), then `PATCH` (streamed or
//! chunked with `Content-Range`), `PUT ?digest=` to commit, `GET` for progress
//! and `DELETE` to cancel.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::access::{allows, authorize, Caller};
use super::error::{ApiError, ApiResult, ErrorCode};
use super::limits::{client_key, BodyLimits};
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
    let Some(raw) = headers.get(header::CONTENT_RANGE) else {
        return Ok(ChunkBounds::default());
    };
    // A value that is not visible ASCII is not a range: refused, not ignored
    // (ignoring it would append the chunk wherever the session ends).
    let raw = raw.to_str().map_err(|_| {
        ApiError::new(
            ErrorCode::BlobUploadInvalid,
            "Content-Range is not a visible ASCII value",
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    })?;
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

/// The body limits of one upload request: `already` bytes are in the session.
fn body_limits(state: &SharedState, headers: &HeaderMap, already: u64) -> ApiResult<BodyLimits> {
    let max = state
        .config
        .limits
        .max_blob_bytes
        .map(|max| max.as_u64().saturating_sub(already));
    let limits = BodyLimits::new(&state.config.limits, max);
    limits
        .check_declared(header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok()))?;
    Ok(limits)
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
    authorize(state, caller, &access).await?;
    if let Some(mount) = mount {
        // Mounting reads the source: the caller must be allowed to pull it there.
        // If not, they get an upload session, and learn nothing about the source.
        let source_pull = from.as_ref().map(|from| {
            Access::new(Action::Pull, Resource::Blob, from.clone())
                .with_reference(Reference::Digest(mount.clone()))
        });
        if let (Some(from), Some(pull)) = (&from, source_pull) {
            if allows(state, caller, &pull).await
                && storage.mount_blob(name, from, &mount).await?.is_some()
            {
                return created(name, &mount);
            }
        }
        // Not mountable: the client gets a session and uploads the blob.
        let slot = state.uploads.reserve(client_key(caller))?;
        let id = storage
            .start_upload(name, caller.identity.subject.as_deref())
            .await?;
        slot.bind(id);
        return in_progress(StatusCode::ACCEPTED, name, id, 0);
    }
    let slot = state.uploads.reserve(client_key(caller))?;
    if let Some(digest) = query_digest(query, "digest")? {
        let limits = body_limits(state, headers, 0)?;
        let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let result = storage
            .put_blob(
                name,
                &digest,
                declared,
                limits.guard(body.into_data_stream()),
            )
            .await;
        drop(slot);
        result.map_err(|e| limits.explain(e.into()))?;
        return created(name, &digest);
    }
    let id = storage
        .start_upload(name, caller.identity.subject.as_deref())
        .await?;
    slot.bind(id);
    in_progress(StatusCode::ACCEPTED, name, id, 0)
}

/// A request on an upload session (`/v2/<name>/blobs/uploads/<id>`), already
/// authorised for push.
pub struct Session<'a> {
    pub state: &'a SharedState,
    pub caller: &'a Caller,
    pub name: &'a RepositoryName,
    pub id: UploadId,
}

impl Session<'_> {
    /// An upload session belongs to the user who started it (anonymous ones
    /// to anonymous callers): anyone else is told it does not exist, even
    /// with push rights on the repository. A session that recorded no owner
    /// (older, or Distribution's) stays open to anyone allowed to push.
    async fn check_owner(&self) -> ApiResult<()> {
        let result = self
            .state
            .storage
            .upload_owner(self.name, self.id)
            .await
            .map_err(ApiError::from);
        let owner = self.settle(result).await?;
        let caller = self.caller.identity.subject.as_deref().unwrap_or_default();
        if owner.is_some_and(|owner| owner != caller) {
            return Err(ApiError::from(crate::storage::StorageError::UploadUnknown(
                self.id,
            )));
        }
        Ok(())
    }

    fn touch(&self) {
        self.state
            .uploads
            .touch(self.id, || client_key(self.caller));
    }

    /// Frees the session's slot when it is gone: unknown, or removed by a
    /// failed commit (a digest that does not match ends the session).
    async fn settle<T>(&self, result: ApiResult<T>) -> ApiResult<T> {
        if let Err(e) = &result {
            let gone = e.code == ErrorCode::BlobUploadUnknown
                || self
                    .state
                    .storage
                    .upload_status(self.name, self.id)
                    .await
                    .is_err();
            if gone {
                self.state.uploads.finish(self.id);
            }
        }
        result
    }

    /// Bytes the session holds.
    async fn size(&self) -> ApiResult<u64> {
        let result = self
            .state
            .storage
            .upload_status(self.name, self.id)
            .await
            .map_err(ApiError::from);
        Ok(self.settle(result).await?.size)
    }

    /// The bounds of this request's body (the blob size limit counts what
    /// the session already holds), and the session marked as in use.
    async fn body_limits(&self, headers: &HeaderMap) -> ApiResult<BodyLimits> {
        let already = match self.state.config.limits.max_blob_bytes {
            Some(_) => self.size().await?,
            None => 0,
        };
        let limits = body_limits(self.state, headers, already)?;
        self.touch();
        Ok(limits)
    }

    pub async fn patch(&self, headers: &HeaderMap, body: Body) -> ApiResult {
        self.check_owner().await?;
        let (state, name, id) = (self.state, self.name, self.id);
        let bounds = chunk_bounds(headers)?;
        let limits = self.body_limits(headers).await?;
        let result = state
            .storage
            .append_upload(name, id, bounds, limits.guard(body.into_data_stream()))
            .await
            .map_err(|e| limits.explain(e.into()));
        let status = self.settle(result).await?;
        self.touch();
        in_progress(StatusCode::ACCEPTED, name, id, status.size)
    }

    pub async fn put(&self, query: &Query, headers: &HeaderMap, body: Body) -> ApiResult {
        self.check_owner().await?;
        let (state, name, id) = (self.state, self.name, self.id);
        let digest = query_digest(query, "digest")?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::DigestInvalid,
                "the upload's digest is required: PUT ...?digest=<algorithm>:<hex>",
            )
        })?;
        let bounds = chunk_bounds(headers)?;
        let limits = self.body_limits(headers).await?;
        let result = state
            .storage
            .commit_upload(
                name,
                id,
                &digest,
                bounds,
                limits.guard(body.into_data_stream()),
            )
            .await
            .map_err(|e| limits.explain(e.into()));
        self.settle(result).await?;
        state.uploads.finish(id);
        created(name, &digest)
    }

    pub async fn status(&self) -> ApiResult {
        self.check_owner().await?;
        let size = self.size().await?;
        in_progress(StatusCode::NO_CONTENT, self.name, self.id, size)
    }

    pub async fn cancel(&self) -> ApiResult<Response> {
        self.check_owner().await?;
        let result = self
            .state
            .storage
            .cancel_upload(self.name, self.id)
            .await
            .map_err(ApiError::from);
        self.settle(result).await?;
        self.state.uploads.finish(self.id);
        Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
    }
}
