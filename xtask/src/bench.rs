//! `cargo xtask bench`: numbers under Bochs (`corei7_icelake_u`).
//!
//! - Boot time: the kernel's `boot: entry to ready: T tsc ticks` line with 1, 2 and 4 CPUs.
//! - Exit round trips: `tests/configs/bench.toml` runs the `guest-bench` test guest without
//!   devices on one CPU; `tests/configs/bench-forwarded.toml` runs it again with COM1 and the
//!   mmio-test page beside the service partition (`io.forwarded_port`, `io.forwarded_mmio`), on one
//!   CPU; it prints one `bench: NAME n=.. min=.. median=.. p99=..` line per metric (TSC
//!   ticks, RDTSC overhead included).
//! - Interrupts: the `guest-apic-timer`, `guest-hlt` and `guest-ipi-2` scenarios print
//!   `timer.latency` (TSC deadline to the guest handler's first TSC read), `hlt.wake`
//!   (one vCPU's IPI send to the halted vCPU's handler) and `ipi.roundtrip` (vCPU 0 ->
//!   vCPU 1 -> vCPU 0 fixed IPIs) in the same form.
//!
//! - Linux exit profile: `tests/configs/bench-linux.toml` boots the Debian kernel with
//!   console timestamps; `linux.exits.REASON` (count), `linux.exit_ticks.REASON` (handler
//!   time) and `linux.boot_to_init` (emulated instructions from the partition's creation
//!   to the kernel starting /init), a table, and `$TARGET/linux-exits.svg`.
//!
//! - On KVM (`--exits-only --emulator kvm`): the two exit runs alone, each on QEMU with
//!   `-enable-kvm -cpu host` (nested VMX on an Intel host), one after the other so that
//!   neither disturbs the other's timing. The numbers are TSC ticks of real VMX, where a
//!   VM exit costs what it costs on the hardware; the table has no instruction columns.
//!
//! Everything goes to `$TARGET/bench.json` and a table. Under Bochs with
//! `clock: sync=none` the TSC advances by `TSC Hz / ips` per emulated instruction, so
//! ticks convert to instructions: the table shows both. The command never fails on a
//! number, only when a run did not print the lines it should.

use crate::{paths, test};
use hv_tests::runner::ScenarioResult;
use hv_tests::scenario::{self, Emulator, Scenario};
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// CPU counts measured.
const CPU_COUNTS: [u32; 3] = [1, 2, 4];
/// The exit-latency config.
const BENCH_CONFIG: &str = "tests/configs/bench.toml";
/// The forwarded-I/O config: the same guest with devices, beside the service partition.
const BENCH_FORWARDED_CONFIG: &str = "tests/configs/bench-forwarded.toml";
/// The exit metrics `guest-bench` prints.
const EXIT_METRICS: [&str; 4] = ["exit.cpuid", "exit.vmcall", "exit.io_unclaimed", "exit.rdmsr"];
/// The forwarded-I/O metrics `guest-bench` prints (with the service partition beside it
/// on the same CPU): a COM1 LSR read through the service partition's 16550 model, and a
/// 64-bit MMIO load of the `mmio-test` page's constant register.
const FORWARDED_METRICS: [&str; 2] = ["io.forwarded_port", "io.forwarded_mmio"];
/// The native baselines `guest-bench` prints; `native.rdtsc` is the measurement overhead.
const NATIVE_METRICS: [&str; 2] = ["native.rdtsc", "native.loop"];
/// The interrupt metrics and the test scenario whose guest prints each.
const INTERRUPT_METRICS: [(&str, &str); 3] =
    [("timer.latency", "guest-apic-timer"), ("hlt.wake", "guest-hlt"), ("ipi.roundtrip", "guest-ipi-2")];
/// The Linux exit-profile config (`linux-boot` with console timestamps).
const BENCH_LINUX_CONFIG: &str = "tests/configs/bench-linux.toml";
/// The name of the measurement-overhead metric.
const OVERHEAD: &str = "native.rdtsc";

