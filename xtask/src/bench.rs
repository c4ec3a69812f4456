//! `cargo xtask bench`: boot-time numbers under Bochs.

use crate::{paths, test};
use hv_tests::scenario::{self, Emulator, Scenario};
use std::process::ExitCode;
use std::time::Duration;

/// CPU counts measured.
const CPU_COUNTS: [u32; 3] = [1, 2, 4];

/// Reads `T` from the last `boot: entry to ready: T tsc ticks` line of a log.
pub fn entry_to_ready_ticks(log: &str) -> Option<u64> {
    hv_tests::judge::strip_escapes(log).lines().rev().find_map(|line| {
        let rest = &line[line.find("boot: entry to ready: ")? + "boot: entry to ready: ".len()..];
        rest.strip_suffix("tsc ticks").or_else(|| rest.split_once(" tsc ticks").map(|(n, _)| n))?.trim().parse().ok()
    })
}

/// `cargo xtask bench`.
pub fn cmd_bench() -> Result<ExitCode, String> {
    let scenarios: Vec<Scenario> = CPU_COUNTS
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
        })
        .collect();
    let results = test::run_scenarios(scenarios, None);

    let mut json = serde_json::Map::new();
    let mut rows = Vec::new();
    let mut missing = 0;
    for (cpus, r) in CPU_COUNTS.iter().zip(&results) {
        let log = r.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let ticks = entry_to_ready_ticks(&log);
        if ticks.is_none() {
            missing += 1;
        }
        json.insert(
            format!("boot.entry_to_ready_tsc.cpus{cpus}"),
            ticks.map_or(serde_json::Value::Null, serde_json::Value::from),
        );
        rows.push((cpus, ticks, r.seconds, r.passed));
    }
    let path = paths::target().join("bench.json");
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(json)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(paths::target()).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;

    println!();
    println!("{:>5}  {:>22}  {:>8}  run", "cpus", "entry→ready (tsc)", "wall s");
    for (cpus, ticks, secs, passed) in rows {
        println!(
            "{cpus:>5}  {:>22}  {secs:>8.1}  {}",
            ticks.map_or("n/a".to_string(), |t| t.to_string()),
            if passed { "ok" } else { "failed" }
        );
    }
    println!("written: {}", path.display());
    if missing > 0 {
        println!("{missing} measurement(s) missing: no `boot: entry to ready` line in the log");
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
}
