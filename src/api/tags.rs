//! `GET /v2/<name>/tags/list` with `n`/`last` pagination and a `Link` header.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use super::error::ApiResult;
use super::{header_value, next_link, paginate, pagination, Query, SharedState};
use crate::reference::RepositoryName;

pub async fn list(state: &SharedState, name: &RepositoryName, query: &Query) -> ApiResult {
    let (n, last) = pagination(query, state.config.limits.max_page_size)?;
    let tags = state.storage.list_tags(name).await?;
    let (page, more) = paginate(tags, n, last.as_deref());
    let body = json!({ "name": name.as_str(), "tags": page }).to_string();
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let (true, Some(n), Some(last)) = (more, n, page.last()) {
        let link = next_link(&format!("/v2/{name}/tags/list"), n, last);
        response
            .headers_mut()
            .insert(header::LINK, header_value(link)?);
    }
    Ok(response)
}
