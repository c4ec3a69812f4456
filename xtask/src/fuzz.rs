//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the libFuzzer targets beside the
//! parsers of untrusted bytes (`hypervisor/core/fuzz`), installing cargo-fuzz first
//! when it is missing.

use crate::paths;
use std::process::{Command, ExitCode};

/// The fuzz targets, one per parser of untrusted bytes.
pub const TARGETS: &[&str] = &[
    "boot_conf",
    "acpi_s5",
    "mmio_decode",
    "devices",
    "io_reply",
    "loader_bzimage",
    "loader_multiboot",
    "loader_elf",
    "board",
];

fn have_cargo_fuzz() -> bool {
    Command::new(paths::cargo()).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success())
}

/// Runs `target` (all targets when `None`) for `seconds` each.
pub fn cmd_fuzz(target: Option<String>, seconds: u64) -> Result<ExitCode, String> {
    let targets: Vec<&str> = match &target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => return Err(format!("unknown fuzz target `{t}`; fix: use one of {}", TARGETS.join(", "))),
        None => TARGETS.to_vec(),
    };
    if !have_cargo_fuzz() {
        println!("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        let status = Command::new(paths::cargo())
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .map_err(|e| format!("cannot run cargo install: {e}"))?;
        if !status.success() {
            return Err("cargo install cargo-fuzz failed; fix: install it by hand and retry".to_string());
        }
    }
    let dir = paths::workspace().join("hypervisor/core");
    for t in targets {
        println!("fuzzing {t} for {seconds} s");
        let status = Command::new(paths::cargo())
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", paths::target().join("fuzz"))
            .args(["fuzz", "run", t, "--", &format!("-max_total_time={seconds}")])
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        if !status.success() {
            println!("fuzz target {t} found a failure (see the artifact path above)");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
