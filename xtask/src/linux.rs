//! `cargo xtask linux`: the Linux guest material under `$TARGET/linux`.
//!
//! - `bzImage`: the kernel of Debian's `linux-image-amd64` (the metapackage is resolved
//!   with `apt-cache depends` to the real `linux-image-<abi>-amd64` package);
//! - `busybox`: the static busybox of Debian's `busybox-static`;
//! - `initramfs.cpio.gz`: a gzip-compressed cpio "newc" archive with the directories of a
//!   tiny root, the device nodes `/dev/console`, `/dev/null` and `/dev/ttyS0` (written as
//!   archive entries: nothing is created on the host), `/bin/busybox`, `/bin/sh` and
//!   `/init` (`guest-images/linux/init`).
//!
//! The packages are fetched with `apt-get download` into `debs/` once; the files taken
//! from them are kept next to a `.source` stamp naming the `.deb` they came from, so later
//! runs fetch and extract nothing. The initramfs is rebuilt on every run (it is cheap):
//! every entry has uid/gid 0 and mtime 0, so the same inputs give the same bytes.

use crate::{paths, ui};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Linux guest material produced by [`material`].
#[derive(Debug, Clone)]
pub struct LinuxMaterial {
    /// The directory holding everything (`$TARGET/linux`); `linux:NAME` in a config
    /// resolves here.
    pub dir: PathBuf,
    /// The kernel image (`$TARGET/linux/bzImage`).
    pub kernel: PathBuf,
    /// The initramfs (`$TARGET/linux/initramfs.cpio.gz`).
    pub initramfs: PathBuf,
}

/// The metapackage naming Debian's current amd64 kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// The package holding the static busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Fetches (once) the Debian kernel and busybox and builds the initramfs, all under
/// `$TARGET/linux`. Done once per xtask process: every image built afterwards (one per
/// scenario config) reuses the result.
pub fn material() -> Result<LinuxMaterial, String> {
    static MATERIAL: std::sync::OnceLock<Result<LinuxMaterial, String>> = std::sync::OnceLock::new();
    MATERIAL.get_or_init(build_material).clone()
}

/// [`material`]'s work.
fn build_material() -> Result<LinuxMaterial, String> {
    let dir = paths::target().join("linux");
    std::fs::create_dir_all(dir.join("debs")).map_err(|e| format!("creating {}: {e}", dir.join("debs").display()))?;
    let mut apt = Apt { updated: false };

    // Once extracted, a file is kept (even when apt would now pick a newer package):
    // delete `$TARGET/linux` to refresh.
    let kernel = dir.join("bzImage");
    if !is_cached(&kernel) {
        let kernel_package = apt.kernel_package()?;
        fetch_file(&mut apt, &dir, &kernel_package, &kernel, 0o644, find_vmlinuz)?;
    }

    let busybox = dir.join("busybox");
    if !is_cached(&busybox) {
        fetch_file(&mut apt, &dir, BUSYBOX_PACKAGE, &busybox, 0o755, |root| {
            let path = root.join("bin/busybox");
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "the {BUSYBOX_PACKAGE} package has no bin/busybox; fix: check the package \
                     (apt-cache show {BUSYBOX_PACKAGE})"
                ))
            }
        })?;
    }

    let init_path = init_script();
    let init = std::fs::read(&init_path).map_err(|e| format!("reading {}: {e}", init_path.display()))?;
    let busybox_bytes = std::fs::read(&busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    let archive = initramfs(&init, &busybox_bytes).map_err(|e| format!("building the initramfs: {e}"))?;
    let initramfs = dir.join("initramfs.cpio.gz");
    write_atomically(&initramfs, &archive)?;

    Ok(LinuxMaterial { dir, kernel, initramfs })
}

/// The `/init` script of the initramfs.
pub fn init_script() -> PathBuf {
    paths::workspace().join("guest-images/linux/init")
}

