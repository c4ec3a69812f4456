//! The UEFI GPT disk image: bootloader + kernel + boot payload (as ramdisk).

use std::fmt;
use std::path::{Path, PathBuf};

/// Building the disk image failed.
#[derive(Debug)]
pub struct ImageError {
    /// The image that was being written.
    pub out: PathBuf,
    /// The bootloader crate's explanation (with its causes).
    pub message: String,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "creating disk image {}: {}", self.out.display(), self.message)
    }
}

impl std::error::Error for ImageError {}

/// The bootloader settings used for every image: log to the serial port only (the
/// framebuffer is slow under emulation and unused). Note: the UEFI stage only starts its
/// logger when the firmware offers a graphics output protocol; under Bochs + OVMF it
/// prints nothing, under QEMU its log precedes the kernel's.
pub fn boot_config() -> bootloader::BootConfig {
    let mut config = bootloader::BootConfig::default();
    config.frame_buffer_logging = false;
    config.serial_logging = true;
    config
}

/// Writes a UEFI-bootable GPT disk image to `out` containing the kernel ELF at `kernel`
/// and the file at `ramdisk` as the kernel's ramdisk.
pub fn create_uefi_image(kernel: &Path, ramdisk: &Path, out: &Path) -> Result<(), ImageError> {
    for (what, path) in [("kernel", kernel), ("ramdisk", ramdisk)] {
        if !path.is_file() {
            return Err(ImageError {
                out: out.to_path_buf(),
                message: format!("{what} {} does not exist (build it first, e.g. `cargo xtask build`)", path.display()),
            });
        }
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ImageError {
            out: out.to_path_buf(),
            message: format!("creating {}: {e}", parent.display()),
        })?;
    }
    bootloader::UefiBoot::new(kernel)
        .set_ramdisk(ramdisk)
        .set_boot_config(&boot_config())
        .create_disk_image(out)
        .map_err(|e| ImageError { out: out.to_path_buf(), message: format!("{e:#}") })
}
