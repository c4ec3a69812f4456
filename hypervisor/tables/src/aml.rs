//! Just enough of an AML encoder for the DSDT (ACPI 6.5 chapter 20, "ACPI Machine
//! Language (AML) Specification"): names, packages, scopes, devices and integers.
//!
//! Grammar used (§20.2):
//! - `DefName := NameOp NameString DataRefObject`, `NameOp` = 0x08 (§20.2.5.1).
//! - `DefScope := ScopeOp PkgLength NameString TermList`, `ScopeOp` = 0x10.
//! - `DefDevice := DeviceOp PkgLength NameString TermList`, `DeviceOp` = 0x5B 0x82
//!   (`ExtOpPrefix` + 0x82) (§20.2.5.2).
//! - `DefPackage := PackageOp PkgLength NumElements PackageElementList`, `PackageOp`
//!   = 0x12, `NumElements` a `ByteData` (§20.2.5.4).
//! - `DefBuffer := BufferOp PkgLength BufferSize ByteList`, `BufferOp` = 0x11,
//!   `BufferSize` a `TermArg` integer (§20.2.5.4); a `ResourceTemplate` is a buffer of
//!   resource descriptors ending in an End Tag (§6.4).
//! - `NameString := <RootChar NamePath> | ...`, `RootChar` = '\\', `NameSeg :=
//!   <LeadNameChar NameChar NameChar NameChar>` with `LeadNameChar` 'A'-'Z' or '_' and
//!   `NameChar` also '0'-'9' (§20.2.2); shorter names are padded with '_'.
//! - `ComputationalData`: `ZeroOp` 0x00, `OneOp` 0x01, `BytePrefix` 0x0A + 1 byte,
//!   `WordPrefix` 0x0B + 2, `DWordPrefix` 0x0C + 4, `QWordPrefix` 0x0E + 8, little
//!   endian (§20.2.3).
//! - `PkgLength` (§20.2.4): the length of the package *including the PkgLength bytes
//!   themselves*. Below 64 it is one byte (bits 7:6 = 0, bits 5:0 = the length);
//!   otherwise bits 7:6 of the lead byte give the number (1-3) of bytes that follow,
//!   bits 3:0 of the lead byte are the low nibble of the length and each following
//!   byte carries the next 8 bits; so 2, 3 and 4 bytes encode lengths below 2^12,
//!   2^20 and 2^28.

use crate::out::{Counter, Sink};

pub(crate) const ZERO_OP: u8 = 0x00;
pub(crate) const ONE_OP: u8 = 0x01;
pub(crate) const NAME_OP: u8 = 0x08;
pub(crate) const BYTE_PREFIX: u8 = 0x0A;
pub(crate) const WORD_PREFIX: u8 = 0x0B;
pub(crate) const DWORD_PREFIX: u8 = 0x0C;
pub(crate) const QWORD_PREFIX: u8 = 0x0E;
pub(crate) const SCOPE_OP: u8 = 0x10;
pub(crate) const PACKAGE_OP: u8 = 0x12;
pub(crate) const BUFFER_OP: u8 = 0x11;
pub(crate) const EXT_OP_PREFIX: u8 = 0x5B;
pub(crate) const DEVICE_OP: u8 = 0x82;

/// The `PkgLength` encoding for a package whose contents after the `PkgLength` are
/// `body_len` bytes: the bytes and how many of them are used. `None` above the
/// largest encodable length (2^28 - 1 including the 4 `PkgLength` bytes).
pub(crate) fn pkg_length(body_len: usize) -> Option<([u8; 4], usize)> {
    for n in 1..=4usize {
        let total = body_len.checked_add(n)?;
        let limit = if n == 1 { 1usize << 6 } else { 1usize << (4 + 8 * (n - 1)) };
        if total < limit {
            let mut b = [0u8; 4];
            if n == 1 {
                b[0] = total as u8;
            } else {
                b[0] = (((n - 1) as u8) << 6) | (total & 0xF) as u8;
                for (i, byte) in b.iter_mut().enumerate().take(n).skip(1) {
                    *byte = (total >> (4 + 8 * (i - 1))) as u8;
                }
            }
            return Some((b, n));
        }
    }
    None
}

/// `opcode PkgLength body`: measures `body`, then writes it behind its length.
fn block(s: &mut dyn Sink, opcode: &[u8], body: &dyn Fn(&mut dyn Sink)) {
    let mut counter = Counter::default();
    body(&mut counter);
    s.bytes(opcode);
    match pkg_length(counter.len) {
        Some((bytes, n)) if !counter.failed => s.bytes(&bytes[..n]),
        _ => s.fail(),
    }
    body(s);
}

/// An integer in its shortest `ComputationalData` form.
pub(crate) fn integer(s: &mut dyn Sink, v: u64) {
    match v {
        0 => s.u8(ZERO_OP),
        1 => s.u8(ONE_OP),
        2..=0xFF => s.bytes(&[BYTE_PREFIX, v as u8]),
        0x100..=0xFFFF => {
            s.u8(WORD_PREFIX);
            s.u16(v as u16);
        }
        0x1_0000..=0xFFFF_FFFF => {
            s.u8(DWORD_PREFIX);
            s.u32(v as u32);
        }
        _ => {
            s.u8(QWORD_PREFIX);
            s.u64(v);
        }
    }
}