/// Runs the apt tools, refreshing the package lists at most once (and only as root).
struct Apt {
    /// Whether `apt-get update` already ran.
    updated: bool,
}

impl Apt {
    /// The real kernel package behind [`KERNEL_METAPACKAGE`].
    fn kernel_package(&mut self) -> Result<String, String> {
        self.retry_after_update(&format!("resolving {KERNEL_METAPACKAGE}"), || {
            let output = run(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]), "apt-cache")?;
            let text = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                return Err(format!(
                    "apt-cache depends {KERNEL_METAPACKAGE} failed ({}):\n{}",
                    output.status,
                    tail(&output)
                ));
            }
            kernel_package_from_depends(&text)
                .ok_or_else(|| format!("apt-cache depends {KERNEL_METAPACKAGE} names no linux-image package:\n{text}"))
        })
    }

    /// Downloads `package` (the candidate version) into `dir` and returns the `.deb`.
    fn download(&mut self, package: &str, dir: &Path) -> Result<PathBuf, String> {
        self.retry_after_update(&format!("downloading {package}"), || {
            let output = ui::with_spinner(&format!("downloading {package}"), || {
                run(Command::new("apt-get").args(["download", package]).current_dir(dir), "apt-get")
            })?;
            if !output.status.success() {
                return Err(format!("apt-get download {package} failed ({}):\n{}", output.status, tail(&output)));
            }
            find_deb(dir, package)?.ok_or_else(|| {
                format!("apt-get download {package} succeeded but left no {package}_*.deb in {}", dir.display())
            })
        })
    }

    /// Runs `step`; when it fails, runs `apt-get update` once (as root) and retries it.
    /// `what` names the step in the error.
    fn retry_after_update<T>(&mut self, what: &str, mut step: impl FnMut() -> Result<T, String>) -> Result<T, String> {
        let first = match step() {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if self.updated || first.contains("this needs Debian's") {
            return Err(first);
        }
        if !is_root() {
            return Err(format!(
                "{what}: {first}\nfix: the package lists are probably missing or stale: run `apt-get update` as root \
                 (sudo apt-get update), then retry"
            ));
        }
        self.updated = true;
        let output = ui::with_spinner("apt-get update", || run(Command::new("apt-get").arg("update"), "apt-get"))?;
        if !output.status.success() {
            return Err(format!(
                "{what}: {first}\napt-get update failed too ({}):\n{}\nfix: check the network and /etc/apt/sources.list",
                output.status,
                tail(&output)
            ));
        }
        step().map_err(|e| format!("{what} (after apt-get update): {e}"))
    }
}

/// The real package named by the `Depends:` line of `apt-cache depends linux-image-amd64`.
pub fn kernel_package_from_depends(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().trim_start_matches('|').strip_prefix("Depends:")?;
        let name = rest.trim();
        (name.starts_with("linux-image-") && !name.starts_with('<')).then(|| name.to_string())
    })
}

/// Whether `out` is a non-empty file extracted from a `.deb` still in `debs/` (as its
/// stamp says).
fn is_cached(out: &Path) -> bool {
    let debs = out.with_file_name("debs");
    non_empty(out)
        && std::fs::read_to_string(stamp_path(out)).is_ok_and(|source| {
            let source = source.trim();
            !source.is_empty() && !source.contains('/') && non_empty(&debs.join(source))
        })
}