/// Reads `T` from the last `boot: entry to ready: T tsc ticks` line of a log.
pub fn entry_to_ready_ticks(log: &str) -> Option<u64> {
    hv_tests::judge::strip_escapes(log).lines().rev().find_map(|line| {
        let rest = &line[line.find("boot: entry to ready: ")? + "boot: entry to ready: ".len()..];
        rest.strip_suffix("tsc ticks").or_else(|| rest.split_once(" tsc ticks").map(|(n, _)| n))?.trim().parse().ok()
    })
}

/// One measured metric (all values in `unit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub min: u64,
    pub median: u64,
    pub p99: u64,
    pub n: u64,
    /// Instructions of the timed operation, when the guest knows it (`insns=`).
    pub insns: Option<u64>,
}

impl Metric {
    /// A single value (n = 1): min = median = p99 = `value`.
    pub fn single(name: String, value: u64) -> Self {
        Metric { name, unit: "tsc", min: value, median: value, p99: value, n: 1, insns: None }
    }

    /// The metric as it appears in `bench.json`.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "unit": self.unit,
            "min": self.min,
            "median": self.median,
            "p99": self.p99,
            "n": self.n,
        })
    }
}

/// Parses one `bench: NAME n=N min=A median=B p99=C [key=value ...]` line (anything may
/// precede `bench: `, such as the `[bench]` partition prefix). Unknown keys are ignored;
/// `n`, `min`, `median` and `p99` are required, and every token after the name must be
/// `key=number`.
pub fn parse_bench_line(line: &str) -> Option<Metric> {
    let rest = &line[line.find("bench: ")? + "bench: ".len()..];
    let mut tokens = rest.split_whitespace();
    let name = tokens.next()?;
    let name_ok = name.contains('.')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
    if !name_ok {
        return None;
    }
    let (mut n, mut min, mut median, mut p99, mut insns) = (None, None, None, None, None);
    for token in tokens {
        let (key, value) = token.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "n" => n = Some(value),
            "min" => min = Some(value),
            "median" => median = Some(value),
            "p99" => p99 = Some(value),
            "insns" => insns = Some(value),
            _ => {}
        }
    }
    Some(Metric { name: name.to_string(), unit: "tsc", min: min?, median: median?, p99: p99?, n: n?, insns })
}

/// Every `bench:` metric line of a serial log, in order (the last one wins for a name
/// printed twice).
pub fn bench_metrics(log: &str) -> Vec<Metric> {
    let mut out: Vec<Metric> = Vec::new();
    for m in hv_tests::judge::strip_escapes(log).lines().filter_map(parse_bench_line) {
        match out.iter_mut().find(|o| o.name == m.name) {
            Some(old) => *old = m,
            None => out.push(m),
        }
    }
    out
}

/// The TSC frequency in MHz from the kernel's `tsc: N MHz` line.
pub fn tsc_mhz(log: &str) -> Option<u64> {
    hv_tests::judge::strip_escapes(log).lines().find_map(|line| {
        let rest = &line[line.find("tsc: ")? + "tsc: ".len()..];
        rest.split_once(" MHz")?.0.trim().parse().ok()
    })
}

/// The `ips=` of the `cpu:` line of a bochsrc.
pub fn bochsrc_ips(bochsrc: &str) -> Option<u64> {
    bochsrc.lines().filter(|l| l.trim_start().starts_with("cpu:")).find_map(|l| {
        l.split(',').find_map(|field| field.trim().strip_prefix("ips=")).and_then(|v| v.trim().parse().ok())
    })
}

/// TSC ticks per emulated instruction: TSC Hz / ips.
pub fn ticks_per_instruction(tsc_mhz: u64, ips: u64) -> Option<f64> {
    (tsc_mhz > 0 && ips > 0).then(|| tsc_mhz as f64 * 1e6 / ips as f64)
}

