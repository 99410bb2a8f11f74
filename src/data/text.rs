//! Reading text files line by line with a known encoding, keeping 1-based line numbers for
//! error messages.
//!
//! MovieLens's `u.item` and `movies.dat` are ISO-8859-1 (latin-1), where every byte is the code
//! point of the same value, so decoding cannot fail. Everything else palr reads is UTF-8 and an
//! invalid byte is an error naming its line.

use std::path::Path;

use super::error::{DataError, Location, Result};

/// Text encoding of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// Strict UTF-8 (a leading BOM is dropped).
    Utf8,
    /// The raw MovieLens files: ISO-8859-1, unless the whole file is valid UTF-8 (someone already
    /// converted it), in which case UTF-8. Genuine latin-1 text with accents is practically never
    /// valid UTF-8 (an accented letter would have to be followed by a byte in 0x80..0xBF).
    Latin1OrUtf8,
}

/// Reads a whole file (errors name the path).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Decodes a file's bytes into text.
pub(crate) fn decode(path: &Path, bytes: Vec<u8>, enc: Encoding) -> Result<String> {
    match enc {
        Encoding::Utf8 => utf8(path, bytes),
        Encoding::Latin1OrUtf8 => match String::from_utf8(bytes) {
            Ok(s) => Ok(strip_bom(s)),
            Err(e) => Ok(latin1(e.as_bytes())),
        },
    }
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    match String::from_utf8(bytes) {
        Ok(s) => Ok(strip_bom(s)),
        Err(e) => {
            let bytes = e.as_bytes();
            let bad = e.utf8_error().valid_up_to();
            let line = 1 + bytes[..bad].iter().filter(|&&b| b == b'\n').count() as u64;
            let line_start = bytes[..bad]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            Err(DataError::Encoding {
                at: Location::new(path, line),
                detail: format!(
                    "byte 0x{:02x} at column {}",
                    bytes[bad],
                    bad - line_start + 1
                ),
            })
        }
    }
}

fn strip_bom(s: String) -> String {
    match s.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => s,
    }
}

/// ISO-8859-1: byte value = code point.
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Non-blank lines with their 1-based line numbers; a trailing `\r` is dropped.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (u64, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_maps_bytes_to_code_points() {
        assert_eq!(latin1(b"Mis\xe9rables"), "Misérables");
        assert_eq!(latin1(b"\xc1 k\xf6ldum"), "Á köldum");
    }

    #[test]
    fn latin1_or_utf8_prefers_valid_utf8() {
        let p = Path::new("x");
        let s = decode(p, "Misérables".as_bytes().to_vec(), Encoding::Latin1OrUtf8).unwrap();
        assert_eq!(s, "Misérables");
        let s = decode(p, b"Mis\xe9rables".to_vec(), Encoding::Latin1OrUtf8).unwrap();
        assert_eq!(s, "Misérables");
    }

    #[test]
    fn utf8_error_names_line_and_column() {
        let err = decode(
            Path::new("f.csv"),
            b"a,b\nc,\xe9d\n".to_vec(),
            Encoding::Utf8,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("f.csv:2: not valid UTF-8"), "{msg}");
        assert!(msg.contains("0xe9 at column 3"), "{msg}");
        assert!(msg.contains("iconv"), "{msg}");
    }

    #[test]
    fn bom_is_dropped_and_lines_are_numbered() {
        let s = decode(
            Path::new("x"),
            b"\xef\xbb\xbfh\r\n\n  \nb".to_vec(),
            Encoding::Utf8,
        )
        .unwrap();
        let l: Vec<_> = lines(&s).collect();
        assert_eq!(l, vec![(1, "h"), (4, "b")]);
    }
}
