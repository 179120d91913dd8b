//! Byte-level primitives of the batch format: LEB128 varints, zigzag, length-prefixed strings,
//! a bounds-checked reader that never panics, and CRC-32C.

use crate::error::WireError;

/// Zigzag-map a signed integer so that small magnitudes give small unsigned numbers.
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub(crate) fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Append an unsigned LEB128 varint (1-10 bytes).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append a zigzag varint.
pub(crate) fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, zigzag(v));
}

/// Append a varint length and the bytes of `s`.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over untrusted bytes: every read is bounds-checked and reports what it was reading.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Current offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(WireError::Truncated { what })?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated { what });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                return Err(WireError::Corrupt(format!(
                    "{what}: varint overflows 64 bits"
                )));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Corrupt(format!(
            "{what}: varint longer than 10 bytes"
        )))
    }

    pub(crate) fn zigzag(&mut self, what: &'static str) -> Result<i64, WireError> {
        self.varint(what).map(unzigzag)
    }

    /// A count or length, capped by `max` (and reported as too large above it).
    pub(crate) fn len(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let n = self.varint(what)?;
        if n > max as u64 {
            return Err(WireError::TooLarge {
                what,
                len: n,
                max: max as u64,
            });
        }
        Ok(n as usize)
    }

    /// A count of items that each take at least one byte: capped by what is left too, so no
    /// claimed count can make the decoder allocate more than the input justifies.
    pub(crate) fn count(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let n = self.len(what, max)?;
        if n > self.remaining() {
            return Err(WireError::Truncated { what });
        }
        Ok(n)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn str(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let n = self.len(what, max)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| WireError::Corrupt(format!("{what}: not valid UTF-8")))
    }

    pub(crate) fn u64_be(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli), as used by iSCSI, ext4 and SCTP. Detects every single-bit error and
/// every burst of up to 32 bits.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips_extremes() {
        for v in [0, 1, -1, 2, -2, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn varint_round_trips_and_rejects_overflow() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.varint("v").unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        *out.last_mut().unwrap() = 2;
        assert!(matches!(
            Reader::new(&out).varint("v"),
            Err(WireError::Corrupt(_))
        ));
        assert!(matches!(
            Reader::new(&[0x80, 0x80]).varint("v"),
            Err(WireError::Truncated { what: "v" })
        ));
        assert!(Reader::new(&[0xff; 11]).varint("v").is_err());
    }

    #[test]
    fn counts_are_capped_by_remaining_input() {
        let mut out = Vec::new();
        put_varint(&mut out, 1_000_000);
        assert!(matches!(
            Reader::new(&out).count("n", usize::MAX),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&out).len("n", 10),
            Err(WireError::TooLarge {
                len: 1_000_000,
                max: 10,
                ..
            })
        ));
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }
}
