//! `GET /v2/<name>/referrers/<digest>`: an OCI image index of the manifests
//! whose `subject` is the digest, optionally filtered by `artifactType`.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use super::error::ApiResult;
use super::{Query, SharedState};
use crate::reference::{Digest, RepositoryName};
use crate::storage::MEDIA_TYPE_OCI_INDEX;

pub async fn list(
    state: &SharedState,
    name: &RepositoryName,
    subject: &Digest,
    query: &Query,
) -> ApiResult {
    let mut referrers = state.storage.list_referrers(name, subject).await?;
    let filter = query.get("artifactType").filter(|t| !t.is_empty());
    if let Some(wanted) = filter {
        referrers.retain(|d| d.artifact_type.as_deref() == Some(wanted));
    }
    let body = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": referrers,
    })
    .to_string();
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, MEDIA_TYPE_OCI_INDEX)],
        body,
    )
        .into_response();
    if filter.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            header::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
