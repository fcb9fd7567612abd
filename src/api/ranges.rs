//! Parsing of the byte ranges clients send: `Range` on blob GET (resumed
//! pulls) and `Content-Range` on upload PATCH (chunked pushes).

/// Why a range header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed range {0:?}")]
    Malformed(String),
    #[error("range is outside the blob's {0} bytes")]
    Unsatisfiable(u64),
}

/// Parses a `Range: bytes=a-b | a- | -n` header against a blob of `size` bytes,
/// giving the inclusive byte span. Several ranges at once are not served
/// (the whole blob is sent instead, which RFC 9110 allows): `Ok(None)`.
pub fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, RangeError> {
    let malformed = || RangeError::Malformed(header.chars().take(100).collect());
    let spec = header.trim().strip_prefix("bytes=").ok_or_else(malformed)?;
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.trim().split_once('-').ok_or_else(malformed)?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| malformed());
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (false, false) => (number(first)?, number(last)?),
        (false, true) => (number(first)?, u64::MAX),
        (true, false) => {
            let suffix = number(last)?;
            if suffix == 0 {
                return Err(RangeError::Unsatisfiable(size));
            }
            (size.saturating_sub(suffix), u64::MAX)
        }
        (true, true) => return Err(malformed()),
    };
    if start > end {
        return Err(malformed());
    }
    if start >= size {
        return Err(RangeError::Unsatisfiable(size));
    }
    Ok(Some((start, end.min(size - 1))))
}

/// Parses an upload `Content-Range: <start>-<end>` (inclusive; Distribution's
/// form, also accepted with a `bytes ` prefix and a `/total` suffix), giving the
/// start and length.
pub fn parse_content_range(header: &str) -> Result<(u64, u64), RangeError> {
    let malformed = || RangeError::Malformed(header.chars().take(100).collect());
    let spec = header.trim();
    let spec = spec
        .strip_prefix("bytes=")
        .or_else(|| spec.strip_prefix("bytes "))
        .unwrap_or(spec);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
    let start: u64 = first.trim().parse().map_err(|_| malformed())?;
    let end: u64 = last.trim().parse().map_err(|_| malformed())?;
    if end < start {
        return Err(malformed());
    }
    let length = (end - start).checked_add(1).ok_or_else(malformed)?;
    Ok((start, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=50-1000", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(
            parse_range("bytes=100-", 100),
            Err(RangeError::Unsatisfiable(100))
        );
        assert!(parse_range("bytes=9-1", 100).is_err());
        assert!(parse_range("items=0-1", 100).is_err());
        assert!(parse_range("bytes=-", 100).is_err());
        assert!(parse_range("bytes=0-99999999999999999999999", 100).is_err());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Ok((0, 100)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Ok((100, 100)));
        assert!(parse_content_range("5-4").is_err());
        assert!(parse_content_range("0-18446744073709551615").is_err());
        assert!(parse_content_range("a-b").is_err());
        assert!(parse_content_range("").is_err());
    }
}
