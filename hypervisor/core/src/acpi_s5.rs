//! Finding the S5 (soft-off) sleep type values in a DSDT's AML.
//!
//! ACPI 6.5 section 7.4.2 defines `\_S5` as a package whose first two elements are
//! the SLP_TYPa and SLP_TYPb values to write into PM1a/PM1b control (section 4.8.3.2.1)
//! with SLP_EN. A full AML interpreter does not belong in the hypervisor; firmware
//! always declares `_S5` as a plain named package, which this scan reads.

/// SLP_TYP values for the S5 state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepTypes {
    pub slp_typ_a: u8,
    pub slp_typ_b: u8,
}

/// AML opcodes used below (ACPI 6.5 section 20.3).
const NAME_OP: u8 = 0x08;
const PACKAGE_OP: u8 = 0x12;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const ROOT_CHAR: u8 = b'\\';

/// Scans `aml` (the DSDT without or with its header) for `Name(_S5, Package(){a, b, ...})`.
#[must_use]
pub fn find_s5(aml: &[u8]) -> Option<SleepTypes> {
    let mut at = 0;
    while let Some(pos) = aml.get(at..)?.windows(4).position(|w| w == b"_S5_") {
        let name = at + pos;
        at = name + 4;
        // The name must be the operand of a NameOp, optionally rooted.
        let is_name = match name.checked_sub(1).map(|i| aml[i]) {
            Some(NAME_OP) => true,
            Some(ROOT_CHAR) => name.checked_sub(2).map(|i| aml[i]) == Some(NAME_OP),
            _ => false,
        };
        if !is_name {
            continue;
        }
        if let Some(types) = parse_package(aml.get(name + 4..)?) {
            return Some(types);
        }
    }
    None
}

/// Parses `PackageOp PkgLength NumElements elem0 elem1`.
fn parse_package(bytes: &[u8]) -> Option<SleepTypes> {
    let (&op, rest) = bytes.split_first()?;
    if op != PACKAGE_OP {
        return None;
    }
    // PkgLength: bits 7:6 of the lead byte give the number of following bytes.
    let lead = *rest.first()?;
    let rest = rest.get(1 + usize::from(lead >> 6)..)?;
    let (&count, rest) = rest.split_first()?;
    if count < 2 {
        return None;
    }
    let (a, rest) = parse_integer(rest)?;
    let (b, _) = parse_integer(rest)?;
    Some(SleepTypes { slp_typ_a: (a & 0x7) as u8, slp_typ_b: (b & 0x7) as u8 })
}

/// Parses one integer data object, returning its value and the remaining bytes.
fn parse_integer(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (&op, rest) = bytes.split_first()?;
    match op {
        ZERO_OP => Some((0, rest)),
        ONE_OP => Some((1, rest)),
        BYTE_PREFIX => Some((u32::from(*rest.first()?), rest.get(1..)?)),
        WORD_PREFIX => {
            let v = rest.get(..2)?;
            Some((u32::from(u16::from_le_bytes([v[0], v[1]])), rest.get(2..)?))
        }
        DWORD_PREFIX => {
            let v = rest.get(..4)?;
            Some((u32::from_le_bytes([v[0], v[1], v[2], v[3]]), rest.get(4..)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_style_s5() {
        // Name (_S5, Package (0x04) { 0x05, Zero, Zero, Zero })
        let aml = [0x10, 0x20, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00];
        assert_eq!(find_s5(&aml), Some(SleepTypes { slp_typ_a: 5, slp_typ_b: 0 }));
    }

    #[test]
    fn rooted_name_and_byte_prefixes() {
        let aml = [0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x0a, 0x02, 0x0a, 0x07, 0x0a, 0x07];
        assert_eq!(find_s5(&aml), Some(SleepTypes { slp_typ_a: 7, slp_typ_b: 7 }));
    }

    #[test]
    fn skips_references_that_are_not_names() {
        // A method referring to _S5_ first (no NameOp before it), then the real object.
        let aml = [
            0x70, b'_', b'S', b'5', b'_', 0x60, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x01, 0x0b, 0x03, 0x00,
        ];
        assert_eq!(find_s5(&aml), Some(SleepTypes { slp_typ_a: 1, slp_typ_b: 3 }));
    }

    #[test]
    fn truncated_or_missing_is_none() {
        assert_eq!(find_s5(b""), None);
        assert_eq!(find_s5(b"no sleep states here"), None);
        assert_eq!(find_s5(&[0x08, b'_', b'S', b'5', b'_']), None);
        assert_eq!(find_s5(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x40]), None);
        assert_eq!(find_s5(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x01, 0x0a]), None);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A small deterministic sweep over short inputs around the pattern.
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            let mut buf = [0u8; 24];
            for b in &mut buf {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *b = (seed % 16) as u8;
            }
            buf[3..8].copy_from_slice(&[0x08, b'_', b'S', b'5', b'_']);
            let len = (seed % 24) as usize;
            let _ = find_s5(&buf[..len]);
        }
    }
}