/// TSC ticks per emulated instruction as the guest measured it: (`native.loop` median −
/// `native.rdtsc` median) / the loop's instruction count.
pub fn measured_ticks_per_instruction(metrics: &[Metric]) -> Option<f64> {
    let get = |name: &str| metrics.iter().find(|m| m.name == name);
    let lp = get("native.loop")?;
    let insns = lp.insns.filter(|&i| i > 0)?;
    let ticks = lp.median.checked_sub(get(OVERHEAD)?.median)?;
    (ticks > 0).then(|| ticks as f64 / insns as f64)
}

/// Where `cargo xtask bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMachine {
    /// Bochs `corei7_icelake_u` (software VMX; TSC ticks count emulated instructions).
    Bochs,
    /// QEMU with `-enable-kvm -cpu host` (real VMX, nested; needs an Intel host with
    /// nested KVM). Only with `--exits-only`.
    Kvm,
}

impl BenchMachine {
    /// The scenario emulator.
    fn emulator(self) -> Emulator {
        match self {
            BenchMachine::Bochs => Emulator::Bochs,
            BenchMachine::Kvm => Emulator::Kvm,
        }
    }

    /// The CPU model named in reports and `bench.json`.
    fn cpu_model(self) -> &'static str {
        match self {
            BenchMachine::Bochs => scenario::ICELAKE,
            BenchMachine::Kvm => "host",
        }
    }
}

/// Checks the options of `cargo xtask bench` before anything runs: KVM measures only the
/// exit round trips (the boot-time, interrupt and Linux runs are Bochs scenarios, and
/// their instruction counts mean something only there).
pub fn check_options(machine: BenchMachine, exits_only: bool, linux_only: bool) -> Result<(), String> {
    match machine {
        BenchMachine::Bochs => Ok(()),
        BenchMachine::Kvm if linux_only => Err("--emulator kvm measures only the exit round trips; fix: use \
             --exits-only instead of --linux-only (or drop --emulator kvm for the Linux profile under Bochs)"
            .to_string()),
        BenchMachine::Kvm if !exits_only => Err("--emulator kvm measures only the exit round trips; fix: add \
             --exits-only (the boot-time, interrupt and Linux measurements run under Bochs)"
            .to_string()),
        BenchMachine::Kvm => Ok(()),
    }
}

/// The whole `bench.json` document. Besides the metrics: the machine (`emulator`,
/// `cpu_model`), the kernel's TSC frequency, the Bochs ips and the ticks per emulated
/// instruction used for instruction counts (when known, and under Bochs only; `null`
/// otherwise).
pub fn to_json(
    emulator: Emulator,
    cpu_model: &str,
    metrics: &[Metric],
    tsc_mhz: Option<u64>,
    bochs_ips: Option<u64>,
    ticks_per_instruction: Option<f64>,
) -> Value {
    json!({
        "emulator": emulator.as_str(),
        "cpu_model": cpu_model,
        "tsc_mhz": tsc_mhz,
        "bochs_ips": bochs_ips,
        "ticks_per_instruction": ticks_per_instruction,
        "metrics": metrics.iter().map(Metric::to_json).collect::<Vec<_>>(),
    })
}

/// The scenario running `guest-bench` on one CPU (`name`, `config`) of `machine`.
fn exit_scenario(name: &'static str, config: &'static str, machine: BenchMachine) -> Scenario {
    Scenario {
        name,
        emulator: machine.emulator(),
        cpu_model: (machine == BenchMachine::Bochs).then_some(scenario::ICELAKE),
        cpus: 1,
        config,
        timeout: Duration::from_secs(300),
        expected: vec![
            "[bench] PASS guest-bench".to_string(),
            "partition bench: stopped itself (code 0)".to_string(),
            "hypervisor: all partitions stopped".to_string(),
            "platform: power off (code 0)".to_string(),
        ],
        require_self_exit: true,
        fatal_expected: false,
        memory_mib: scenario::DEFAULT_MEMORY_MIB,
        input: Vec::new(),
        forbidden: Vec::new(),
        ordered: Vec::new(),
    }
}

