//! A bounds-checked little-endian writer over a byte slice, and the 8-bit checksum
//! that ACPI tables and MP structures share.
//!
//! Writes never panic: a write that does not fit is dropped and remembered, and
//! [`Out::finish`] turns that (or a length other than the planned one) into
//! [`TableError::Internal`]. After [`crate::build`]'s up-front planning this cannot
//! happen; the check keeps a planning bug from becoming a panic or a silently short
//! table.

use crate::TableError;

/// Where bytes go: a real [`Out`] or a [`Counter`] that only measures (the AML encoder
/// measures a body before it writes the body's `PkgLength`).
pub(crate) trait Sink {
    fn bytes(&mut self, bytes: &[u8]);
    /// Something could not be encoded (an AML `PkgLength` beyond 2^28 - 1).
    fn fail(&mut self);

    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn zeros(&mut self, n: usize) {
        for _ in 0..n {
            self.u8(0);
        }
    }
}

/// Counts the bytes an encoder would write.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub len: usize,
    pub failed: bool,
}

impl Sink for Counter {
    fn bytes(&mut self, bytes: &[u8]) {
        self.len = self.len.saturating_add(bytes.len());
    }
    fn fail(&mut self) {
        self.failed = true;
    }
}

/// Writes into `buf` from a cursor position.
#[derive(Debug)]
pub(crate) struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0, failed: false }
    }

    /// Moves the cursor to `pos` (for fixed-offset fields).
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// Checks that every write fitted and that exactly `len` bytes (the planned size)
    /// were produced, i.e. the cursor ends at `len` and `len` is the buffer's length.
    pub fn finish(self, len: usize, what: &'static str) -> Result<(), TableError> {
        if self.failed || self.pos != len || self.buf.len() != len {
            return Err(TableError::Internal(what));
        }
        Ok(())
    }
}

impl Sink for Out<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        let end = self.pos.checked_add(bytes.len());
        match end.and_then(|end| self.buf.get_mut(self.pos..end)) {
            Some(dst) => dst.copy_from_slice(bytes),
            None => self.failed = true,
        }
        self.pos = self.pos.saturating_add(bytes.len());
    }
    fn fail(&mut self) {
        self.failed = true;
    }
}

/// The byte that makes `bytes` sum to zero (mod 256) when it replaces a zero byte.
pub(crate) fn checksum_byte(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// Sets `table[at]` so that the whole of `table` sums to zero.
pub(crate) fn fix_checksum(table: &mut [u8], at: usize, what: &'static str) -> Result<(), TableError> {
    *table.get_mut(at).ok_or(TableError::Internal(what))? = 0;
    let byte = checksum_byte(table);
    *table.get_mut(at).ok_or(TableError::Internal(what))? = byte;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_checked_and_little_endian() {
        let mut buf = [0u8; 8];
        let mut o = Out::new(&mut buf);
        o.u16(0x1234);
        o.u32(0xAABB_CCDD);
        o.u16(0x5678);
        assert!(o.finish(8, "t").is_ok());
        assert_eq!(buf, [0x34, 0x12, 0xDD, 0xCC, 0xBB, 0xAA, 0x78, 0x56]);

        let mut buf = [0u8; 4];
        let mut o = Out::new(&mut buf);
        o.u32(1);
        o.u8(2); // beyond the end: dropped, remembered
        assert_eq!(o.finish(4, "t"), Err(TableError::Internal("t")));
        assert_eq!(buf, [1, 0, 0, 0]);

        let mut buf = [0u8; 4];
        let mut o = Out::new(&mut buf);
        o.u16(1); // short of the planned length
        assert_eq!(o.finish(4, "t"), Err(TableError::Internal("t")));
    }

    #[test]
    fn checksum_sums_to_zero() {
        let mut t = [1u8, 2, 0, 250, 7];
        fix_checksum(&mut t, 2, "t").unwrap();
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert!(fix_checksum(&mut t, 5, "t").is_err());
    }
}
