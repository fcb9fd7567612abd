//! `GET /v2/<name>/tags/list` with `n`/`last` pagination and a `Link` header.

use serde_json::json;

use super::error::ApiResult;
use super::{paged_response, paginate, pagination, Query, SharedState};
use crate::reference::RepositoryName;

pub async fn list(state: &SharedState, name: &RepositoryName, query: &Query) -> ApiResult {
    let (n, last) = pagination(query, state.config.limits.max_page_size)?;
    let tags = state.storage.list_tags(name).await?;
    let (page, more) = paginate(tags, n, last.as_deref());
    let body = json!({ "name": name.as_str(), "tags": page });
    paged_response(body, &format!("/v2/{name}/tags/list"), &page, n, more)
}
