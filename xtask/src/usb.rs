//! `cargo xtask usb`: write the disk image to a removable drive, carefully.

use crate::{paths, ui};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The kernel name of a block device given as `sdb` or `/dev/sdb`.
pub fn device_name(device: &str) -> Result<String, String> {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    if name.is_empty() || name.contains('/') {
        return Err(format!("{device:?} is not a block device name; fix: give a whole disk such as sdb or /dev/sdb"));
    }
    Ok(name.to_string())
}

/// The device and its partitions (`sdb`, `sdb1`, ...) as listed in `/sys/block/<name>`.
fn device_and_partitions(name: &str) -> Vec<String> {
    let mut names = vec![name.to_string()];
    if let Ok(entries) = std::fs::read_dir(Path::new("/sys/block").join(name)) {
        for entry in entries.flatten() {
            let child = entry.file_name().to_string_lossy().into_owned();
            if child.starts_with(name) && entry.path().join("partition").exists() {
                names.push(child);
            }
        }
    }
    names
}

/// Mount points in `mounts` (the text of `/proc/mounts`) of any of `names`.
pub fn mounted(mounts: &str, names: &[String]) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let target = fields.next()?;
            // Resolve /dev/disk/by-* links to the kernel name.
            let resolved = std::fs::canonicalize(source).unwrap_or_else(|_| PathBuf::from(source));
            let base = resolved.strip_prefix("/dev").ok()?.to_string_lossy().into_owned();
            let base = base.trim_start_matches('/');
            names.iter().any(|n| n == base).then(|| format!("/dev/{base} on {target}"))
        })
        .collect()
}

/// Copies `image` (of `size` bytes) over the start of `dest` with a progress bar, then
/// flushes `dest` to the device (fsync).
pub fn copy_synced(image: &Path, dest: &Path, size: u64) -> Result<(), String> {
    let mut src = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut dst =
        std::fs::OpenOptions::new().write(true).open(dest).map_err(|e| format!("opening {}: {e}", dest.display()))?;
    let pb = ProgressBar::new(size);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}").expect("valid template"),
    );
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = src.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).map_err(|e| format!("writing {}: {e}", dest.display()))?;
        pb.inc(n as u64);
    }
    pb.set_message("syncing");
    dst.sync_all().map_err(|e| format!("syncing {}: {e}", dest.display()))?;
    pb.finish_and_clear();
    Ok(())
}

/// `cargo xtask usb`.
pub fn cmd_usb(device: &str, yes: bool, image: Option<PathBuf>) -> Result<ExitCode, String> {
    let name = device_name(device)?;
    let sys = Path::new("/sys/block").join(&name);
    if !sys.exists() {
        return Err(format!(
            "/dev/{name} is not a whole disk (no {}); fix: pick a disk from `lsblk -d`",
            sys.display()
        ));
    }
    let removable = std::fs::read_to_string(sys.join("removable")).unwrap_or_default();
    if removable.trim() != "1" {
        return Err(format!(
            "refusing: /dev/{name} is not a removable drive ({}/removable is {:?})",
            sys.display(),
            removable.trim()
        ));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| e.to_string())?;
    let busy = mounted(&mounts, &device_and_partitions(&name));
    if !busy.is_empty() {
        return Err(format!("refusing: mounted: {}; fix: unmount them first (umount ...)", busy.join(", ")));
    }
    let image = image.unwrap_or_else(paths::default_image);
    if !image.is_file() {
        return Err(format!("image {} does not exist; fix: run `cargo xtask build` first", image.display()));
    }
    let size = std::fs::metadata(&image).map_err(|e| e.to_string())?.len();
    let model = std::fs::read_to_string(sys.join("device/model")).unwrap_or_default();
    if !yes {
        print!(
            "This overwrites ALL data on /dev/{name} ({}) with {} ({}).\nType `yes` to continue: ",
            model.trim(),
            image.display(),
            ui::human_size(size)
        );
        std::io::stdout().flush().ok();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).map_err(|e| e.to_string())?;
        if answer.trim() != "yes" {
            println!("not written.");
            return Ok(ExitCode::FAILURE);
        }
    }
    let dev_path = Path::new("/dev").join(&name);
    copy_synced(&image, &dev_path, size)?;
    println!("wrote {} to {} and synced", ui::human_size(size), dev_path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_copied_over_the_start() {
        let dir = std::env::temp_dir().join(format!("xtask-usb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (img, dev) = (dir.join("img"), dir.join("dev"));
        std::fs::write(&img, b"IMAGE").unwrap();
        std::fs::write(&dev, b"0123456789").unwrap();
        copy_synced(&img, &dev, 5).unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"IMAGE56789");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn device_names() {
        assert_eq!(device_name("/dev/sdb").unwrap(), "sdb");
        assert_eq!(device_name("sdc").unwrap(), "sdc");
        assert!(device_name("/dev/disk/by-id/x").is_err());
        assert!(device_name("").is_err());
    }

    #[test]
    fn mounted_partitions_are_found() {
        let mounts = "/dev/sdb1 /media/usb vfat rw 0 0\nproc /proc proc rw 0 0\n\
                      /dev/sda2 / ext4 rw 0 0\n";
        let names = vec!["sdb".to_string(), "sdb1".to_string()];
        assert_eq!(mounted(mounts, &names), ["/dev/sdb1 on /media/usb"]);
        assert!(mounted(mounts, &["sdc".to_string()]).is_empty());
    }
}
