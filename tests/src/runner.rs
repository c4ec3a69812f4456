//! Running scenarios (two at a time) and writing the JSON report.

use crate::emulator::{self, Com1, Machine, SerialBridge, WaitOptions};
use crate::judge::{self, Ending};
use crate::layout;
use crate::scenario::{Emulator, Scenario};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// How many emulators run at the same time.
pub const PARALLEL: usize = 2;
/// How many serial log lines a failure report shows.
pub const TAIL_LINES: usize = 30;

/// The outcome of one scenario (one entry of `test-report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Emulator used.
    pub emulator: Emulator,
    /// CPU model, if any.
    pub cpu_model: Option<String>,
    /// Number of CPUs.
    pub cpus: u32,
    /// The serial log (none for host-only scenarios).
    pub log: Option<PathBuf>,
    /// Why it failed.
    pub failure: Option<String>,
    /// What a host-only scenario found, or notes about the run (e.g. stale lock removed).
    pub notes: Vec<String>,
    /// Last lines of the serial log (failures only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// Where a scenario run finds its inputs and puts its files.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// `$TARGET/scenarios`: each scenario gets `<name>/` below it.
    pub scenarios_dir: PathBuf,
    /// Override of every scenario's timeout (`None`: the catalogue's).
    pub timeout_override: Option<Duration>,
    /// Bochs instructions per emulated second.
    pub bochs_ips: u64,
    /// When set to true (e.g. on Ctrl-C), running emulators are stopped.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// The machine a scenario runs on (`None` for host-only scenarios).
pub fn machine_for(scenario: &Scenario, bochs_ips: u64) -> Option<Machine> {
    match scenario.emulator {
        Emulator::Bochs => Some(Machine::Bochs {
            model: scenario.cpu_model.unwrap_or(crate::scenario::ICELAKE).to_string(),
            cpus: scenario.cpus,
            ips: bochs_ips,
            memory_mib: scenario.memory_mib,
        }),
        Emulator::Qemu => Some(Machine::Qemu { cpus: scenario.cpus, kvm: false, memory_mib: scenario.memory_mib }),
        Emulator::Kvm => Some(Machine::Qemu { cpus: scenario.cpus, kvm: true, memory_mib: scenario.memory_mib }),
        Emulator::None => None,
    }
}

/// Runs one scenario against the disk image `image`.
pub fn run_scenario(ctx: &RunContext, scenario: &Scenario, image: &Path) -> ScenarioResult {
    let started = Instant::now();
    let mut result = ScenarioResult {
        name: scenario.name.to_string(),
        passed: false,
        seconds: 0.0,
        emulator: scenario.emulator,
        cpu_model: scenario.cpu_model.map(str::to_string),
        cpus: scenario.cpus,
        log: None,
        failure: None,
        notes: Vec::new(),
        log_tail: Vec::new(),
    };
    let outcome = match machine_for(scenario, ctx.bochs_ips) {
        None => layout::check_image_layout(image).map(|found| result.notes.push(found)),
        Some(machine) => run_emulated(ctx, scenario, image, &machine, &mut result),
    };
    result.seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => result.passed = true,
        Err(reason) => result.failure = Some(reason),
    }
    result
}

