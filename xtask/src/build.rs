//! Building the kernel and disk images.

use crate::{paths, ui};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Builds the kernel ELF (or takes `HV_KERNEL_ELF`) and returns its path.
pub fn kernel() -> Result<PathBuf, String> {
    if let Some(elf) = std::env::var_os("HV_KERNEL_ELF") {
        let elf = PathBuf::from(elf);
        if !elf.is_file() {
            return Err(format!("HV_KERNEL_ELF={} does not exist; fix: unset it to build the kernel", elf.display()));
        }
        return Ok(elf);
    }
    let target = paths::target();
    let output = ui::with_spinner("building kernel (hypervisor, release)", || {
        Command::new(paths::cargo())
            .current_dir(paths::workspace())
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--package", "hypervisor", "--target", "x86_64-unknown-none", "--release"])
            .output()
    })
    .map_err(|e| format!("running cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        return Err(format!("kernel build failed ({}):\n{tail}", output.status));
    }
    let elf = target.join("x86_64-unknown-none/release/hypervisor");
    if !elf.is_file() {
        return Err(format!("kernel build succeeded but {} is missing", elf.display()));
    }
    Ok(elf)
}

/// Checks a user-given config path, naming the fix when it is missing.
pub fn check_config(config: &Path) -> Result<(), String> {
    if config.is_file() {
        Ok(())
    } else {
        Err(format!(
            "config file {} does not exist; fix: pass an existing file with --config \
             (the default is {})",
            config.display(),
            paths::default_config().display()
        ))
    }
}

/// Builds the kernel, then the payload and disk image `out` from `config`.
pub fn image(config: &Path, out: &Path) -> Result<hv_boot::BuiltImage, String> {
    check_config(config)?;
    // Validate first: a bad config should not wait for a kernel build.
    hv_boot::config::load(config).map_err(|e| e.to_string())?;
    let kernel = kernel()?;
    image_from_kernel(config, &kernel, out)
}

/// Builds the payload and disk image `out` from `config` and an already built kernel.
pub fn image_from_kernel(config: &Path, kernel: &Path, out: &Path) -> Result<hv_boot::BuiltImage, String> {
    check_config(config)?;
    ui::with_spinner(&format!("creating disk image {}", out.display()), || hv_boot::build_image(config, kernel, out))
        .map_err(|e| e.to_string())
}

fn report(built: &hv_boot::BuiltImage) {
    println!(
        "{} ({}, {} bytes; config {}, {} partition(s))",
        built.image.display(),
        ui::human_size(built.size),
        built.size,
        built.config.source.display(),
        built.config.partitions.len()
    );
}

/// `cargo xtask build`.
pub fn cmd_build(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = config.unwrap_or_else(paths::default_config);
    let built = image(&config, &paths::default_image())?;
    report(&built);
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask image`.
pub fn cmd_image(config: PathBuf, out: PathBuf) -> Result<ExitCode, String> {
    let built = image(&config, &out)?;
    report(&built);
    Ok(ExitCode::SUCCESS)
}
