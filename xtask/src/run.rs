//! `cargo xtask run`: boot the image, stream the serial console and type into it.
//!
//! COM1 is connected to this process by TCP on the loopback interface (Bochs
//! `mode=socket-client`, QEMU `-serial tcp:`): what the machine sends is shown (and kept
//! in `serial.log`), what the user types goes to the machine. On a terminal, input is
//! passed on key by key without local echo (`stty -icanon -echo`, restored at the end);
//! Ctrl-C still stops the emulator.

use crate::{build, paths, EmulatorChoice};
use hv_tests::emulator::{self, InputSender, Machine, SerialBridge, WaitOptions};
use hv_tests::judge::Ending;
use hv_tests::scenario::{Emulator, DEFAULT_MEMORY_MIB, ICELAKE};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
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

/// [`kvm_with_vmx`] for a command given `--emulator kvm`: the error names what is
/// missing and `fix`.
pub fn require_kvm_with_vmx(fix: &str) -> Result<(), String> {
    kvm_with_vmx().map_err(|why| format!("--emulator kvm needs KVM with nested VMX: {why}; fix: {fix}"))
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
            require_kvm_with_vmx("use --emulator bochs")?;
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
    let bridge = SerialBridge::listen().map_err(|e| format!("listening for COM1 on 127.0.0.1: {e}"))?;
    let run = emulator::prepare_with(&dir, &built.image, &machine, bridge.com1()).map_err(|e| e.to_string())?;
    for note in &run.notes {
        println!("note: {note}");
    }
    let stop = crate::ui::ctrl_c_flag()?;
    println!(
        "starting {dir_name} with {} CPU(s); serial log {}; typing goes to the console          (Ctrl-A n: next partition); Ctrl-C stops it",
        args.cpus,
        run.serial_log().display()
    );
    let mut running = emulator::start_with_bridge(&run, &machine, bridge).map_err(|e| e.to_string())?;
    let terminal = KeyByKey::enter();
    if let Some(input) = running.input() {
        forward_stdin(input);
    }
    let options = WaitOptions {
        timeout: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
        stop: Some(&stop),
        cut_short_on_fatal: false,
        input: &[],
    };
    let mut stdout = std::io::stdout();
    let (ending, _) = running.wait(&options, |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    });
    drop(terminal);
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

/// Passes what is typed on stdin to the machine's COM1, from a thread of its own (it ends
/// with stdin, or when the machine is gone).
fn forward_stdin(input: InputSender) {
    let spawned = std::thread::Builder::new().name("stdin-to-com1".into()).spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !input.send(buf[..n].to_vec()) {
                        break;
                    }
                }
            }
        }
    });
    if let Err(e) = spawned {
        println!("note: console input is off ({e})");
    }
}

/// The terminal settings of stdin while the machine runs: key by key (no line editing),
/// no local echo (the guest echoes), CR kept as CR (what a serial terminal sends), no
/// XON/XOFF or Ctrl-V processing, but Ctrl-C still signals. The previous settings come
/// back on drop. Nothing changes when stdin is not a terminal.
struct KeyByKey {
    saved: Option<String>,
}

impl KeyByKey {
    /// Arguments of `stty` for the mode described above.
    const STTY_ARGS: [&'static str; 9] = ["-icanon", "-echo", "-icrnl", "-ixon", "-iexten", "min", "1", "time", "0"];

    fn enter() -> Self {
        if !std::io::stdin().is_terminal() {
            return KeyByKey { saved: None };
        }
        let saved = stty(&["-g"]).filter(|s| !s.is_empty());
        if saved.is_some() && stty(&Self::STTY_ARGS).is_none() {
            return KeyByKey { saved: None };
        }
        KeyByKey { saved }
    }
}

impl Drop for KeyByKey {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            let _ = stty(&[saved.as_str()]);
        }
    }
}

/// Runs `stty ARGS` on this process's terminal (stdin); its output, `None` on failure.
fn stty(args: &[&str]) -> Option<String> {
    let out = Command::new("stty").args(args).stdin(Stdio::inherit()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
