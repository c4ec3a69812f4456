//! Building the kernel and disk images.

use crate::{paths, ui};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The last 40 lines of a failed command's standard error, for the error message.
fn stderr_tail(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

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
        return Err(format!("kernel build failed ({}):\n{}", output.status, stderr_tail(&output)));
    }
    let elf = target.join("x86_64-unknown-none/release/hypervisor");
    if !elf.is_file() {
        return Err(format!("kernel build succeeded but {} is missing", elf.display()));
    }
    Ok(elf)
}

/// The partition images of `guest-images/`: the `guest-*` test guests and the service
/// partition (`service`).
pub fn guest_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(paths::workspace().join("guest-images"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().join("src/main.rs").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("guest-") || n == "service")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Builds every test guest (no_std, static relocation model, linked at 2 MiB by
/// `guest-images/link.ld`) and returns the directory holding their ELF files.
pub fn guests() -> Result<PathBuf, String> {
    let root = paths::workspace().join("guest-images");
    let target = paths::target().join("guests");
    let script = root.join("link.ld");
    for name in guest_names() {
        let output = ui::with_spinner(&format!("building test guest {name}"), || {
            Command::new(paths::cargo())
                .current_dir(&root)
                .env("CARGO_TARGET_DIR", &target)
                .args(["rustc", "--manifest-path"])
                .arg(root.join(&name).join("Cargo.toml"))
                .args(["--release", "--target", "x86_64-unknown-none", "--", "-C", "relocation-model=static"])
                .arg(format!("-Clink-arg=-T{}", script.display()))
                .output()
        })
        .map_err(|e| format!("running cargo: {e}"))?;
        if !output.status.success() {
            return Err(format!("building test guest {name} failed ({}):\n{}", output.status, stderr_tail(&output)));
        }
    }
    Ok(target.join("x86_64-unknown-none/release"))
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

/// The Linux guest material directory when `config` names `"linux:..."` files
/// (fetched and built first), else `None`.
fn linux_material_for(config: &Path) -> Result<Option<PathBuf>, String> {
    if hv_boot::config::uses_linux_material(config) {
        crate::linux::material().map(|m| Some(m.dir))
    } else {
        Ok(None)
    }
}

/// Builds the kernel, then the payload and disk image `out` from `config`.
pub fn image(config: &Path, out: &Path) -> Result<hv_boot::BuiltImage, String> {
    check_config(config)?;
    let guests = guests()?;
    let linux = linux_material_for(config)?;
    // Validate first: a bad config should not wait for a kernel build.
    let built = hv_boot::config::BuiltMaterial { guests: Some(&guests), linux: linux.as_deref() };
    hv_boot::config::load_with_material(config, built).map_err(|e| e.to_string())?;
    let kernel = kernel()?;
    image_from_kernel(config, &guests, &kernel, out)
}

/// Builds the payload and disk image `out` from `config` and an already built kernel
/// (fetching and building the Linux guest material first when the config names it).
pub fn image_from_kernel(
    config: &Path,
    guests: &Path,
    kernel: &Path,
    out: &Path,
) -> Result<hv_boot::BuiltImage, String> {
    check_config(config)?;
    let linux = linux_material_for(config)?;
    let built = hv_boot::config::BuiltMaterial { guests: Some(guests), linux: linux.as_deref() };
    ui::with_spinner(&format!("creating disk image {}", out.display()), || {
        hv_boot::build_image(config, built, kernel, out)
    })
    .map_err(|e| e.to_string())
}

/// Memory of the emulated machine that runs `built` (see `hv_tests::emulator::memory_for`).
pub fn machine_memory(built: &hv_boot::BuiltImage) -> u32 {
    let partitions: u64 = built.config.partitions.iter().map(|p| u64::from(p.memory_mib)).sum();
    let payload = std::fs::metadata(&built.payload).map(|m| m.len()).unwrap_or(0);
    hv_tests::emulator::memory_for(partitions, payload)
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
