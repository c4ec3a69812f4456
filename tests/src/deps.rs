//! Host programs and firmware files the emulator scenarios need, and installing them.

use crate::scenario::Emulator;
use std::path::Path;
use std::process::Command;

/// One thing that must be present on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// What it is, for messages.
    pub what: &'static str,
    /// A program (looked up in `PATH`) or, when it starts with `/`, a file; any of the
    /// listed alternatives will do.
    pub any_of: &'static [&'static str],
    /// The Debian package that provides it.
    pub package: &'static str,
}

const BOCHS: &[Requirement] = &[
    Requirement { what: "Bochs", any_of: &["bochs"], package: "bochs" },
    Requirement { what: "Bochs BIOS", any_of: &["/usr/share/bochs/BIOS-bochs-latest"], package: "bochsbios" },
    Requirement { what: "OVMF for Bochs", any_of: &[crate::emulator::OVMF_FD], package: "ovmf" },
    Requirement { what: "VGA BIOS", any_of: &[crate::emulator::VGABIOS], package: "vgabios" },
    Requirement {
        what: "Bochs term display plugin",
        any_of: &[
            "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so",
            "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so.0",
            "/usr/lib/bochs/plugins/libbx_term_gui.so",
        ],
        package: "bochs-term",
    },
    Requirement { what: "script (pseudo-terminal for Bochs)", any_of: &["script"], package: "bsdutils" },
];

const QEMU: &[Requirement] = &[
    Requirement { what: "QEMU", any_of: &["qemu-system-x86_64"], package: "qemu-system-x86" },
    Requirement { what: "OVMF code", any_of: &[crate::emulator::OVMF_CODE], package: "ovmf" },
    Requirement { what: "OVMF variables", any_of: &[crate::emulator::OVMF_VARS], package: "ovmf" },
];

/// The requirements of the given emulators.
pub fn requirements(emulators: &[Emulator]) -> Vec<Requirement> {
    let mut out: Vec<Requirement> = Vec::new();
    for e in emulators {
        let list: &[Requirement] = match e {
            Emulator::Bochs => BOCHS,
            Emulator::Qemu | Emulator::Kvm => QEMU,
            Emulator::None => &[],
        };
        for r in list {
            if !out.contains(r) {
                out.push(*r);
            }
        }
    }
    out
}

/// Whether a program is found in `PATH`.
fn program_exists(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

impl Requirement {
    /// Whether it is present.
    pub fn is_present(&self) -> bool {
        self.any_of.iter().any(
            |item| {
                if item.starts_with('/') {
                    Path::new(item).is_file()
                } else {
                    program_exists(item)
                }
            },
        )
    }
}

/// The missing requirements of the given emulators.
pub fn missing(emulators: &[Emulator]) -> Vec<Requirement> {
    requirements(emulators).into_iter().filter(|r| !r.is_present()).collect()
}

/// The distinct packages providing `missing`.
pub fn packages(missing: &[Requirement]) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    for r in missing {
        if !pkgs.contains(&r.package) {
            pkgs.push(r.package);
        }
    }
    pkgs
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The message for a non-root user: what is missing and the exact command to run.
pub fn not_root_message(missing: &[Requirement]) -> String {
    let what: Vec<String> = missing.iter().map(|r| format!("{} ({})", r.what, r.package)).collect();
    format!(
        "missing host dependencies: {}\nfix: run (as root)\n  apt-get update && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
        what.join(", "),
        packages(missing).join(" ")
    )
}

/// Makes sure everything the given emulators need is installed.
///
/// When something is missing: as root, says what is installed and runs `apt-get update`
/// and `apt-get install -y` for the packages (with `DEBIAN_FRONTEND=noninteractive`);
/// otherwise fails with the exact command to run. `say` receives the progress messages.
pub fn ensure(emulators: &[Emulator], mut say: impl FnMut(&str)) -> Result<(), String> {
    let missing = missing(emulators);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(not_root_message(&missing));
    }
    let pkgs = packages(&missing);
    let what: Vec<String> = missing.iter().map(|r| format!("{} ({})", r.what, r.package)).collect();
    say(&format!(
        "installing missing host dependencies: {}: apt-get update && apt-get install -y {}",
        what.join(", "),
        pkgs.join(" ")
    ));
    let run = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("running apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`apt-get {}` failed ({status})", args.join(" ")))
        }
    };
    run(&["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(pkgs.iter().copied());
    run(&install)?;
    let still = self::missing(emulators);
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after installing: {}", still.iter().map(|r| r.what).collect::<Vec<_>>().join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_deduplicated() {
        let all = requirements(&[Emulator::Bochs, Emulator::Qemu, Emulator::Bochs]);
        let pkgs = packages(&all);
        assert_eq!(pkgs, ["bochs", "bochsbios", "ovmf", "vgabios", "bochs-term", "bsdutils", "qemu-system-x86"]);
        assert!(requirements(&[Emulator::None]).is_empty());
    }

    #[test]
    fn non_root_message_has_the_exact_command() {
        let msg = not_root_message(&requirements(&[Emulator::Qemu]));
        assert!(msg.contains("QEMU (qemu-system-x86)"), "{msg}");
        assert!(
            msg.ends_with(
                "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                 qemu-system-x86 ovmf"
            ),
            "{msg}"
        );
    }

    #[test]
    fn everything_is_present_on_this_machine_or_reported() {
        // Either present, or listed with its package: never both.
        for r in requirements(&[Emulator::Bochs, Emulator::Qemu]) {
            let listed = missing(&[Emulator::Bochs, Emulator::Qemu]).contains(&r);
            assert_eq!(listed, !r.is_present(), "{}", r.what);
        }
    }

    #[test]
    fn programs_are_found_in_path() {
        assert!(program_exists("sh"));
        assert!(!program_exists("surely-not-a-program-xyz"));
    }
}