/// The Linux exit-profile run: `linux-boot`'s guest with console timestamps.
fn linux_scenario() -> Scenario {
    let mut s = exit_scenario("bench-linux", BENCH_LINUX_CONFIG, BenchMachine::Bochs);
    s.cpus = 2;
    s.timeout = Duration::from_secs(900);
    s.expected = vec![
        "linux-init: reached /init".to_string(),
        "linux-init: log check: 0 suspicious lines".to_string(),
        "partition linux: stopped itself (code 0)".to_string(),
        "platform: power off (code 0)".to_string(),
    ];
    s
}

/// The Linux profile's metrics from its run (with the problems found), its table
/// printed and its chart written to `$TARGET/linux-exits.svg`. `tpi` converts ticks to
/// instructions (1 when unknown: Bochs' TSC then counts instructions at ips = TSC Hz).
fn linux_profile(run: &ScenarioResult, tpi: Option<f64>) -> (Vec<Metric>, Vec<String>) {
    let log = hv_tests::judge::strip_escapes(&read_log(run));
    let exits = crate::linux_profile::exit_counts(&log, crate::linux_profile::PARTITION);
    let mut metrics = Vec::new();
    let mut problems = Vec::new();
    if exits.is_empty() {
        problems.push(format!("{}: no `partition linux: vcpu N exits:` line in the log", run.name));
    }
    let tpi = tpi.filter(|t| *t > 0.0).unwrap_or(1.0);
    match crate::linux_profile::boot_to_init_ticks(&log) {
        Some(ticks) => {
            let mut m = Metric::single("linux.boot_to_init".to_string(), (ticks as f64 / tpi) as u64);
            m.unit = "insns";
            metrics.push(m);
        }
        None => problems.push(format!("{}: no stamped `Run /init as init process` line in the log", run.name)),
    }
    let total: u64 = exits.iter().map(|e| e.ticks).sum::<u64>().max(1);
    println!();
    println!("Linux boot exit profile ({} ticks per instruction):", fmt_opt(Some(tpi), 2));
    println!("{:<22} {:>10} {:>14} {:>7}", "exit reason", "count", "handler ticks", "share");
    for e in &exits {
        let mut count = Metric::single(format!("linux.exits.{}", e.reason), e.count);
        count.unit = "exits";
        metrics.push(count);
        metrics.push(Metric::single(format!("linux.exit_ticks.{}", e.reason), e.ticks));
        println!("{:<22} {:>10} {:>14} {:>6.1}%", e.reason, e.count, e.ticks, e.ticks as f64 * 100.0 / total as f64);
    }
    if let Some(m) = metrics.iter().find(|m| m.name == "linux.boot_to_init") {
        println!("linux.boot_to_init: {} emulated instructions from the partition's creation to /init", m.median);
    }
    let svg = paths::target().join("linux-exits.svg");
    let title = "Linux boot to power-off: handler time per exit reason (Bochs icelake)";
    match std::fs::write(&svg, crate::linux_profile::svg_chart(title, &exits)) {
        Ok(()) => println!("chart: {}", svg.display()),
        Err(e) => problems.push(format!("writing {}: {e}", svg.display())),
    }
    (metrics, problems)
}

