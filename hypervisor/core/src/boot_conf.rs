//! `hypervisor.conf`: the few settings the hypervisor itself reads from the boot payload.
//!
//! The build host (`boot/`) validates the full partition config and writes this file
//! from its `[hypervisor]` section as `key=value` lines. The hypervisor re-validates it
//! anyway (the payload is data, not trusted code): an unknown key or bad value is
//! reported and the default kept.

/// The log level threshold, most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// What the hypervisor does once it has nothing (left) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenIdle {
    /// Keep the CPUs halted; the machine stays on (interactive use, real hardware).
    Halt,
    /// Power the machine off (tests, batch runs).
    PowerOff,
}

/// A deliberate fault the hypervisor injects into itself at boot, to show (in a test
/// scenario, or on a new machine) that a CPU exception is reported and stops only the
/// CPU that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    None,
    /// The last AP reads its own stack guard page after VMXON.
    CpuFault,
}

/// The parsed settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootConf {
    pub log_level: LogLevel,
    pub when_idle: WhenIdle,
    pub selftest: SelfTest,
}

impl Default for BootConf {
    fn default() -> Self {
        Self { log_level: LogLevel::Info, when_idle: WhenIdle::Halt, selftest: SelfTest::None }
    }
}

/// One problem found in the file, with its 1-based line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfProblem<'a> {
    pub line: usize,
    pub kind: ProblemKind<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind<'a> {
    /// Not valid UTF-8 (the whole file).
    NotText,
    /// A line without `=`.
    NoEquals,
    UnknownKey(&'a str),
    BadValue {
        key: &'a str,
        value: &'a str,
    },
}

impl core::fmt::Display for ConfProblem<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.kind {
            ProblemKind::NotText => write!(f, "hypervisor.conf is not UTF-8 text"),
            ProblemKind::NoEquals => write!(f, "hypervisor.conf line {}: expected key=value", self.line),
            ProblemKind::UnknownKey(k) => write!(f, "hypervisor.conf line {}: unknown key '{k}'", self.line),
            ProblemKind::BadValue { key, value } => {
                write!(f, "hypervisor.conf line {}: bad value '{value}' for '{key}'", self.line)
            }
        }
    }
}

/// Parses the file. Returns the settings (defaults where a line was bad) and calls
/// `report` for every problem.
pub fn parse<'a>(bytes: &'a [u8], mut report: impl FnMut(ConfProblem<'a>)) -> BootConf {
    let mut conf = BootConf::default();
    let Ok(text) = core::str::from_utf8(bytes) else {
        report(ConfProblem { line: 0, kind: ProblemKind::NotText });
        return conf;
    };
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            report(ConfProblem { line, kind: ProblemKind::NoEquals });
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let bad = ConfProblem { line, kind: ProblemKind::BadValue { key, value } };
        match key {
            "log_level" => match value {
                "error" => conf.log_level = LogLevel::Error,
                "warn" => conf.log_level = LogLevel::Warn,
                "info" => conf.log_level = LogLevel::Info,
                "debug" => conf.log_level = LogLevel::Debug,
                "trace" => conf.log_level = LogLevel::Trace,
                _ => report(bad),
            },
            "when_idle" => match value {
                "halt" => conf.when_idle = WhenIdle::Halt,
                "power-off" => conf.when_idle = WhenIdle::PowerOff,
                _ => report(bad),
            },
            "selftest" => match value {
                "none" => conf.selftest = SelfTest::None,
                "cpu-fault" => conf.selftest = SelfTest::CpuFault,
                _ => report(bad),
            },
            _ => report(ConfProblem { line, kind: ProblemKind::UnknownKey(key) }),
        }
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn parse_all(s: &[u8]) -> (BootConf, Vec<ConfProblem<'_>>) {
        let mut problems = Vec::new();
        let conf = parse(s, |p| problems.push(p));
        (conf, problems)
    }

    #[test]
    fn parses_settings_and_comments() {
        let (conf, problems) =
            parse_all(b"# written by hv-boot\nlog_level = debug\n\nwhen_idle=power-off # tests\nselftest=cpu-fault\n");
        assert!(problems.is_empty());
        assert_eq!(
            conf,
            BootConf { log_level: LogLevel::Debug, when_idle: WhenIdle::PowerOff, selftest: SelfTest::CpuFault }
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse_all(b"").0, BootConf::default());
    }

    #[test]
    fn problems_are_reported_and_defaults_kept() {
        let (conf, problems) = parse_all(b"log_level=loud\nspeed=11\njunk\nwhen_idle=halt\n");
        assert_eq!(conf, BootConf::default());
        assert_eq!(
            problems,
            [
                ConfProblem { line: 1, kind: ProblemKind::BadValue { key: "log_level", value: "loud" } },
                ConfProblem { line: 2, kind: ProblemKind::UnknownKey("speed") },
                ConfProblem { line: 3, kind: ProblemKind::NoEquals },
            ]
        );
        assert_eq!(alloc::format!("{}", problems[1]), "hypervisor.conf line 2: unknown key 'speed'");
    }

    #[test]
    fn binary_junk_is_rejected_whole() {
        let (conf, problems) = parse_all(&[0xff, 0xfe, b'=']);
        assert_eq!(conf, BootConf::default());
        assert_eq!(problems[0].kind, ProblemKind::NotText);
    }
}
