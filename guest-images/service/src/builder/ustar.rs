//! Reading files out of the boot payload, a ustar archive (POSIX.1-1988 `ustar`, as the
//! `tar` crate writes it in `boot/src/payload.rs`), without allocating and without any
//! way to panic: every field is taken with `get`, every sum is checked.
//!
//! Per 512-byte header block: the name (0..100, NUL-terminated unless full), the size
//! (124..136, octal), the checksum (148..156, octal: the byte sum of the header with
//! this field read as spaces), the type flag (156) and, when the magic at 257 is
//! `ustar\0` (POSIX, not GNU's `ustar `), the name prefix (345..500, joined to the name with '/'). A GNU long-name
//! entry (type `L`) gives the name of the entry after it. Regular files (type `0`,
//! NUL or `7`) are yielded; other entries are skipped (links, devices, directories and
//! FIFOs have no data; any other type's data is skipped by its size). The walk ends at a
//! zero block, at the end of the archive, and at the first block that is not a valid
//! header or whose data runs past the end (a corrupt archive yields what precedes the
//! damage).

/// Bytes per tar block.
const BLOCK: usize = 512;

/// One regular file of the archive.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The ustar name prefix (empty when there is none).
    prefix: &'a [u8],
    name: &'a [u8],
    /// The file's contents.
    pub data: &'a [u8],
}

impl Entry<'_> {
    /// Whether the entry's path (`prefix/name`, or `name`) is `path`.
    #[must_use]
    pub fn is(&self, path: &str) -> bool {
        let p = path.as_bytes();
        if self.prefix.is_empty() {
            return self.name == p;
        }
        p.len() == self.prefix.len() + 1 + self.name.len()
            && p.starts_with(self.prefix)
            && p.get(self.prefix.len()) == Some(&b'/')
            && p.ends_with(self.name)
    }
}

/// The regular files of `archive`, in order.
#[must_use]
pub fn entries(archive: &[u8]) -> Entries<'_> {
    Entries { archive, offset: 0, long_name: None }
}

/// The contents of the regular file `path` of `archive` (the first one, if several
/// have that path).
#[must_use]
pub fn find<'a>(archive: &'a [u8], path: &str) -> Option<&'a [u8]> {
    entries(archive).find(|e| e.is(path)).map(|e| e.data)
}

/// Iterator over the regular files of an archive (see the module documentation).
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    archive: &'a [u8],
    /// Offset of the next header block; `usize::MAX` once the walk has ended.
    offset: usize,
    /// The name a GNU long-name entry gave the next entry.
    long_name: Option<&'a [u8]>,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        loop {
            match self.step() {
                Some(Some(entry)) => return Some(entry),
                Some(None) => {}
                None => {
                    self.offset = usize::MAX;
                    return None;
                }
            }
        }
    }
}

impl<'a> Entries<'a> {
    /// Reads one header and moves past its data: `Some(Some(file))` for a regular file,
    /// `Some(None)` for an entry to skip, `None` at the end or at damage.
    fn step(&mut self) -> Option<Option<Entry<'a>>> {
        let header = self.archive.get(self.offset..self.offset.checked_add(BLOCK)?)?;
        if header.iter().all(|&b| b == 0) || !checksum_ok(header) {
            return None;
        }
        let typeflag = *header.get(156)?;
        let has_data = !matches!(typeflag, b'1'..=b'6');
        let size = if has_data { usize::try_from(octal(header.get(124..136)?)?).ok()? } else { 0 };
        let data_start = self.offset.checked_add(BLOCK)?;
        let data = self.archive.get(data_start..data_start.checked_add(size)?)?;
        self.offset = data_start.checked_add(size.checked_next_multiple_of(BLOCK)?)?;
        let long_name = self.long_name.take();
        match typeflag {
            b'0' | 0 | b'7' => {
                // POSIX ustar has a name prefix; GNU headers ("ustar " magic) keep other
                // fields there.
                let ustar = header.get(257..263) == Some(b"ustar\0".as_slice());
                let (prefix, name) = match long_name {
                    Some(name) => (&[][..], name),
                    None if ustar => (c_string(header.get(345..500)?), c_string(header.get(..100)?)),
                    None => (&[][..], c_string(header.get(..100)?)),
                };
                Some(Some(Entry { prefix, name, data }))
            }
            b'L' => {
                self.long_name = Some(c_string(data));
                Some(None)
            }
            _ => Some(None),
        }
    }
}

/// `field` up to its first NUL (all of it when there is none).
fn c_string(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field.get(..end).unwrap_or(field)
}

