//! The API side of the pull-through cache: refreshing a mirrored manifest
//! before it is served, streaming a missing blob from upstream to the client
//! while storing it, and refusing writes to the mirrored namespace.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::SharedState;
use crate::proxy::Proxy;
use crate::reference::{Reference, RepositoryName};
use crate::storage::uploads::ChunkBounds;
use crate::storage::{ParsedManifest, StorageError};

/// The proxy and upstream name, if `name` is mirrored.
pub fn mirrored<'a>(state: &'a SharedState, name: &RepositoryName) -> Option<(&'a Proxy, String)> {
    let proxy = state.proxy.as_deref()?;
    proxy.upstream_name(name).map(|upstream| (proxy, upstream))
}

/// Writes to a mirror would be overwritten by (or diverge from) the upstream.
pub fn refuse_write(state: &SharedState, name: &RepositoryName) -> ApiResult<()> {
    match mirrored(state, name) {
        Some((proxy, _)) => Err(ApiError::new(
            ErrorCode::Denied,
            format!(
                "{name} is a read-only mirror of {}; push to a repository outside the mirror",
                proxy.remote()
            ),
        )),
        None => Ok(()),
    }
}

fn upstream_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::ManifestUnknown, format!("not cached, and {e}"))
}

/// Makes sure the local copy of a mirrored manifest is there and current.
pub async fn refresh_manifest(
    state: &SharedState,
    name: &RepositoryName,
    reference: &Reference,
) -> ApiResult<()> {
    let Some((proxy, upstream)) = mirrored(state, name) else {
        return Ok(());
    };
    let storage = &state.storage;
    match reference {
        Reference::Digest(_) => match storage.get_manifest(name, reference).await {
            Ok(_) => Ok(()),
            Err(StorageError::ManifestUnknown(_)) => {
                let (bytes, _) = proxy
                    .manifest(&upstream, reference)
                    .await
                    .map_err(upstream_unavailable)?;
                store(state, name, reference, bytes).await
            }
            Err(e) => Err(e.into()),
        },
        Reference::Tag(tag) => {
            if proxy.tag_is_fresh(name, tag) {
                return Ok(());
            }
            // What the tag serves now: a tag naming a manifest that is gone
            // counts as absent here, so that it is fetched again.
            let local = match storage.get_manifest(name, reference).await {
                Ok(stored) => Some(stored.digest),
                Err(StorageError::ManifestUnknown(_)) => None,
                Err(e) => return Err(e.into()),
            };
            match proxy.tag_digest(&upstream, tag).await {
                Ok(current) if Some(&current) == local.as_ref() => {
                    proxy.mark_checked(name, tag);
                    Ok(())
                }
                Ok(_) => {
                    let (bytes, _) = proxy
                        .manifest(&upstream, reference)
                        .await
                        .map_err(upstream_unavailable)?;
                    store(state, name, reference, bytes).await?;
                    proxy.mark_checked(name, tag);
                    Ok(())
                }
                // Upstream down: a cached copy is better than nothing.
                Err(e) if local.is_some() => {
                    tracing::warn!(repository = %name, %tag, error = %e, "serving the cached tag; upstream unreachable");
                    Ok(())
                }
                Err(e) => Err(upstream_unavailable(e)),
            }
        }
    }
}

async fn store(
    state: &SharedState,
    name: &RepositoryName,
    reference: &Reference,
    bytes: Vec<u8>,
) -> ApiResult<()> {
    let manifest = ParsedManifest::parse(&bytes, None)?;
    state
        .storage
        .cache_manifest(name, reference, bytes, manifest)
        .await?;
    Ok(())
}

/// Serves a blob missing from a mirror: streamed from upstream to the client
/// while the same bytes are written to an upload session, committed (digest
/// verified) when complete. A client that goes away does not stop the caching.
pub async fn stream_blob(
    state: &SharedState,
    name: &RepositoryName,
    digest: &crate::reference::Digest,
    head: bool,
) -> ApiResult<Option<Response>> {
    let Some((proxy, upstream)) = mirrored(state, name) else {
        return Ok(None);
    };
    let sized = proxy
        .blob(&upstream, digest)
        .await
        .map_err(|e| ApiError::new(ErrorCode::BlobUnknown, format!("not cached, and {e}")))?;
    let storage = state.storage.clone();
    let id = storage.start_upload(name, None).await?;
    let (client_tx, client_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let (store_tx, store_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let mut upstream_stream = sized.stream;
    tokio::spawn(async move {
        let mut client_open = !head;
        while let Some(item) = upstream_stream.next().await {
            match item {
                Ok(bytes) => {
                    if client_open && client_tx.send(Ok(bytes.clone())).await.is_err() {
                        client_open = false;
                    }
                    if store_tx.send(Ok(bytes)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    let _ = client_tx.send(Err(std::io::Error::other(message))).await;
                    let _ = store_tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    let (cache_name, cache_digest) = (name.clone(), digest.clone());
    let caching = tokio::spawn(async move {
        let stream = futures_util::stream::poll_fn({
            let mut rx = store_rx;
            move |cx| rx.poll_recv(cx)
        });
        let result = storage
            .commit_upload(
                &cache_name,
                id,
                &cache_digest,
                ChunkBounds::default(),
                stream,
            )
            .await;
        if let Err(e) = &result {
            tracing::warn!(repository = %cache_name, digest = %cache_digest, error = %e, "caching an upstream blob failed");
            let _ = storage.cancel_upload(&cache_name, id).await;
        }
        result
    });
    if head {
        // A HEAD caches the blob fully, then answers from the cache.
        caching.await.map_err(|e| {
            ApiError::new(ErrorCode::Unknown, format!("caching task failed: {e}"))
        })??;
        return Ok(None);
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        "docker-content-digest",
        super::header_value(digest.to_string())?,
    );
    if let Some(length) = sized.content_length {
        headers.insert(
            header::CONTENT_LENGTH,
            super::header_value(length.to_string())?,
        );
    }
    let body = Body::from_stream(futures_util::stream::poll_fn({
        let mut rx = client_rx;
        move |cx| rx.poll_recv(cx)
    }));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    Ok(Some(response))
}