/// `Name(name, integer)`; `name` is a `NameString` (a `NameSeg`, or `\` + `NameSeg`).
pub(crate) fn name_integer(s: &mut dyn Sink, name: &[u8], v: u64) {
    s.u8(NAME_OP);
    s.bytes(name);
    integer(s, v);
}

/// `Name(name, Package(n) { integers })`.
pub(crate) fn name_package(s: &mut dyn Sink, name: &[u8], elements: &[u64]) {
    s.u8(NAME_OP);
    s.bytes(name);
    block(s, &[PACKAGE_OP], &|s| {
        match u8::try_from(elements.len()) {
            Ok(n) => s.u8(n),
            Err(_) => s.fail(),
        }
        for &e in elements {
            integer(s, e);
        }
    });
}

/// `Name(name, Buffer() { bytes })`.
pub(crate) fn name_buffer(s: &mut dyn Sink, name: &[u8], bytes: &[u8]) {
    s.u8(NAME_OP);
    s.bytes(name);
    block(s, &[BUFFER_OP], &|s| {
        integer(s, bytes.len() as u64);
        s.bytes(bytes);
    });
}

/// A Word Address Space Descriptor (ACPI 6.5 §6.4.3.5.3, large item 0x88, 13 data
/// bytes) for a producer range `min..=max` with fixed minimum and maximum, no
/// translation; `kind` 1 = I/O (type-specific flags: ISA and non-ISA ranges), 2 = bus
/// numbers.
pub(crate) const fn word_address_space(kind: u8, min: u16, max: u16) -> [u8; 16] {
    let len = max.wrapping_sub(min).wrapping_add(1);
    let type_flags = if kind == 1 { 0x03 } else { 0x00 };
    let [min0, min1] = min.to_le_bytes();
    let [max0, max1] = max.to_le_bytes();
    let [len0, len1] = len.to_le_bytes();
    // Tag, length 13, resource type, general flags (MIF | MAF = 0x0C, producer),
    // type-specific flags, granularity 0, min, max, translation 0, length.
    [0x88, 13, 0, kind, 0x0C, type_flags, 0, 0, min0, min1, max0, max1, 0, 0, len0, len1]
}

/// An I/O Port Descriptor (§6.4.2.5, small item 0x47): 16-bit decode of `len` ports at
/// `base`.
pub(crate) const fn io_port(base: u16, len: u8) -> [u8; 8] {
    let [b0, b1] = base.to_le_bytes();
    [0x47, 0x01, b0, b1, b0, b1, 0x01, len]
}

/// The End Tag (§6.4.2.9, small item 0x79) with checksum 0 ("treated as correct").
pub(crate) const END_TAG: [u8; 2] = [0x79, 0x00];

/// `Scope(name) { body }`.
pub(crate) fn scope(s: &mut dyn Sink, name: &[u8], body: &dyn Fn(&mut dyn Sink)) {
    block(s, &[SCOPE_OP], &|s| {
        s.bytes(name);
        body(s);
    });
}

/// `Device(name) { body }`.
pub(crate) fn device(s: &mut dyn Sink, name: &[u8], body: &dyn Fn(&mut dyn Sink)) {
    block(s, &[EXT_OP_PREFIX, DEVICE_OP], &|s| {
        s.bytes(name);
        body(s);
    });
}

