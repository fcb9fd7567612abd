//! `Range` (blob GET) and `Content-Range` (chunked upload PATCH) header
//! parsing, `src/api/ranges.rs`.
//!
//! Input: `<blob size>\n<header>`. The size is a decimal u64; a first line that
//! is not one stands for a size equal to its length in bytes. Input without a
//! newline is a header against a blob of 1000 bytes. The header is also
//! parsed as a `Content-Range`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::api::ranges::{parse_content_range, parse_range, RangeError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (size, header) = match text.split_once('\n') {
        Some((first, rest)) => (first.trim().parse().unwrap_or(first.len() as u64), rest),
        None => (1000, &*text),
    };
    check_range(header, size);
    check_content_range(header);
});

/// The plain decimal the parsers accept (Rust's `u64::from_str` also takes a
/// leading `+`).
fn number(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

fn check_malformed_text(err: &RangeError, header: &str) {
    if let RangeError::Malformed(shown) = err {
        assert!(header.starts_with(shown.as_str()));
        assert!(shown.chars().count() <= 100);
    }
    let _ = err.to_string();
}

fn check_range(header: &str, size: u64) {
    let result = parse_range(header, size);
    let spec = header.trim().strip_prefix("bytes=");
    match result.clone() {
        Ok(Some((start, end))) => {
            let spec = spec.expect("a served range starts with bytes=");
            assert!(!spec.contains(','));
            assert!(start <= end, "start {start} > end {end} for {header:?}");
            assert!(end < size, "end {end} outside {size} bytes for {header:?}");
            // What the handler computes from it does not overflow.
            let length = (end - start).checked_add(1).expect("length overflows");
            assert!(length <= size);
            assert!(start.checked_add(length).is_some_and(|stop| stop <= size));
            // And it is the span the header asked for.
            let (first, last) = spec.trim().split_once('-').unwrap();
            match (number(first), number(last)) {
                (Some(a), Some(b)) => {
                    assert_eq!(start, a);
                    assert_eq!(end, b.min(size - 1));
                }
                (Some(a), None) => {
                    assert!(last.trim().is_empty());
                    assert_eq!((start, end), (a, size - 1));
                }
                (None, Some(n)) => {
                    assert!(first.trim().is_empty() && n > 0);
                    assert_eq!((start, end), (size.saturating_sub(n), size - 1));
                }
                (None, None) => panic!("served {header:?} without numbers"),
            }
            // The Content-Range the response sends back reads as the same span.
            let echoed = format!("bytes {start}-{end}/{size}");
            assert_eq!(parse_content_range(&echoed), Ok((start, length)));
        }
        Ok(None) => {
            // Several ranges: the whole blob is sent.
            assert!(spec.is_some_and(|s| s.contains(',')), "{header:?}");
        }
        Err(RangeError::Unsatisfiable(n)) => {
            assert_eq!(n, size);
            assert!(spec.is_some());
        }
        Err(e) => check_malformed_text(&e, header),
    }
    if size == 0 {
        assert!(!matches!(result, Ok(Some(_))), "a range of an empty blob");
    }
}

fn check_content_range(header: &str) {
    match parse_content_range(header) {
        Ok((start, length)) => {
            assert!(length >= 1, "empty chunk from {header:?}");
            // The last byte of the chunk is representable, and re-parses.
            let end = start
                .checked_add(length - 1)
                .unwrap_or_else(|| panic!("end overflows for {header:?}"));
            assert_eq!(
                parse_content_range(&format!("{start}-{end}")),
                Ok((start, length))
            );
            assert_eq!(
                parse_content_range(&format!("bytes {start}-{end}/*")),
                Ok((start, length))
            );
        }
        Err(e) => {
            assert!(matches!(e, RangeError::Malformed(_)), "{e:?}");
            check_malformed_text(&e, header);
        }
    }
}
