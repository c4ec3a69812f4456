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
    "instruction_fetch",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `[[bin]]` of the fuzz crate is a target here, and the other way round.
    #[test]
    fn targets_are_the_fuzz_crate_binaries() {
        let manifest = std::fs::read_to_string(paths::workspace().join("hypervisor/core/fuzz/Cargo.toml")).unwrap();
        // The `name` line that follows each `[[bin]]` header.
        let mut bins: Vec<&str> = manifest
            .split("[[bin]]")
            .skip(1)
            .filter_map(|section| {
                let line = section.lines().find(|l| l.trim_start().starts_with("name"))?;
                line.split('"').nth(1)
            })
            .collect();
        let mut targets = TARGETS.to_vec();
        bins.sort_unstable();
        targets.sort_unstable();
        assert_eq!(bins, targets);
    }

    /// The help text of `cargo xtask fuzz` names every target.
    #[test]
    fn help_names_every_target() {
        let help = std::fs::read_to_string(paths::workspace().join("xtask/src/main.rs")).unwrap();
        let doc = help.split("Fuzz {").nth(1).unwrap().split("seconds").next().unwrap();
        for t in TARGETS {
            assert!(doc.contains(t), "the help of `cargo xtask fuzz` does not name `{t}`");
        }
    }
}
