//! Configuration text: UTF-8 or an error at the first bad byte's line and column.

use std::fmt;
use std::path::Path;

/// Where a file stops being UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotUtf8 {
    /// Byte offset of the first bad byte.
    pub offset: usize,
    /// Its 1-based line.
    pub line: usize,
    /// Its 1-based column (characters before it on its line + 1).
    pub column: usize,
    /// The byte.
    pub byte: u8,
}

impl fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not UTF-8: byte 0x{:02X} at line {}, column {} (save the file as UTF-8)",
            self.byte, self.line, self.column
        )
    }
}

/// `bytes` as text, or where its first byte that is not UTF-8 is.
pub fn decode(bytes: Vec<u8>) -> Result<String, NotUtf8> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // Valid up to `offset`, by definition.
        let before = std::str::from_utf8(&bytes[..offset]).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        NotUtf8 {
            offset,
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            byte: bytes[offset],
        }
    })
}

/// Why a configuration file could not be read as text.
#[derive(Debug)]
pub enum ReadError {
    /// It could not be read.
    Io(std::io::Error),
    /// It is not UTF-8.
    NotUtf8(NotUtf8),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotUtf8(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Read `path` as UTF-8 text.
pub fn read(path: &Path) -> Result<String, ReadError> {
    decode(std::fs::read(path).map_err(ReadError::Io)?).map_err(ReadError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bad_byte_is_located() {
        let e = decode(b"a = 1\nb\xC3\xA9 = \"x\xFFy\"\n".to_vec()).expect_err("bad");
        assert_eq!((e.line, e.column, e.byte, e.offset), (2, 8, 0xFF, 14));
        assert_eq!(
            e.to_string(),
            "not UTF-8: byte 0xFF at line 2, column 8 (save the file as UTF-8)"
        );
        let e = decode(b"\xE9".to_vec()).expect_err("latin-1");
        assert_eq!((e.line, e.column), (1, 1));
        assert_eq!(decode(b"ok\n".to_vec()).as_deref(), Ok("ok\n"));
    }
}