/// Copies the file `pick` finds in `package` to `out` (with permissions `mode`),
/// downloading the package only when `debs/` has no `.deb` of it, and extracting it only
/// when `out` is missing or came from another `.deb`.
fn fetch_file(
    apt: &mut Apt,
    dir: &Path,
    package: &str,
    out: &Path,
    mode: u32,
    pick: impl Fn(&Path) -> Result<PathBuf, String>,
) -> Result<(), String> {
    let debs = dir.join("debs");
    let deb = match find_deb(&debs, package)? {
        Some(deb) => deb,
        None => {
            // Download into a private directory, then move the finished .deb into place.
            let partial = debs.join(format!(".partial-{package}"));
            remove_dir(&partial)?;
            std::fs::create_dir_all(&partial).map_err(|e| format!("creating {}: {e}", partial.display()))?;
            let fetched = apt.download(package, &partial)?;
            let deb = debs.join(fetched.file_name().expect("a .deb file name"));
            std::fs::rename(&fetched, &deb).map_err(|e| format!("moving {} into place: {e}", fetched.display()))?;
            remove_dir(&partial)?;
            deb
        }
    };
    let source = deb.file_name().expect("a .deb file name").to_string_lossy().into_owned();
    let stamp = stamp_path(out);
    if non_empty(out) && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == source) {
        return Ok(());
    }

    let scratch = dir.join(format!(".extract-{package}"));
    remove_dir(&scratch)?;
    let output = ui::with_spinner(&format!("extracting {source}"), || {
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&scratch), "dpkg-deb")
    })?;
    if !output.status.success() {
        return Err(format!(
            "dpkg-deb -x {} failed ({}):\n{}\nfix: delete the file to download it again",
            deb.display(),
            output.status,
            tail(&output)
        ));
    }
    let found = pick(&scratch)?;
    let bytes = std::fs::read(&found).map_err(|e| format!("reading {}: {e}", found.display()))?;
    write_atomically(out, &bytes)?;
    let mut permissions = std::fs::metadata(out).map_err(|e| format!("{}: {e}", out.display()))?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, mode);
    std::fs::set_permissions(out, permissions).map_err(|e| format!("chmod {}: {e}", out.display()))?;
    write_atomically(&stamp, format!("{source}\n").as_bytes())?;
    remove_dir(&scratch)
}

/// `boot/vmlinuz-*` of an extracted kernel package.
fn find_vmlinuz(root: &Path) -> Result<PathBuf, String> {
    let boot = root.join("boot");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or_else(|| {
        format!(
            "the kernel package has no boot/vmlinuz-* (looked in {}); fix: check that {KERNEL_METAPACKAGE} still \
             depends on a linux-image package (apt-cache depends {KERNEL_METAPACKAGE})",
            boot.display()
        )
    })
}

/// The newest-named non-empty `<package>_*.deb` in `dir`, if any.
fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>, String> {
    let prefix = format!("{package}_");
    let entries = std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let mut debs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".deb")
            }) && non_empty(p)
        })
        .collect();
    debs.sort();
    Ok(debs.pop())
}

/// The stamp naming the `.deb` that `out` came from (`.NAME.source` next to it).
fn stamp_path(out: &Path) -> PathBuf {
    let name = out.file_name().expect("a file name").to_string_lossy();
    out.with_file_name(format!(".{name}.source"))
}

/// Whether `path` is a non-empty file.
fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// Removes a directory tree if it exists.
fn remove_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see
/// a half-written file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))
}

/// Runs `command` capturing its output; a missing `tool` becomes an error with the fix.
fn run(command: &mut Command, tool: &str) -> Result<Output, String> {
    command.env("LC_ALL", "C").output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!(
                "`{tool}` not found: this needs Debian's {tool} (the Linux guest uses Debian's kernel and busybox \
                 packages); fix: run this on Debian or Ubuntu (apt-get install apt dpkg)"
            )
        } else {
            format!("running {tool}: {e}")
        }
    })
}

