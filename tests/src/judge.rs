//! Deciding a scenario's verdict from its serial log and how the emulator ended.

use crate::scenario::Scenario;
use std::time::Duration;

/// How an emulator run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The emulator exited by itself with this exit code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// The time limit passed and the process group was killed.
    TimedOut(Duration),
    /// A fatal line appeared in the log and the run was cut short.
    CutShortAfterFatal,
    /// The run was stopped on request (Ctrl-C).
    Stopped,
}

/// Whether a log line reports a fatal kernel error (`FATAL:` or a panic), a guest
/// kernel fault, or a failed check of a test guest.
pub fn is_fatal_line(line: &str) -> bool {
    line.contains("FATAL:") || is_panic_line(line) || is_guest_kernel_fault(line) || is_guest_check_failure(line)
}

/// Whether a line is a partition's console output (`[name] FAIL ...`) reporting a
/// failed check of a test guest (`guest_rt::check` prints `FAIL guest: what`). A guest
/// with a failed check also stops with code 1, which the expected `stopped itself
/// (code 0)` line catches; this makes the check's own line the reason, and holds even
/// for a guest that carries on after a failure.
pub fn is_guest_check_failure(line: &str) -> bool {
    partition_text(line).is_some_and(|text| text.starts_with("FAIL "))
}

/// The text of a partition's console line (`[name] text`; the name as partition names
/// are spelled), or `None` for any other line.
fn partition_text(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let (name, text) = rest.split_once("] ")?;
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    is_name.then_some(text)
}

/// What a guest kernel prints when it hits a bug or a fault (Linux: oops, BUG,
/// WARNING, call traces, panics). A guest's console line carries the `[name] ` prefix.
const GUEST_KERNEL_FAULTS: [&str; 7] =
    ["Oops", "BUG:", "WARNING:", "Call Trace:", "Kernel panic", "general protection fault", "unchecked MSR access"];

/// Whether a line is a partition's console output (`[name] ...`) reporting a guest
/// kernel fault, which fails every scenario: the platform must not provoke one.
pub fn is_guest_kernel_fault(line: &str) -> bool {
    partition_text(line).is_some_and(|text| GUEST_KERNEL_FAULTS.iter().any(|f| text.contains(f)))
}

/// Whether a log line reports a panic, which fails every scenario, even one that
/// expects a deliberate CPU fault.
pub fn is_panic_line(line: &str) -> bool {
    line.contains("panicked") || line.contains("hypervisor panic")
}

/// Removes ANSI/VT100 escape sequences (the firmware's screen control) from text.
pub fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            if c != '\r' {
                out.push(c);
            }
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

/// The last `n` lines of a log (escape sequences removed).
pub fn tail(log: &str, n: usize) -> Vec<String> {
    let clean = strip_escapes(log);
    let lines: Vec<&str> = clean.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| l.to_string()).collect()
}

/// The expected lines of `scenario` that appear in no line of `log`.
pub fn missing_lines(scenario: &Scenario, log: &str) -> Vec<String> {
    let clean = strip_escapes(log);
    scenario.expected.iter().filter(|want| !clean.lines().any(|line| line.contains(want.as_str()))).cloned().collect()
}