/// `cargo xtask bench --linux-only`.
pub fn cmd_bench_linux() -> Result<ExitCode, String> {
    let results = test::run_scenarios(vec![linux_scenario()], None);
    let run = results.first().ok_or("the Linux profile did not run")?;
    let (metrics, problems) = linux_profile(run, None);
    let path = paths::target().join("bench.json");
    let doc = to_json(Emulator::Bochs, scenario::ICELAKE, &metrics, tsc_mhz(&read_log(run)), Some(run_ips(run)), None);
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("written: {}", path.display());
    for p in &problems {
        println!("missing: {p}");
    }
    Ok(if problems.is_empty() && run.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn read_log(r: &ScenarioResult) -> String {
    r.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
}

/// The ips the runner gave Bochs for run `r` (from its generated bochsrc), else the
/// runner's setting.
fn run_ips(r: &ScenarioResult) -> u64 {
    r.log
        .as_deref()
        .and_then(Path::parent)
        .and_then(|dir| std::fs::read_to_string(dir.join("bochsrc")).ok())
        .and_then(|rc| bochsrc_ips(&rc))
        .unwrap_or_else(hv_tests::emulator::bochs_ips)
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// `cargo xtask bench`; with `exits_only`, only the exit and forwarding round trips (two
/// runs), on `machine` (KVM only with `exits_only`: [`check_options`]).
pub fn cmd_bench(exits_only: bool, machine: BenchMachine) -> Result<ExitCode, String> {
    check_options(machine, exits_only, false)?;
    if machine == BenchMachine::Kvm {
        crate::run::require_kvm_with_vmx(
            "run it on an Intel host with nested KVM (README, QEMU/KVM checklist, step 1), or drop \
             --emulator kvm to measure under Bochs",
        )?;
    }
    let cpu_counts: &[u32] = if exits_only { &[] } else { &CPU_COUNTS };
    let interrupt_metrics: &[(&str, &str)] = if exits_only { &[] } else { &INTERRUPT_METRICS };
    let mut scenarios: Vec<Scenario> = cpu_counts
        .iter()
        .map(|&cpus| Scenario {
            name: match cpus {
                1 => "bench-cpus1",
                2 => "bench-cpus2",
                _ => "bench-cpus4",
            },
            emulator: Emulator::Bochs,
            cpu_model: Some(scenario::ICELAKE),
            cpus,
            config: scenario::BOOT_CONFIG,
            timeout: Duration::from_secs(120 + 60 * u64::from(cpus)),
            expected: scenario::boot_expectations(cpus),
            require_self_exit: true,
            fatal_expected: false,
            memory_mib: scenario::DEFAULT_MEMORY_MIB,
            input: Vec::new(),
            forbidden: Vec::new(),
            ordered: Vec::new(),
        })
        .collect();
    scenarios.push(exit_scenario("bench-exits", BENCH_CONFIG, machine));
    scenarios.push(exit_scenario("bench-forwarded", BENCH_FORWARDED_CONFIG, machine));
    let catalogue = scenario::catalogue();
    for (_, name) in interrupt_metrics {
        let found = catalogue.iter().find(|s| s.name == *name).ok_or(format!("no scenario {name} in the catalogue"))?;
        scenarios.push(found.clone());
    }
    if !exits_only {
        scenarios.push(linux_scenario());
    }
    let results: Vec<ScenarioResult> = match machine {
        // Deterministic: the runs may share the host.
        BenchMachine::Bochs => test::run_scenarios(scenarios, None),
        // Real time: one run at a time.
        BenchMachine::Kvm => scenarios.into_iter().flat_map(|s| test::run_scenarios(vec![s], None)).collect(),
    };

    let mut problems = Vec::new();
    let mut boot = Vec::new();
    for (cpus, r) in cpu_counts.iter().zip(&results) {
        match entry_to_ready_ticks(&read_log(r)) {
            Some(t) => boot.push(Metric::single(format!("boot.entry_to_ready.cpus{cpus}"), t)),
            None => problems.push(format!("{}: no `boot: entry to ready` line in the log", r.name)),
        }
    }
    let exit_run = &results[cpu_counts.len()];
    let exit_log = read_log(exit_run);
    // The exits and baselines of a guest without devices; the forwarded metrics of the
    // same guest with devices, beside the service partition.
    let mut measured: Vec<Metric> =
        bench_metrics(&exit_log).into_iter().filter(|m| !FORWARDED_METRICS.contains(&m.name.as_str())).collect();
    let forwarded_run = &results[cpu_counts.len() + 1];
    measured.extend(
        bench_metrics(&read_log(forwarded_run)).into_iter().filter(|m| FORWARDED_METRICS.contains(&m.name.as_str())),
    );
    for want in EXIT_METRICS.iter().chain(&NATIVE_METRICS) {
        if !measured.iter().any(|m| m.name == *want) {
            problems.push(format!("{}: no `bench: {want}` line in the log", exit_run.name));
        }
    }
    for want in &FORWARDED_METRICS {
        if !measured.iter().any(|m| m.name == *want) {
            problems.push(format!("{}: no `bench: {want}` line in the log", forwarded_run.name));
        }
    }
    for ((metric, _), run) in interrupt_metrics.iter().zip(&results[cpu_counts.len() + 2..]) {
        match bench_metrics(&read_log(run)).into_iter().find(|m| m.name == *metric) {
            Some(m) => measured.push(m),
            None => problems.push(format!("{}: no `bench: {metric}` line in the log", run.name)),
        }
    }
    // Exits first, then the baselines, then anything else the guest printed.
    let rank = |name: &str| {
        EXIT_METRICS
            .iter()
            .chain(&FORWARDED_METRICS)
            .chain(&NATIVE_METRICS)
            .position(|m| *m == name)
            .unwrap_or(usize::MAX)
    };
    measured.sort_by_key(|m| rank(&m.name));
    let tsc = tsc_mhz(&exit_log).or_else(|| results.iter().find_map(|r| tsc_mhz(&read_log(r))));
    // Instruction counts: under Bochs only, where the TSC counts emulated instructions.
    let bochs = machine == BenchMachine::Bochs;
    let ips = bochs.then(|| run_ips(exit_run));
    let nominal_tpi = tsc.zip(ips).and_then(|(mhz, ips)| ticks_per_instruction(mhz, ips));
    let measured_tpi = measured_ticks_per_instruction(&measured).filter(|_| bochs);
    // The loop is the direct measurement; TSC Hz / ips is the fallback.
    let tpi = measured_tpi.or(nominal_tpi);
    let overhead = measured.iter().find(|m| m.name == OVERHEAD).map(|m| m.median);

    let mut metrics = measured.clone();
    metrics.extend(boot.iter().cloned());
    if let Some(run) = results.iter().find(|r| r.name == "bench-linux") {
        let (linux, linux_problems) = linux_profile(run, tpi);
        metrics.extend(linux);
        problems.extend(linux_problems);
    }
    let path = paths::target().join("bench.json");
    let doc = to_json(machine.emulator(), machine.cpu_model(), &metrics, tsc, ips, tpi);
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(paths::target()).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;

    println!();
    for r in &results {
        println!(
            "run {:<12} {:>6.1} s wall  {}",
            r.name,
            r.seconds,
            if r.passed { "ok".to_string() } else { format!("failed: {}", r.failure.as_deref().unwrap_or("?")) }
        );
    }
    println!();
    let tsc_text = tsc.map_or("n/a".into(), |t| format!("{t} MHz"));
    match ips {
        Some(ips) => {
            println!("bochs {}, 1 cpu, ips {ips}, kernel's tsc {tsc_text}", scenario::ICELAKE);
            println!("ticks per emulated instruction: TSC Hz / ips = {}", fmt_opt(nominal_tpi, 2));
        }
        None => println!("kvm -cpu host (nested VMX), 1 cpu, kernel's tsc {tsc_text}; numbers are TSC ticks"),
    }
    if let (Some(lp), Some(m)) = (measured.iter().find(|m| m.name == "native.loop"), measured_tpi) {
        println!(
            "ticks per emulated instruction: measured   = {m:.2} (native.loop: ({} - {} {OVERHEAD}) ticks / {} instructions)",
            lp.median,
            overhead.unwrap_or(0),
            lp.insns.unwrap_or(0)
        );
        if let Some(n) = nominal_tpi.filter(|n| (n / m - 1.0).abs() > 0.1) {
            println!(
                "note: the two disagree ({n:.2} vs {m:.2}): Bochs' TSC does not run at the frequency CPUID reports; \
                 instruction counts below use the measured {m:.2}"
            );
        }
    }
    println!("path = median - {OVERHEAD} median (the measurement overhead); insns = ticks / ticks per instruction");
    if !bochs {
        println!("(no instruction counts on KVM: a tick there is a cycle of real hardware)");
    }
    println!();
    println!(
        "{:<26} {:>11} {:>11} {:>11} {:>6} {:>9} {:>9} {:>9}",
        "name", "min", "median", "p99", "n", "path", "insns", "path ins"
    );
    for m in &measured {
        let path_ticks = (m.name != OVERHEAD).then(|| overhead.map(|oh| m.median.saturating_sub(oh))).flatten();
        println!(
            "{:<26} {:>11} {:>11} {:>11} {:>6} {:>9} {:>9} {:>9}",
            m.name,
            m.min,
            m.median,
            m.p99,
            m.n,
            path_ticks.map_or_else(|| "-".to_string(), |p| p.to_string()),
            fmt_opt(tpi.map(|t| m.median as f64 / t), 1),
            fmt_opt(path_ticks.zip(tpi).map(|(p, t)| p as f64 / t), 1),
        );
    }
    for m in &boot {
        println!(
            "{:<26} {:>11} {:>11} {:>11} {:>6} {:>9} {:>9} {:>9}",
            m.name, m.min, m.median, m.p99, m.n, "-", "-", "-"
        );
    }
    let median = |name: &str| measured.iter().find(|m| m.name == name).map(|m| m.median);
    if let (Some(fwd), Some(local)) = (median("io.forwarded_port"), median("exit.io_unclaimed")) {
        println!(
            "forwarded port read / in-hypervisor port exit: {:.2}x on {} (issue 5's target: at most 3x)",
            fwd as f64 / local.max(1) as f64,
            machine.emulator().as_str()
        );
    }
    println!("written: {}", path.display());
    if !problems.is_empty() {
        for p in &problems {
            println!("missing: {p}");
        }
        println!("{} measurement(s) missing", problems.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_parsed() {
        let log = "x\n[INFO ] boot: entry to ready: 123456 tsc ticks\r\nplatform: power off (code 0)\n";
        assert_eq!(entry_to_ready_ticks(log), Some(123456));
        let log = "boot: entry to ready: 317629652 tsc ticks (212 ms)\n";
        assert_eq!(entry_to_ready_ticks(log), Some(317629652));
        assert_eq!(entry_to_ready_ticks("boot: entry to ready: many tsc ticks\n"), None);
        assert_eq!(entry_to_ready_ticks(""), None);
    }

    #[test]
    fn bench_lines_are_parsed() {
        let m = parse_bench_line("[bench] bench: exit.cpuid n=10000 min=123 median=130 p99=150 max=900").unwrap();
        assert_eq!(
            m,
            Metric { name: "exit.cpuid".into(), unit: "tsc", min: 123, median: 130, p99: 150, n: 10000, insns: None }
        );
        let m = parse_bench_line("bench: native.loop n=5 min=1 median=2 p99=3 insns=201").unwrap();
        assert_eq!((m.name.as_str(), m.insns), ("native.loop", Some(201)));
        // Missing or malformed fields, prose and foreign lines are not metrics.
        for bad in [
            "bench: exit.cpuid n=10000 min=123 median=130",
            "bench: exit.cpuid n=10000 min=x median=130 p99=150",
            "bench: exit.cpuid n=10000 min=1 median=2 p99=3 garbage",
            "bench: total 123 tsc ticks",
            "bench: Exit n=1 min=1 median=1 p99=1",
            "[bench] PASS guest-bench",
            "",
        ] {
            assert_eq!(parse_bench_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bench_metrics_come_from_a_serial_log() {
        let log = "\x1b[2J\x1b[01;01Htsc: 1497 MHz (Cpuid)\r\n\
                   [bench] bench: native.rdtsc n=10 min=90 median=90 p99=91 max=95\r\n\
                   hypervisor: ready, 1 cpus, vmx on 1\n\
                   [bench] bench: exit.cpuid n=10 min=1000 median=1100 p99=1200 max=1300\n\
                   [bench] bench: exit.cpuid n=10 min=1 median=2 p99=3\n\
                   [bench] PASS guest-bench\n";
        let m = bench_metrics(log);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["native.rdtsc", "exit.cpuid"]);
        assert_eq!(m[1].median, 2, "the last line of a name wins");
        assert_eq!(tsc_mhz(log), Some(1497));
        assert_eq!(tsc_mhz("no such line\n"), None);
    }

    #[test]
    fn ips_comes_from_the_generated_bochsrc() {
        let rc = hv_tests::emulator::bochsrc(Path::new("/tmp/x"), "corei7_icelake_u", 1, 12_345_678, 256);
        assert_eq!(bochsrc_ips(&rc), Some(12_345_678));
        assert_eq!(bochsrc_ips("megs: 256\n"), None);
        let metrics: Vec<Metric> =
            ["bench: native.rdtsc n=1 min=6 median=6 p99=6", "bench: native.loop n=1 min=1 median=207 p99=1 insns=201"]
                .iter()
                .filter_map(|l| parse_bench_line(l))
                .collect();
        assert_eq!(measured_ticks_per_instruction(&metrics), Some(1.0));
        assert_eq!(measured_ticks_per_instruction(&metrics[..1]), None);
        let tpi = ticks_per_instruction(1500, 100_000_000).unwrap();
        assert!((tpi - 15.0).abs() < 1e-9);
        assert_eq!(ticks_per_instruction(0, 1), None);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let metrics = vec![
            parse_bench_line("bench: exit.cpuid n=10000 min=1 median=2 p99=3 max=4").unwrap(),
            Metric::single("boot.entry_to_ready.cpus1".into(), 356037539),
        ];
        let doc = to_json(Emulator::Bochs, "corei7_icelake_u", &metrics, Some(1497), Some(100_000_000), Some(1.0));
        assert_eq!(doc["emulator"], "bochs");
        assert_eq!(doc["cpu_model"], "corei7_icelake_u");
        assert_eq!(doc["tsc_mhz"], 1497);
        assert_eq!(doc["bochs_ips"], 100_000_000);
        assert_eq!(doc["ticks_per_instruction"], 1.0);
        let unknown = to_json(Emulator::Kvm, "host", &[], None, None, None);
        assert!(unknown["tsc_mhz"].is_null() && unknown["ticks_per_instruction"].is_null());
        assert!(unknown["bochs_ips"].is_null());
        assert_eq!((&unknown["emulator"], &unknown["cpu_model"]), (&json!("kvm"), &json!("host")));
        assert_eq!(unknown["metrics"], json!([]));
        let list = doc["metrics"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], json!({"name": "exit.cpuid", "unit": "tsc", "min": 1, "median": 2, "p99": 3, "n": 10000}));
        assert_eq!(
            list[1],
            json!({"name": "boot.entry_to_ready.cpus1", "unit": "tsc", "min": 356037539,
                   "median": 356037539, "p99": 356037539, "n": 1})
        );
        for m in list {
            let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 6, "{keys:?}");
        }
        // Round trip through text, as the file is written.
        let text = serde_json::to_string_pretty(&doc).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);
    }

    #[test]
    fn kvm_measures_only_the_exit_round_trips() {
        use BenchMachine::{Bochs, Kvm};
        assert_eq!(check_options(Kvm, true, false), Ok(()));
        for (exits_only, linux_only) in [(false, false), (false, true)] {
            let e = check_options(Kvm, exits_only, linux_only).unwrap_err();
            assert!(e.contains("fix:") && e.contains("--exits-only"), "{e}");
        }
        for (exits_only, linux_only) in [(false, false), (true, false), (false, true)] {
            assert_eq!(check_options(Bochs, exits_only, linux_only), Ok(()));
        }
        let kvm = exit_scenario("bench-exits", BENCH_CONFIG, Kvm);
        assert_eq!((kvm.emulator, kvm.cpu_model, kvm.cpus), (Emulator::Kvm, None, 1));
        let machine = hv_tests::runner::machine_for(&kvm, 1);
        assert!(matches!(machine, Some(hv_tests::emulator::Machine::Qemu { kvm: true, cpus: 1, .. })), "{machine:?}");
        let bochs = exit_scenario("bench-exits", BENCH_CONFIG, Bochs);
        assert_eq!((bochs.emulator, bochs.cpu_model), (Emulator::Bochs, Some(scenario::ICELAKE)));
    }
}