/// An octal number field: optional leading spaces, octal digits, then NUL or space (or
/// the field's end). `None` for anything else, including GNU base-256 numbers.
fn octal(field: &[u8]) -> Option<u64> {
    let mut digits = field.iter().skip_while(|&&b| b == b' ').peekable();
    let mut value: u64 = 0;
    let mut any = false;
    while let Some(&&b) = digits.peek() {
        if !(b'0'..=b'7').contains(&b) {
            break;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        any = true;
        digits.next();
    }
    let terminated = digits.all(|&b| b == 0 || b == b' ');
    (any && terminated).then_some(value)
}

/// Whether the header's checksum field matches its bytes (the unsigned sum, or the
/// signed one some old tars wrote).
fn checksum_ok(header: &[u8]) -> bool {
    let Some(stored) = header.get(148..156).and_then(octal) else { return false };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A header block like `tar::Header::new_ustar` writes.
    fn header(name: &str, prefix: &str, size: usize, typeflag: u8) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(std::format!("{size:011o}").as_bytes());
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(std::format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive(files: &[(&str, &str, &[u8], u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(name, prefix, data, typeflag) in files {
            out.extend_from_slice(&header(name, prefix, data.len(), typeflag));
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(BLOCK), 0);
        }
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }

    #[test]
    fn finds_files_by_path() {
        let a = archive(&[
            ("config.toml", "", b"x = 1\n", b'0'),
            ("images", "", b"", b'5'),
            ("hypervisor.conf", "", b"log_level=info\n", b'0'),
            ("hello", "images", &[0xAB; 700], b'0'),
        ]);
        assert_eq!(find(&a, "hypervisor.conf"), Some(&b"log_level=info\n"[..]));
        assert_eq!(find(&a, "images/hello").map(<[u8]>::len), Some(700));
        assert_eq!(find(&a, "hello"), None);
        assert_eq!(find(&a, "images"), None, "directories are not files");
        assert_eq!(find(&a, "missing"), None);
        assert_eq!(entries(&a).count(), 3);
    }

    #[test]
    fn reads_what_the_tar_crate_writes() {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [("hypervisor.conf", &b"partition=x\n"[..]), ("images/linux", &[7u8; 1300][..])] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            b.append_data(&mut h, path, data).unwrap();
        }
        let long = std::format!("images/{}", "n".repeat(120));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        assert_eq!(find(&bytes, "hypervisor.conf"), Some(&b"partition=x\n"[..]));
        assert_eq!(find(&bytes, "images/linux"), Some(&[7u8; 1300][..]));
        assert_eq!(find(&bytes, &long), Some(&b"abc"[..]));
    }

    #[test]
    fn long_names_and_prefixes() {
        let a = archive(&[
            ("././@LongLink", "", b"images/a-very-long-name\0", b'L'),
            ("images/a-very-lo", "", b"long", b'0'),
            ("file", "dir/sub", b"pre", b'0'),
        ]);
        assert_eq!(find(&a, "images/a-very-long-name"), Some(&b"long"[..]));
        assert_eq!(find(&a, "images/a-very-lo"), None);
        assert_eq!(find(&a, "dir/sub/file"), Some(&b"pre"[..]));
        assert_eq!(find(&a, "dir/subfile"), None);
    }

    #[test]
    fn damage_ends_the_walk_without_panicking() {
        let good = archive(&[("a", "", b"1", b'0'), ("b", "", b"2", b'0')]);
        // A bad checksum in the second header: only the first file.
        let mut bad = good.clone();
        bad[BLOCK * 2] ^= 1;
        assert_eq!(entries(&bad).count(), 1);
        // A size past the end.
        let mut big = good.clone();
        big[BLOCK * 2..BLOCK * 3].copy_from_slice(&header("b", "", 1 << 32, b'0'));
        assert_eq!(find(&big, "b"), None);
        assert_eq!(find(&big, "a"), Some(&b"1"[..]));
        // Truncated archives, empty ones, a lone zero block.
        for len in 0..good.len() {
            let _ = entries(&good[..len]).count();
        }
        assert_eq!(entries(&[]).count(), 0);
        assert_eq!(entries(&[0; BLOCK]).count(), 0);
        // Arbitrary bytes.
        let mut x: u32 = 1;
        let mut noise = std::vec![0u8; BLOCK * 8];
        for _ in 0..200 {
            for b in &mut noise {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let _ = entries(&noise).count();
        }
    }

    #[test]
    fn octal_fields() {
        assert_eq!(octal(b"00000001750\0"), Some(1000));
        assert_eq!(octal(b"  17 \0"), Some(15));
        assert_eq!(octal(b"\0\0\0"), None);
        assert_eq!(octal(b"18"), None);
        assert_eq!(octal(&[0x80, 0, 0, 1]), None);
        assert_eq!(octal(b"7777777777777777777777777"), None, "overflow");
    }
}