/// Judges a run: `Ok(())` when it passed, otherwise the reason it failed.
///
/// A run fails on any fatal line, on a time-out, when any expected line is missing, and
/// when the scenario requires the emulator to exit by itself and it did not.
pub fn judge(scenario: &Scenario, log: &str, ending: &Ending) -> Result<(), String> {
    let clean = strip_escapes(log);
    let forbidden = |l: &str| if scenario.fatal_expected { is_panic_line(l) } else { is_fatal_line(l) };
    if let Some(line) = clean.lines().find(|l| forbidden(l)) {
        return Err(format!("fatal line in serial log: {}", line.trim()));
    }
    for text in &scenario.forbidden {
        if let Some(line) = clean.lines().find(|l| l.contains(text.as_str())) {
            return Err(format!("forbidden text {text:?} in serial log: {}", line.trim()));
        }
    }
    let first = |text: &str| clean.lines().position(|l| l.contains(text));
    for (earlier, later) in &scenario.ordered {
        match (first(earlier), first(later)) {
            (Some(a), Some(b)) if a > b => {
                return Err(format!("{earlier:?} appeared after {later:?} (lines {} and {})", a + 1, b + 1));
            }
            (Some(_), Some(_)) => {}
            _ => return Err(format!("{earlier:?} and {later:?} must both appear, in this order")),
        }
    }
    let missing = missing_lines(scenario, log);
    let missing_text = || missing.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ");
    match ending {
        Ending::TimedOut(limit) => {
            let mut reason = format!("timed out after {} s", limit.as_secs());
            if !missing.is_empty() {
                reason.push_str(&format!("; missing: {}", missing_text()));
            }
            return Err(reason);
        }
        Ending::Stopped => return Err("stopped before the end".to_string()),
        Ending::CutShortAfterFatal => {
            return Err("run cut short after a fatal line".to_string());
        }
        Ending::Exited(_) => {}
    }
    if !missing.is_empty() {
        let status = match ending {
            Ending::Exited(Some(code)) => format!("emulator exited with status {code}"),
            Ending::Exited(None) => "emulator was killed by a signal".to_string(),
            _ => String::new(),
        };
        return Err(format!("{status}; missing: {}", missing_text()));
    }
    if scenario.require_self_exit && !matches!(ending, Ending::Exited(Some(_))) {
        return Err("the emulator did not exit by itself".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod guest_fault_tests {
    use super::*;

    #[test]
    fn guest_kernel_faults_are_fatal() {
        assert!(is_fatal_line("[linux] [    2.8] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606"));
        assert!(is_fatal_line("[linux] [    0.0] unchecked MSR access error: RDMSR from 0x10a"));
        assert!(is_fatal_line("[linux] [   12.1] BUG: kernel NULL pointer dereference"));
        assert!(!is_fatal_line("[linux] linux-init: log check: 0 suspicious lines"));
        assert!(!is_fatal_line("partition linux: WARNING: not a console line"));
        assert!(!is_fatal_line("[svc] service: partition linux: bzImage image"));
    }

    #[test]
    fn failed_guest_checks_are_fatal() {
        assert!(is_fatal_line("[uart] FAIL guest-uart: loopback returns the byte"));
        assert!(is_fatal_line("[hypercall] FAIL guest-hypercall: VM_CREATE from a guest returned 0x1"));
        assert!(!is_fatal_line("[uart] PASS guest-uart: loopback returns the byte"));
        assert!(!is_fatal_line("[uart] guest-uart: FAIL would be a failure, but this line is not a check"));
        assert!(!is_fatal_line("FAIL svc-uart (12.0 s): not a partition's line"));
        assert!(!is_fatal_line("[Bad Name] FAIL x"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::select;

    fn boot2() -> Scenario {
        select(&["boot-2cpu".to_string()]).remove(0)
    }

    const GOOD: &str = "\u{1b}[2J\u{1b}[01;01HBdsDxe: loading\r\nvmx: cpu 0 on\nvmx: cpu 1 on\n\
                        hypervisor: ready, 2 cpus, vmx on 2\nboot: entry to ready: 123 tsc ticks\n\
                        platform: power off (code 0)\n";

    #[test]
    fn forbidden_text_fails() {
        let mut s = boot2();
        s.forbidden = vec!["LOOPBACK".to_string()];
        assert_eq!(judge(&s, GOOD, &Ending::Exited(Some(1))), Ok(()));
        let log = GOOD.replace("BdsDxe: loading", "[uart] LOOPBACK");
        let err = judge(&s, &log, &Ending::Exited(Some(1))).unwrap_err();
        assert!(err.contains("forbidden text \"LOOPBACK\""), "{err}");
    }

    #[test]
    fn ordered_texts_must_come_in_order() {
        let mut s = boot2();
        s.ordered = vec![("vmx: cpu 0 on".to_string(), "vmx: cpu 1 on".to_string())];
        assert_eq!(judge(&s, GOOD, &Ending::Exited(Some(1))), Ok(()));
        let swapped = GOOD.replace("vmx: cpu 0 on\nvmx: cpu 1 on", "vmx: cpu 1 on\nvmx: cpu 0 on");
        let err = judge(&s, &swapped, &Ending::Exited(Some(1))).unwrap_err();
        assert!(err.contains("appeared after"), "{err}");
    }

    #[test]
    fn good_log_passes() {
        assert_eq!(judge(&boot2(), GOOD, &Ending::Exited(Some(1))), Ok(()));
    }

    #[test]
    fn missing_cpu_fails() {
        let log = GOOD.replace("vmx: cpu 1 on\n", "");
        let err = judge(&boot2(), &log, &Ending::Exited(Some(1))).unwrap_err();
        assert!(err.contains("vmx: cpu 1 on"), "{err}");
    }

    #[test]
    fn fatal_and_panic_lines_fail() {
        let log = format!("{GOOD}FATAL: page fault at 0x0\n");
        let err = judge(&boot2(), &log, &Ending::Exited(Some(1))).unwrap_err();
        assert!(err.contains("FATAL: page fault"), "{err}");
        let log = format!("{GOOD}kernel panicked at src/main.rs:1\n");
        assert!(judge(&boot2(), &log, &Ending::Exited(Some(1))).is_err());
    }

    #[test]
    fn expected_fault_passes_but_a_panic_still_fails() {
        let fault = select(&["cpu-fault".to_string()]).remove(0);
        let log = format!(
            "{GOOD}selftest: cpu 1 reads its stack guard page at 0xffff800000030000\n\
             FATAL: cpu 1: #PF page fault (vector 14) error code 0x0 (stack overflow: guard page hit)\n\
             FATAL:   rip 0x0000008000018f54 cs 0x8 rflags 0x10086 rsp 0xffff800000040f40 ss 0x10 cr2 0xffff800000030000\n\
             FATAL:   rax 0x0000000000000000 rbx 0x1\n\
             FATAL: cpu 1 halted\n\
             selftest: 1 cpu halted by its own fault; cpu 0 keeps running\n"
        );
        assert_eq!(judge(&fault, &log, &Ending::Exited(Some(1))), Ok(()));
        // Without the dump the scenario fails: the fault must be reported.
        let quiet = log.replace("FATAL: cpu 1 halted\n", "");
        assert!(judge(&fault, &quiet, &Ending::Exited(Some(1))).is_err());
        let panicked = format!("{log}FATAL: cpu 0: hypervisor panic: oops\n");
        let err = judge(&fault, &panicked, &Ending::Exited(Some(1))).unwrap_err();
        assert!(err.contains("hypervisor panic"), "{err}");
        // The same dump fails an ordinary boot scenario.
        assert!(judge(&boot2(), &log, &Ending::Exited(Some(1))).is_err());
    }

    #[test]
    fn timeout_fails_even_with_all_lines() {
        let err = judge(&boot2(), GOOD, &Ending::TimedOut(Duration::from_secs(7))).unwrap_err();
        assert!(err.starts_with("timed out after 7 s"), "{err}");
        let err = judge(&boot2(), "hello\n", &Ending::TimedOut(Duration::from_secs(7))).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn killed_emulator_is_not_a_self_exit() {
        assert!(judge(&boot2(), GOOD, &Ending::Exited(None)).is_err());
    }

    #[test]
    fn escapes_are_stripped_and_tail_is_bounded() {
        assert_eq!(strip_escapes("\u{1b}[01;01Hab\u{1b}[=3hc\r"), "abc");
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&log, 30);
        assert_eq!(t.len(), 30);
        assert_eq!(t[0], "line 70");
        assert_eq!(t[29], "line 99");
    }
}