/// The last lines of a command's standard error (or output when stderr is empty).
fn tail(output: &Output) -> String {
    let text = if output.stderr.is_empty() { &output.stdout } else { &output.stderr };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether this process runs as root (`id -u` prints 0).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

/// File type bits of a cpio mode.
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// One entry of the initramfs.
enum Entry<'a> {
    /// A directory with its permission bits.
    Dir(&'a str, u32),
    /// A character device: permission bits, major, minor.
    Char(&'a str, u32, u32, u32),
    /// A regular file: permission bits, contents.
    File(&'a str, u32, &'a [u8]),
    /// A symbolic link to a target.
    Symlink(&'a str, &'a str),
}

/// The uncompressed cpio "newc" archive of the initramfs, with `init` as `/init` and
/// `busybox` as `/bin/busybox`. Names carry no leading `/` (as `gen_init_cpio` writes
/// them); all entries have uid/gid 0 and mtime 0.
pub fn initramfs_cpio(init: &[u8], busybox: &[u8]) -> io::Result<Vec<u8>> {
    let mut entries = vec![];
    for dir in ["bin", "sbin", "dev", "proc", "sys", "etc", "usr", "usr/bin", "usr/sbin"] {
        entries.push(Entry::Dir(dir, 0o755));
    }
    entries.push(Entry::Dir("tmp", 0o1777));
    entries.push(Entry::Dir("root", 0o700));
    entries.push(Entry::Char("dev/console", 0o600, 5, 1));
    entries.push(Entry::Char("dev/null", 0o666, 1, 3));
    entries.push(Entry::Char("dev/ttyS0", 0o600, 4, 64));
    entries.push(Entry::File("bin/busybox", 0o755, busybox));
    entries.push(Entry::Symlink("bin/sh", "busybox"));
    entries.push(Entry::File("init", 0o755, init));

    let mut out = Vec::with_capacity(busybox.len() + init.len() + 4096);
    for (index, entry) in entries.iter().enumerate() {
        let ino = u32::try_from(index + 1).expect("few entries");
        let (name, mode, nlink, rdev, data): (&str, u32, u32, (u32, u32), &[u8]) = match *entry {
            Entry::Dir(name, perm) => (name, S_IFDIR | perm, 2, (0, 0), &[]),
            Entry::Char(name, perm, major, minor) => (name, S_IFCHR | perm, 1, (major, minor), &[]),
            Entry::File(name, perm, data) => (name, S_IFREG | perm, 1, (0, 0), data),
            Entry::Symlink(name, target) => (name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes()),
        };
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is too large for cpio")))?;
        let mut writer = cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .mtime(0)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut out, size);
        writer.write_all(data)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// The gzip-compressed initramfs (see [`initramfs_cpio`]); the gzip header holds no
/// name and mtime 0, so the bytes depend on the inputs only.
pub fn initramfs(init: &[u8], busybox: &[u8]) -> io::Result<Vec<u8>> {
    let cpio = initramfs_cpio(init, busybox)?;
    let mut gz = GzEncoder::new(Vec::with_capacity(cpio.len() / 2), Compression::default());
    gz.write_all(&cpio)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// One parsed newc entry.
    #[derive(Debug)]
    struct Parsed {
        name: String,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// A tiny newc reader that also checks the magic, the NUL and 4-byte alignment of
    /// every header and every data block, and that nothing follows the trailer but
    /// padding.
    fn parse(archive: &[u8]) -> Vec<Parsed> {
        let mut entries = vec![];
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "header at {at} is not 4-byte aligned");
            let header = &archive[at..at + 110];
            assert_eq!(&header[..6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (mode, uid, gid, mtime, size) = (field(1), field(2), field(3), field(5), field(6) as usize);
            let (rdev, namesize, check) = ((field(9), field(10)), field(11) as usize, field(12));
            assert_eq!(check, 0);
            let name_bytes = &archive[at + 110..at + 110 + namesize];
            assert_eq!(name_bytes.last(), Some(&0), "name is NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..namesize - 1]).unwrap().to_string();
            let data_at = (at + 110 + namesize).next_multiple_of(4);
            assert!(archive[at + 110 + namesize..data_at].iter().all(|&b| b == 0), "name padding is zero");
            let data = archive[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            assert!(archive[data_at + size..next].iter().all(|&b| b == 0), "data padding is zero");
            at = next;
            let trailer = name == "TRAILER!!!";
            entries.push(Parsed { name, mode, uid, gid, mtime, rdev, data });
            if trailer {
                assert_eq!(at, archive.len(), "nothing after the trailer");
                return entries;
            }
        }
    }

    #[test]
    fn initramfs_entries() {
        let init = b"#!/bin/busybox sh\necho hi\n".as_slice();
        let busybox = b"\x7fELF fake busybox with an odd length".as_slice();
        let entries = parse(&initramfs_cpio(init, busybox).unwrap());
        let get = |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} missing"));
        for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "root", "usr", "usr/bin", "usr/sbin"] {
            assert_eq!(get(dir).mode & 0o170000, S_IFDIR, "{dir}");
        }
        // A directory comes before anything inside it.
        let position = |name: &str| entries.iter().position(|e| e.name == name).unwrap();
        assert!(position("usr") < position("usr/bin"));
        assert!(position("dev") < position("dev/console"));
        assert!(position("bin") < position("bin/busybox"));
        assert_eq!(get("tmp").mode, S_IFDIR | 0o1777);
        for (name, mode, rdev) in
            [("dev/console", 0o600, (5, 1)), ("dev/null", 0o666, (1, 3)), ("dev/ttyS0", 0o600, (4, 64))]
        {
            let e = get(name);
            assert_eq!((e.mode, e.rdev, e.data.len()), (S_IFCHR | mode, rdev, 0), "{name}");
        }
        assert_eq!(get("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(get("bin/busybox").data, busybox);
        assert_eq!(get("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("init").mode, S_IFREG | 0o755);
        assert_eq!(get("init").data, init);
        for e in &entries {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
            assert!(!e.name.starts_with('/'), "{}", e.name);
        }
        assert_eq!(entries.last().unwrap().name, "TRAILER!!!");
        assert_eq!(entries.len(), 11 + 3 + 3 + 1);
    }

    #[test]
    fn alignment_for_every_name_and_data_length() {
        // Vary the data lengths through all residues mod 4.
        for init_len in 0..8 {
            for busybox_len in 1..6 {
                let init = vec![b'i'; init_len];
                let busybox = vec![b'b'; busybox_len];
                let entries = parse(&initramfs_cpio(&init, &busybox).unwrap());
                assert_eq!(entries.iter().find(|e| e.name == "init").unwrap().data, init);
            }
        }
    }

    #[test]
    fn initramfs_is_deterministic_gzip() {
        let (init, busybox) = (b"#!/bin/busybox sh\n".as_slice(), vec![0x5a; 100_000]);
        let a = initramfs(init, &busybox).unwrap();
        let b = initramfs(init, &busybox).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..2], &[0x1f, 0x8b], "gzip magic");
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip mtime 0");
        let mut cpio = vec![];
        flate2::read::GzDecoder::new(a.as_slice()).read_to_end(&mut cpio).unwrap();
        assert_eq!(cpio, initramfs_cpio(init, &busybox).unwrap());
        assert_ne!(a, initramfs(b"#!/bin/busybox sh\n\n", &busybox).unwrap());
    }

    #[test]
    fn kernel_package_from_apt_cache_depends() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(kernel_package_from_depends(text).as_deref(), Some("linux-image-6.1.0-56-amd64"));
        let text = "linux-image-amd64\n  Recommends: foo\n |Depends: linux-image-6.12.9-amd64\n  Depends: x\n";
        assert_eq!(kernel_package_from_depends(text).as_deref(), Some("linux-image-6.12.9-amd64"));
        assert_eq!(kernel_package_from_depends("linux-image-amd64\n"), None);
        assert_eq!(kernel_package_from_depends("  Depends: <linux-image-virtual>\n"), None);
    }

    #[test]
    fn init_script_is_a_busybox_script() {
        let text = std::fs::read_to_string(init_script()).unwrap();
        assert!(text.starts_with("#!/bin/busybox sh\n"));
        assert!(text.contains("linux-init: reached /init"));
    }
}