fn run_emulated(
    ctx: &RunContext,
    scenario: &Scenario,
    image: &Path,
    machine: &Machine,
    result: &mut ScenarioResult,
) -> Result<(), String> {
    if ctx.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
        return Err("not started: interrupted".to_string());
    }
    let dir = ctx.scenarios_dir.join(scenario.name);
    // Scenarios that type input get COM1 by TCP (the harness listens, the emulator
    // connects); the others keep it a file.
    let bridge = if scenario.input.is_empty() {
        None
    } else {
        Some(SerialBridge::listen().map_err(|e| format!("listening for COM1 on 127.0.0.1: {e}"))?)
    };
    let com1 = bridge.as_ref().map_or(Com1::File, SerialBridge::com1);
    let run =
        emulator::prepare_with(&dir, image, machine, com1).map_err(|e| format!("preparing {}: {e}", dir.display()))?;
    result.notes.extend(run.notes.iter().cloned());
    result.log = Some(run.serial_log());
    let mut running = match bridge {
        Some(bridge) => emulator::start_with_bridge(&run, machine, bridge),
        None => emulator::start(&run, machine),
    }
    .map_err(|e| e.to_string())?;
    let options = WaitOptions {
        timeout: Some(ctx.timeout_override.unwrap_or(scenario.timeout)),
        stop: ctx.stop.as_deref(),
        cut_short_on_fatal: !scenario.fatal_expected,
        input: &scenario.input,
    };
    let (ending, log) = running.wait(&options, |_| {});
    let verdict = judge::judge(scenario, &log, &ending);
    if verdict.is_err() {
        result.log_tail = judge::tail(&log, TAIL_LINES);
        if let Some(text) = running.input_waiting_for() {
            result.notes.push(format!("console input: still waiting for {text:?} before typing"));
        }
        if let Machine::Bochs { .. } = machine {
            // Bochs reports triple faults and other emulation failures in its own log.
            let bochs_log = std::fs::read_to_string(dir.join("bochs.log")).unwrap_or_default();
            if let Some(line) = bochs_log.lines().rev().find(|l| l.contains(">>PANIC<<")) {
                if !line.contains("SIGHUP") && !line.contains("shutdown requested") {
                    result.notes.push(format!("bochs.log: {}", line.trim()));
                }
            }
        }
        if let (Machine::Qemu { .. }, Ending::Exited(Some(0))) = (machine, &ending) {
            // isa-debug-exit always gives an odd status; 0 is QEMU's own exit.
            result.notes.push(
                "QEMU exit status 0 is not an isa-debug-exit power-off: the guest reset \
                 (e.g. a triple fault) and -no-reboot ended QEMU"
                    .to_string(),
            );
        }
        if let Ending::Exited(_) = ending {
            if log.trim().is_empty() {
                result.notes.push(format!("empty serial log; see the emulator's own logs in {}", dir.display()));
            }
        }
    }
    verdict
}

/// Runs `work` on every item with at most `parallel` at a time, calling `done` (on the
/// calling thread) with each result as soon as it is ready.
pub fn run_parallel<T, R>(items: Vec<T>, parallel: usize, work: impl Fn(T) -> R + Sync, mut done: impl FnMut(R))
where
    T: Send,
    R: Send,
{
    let queue = Mutex::new(items.into_iter().collect::<VecDeque<T>>());
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            let tx = tx.clone();
            let queue = &queue;
            let work = &work;
            s.spawn(move || loop {
                let next = queue.lock().expect("queue lock").pop_front();
                let Some(item) = next else { break };
                if tx.send(work(item)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for r in rx {
            done(r);
        }
    });
}

/// Host unit test counts (from cargo's `test result:` lines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UnitCounts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
}

/// Adds up cargo's `test result: ok. 5 passed; 1 failed; ...` lines.
pub fn count_unit_results(output: &str) -> UnitCounts {
    let mut counts = UnitCounts::default();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            continue;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                _ => {}
            }
        }
    }
    counts
}

/// The whole `test-report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Host unit tests (`None` when they were not run).
    pub unit_tests: Option<UnitCounts>,
    /// Every scenario run, in catalogue order.
    pub scenarios: Vec<ScenarioResult>,
    /// Total passed (unit tests + scenarios).
    pub passed: u64,
    /// Total failed (unit tests + scenarios).
    pub failed: u64,
}

impl Report {
    /// Builds the report and its totals.
    pub fn new(unit_tests: Option<UnitCounts>, scenarios: Vec<ScenarioResult>) -> Self {
        let unit = unit_tests.unwrap_or_default();
        let passed = unit.passed + scenarios.iter().filter(|s| s.passed).count() as u64;
        let failed = unit.failed + scenarios.iter().filter(|s| !s.passed).count() as u64;
        Report { unit_tests, scenarios, passed, failed }
    }

    /// Writes it as pretty JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_results_are_summed() {
        let out = "running 3 tests\n\
                   test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                   test result: FAILED. 10 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out\n\
                   test something ... ok\n";
        assert_eq!(count_unit_results(out), UnitCounts { passed: 13, failed: 2 });
    }

    #[test]
    fn parallel_runner_returns_everything() {
        let mut got = Vec::new();
        run_parallel((0..7).collect(), 2, |i: u32| i * 10, |r| got.push(r));
        got.sort_unstable();
        assert_eq!(got, [0, 10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn report_totals_include_unit_tests() {
        let s = |passed| ScenarioResult {
            name: "x".into(),
            passed,
            seconds: 1.0,
            emulator: Emulator::Bochs,
            cpu_model: None,
            cpus: 1,
            log: None,
            failure: None,
            notes: Vec::new(),
            log_tail: Vec::new(),
        };
        let r = Report::new(Some(UnitCounts { passed: 5, failed: 1 }), vec![s(true), s(false), s(true)]);
        assert_eq!((r.passed, r.failed), (7, 2));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["scenarios"][0]["emulator"], "bochs");
    }
}
