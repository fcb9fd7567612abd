//! `GET /v2/_catalog`: the repositories in the store, paginated like tag lists.

use serde_json::json;

use super::access::{allows, Caller};
use super::error::ApiResult;
use super::{paged_response, paginate, pagination, Query, SharedState};
use crate::config::Action;
use crate::policy::request::Resource;
use crate::policy::Access;

/// Lists only the repositories the caller may list, so names stay private too.
pub async fn list(state: &SharedState, caller: &Caller, query: &Query) -> ApiResult {
    let (n, last) = pagination(query, state.config.limits.max_page_size)?;
    let mut names = Vec::new();
    for name in state.storage.list_repositories().await? {
        let access = Access::new(Action::List, Resource::Catalog, name.clone());
        if allows(state, caller, &access).await {
            names.push(name.as_str().to_owned());
        }
    }
    let (page, more) = paginate(names, n, last.as_deref());
    let body = json!({ "repositories": page });
    paged_response(body, "/v2/_catalog", &page, n, more)
}
