//! `cargo xtask run`: boot the image and stream the serial console.

use crate::{build, paths, EmulatorChoice};
use hv_tests::emulator::{self, Machine, WaitOptions};
use hv_tests::judge::Ending;
use hv_tests::scenario::{Emulator, DEFAULT_MEMORY_MIB, ICELAKE};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `cargo xtask run`.
#[derive(Debug)]
pub struct RunArgs {
    /// Requested machine.
    pub emulator: EmulatorChoice,
    /// CPU count.
    pub cpus: u32,
    /// Bochs CPU model.
    pub cpu_model: Option<String>,
    /// Seconds before the emulator is stopped (0 = never).
    pub timeout: u64,
    /// Partition config.
    pub config: Option<PathBuf>,
}

/// Why KVM with nested VMX is or is not usable here (`Ok` when it is).
pub fn kvm_with_vmx() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not usable ({e})"))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_vmx = cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx"));
    if !has_vmx {
        return Err("the host CPU has no `vmx` flag in /proc/cpuinfo".to_string());
    }
    let nested = std::fs::read_to_string("/sys/module/kvm_intel/parameters/nested")
        .map_err(|_| "kvm_intel is not loaded (no /sys/module/kvm_intel/parameters/nested)")?;
    match nested.trim() {
        "Y" | "y" | "1" => Ok(()),
        other => Err(format!("kvm_intel nested={other} (needs Y or 1)")),
    }
}

/// Resolves `auto` and checks option combinations.
fn choose_machine(args: &RunArgs) -> Result<Machine, String> {
    let choice = match args.emulator {
        EmulatorChoice::Auto => match kvm_with_vmx() {
            Ok(()) => {
                println!("emulator: kvm (nested VMX available)");
                EmulatorChoice::Kvm
            }
            Err(why) => {
                println!("emulator: bochs ({why})");
                EmulatorChoice::Bochs
            }
        },
        EmulatorChoice::Kvm => {
            kvm_with_vmx()
                .map_err(|why| format!("--emulator kvm needs KVM with nested VMX: {why}; fix: use --emulator bochs"))?;
            EmulatorChoice::Kvm
        }
        other => other,
    };
    if let (Some(model), EmulatorChoice::Kvm | EmulatorChoice::Qemu) = (&args.cpu_model, choice) {
        return Err(format!(
            "--cpu-model {model} only applies to Bochs (KVM uses `-cpu host`, QEMU TCG its \
             default CPU); fix: drop --cpu-model or use --emulator bochs"
        ));
    }
    Ok(match choice {
        EmulatorChoice::Kvm | EmulatorChoice::Qemu => {
            Machine::Qemu { cpus: args.cpus, kvm: choice == EmulatorChoice::Kvm, memory_mib: DEFAULT_MEMORY_MIB }
        }
        _ => Machine::Bochs {
            model: args.cpu_model.clone().unwrap_or_else(|| ICELAKE.to_string()),
            cpus: args.cpus,
            ips: emulator::bochs_ips(),
            memory_mib: DEFAULT_MEMORY_MIB,
        },
    })
}

/// `cargo xtask run`.
pub fn cmd_run(args: RunArgs) -> Result<ExitCode, String> {
    let machine = choose_machine(&args)?;
    let (emu, dir_name) = match &machine {
        Machine::Bochs { .. } => (Emulator::Bochs, "bochs"),
        Machine::Qemu { kvm: true, .. } => (Emulator::Qemu, "kvm"),
        Machine::Qemu { .. } => (Emulator::Qemu, "qemu"),
    };
    hv_tests::deps::ensure(&[emu], |msg| println!("{msg}"))?;
    let config = args.config.clone().unwrap_or_else(paths::default_config);
    let built = build::image(&config, &paths::default_image())?;
    let machine = machine.with_memory(build::machine_memory(&built));

    let dir = paths::target().join("run").join(dir_name);
    let run = emulator::prepare(&dir, &built.image, &machine).map_err(|e| e.to_string())?;
    for note in &run.notes {
        println!("note: {note}");
    }
    let stop = crate::ui::ctrl_c_flag()?;
    println!(
        "starting {dir_name} with {} CPU(s); serial log {}; Ctrl-C stops it",
        args.cpus,
        run.serial_log().display()
    );
    let mut running = emulator::start(&run, &machine).map_err(|e| e.to_string())?;
    let options = WaitOptions {
        timeout: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
        stop: Some(&stop),
        cut_short_on_fatal: false,
    };
    let mut stdout = std::io::stdout();
    let (ending, _) = running.wait(&options, |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    });
    println!();
    match ending {
        Ending::Exited(code) => {
            println!("{dir_name} exited by itself (status {})", code.map_or("signal".to_string(), |c| c.to_string()));
            Ok(ExitCode::SUCCESS)
        }
        Ending::Stopped => {
            println!("stopped {dir_name} (Ctrl-C)");
            Ok(ExitCode::SUCCESS)
        }
        Ending::TimedOut(limit) => {
            println!("stopped {dir_name} after the {} s timeout", limit.as_secs());
            Ok(ExitCode::FAILURE)
        }
        Ending::CutShortAfterFatal => Ok(ExitCode::FAILURE),
    }
}
