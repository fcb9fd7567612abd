//! Turns a request path into a typed route. Repository names contain slashes,
//! so the route is recognised from the end of the path (`.../manifests/<ref>`,
//! `.../blobs/uploads/<id>`, ...) and what precedes it is the name. Every part
//! is parsed into its typed form here; a bad part is the matching 4xx.

use percent_encoding::percent_decode_str;

use super::error::{ApiError, ApiResult};
use crate::reference::{Digest, ParseError, Reference, RepositoryName, UploadId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Catalog,
    Tags(RepositoryName),
    Manifest(RepositoryName, Reference),
    /// A manifest path whose reference is not a valid tag (and has no
    /// digest's `algorithm:`, which is `DIGEST_INVALID` if malformed): a read
    /// of it is 404 `MANIFEST_UNKNOWN` (no such manifest can exist, and
    /// Distribution's router matches no route), a write the parse error.
    BadManifestReference(RepositoryName, ParseError),
    Blob(RepositoryName, Digest),
    UploadStart(RepositoryName),
    Upload(RepositoryName, UploadId),
    Referrers(RepositoryName, Digest),
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Names are not percent-decoded: the grammar has no character that needs
/// encoding, so `%2e%2e` or `a%2fb` is simply an invalid name.
fn name(segments: &[&str]) -> ApiResult<RepositoryName> {
    Ok(RepositoryName::parse(&segments.join("/"))?)
}

impl Route {
    pub fn parse(path: &str) -> ApiResult<Route> {
        let rest = match path.strip_prefix("/v2") {
            Some("") | Some("/") => return Ok(Route::Base),
            Some(rest) => rest
                .strip_prefix('/')
                .ok_or_else(ApiError::not_found_route)?,
            None => return Err(ApiError::not_found_route()),
        };
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let n = segments.len();
        let last = |k: usize| segments.get(n.wrapping_sub(k)).copied();
        match (last(3), last(2), last(1)) {
            (_, Some("tags"), Some("list")) if n > 2 => Ok(Route::Tags(name(&segments[..n - 2])?)),
            (_, Some("manifests"), Some(reference)) if n > 2 => {
                let name = name(&segments[..n - 2])?;
                Ok(match Reference::parse(&decode(reference)) {
                    Ok(reference) => Route::Manifest(name, reference),
                    Err(e @ ParseError::Tag(_)) => Route::BadManifestReference(name, e),
                    Err(e) => return Err(e.into()),
                })
            }
            (Some("blobs"), Some("uploads"), Some("")) if n > 3 => {
                Ok(Route::UploadStart(name(&segments[..n - 3])?))
            }
            (Some("blobs"), Some("uploads"), Some(id)) if n > 3 => Ok(Route::Upload(
                name(&segments[..n - 3])?,
                UploadId::parse(&decode(id))?,
            )),
            (_, Some("blobs"), Some("uploads")) if n > 2 => {
                Ok(Route::UploadStart(name(&segments[..n - 2])?))
            }
            (_, Some("blobs"), Some(digest)) if n > 2 => Ok(Route::Blob(
                name(&segments[..n - 2])?,
                Digest::parse(&decode(digest))?,
            )),
            (_, Some("referrers"), Some(digest)) if n > 2 => Ok(Route::Referrers(
                name(&segments[..n - 2])?,
                Digest::parse(&decode(digest))?,
            )),
            _ => Err(ApiError::not_found_route()),
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) | Route::BadManifestReference(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ErrorCode;

    fn n(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    #[test]
    fn names_with_slashes_and_keywords_route_by_suffix() {
        assert_eq!(Route::parse("/v2/").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(
            Route::parse("/v2/a/blobs/b/manifests/latest").unwrap(),
            Route::Manifest(n("a/blobs/b"), Reference::parse("latest").unwrap())
        );
        assert_eq!(
            Route::parse("/v2/x/tags/list").unwrap(),
            Route::Tags(n("x"))
        );
        assert_eq!(
            Route::parse("/v2/x/y/blobs/uploads/").unwrap(),
            Route::UploadStart(n("x/y"))
        );
        let id = UploadId::new();
        assert_eq!(
            Route::parse(&format!("/v2/x/blobs/uploads/{id}")).unwrap(),
            Route::Upload(n("x"), id)
        );
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(
            Route::parse(&format!("/v2/x/blobs/sha256%3A{}", "a".repeat(64))).unwrap(),
            Route::Blob(n("x"), d)
        );
    }

    #[test]
    fn hostile_paths_are_the_right_4xx() {
        for (path, code) in [
            ("/v2/../etc/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/%2e%2e/x/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/a%2fb/manifests/latest", ErrorCode::NameInvalid),
            ("/v2//x/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/X/tags/list", ErrorCode::NameInvalid),
            ("/v2/x/blobs/sha256:abc", ErrorCode::DigestInvalid),
            (
                "/v2/x/blobs/uploads/..%2f..%2fetc",
                ErrorCode::BlobUploadUnknown,
            ),
            ("/v2/x/blobs/uploads/../../etc", ErrorCode::Unsupported),
            ("/v2/manifests/latest", ErrorCode::Unsupported),
            ("/v3/x", ErrorCode::Unsupported),
        ] {
            let err = Route::parse(path).unwrap_err();
            assert_eq!(err.code, code, "{path}");
        }
    }

    #[test]
    fn a_bad_manifest_reference_is_a_route_of_its_own() {
        for reference in [".INVALID_MANIFEST_NAME", "..", "%2e%2e", "-x", ""] {
            let path = format!("/v2/x/manifests/{reference}");
            assert!(
                matches!(Route::parse(&path), Ok(Route::BadManifestReference(ref name, _)) if *name == n("x")),
                "{path}"
            );
        }
        // A malformed digest stays DIGEST_INVALID.
        let err = Route::parse("/v2/x/manifests/sha256:xyz").unwrap_err();
        assert_eq!(err.code, ErrorCode::DigestInvalid);
    }
}
