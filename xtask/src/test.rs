//! `cargo xtask test`: host unit tests, then emulator scenarios.

use crate::{build, paths, ui};
use hv_tests::runner::{self, Report, RunContext, ScenarioResult, UnitCounts};
use hv_tests::scenario::{self, Emulator, Scenario};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Runs `cargo test --workspace --exclude hypervisor` and counts the results.
fn unit_tests() -> UnitCounts {
    let started = Instant::now();
    let output = ui::with_spinner("host unit tests (cargo test --workspace --exclude hypervisor)", || {
        Command::new(paths::cargo())
            .current_dir(paths::workspace())
            .env("CARGO_TARGET_DIR", paths::target())
            .args(["test", "--workspace", "--exclude", "hypervisor"])
            .output()
    });
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            println!("FAIL unit tests: cannot run cargo: {e}");
            return UnitCounts { passed: 0, failed: 1 };
        }
    };
    let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let mut counts = runner::count_unit_results(&text);
    let secs = started.elapsed().as_secs_f64();
    if !output.status.success() && counts.failed == 0 {
        // A build error: no `test result:` line reports it, count it as one failure.
        counts.failed = 1;
    }
    if counts.failed == 0 {
        println!("PASS unit tests: {} ok ({secs:.1} s)", counts.passed);
    } else {
        println!(
            "FAIL unit tests: {} ok, {} failing ({secs:.1} s); cargo output (tail):",
            counts.passed, counts.failed
        );
        let lines: Vec<&str> =
            text.lines().filter(|l| !l.trim_start().starts_with("Compiling") && !l.trim().is_empty()).collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            println!("    {line}");
        }
    }
    counts
}

/// A failed result for a scenario that could not even start.
fn not_run(s: &Scenario, reason: &str) -> ScenarioResult {
    ScenarioResult {
        name: s.name.to_string(),
        passed: false,
        seconds: 0.0,
        emulator: s.emulator,
        cpu_model: s.cpu_model.map(str::to_string),
        cpus: s.cpus,
        log: None,
        failure: Some(reason.to_string()),
        notes: Vec::new(),
        log_tail: Vec::new(),
    }
}

/// Prints the one-line verdict of a scenario (plus details for failures).
pub fn print_result(r: &ScenarioResult) {
    if r.passed {
        println!("PASS {} ({:.1} s)", r.name, r.seconds);
    } else {
        println!("FAIL {} ({:.1} s): {}", r.name, r.seconds, r.failure.as_deref().unwrap_or("unknown"));
    }
    for note in &r.notes {
        println!("    note: {note}");
    }
    if !r.passed {
        if let Some(log) = &r.log {
            println!("    serial log: {} (last {} lines below)", log.display(), r.log_tail.len());
        }
        for line in &r.log_tail {
            println!("    | {line}");
        }
    }
}

/// Builds the kernel once and one image per distinct config; returns config → image (or
/// the reason it could not be built).
pub fn build_images(scenarios: &[Scenario]) -> BTreeMap<&'static str, Result<(PathBuf, u32), String>> {
    let mut images = BTreeMap::new();
    let configs: Vec<&'static str> = {
        let mut c: Vec<&'static str> = scenarios.iter().map(|s| s.config).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    if configs.is_empty() {
        return images;
    }
    let kernel = build::guests().and_then(|guests| build::kernel().map(|kernel| (guests, kernel)));
    for config in configs {
        let result = kernel.clone().and_then(|(guests, kernel)| {
            let stem = std::path::Path::new(config)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let out = paths::target().join("test-images").join(format!("{stem}.img"));
            build::image_from_kernel(&paths::workspace().join(config), &guests, &kernel, &out)
                .map(|b| (b.image.clone(), build::machine_memory(&b)))
        });
        images.insert(config, result);
    }
    images
}

/// Runs `scenarios` two at a time (after building images and checking host packages),
/// printing each verdict as it arrives; results come back in catalogue order.
pub fn run_scenarios(scenarios: Vec<Scenario>, timeout: Option<Duration>) -> Vec<ScenarioResult> {
    // Without this, Ctrl-C would end xtask and leave the emulators running.
    let stop = match ui::ctrl_c_flag() {
        Ok(flag) => Some(flag),
        Err(e) => {
            println!("warning: {e}");
            None
        }
    };
    let images = build_images(&scenarios);
    let mut emulators: Vec<Emulator> = scenarios.iter().map(|s| s.emulator).collect();
    emulators.dedup();
    let deps = hv_tests::deps::ensure(&emulators, |msg| println!("{msg}"));

    let order: Vec<&'static str> = scenarios.iter().map(|s| s.name).collect();
    let mut results = Vec::new();
    let mut runnable = Vec::new();
    for s in scenarios {
        let mut s = s;
        let image = match images.get(s.config) {
            Some(Ok((image, memory_mib))) => {
                s.memory_mib = s.memory_mib.max(*memory_mib);
                image.clone()
            }
            Some(Err(e)) => {
                results.push(not_run(&s, &format!("no image: {e}")));
                continue;
            }
            None => {
                results.push(not_run(&s, "no image"));
                continue;
            }
        };
        if let (Err(e), true) = (&deps, s.emulator != Emulator::None) {
            results.push(not_run(&s, e));
            continue;
        }
        runnable.push((s, image));
    }
    for r in &results {
        print_result(r);
    }
    let ctx = RunContext {
        scenarios_dir: paths::scenarios_dir(),
        timeout_override: timeout,
        bochs_ips: hv_tests::emulator::bochs_ips(),
        stop: stop.clone(),
    };
    // Longest first (the time-out is the proxy): the Linux boots start at once and the
    // short scenarios fill the other slot, so the two slots finish close together.
    runnable.sort_by_key(|(s, _)| std::cmp::Reverse(s.timeout));
    let names: Vec<&str> = runnable.iter().map(|(s, _)| s.name).collect();
    let pb = ui::spinner(format!("running {} scenario(s) two at a time: {}", names.len(), names.join(", ")));
    runner::run_parallel(
        runnable,
        runner::PARALLEL,
        |(s, image)| runner::run_scenario(&ctx, &s, &image),
        |r| {
            pb.suspend(|| print_result(&r));
            results.push(r);
        },
    );
    pb.finish_and_clear();
    if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
        println!("interrupted (Ctrl-C): emulators stopped");
    }
    results.sort_by_key(|r| order.iter().position(|n| *n == r.name));
    results
}

/// `cargo xtask test`.
pub fn cmd_test(filters: &[String], timeout: Option<u64>) -> Result<ExitCode, String> {
    let selected = scenario::select(filters);
    if selected.is_empty() {
        let all: Vec<&str> = scenario::catalogue().iter().map(|s| s.name).collect();
        return Err(format!("no scenario name contains any of {filters:?}; available: {}", all.join(", ")));
    }
    let unit = unit_tests();
    let results = run_scenarios(selected, timeout.map(Duration::from_secs));
    let report = Report::new(Some(unit), results);
    let path = paths::target().join("test-report.json");
    match report.write(&path) {
        Ok(()) => println!("report: {}", path.display()),
        Err(e) => println!("warning: could not write {}: {e}", path.display()),
    }
    println!("{} passed, {} failed", report.passed, report.failed);
    Ok(if report.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
