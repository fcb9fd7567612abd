//! `GET /v2/_catalog`: the repositories in the store, paginated like tag lists.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use super::access::{allows, Caller};
use super::error::ApiResult;
use super::{header_value, next_link, paginate, pagination, Query, SharedState};
use crate::config::Action;
use crate::policy::request::Resource;
use crate::policy::Access;

/// Lists only the repositories the caller may list, so names stay private too.
pub async fn list(state: &SharedState, caller: &Caller, query: &Query) -> ApiResult {
    let (n, last) = pagination(query, state.config.limits.max_page_size)?;
    let names = state
        .storage
        .list_repositories()
        .await?
        .into_iter()
        .filter(|name| {
            allows(
                state,
                caller,
                &Access::new(Action::List, Resource::Catalog, name.clone()),
            )
        })
        .map(|n| n.as_str().to_owned())
        .collect();
    let (page, more) = paginate(names, n, last.as_deref());
    let body = json!({ "repositories": page }).to_string();
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let (true, Some(n), Some(last)) = (more, n, page.last()) {
        response.headers_mut().insert(
            header::LINK,
            header_value(next_link("/v2/_catalog", n, last))?,
        );
    }
    Ok(response)
}
