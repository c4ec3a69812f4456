//! Host-side boot tooling for the hypervisor.
//!
//! - [`config`]: the partition config file (schema, validation, typed errors);
//! - [`payload`]: the ustar boot payload (ramdisk) built from a validated config;
//! - [`image`]: the UEFI GPT disk image (bootloader + kernel + payload).
//!
//! [`build_image`] chains the three.

pub mod config;
pub mod flat;
pub mod image;
pub mod payload;

use std::fmt;
use std::path::{Path, PathBuf};

/// What [`build_image`] produced.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The validated config.
    pub config: config::Config,
    /// The payload archive that was embedded as ramdisk.
    pub payload: PathBuf,
    /// The disk image.
    pub image: PathBuf,
    /// Size of the disk image in bytes.
    pub size: u64,
}

/// Any failure of [`build_image`].
#[derive(Debug)]
pub enum BuildError {
    /// The config was rejected.
    Config(config::ConfigError),
    /// Writing the payload failed.
    Payload {
        /// The payload file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Creating the disk image failed.
    Image(image::ImageError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Config(e) => e.fmt(f),
            BuildError::Payload { path, error } => {
                write!(f, "writing boot payload {}: {error}", path.display())
            }
            BuildError::Image(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BuildError {}

/// Validates `config_path`, writes the payload next to `out` (as `<out>.payload.tar`) and
/// builds the UEFI disk image `out` from the kernel ELF `kernel`.
///
/// `built` holds the directories of the material `cargo xtask` builds (test guests,
/// Linux kernel and initramfs), for configs that name `"guest:NAME"` or `"linux:NAME"`.
pub fn build_image(
    config_path: &Path,
    built: config::BuiltMaterial<'_>,
    kernel: &Path,
    out: &Path,
) -> Result<BuiltImage, BuildError> {
    let config = config::load_with_material(config_path, built).map_err(BuildError::Config)?;
    let mut payload_name = out.file_name().unwrap_or_default().to_os_string();
    payload_name.push(".payload.tar");
    let payload_path = out.with_file_name(payload_name);
    if let Some(parent) = payload_path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| BuildError::Payload { path: payload_path.clone(), error })?;
    }
    payload::write(&config, &payload_path)
        .map_err(|error| BuildError::Payload { path: payload_path.clone(), error })?;
    image::create_uefi_image(kernel, &payload_path, out).map_err(BuildError::Image)?;
    let size = std::fs::metadata(out)
        .map(|m| m.len())
        .map_err(|error| BuildError::Image(image::ImageError { out: out.to_path_buf(), message: error.to_string() }))?;
    Ok(BuiltImage { config, payload: payload_path, image: out.to_path_buf(), size })
}
