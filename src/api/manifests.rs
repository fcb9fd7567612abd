//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::access::{authorize, authorize_in, Caller};
use super::error::{ApiError, ApiResult, ErrorCode};
use super::limits::BodyLimits;
use super::mirror;
use super::{header_str, header_value, SharedState};
use crate::config::Action;
use crate::policy::chain::Stage;
use crate::policy::request::Resource;
use crate::policy::Access;
use crate::reference::{Algorithm, Digest, Reference, RepositoryName};
use crate::storage::{
    ParsedManifest, StorageError, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

const MANIFEST_TYPES: [&str; 4] = [
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_LIST,
];

/// Whether the client's `Accept` allows `media_type`. A client that names no
/// manifest type at all (no header, `*/*`, `application/json`) takes anything;
/// one that lists manifest types gets only those.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let offered: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .collect();
    let names_manifest_types = offered.iter().any(|t| MANIFEST_TYPES.contains(t));
    !names_manifest_types
        || offered
            .iter()
            .any(|t| *t == media_type || *t == "*/*" || *t == "application/*")
}

/// A manifest pull, decided in two stages on one chain when a policy that
/// applies reads what the manifest is: the policies that need no facts
/// first (a caller they refuse costs no storage read and no upstream fetch,
/// and learns nothing of what exists), then, with the manifest read and
/// described, the others. A missing manifest is decided without facts.
pub async fn get(
    state: &SharedState,
    caller: &Caller,
    name: &RepositoryName,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let chain = state.policies.current();
    let mut access = Access::new(Action::Pull, Resource::Manifest, name.clone())
        .with_reference(reference.clone());
    let staged = chain.wants_manifest_facts(&access);
    let first = if staged {
        Stage::WithoutFacts
    } else {
        Stage::All
    };
    authorize_in(state, &chain, caller, &access, first).await?;
    mirror::refresh_manifest(state, name, reference).await?;
    let manifest = match state.storage.get_manifest(name, reference).await {
        Ok(manifest) => manifest,
        Err(e) => {
            if staged {
                authorize_in(state, &chain, caller, &access, Stage::WithFacts).await?;
            }
            return Err(e.into());
        }
    };
    if staged {
        access.manifest = Some(state.facts.of_stored(&state.storage, name, &manifest).await);
        authorize_in(state, &chain, caller, &access, Stage::WithFacts).await?;
    }
    if !accepts(headers, &manifest.media_type) {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "manifest {reference} is a {}, which the request's Accept header does not allow",
                manifest.media_type
            ),
        ));
    }
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(header::CONTENT_LENGTH, manifest.bytes.len())
        .header("docker-content-digest", manifest.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", manifest.digest));
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes)
    };
    response
        .body(body)
        .map_err(|e| ApiError::new(ErrorCode::Unknown, format!("cannot build response: {e}")))
}

/// Times a manifest push is decided again when its tag moved under it.
const TAG_ATTEMPTS: u32 = 5;

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestInvalid,
        format!("manifest is larger than this registry's limit of {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Reads the whole manifest body, refusing it as soon as it passes `limit`.
/// Pauses and total time are bounded by `limits.body_*timeout`.
async fn read_limited(state: &SharedState, body: Body, limit: u64) -> ApiResult<Vec<u8>> {
    let timeouts = BodyLimits::new(&state.config.limits, None);
    let mut stream = timeouts.guard(body.into_data_stream());
    let mut bytes = Vec::new();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| {
            timeouts.explain(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest body: {e}"),
            ))
        })?;
        if (bytes.len() + frame.len()) as u64 > limit {
            return Err(too_large(limit));
        }
        bytes.extend_from_slice(&frame);
    }
    Ok(bytes)
}

pub async fn put(
    state: &SharedState,
    caller: &Caller,
    name: &RepositoryName,
    reference: &Reference,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let limit = state.config.limits.max_manifest_bytes;
    let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large(limit));
    }
    let bytes = read_limited(state, body, limit).await?;
    let manifest = ParsedManifest::parse(&bytes, header_str(headers, header::CONTENT_TYPE))?;
    let subject = manifest.subject.as_ref().map(|s| s.digest.clone());

    // The policy sees the manifest and, for a tag, what the tag names now.
    let algorithm = match reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, &bytes);
    let mut access = Access::new(Action::Push, Resource::Manifest, name.clone())
        .with_reference(reference.clone());
    access.manifest = Some(
        state
            .facts
            .of_push(&state.storage, name, &manifest, &digest, bytes.len() as u64)
            .await,
    );
    // The policy decides on what the tag names now, and the tag moves only
    // if it still names that when it is written: a push that raced another
    // one to the same tag is decided again on what that one left (an
    // immutable tag then refuses it, as it would have one push later).
    let mut attempt = 0;
    let digest = loop {
        attempt += 1;
        let expected_tag = match reference {
            Reference::Tag(tag) => {
                access.current_digest = state.storage.tag_target(name, tag).await?;
                Some(access.current_digest.clone())
            }
            Reference::Digest(_) => None,
        };
        authorize(state, caller, &access).await?;
        match state
            .storage
            .put_manifest(
                name,
                reference,
                bytes.clone(),
                manifest.clone(),
                expected_tag,
            )
            .await
        {
            Err(StorageError::TagChanged(_)) if attempt < TAG_ATTEMPTS => continue,
            // Written, then overwritten by a concurrent push (a store without
            // conditional writes): this push stands only if the policies
            // would have allowed it after that one.
            Err(StorageError::TagSuperseded { ours, now }) => {
                access.current_digest = now;
                authorize(state, caller, &access).await?;
                break ours;
            }
            result => break result?,
        }
    };
    let mut response = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                header_value(format!("/v2/{name}/manifests/{digest}"))?,
            ),
            (header::CONTENT_LENGTH, header_value("0")?),
            (
                header::HeaderName::from_static("docker-content-digest"),
                header_value(digest.to_string())?,
            ),
        ],
    )
        .into_response();
    if let Some(subject) = subject {
        response
            .headers_mut()
            .insert("oci-subject", header_value(subject.to_string())?);
    }
    Ok(response)
}

pub async fn delete(
    state: &SharedState,
    caller: &Caller,
    name: &RepositoryName,
    reference: &Reference,
) -> ApiResult {
    let mut access = Access::new(Action::Delete, Resource::Manifest, name.clone())
        .with_reference(reference.clone());
    // As with pushes: the policies decide on the tags naming the manifest
    // now, and the delete happens only if they still do; otherwise (a push
    // raced it) the delete is decided again on what that push left.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match reference {
            Reference::Tag(tag) => {
                access.current_digest = state.storage.tag_target(name, tag).await?
            }
            Reference::Digest(digest) => {
                access.digest_tags = state.storage.tags_pointing_to(name, digest).await?
            }
        }
        authorize(state, caller, &access).await?;
        if !state.config.storage.delete_enabled {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                "deletes are disabled on this registry (storage.delete_enabled = false)",
            ));
        }
        let deleted = match reference {
            Reference::Digest(digest) => {
                state
                    .storage
                    .delete_manifest(name, digest, &access.digest_tags)
                    .await
            }
            Reference::Tag(tag) => {
                state
                    .storage
                    .delete_tag(name, tag, access.current_digest.as_ref())
                    .await
            }
        };
        match deleted {
            Err(StorageError::DigestTagsChanged(_) | StorageError::TagChanged(_))
                if attempt < TAG_ATTEMPTS =>
            {
                continue
            }
            result => break result?,
        }
    }
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}