/// `EISAID("AAANNNN")` as ASL compiles it (ACPI 6.5 §19.6.35): three letters of 5 bits
/// each ('A' = 1) in bits 14:0 of a big-endian 16-bit manufacturer code, then four hex
/// digits as a big-endian 16-bit product code; the 4 bytes in that order form the
/// little-endian DWord integer. `EISAID("PNP0A03")` = 0x030A_D041.
pub(crate) const fn eisa_id(id: &[u8; 7]) -> u32 {
    const fn letter(c: u8) -> u16 {
        (c.wrapping_sub(0x40) & 0x1F) as u16
    }
    const fn hex(c: u8) -> u16 {
        match c {
            b'0'..=b'9' => (c - b'0') as u16,
            b'A'..=b'F' => (c - b'A' + 10) as u16,
            b'a'..=b'f' => (c - b'a' + 10) as u16,
            _ => 0,
        }
    }
    let mfg = (letter(id[0]) << 10) | (letter(id[1]) << 5) | letter(id[2]);
    let product = (hex(id[3]) << 12) | (hex(id[4]) << 8) | (hex(id[5]) << 4) | hex(id[6]);
    let m = mfg.to_be_bytes();
    let p = product.to_be_bytes();
    u32::from_le_bytes([m[0], m[1], p[0], p[1]])
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::out::Out;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// Decodes a `PkgLength` independently of the encoder: (value, bytes used).
    fn decode_pkg_length(b: &[u8]) -> (usize, usize) {
        let follow = usize::from(b[0] >> 6);
        if follow == 0 {
            return (usize::from(b[0] & 0x3F), 1);
        }
        assert_eq!(b[0] & 0x30, 0, "bits 5:4 of a multi-byte lead byte are reserved");
        let mut v = usize::from(b[0] & 0x0F);
        for i in 0..follow {
            v |= usize::from(b[1 + i]) << (4 + 8 * i);
        }
        (v, follow + 1)
    }

    #[test]
    fn pkg_length_known_encodings() {
        // Body lengths at each boundary, with the expected encoded bytes.
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x01]),
            (62, &[0x3F]),
            (63, &[0x41, 0x04]),         // 65 = 0x41: lead 0x40 | 1, next 0x04
            (4093, &[0x4F, 0xFF]),       // 4095
            (4094, &[0x81, 0x00, 0x01]), // 4097 = 0x1001
            ((1 << 20) - 4, &[0x8F, 0xFF, 0xFF]),
            ((1 << 20) - 3, &[0xC1, 0x00, 0x00, 0x01]), // 2^20 + 1
            ((1 << 28) - 5, &[0xCF, 0xFF, 0xFF, 0xFF]),
        ];
        for &(body, bytes) in cases {
            let (b, n) = pkg_length(body).unwrap();
            assert_eq!(&b[..n], bytes, "body {body}");
        }
        assert_eq!(pkg_length((1 << 28) - 4), None);
        assert_eq!(pkg_length(usize::MAX), None);
    }

    proptest! {
        #[test]
        fn pkg_length_round_trips(body in 0usize..(1 << 28) - 4) {
            let (b, n) = pkg_length(body).unwrap();
            let (value, used) = decode_pkg_length(&b);
            prop_assert_eq!(used, n);
            prop_assert_eq!(value, body + n);
            // The shortest encoding: one byte fewer could not hold it.
            if n > 1 {
                let limit = if n == 2 { 1 << 6 } else { 1 << (4 + 8 * (n - 2)) };
                prop_assert!(body + n > limit);
            }
        }

        #[test]
        fn integers_use_the_shortest_form(v in any::<u64>()) {
            let mut buf = vec![0u8; 9];
            let mut o = Out::new(&mut buf);
            integer(&mut o, v);
            let mut c = Counter::default();
            integer(&mut c, v);
            let (decoded, len) = match buf[0] {
                ZERO_OP => (0, 1),
                ONE_OP => (1, 1),
                BYTE_PREFIX => (u64::from(buf[1]), 2),
                WORD_PREFIX => (u64::from(u16::from_le_bytes([buf[1], buf[2]])), 3),
                DWORD_PREFIX => (u64::from(u32::from_le_bytes(buf[1..5].try_into().unwrap())), 5),
                QWORD_PREFIX => (u64::from_le_bytes(buf[1..9].try_into().unwrap()), 9),
                other => panic!("unexpected opcode {other:#x}"),
            };
            prop_assert_eq!(decoded, v);
            prop_assert_eq!(c.len, len);
            let expected_len = match v { 0 | 1 => 1, 2..=0xFF => 2, 0x100..=0xFFFF => 3, 0x1_0000..=0xFFFF_FFFF => 5, _ => 9 };
            prop_assert_eq!(len, expected_len);
        }
    }

    #[test]
    fn eisa_ids() {
        assert_eq!(eisa_id(b"PNP0A03"), 0x030A_D041);
        assert_eq!(eisa_id(b"PNP0A08"), 0x080A_D041);
        assert_eq!(eisa_id(b"PNP0C0F"), 0x0F0C_D041);
        assert_eq!(eisa_id(b"PNP0501"), 0x0105_D041);
    }

    #[test]
    fn nested_blocks() {
        let encode = |s: &mut dyn Sink| {
            scope(s, b"\\_SB_", &|s| {
                device(s, b"DEV0", &|s| name_integer(s, b"_UID", 0x1234));
            })
        };
        let mut c = Counter::default();
        encode(&mut c);
        let mut buf = vec![0u8; c.len];
        let mut o = Out::new(&mut buf);
        encode(&mut o);
        o.finish(c.len, "t").unwrap();
        let expected: Vec<u8> = [
            &[SCOPE_OP, 21][..],
            b"\\_SB_",
            &[EXT_OP_PREFIX, DEVICE_OP, 13],
            b"DEV0",
            &[NAME_OP],
            b"_UID",
            &[WORD_PREFIX, 0x34, 0x12],
        ]
        .concat();
        assert_eq!(buf, expected);
    }

    #[test]
    fn long_package_gets_a_two_byte_length() {
        let elements: Vec<u64> = (0..40).map(|i| 0x100 + i).collect(); // 3 bytes each
        let mut c = Counter::default();
        name_package(&mut c, b"BIGP", &elements);
        let mut buf = vec![0u8; c.len];
        let mut o = Out::new(&mut buf);
        name_package(&mut o, b"BIGP", &elements);
        o.finish(c.len, "t").unwrap();
        assert_eq!(buf[5], PACKAGE_OP);
        let (len, used) = decode_pkg_length(&buf[6..]);
        assert_eq!(used, 2);
        assert_eq!(6 + len, buf.len()); // the PkgLength covers itself and the rest
        assert_eq!(buf[6 + used], 40);
    }
}
