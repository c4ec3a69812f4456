//! `cargo xtask`: developer commands for the hypervisor workspace.
//!
//! - `build [--config PATH]`: kernel + boot payload + `$TARGET/hypervisor.img`;
//! - `image --config PATH --out PATH`: the same with an explicit output;
//! - `run [...]`: boot the image in KVM, QEMU or Bochs and stream the serial console;
//! - `test [FILTER...]`: host unit tests, then the emulator scenarios;
//! - `bench [--exits-only] [--emulator kvm]`: boot-time, exit and interrupt measurements
//!   under Bochs (the exit round trips also on KVM);
//! - `fuzz [TARGET] [--seconds N]`: the libFuzzer targets of `hypervisor/core/fuzz`;
//! - `usb DEVICE [--yes]`: write the image to a removable drive;
//! - `linux`: fetch and build the Linux guest material into `$TARGET/linux`.
//!
//! Every path under `target/` honours `CARGO_TARGET_DIR`. `HV_KERNEL_ELF` may name a
//! prebuilt kernel ELF to use instead of building the `hypervisor` package.

mod bench;
mod build;
mod fuzz;
mod linux;
mod linux_profile;
mod paths;
mod run;
mod test;
mod ui;
mod usb;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Developer commands for the hypervisor.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which machine `run` boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmulatorChoice {
    /// KVM when the host has nested VMX, otherwise Bochs.
    Auto,
    /// QEMU with `-enable-kvm -cpu host` (needs nested VMX on the host).
    Kvm,
    /// QEMU TCG (no VMX: exercises the no-VMX path).
    Qemu,
    /// Bochs (emulates VMX; slow).
    Bochs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the kernel, the boot payload and `$TARGET/hypervisor.img`.
    Build {
        /// Partition config file [default: boot/configs/default.toml].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Build a disk image from a given config to a given path.
    Image {
        /// Partition config file.
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Where to write the disk image.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Build the image and boot it, streaming the serial console (Ctrl-C stops it).
    Run {
        /// Which machine to use.
        #[arg(long, value_enum, default_value_t = EmulatorChoice::Auto)]
        emulator: EmulatorChoice,
        /// Number of CPUs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        cpus: u32,
        /// Bochs CPU model (Bochs only) [default: corei7_icelake_u].
        #[arg(long, value_name = "MODEL")]
        cpu_model: Option<String>,
        /// Stop the emulator after this many seconds (0 = never).
        #[arg(long, value_name = "S", default_value_t = 0)]
        timeout: u64,
        /// Partition config file [default: boot/configs/default.toml].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Run the host unit tests, then the emulator scenarios (all, or those whose name
    /// contains any FILTER), two at a time.
    Test {
        /// Substrings of scenario names.
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
        /// Override every scenario's timeout (seconds).
        #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
    },
    /// Measure boot time (TSC ticks from entry to ready) with 1, 2 and 4 CPUs, the exit
    /// round trips and the interrupt metrics under Bochs (the exit round trips also on
    /// KVM: `--exits-only --emulator kvm`).
    Bench {
        /// Only the exit round trips (`guest-bench`, one Bochs run); `bench.json` then
        /// holds only those metrics.
        #[arg(long)]
        exits_only: bool,
        /// Only the Linux boot's exit profile (one Bochs run); `bench.json` then holds
        /// only the `linux.*` metrics.
        #[arg(long, conflicts_with = "exits_only")]
        linux_only: bool,
        /// Where to measure: Bochs, or QEMU/KVM with nested VMX (only with --exits-only;
        /// numbers in TSC ticks of real VMX).
        #[arg(long, value_enum, default_value_t = bench::BenchMachine::Bochs)]
        emulator: bench::BenchMachine,
    },
    /// Fuzz the parsers of untrusted bytes (installs cargo-fuzz when missing).
    Fuzz {
        /// One target: boot_conf, acpi_s5, mmio_decode, devices, io_reply, loader_bzimage,
        /// loader_multiboot, loader_elf, board or instruction_fetch [default: all].
        #[arg(value_name = "TARGET")]
        target: Option<String>,
        /// How long to run each target.
        #[arg(long, value_name = "N", default_value_t = 60)]
        seconds: u64,
    },
    /// Write the disk image to a removable drive.
    Usb {
        /// The drive, e.g. `sdb` or `/dev/sdb` (a whole disk, not a partition).
        #[arg(value_name = "DEVICE")]
        device: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// The image to write [default: $TARGET/hypervisor.img].
        #[arg(long, value_name = "PATH")]
        image: Option<PathBuf>,
    },
    /// Fetch and build the Linux guest material (Debian kernel + busybox initramfs) into
    /// target/linux.
    Linux,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build { config } => build::cmd_build(config),
        Command::Image { config, out } => build::cmd_image(config, out),
        Command::Run { emulator, cpus, cpu_model, timeout, config } => {
            run::cmd_run(run::RunArgs { emulator, cpus, cpu_model, timeout, config })
        }
        Command::Test { filters, timeout } => test::cmd_test(&filters, timeout),
        Command::Bench { exits_only, linux_only: true, emulator } => {
            bench::check_options(emulator, exits_only, true).and_then(|()| bench::cmd_bench_linux())
        }
        Command::Bench { exits_only, linux_only: false, emulator } => bench::cmd_bench(exits_only, emulator),
        Command::Fuzz { target, seconds } => fuzz::cmd_fuzz(target, seconds),
        Command::Usb { device, yes, image } => usb::cmd_usb(&device, yes, image),
        Command::Linux => linux::material().map(|material| {
            println!("kernel:    {}", material.kernel.display());
            println!("initramfs: {}", material.initramfs.display());
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
