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
    /// Use APIC virtualization (virtual-interrupt delivery) for guests in x2APIC mode
    /// when the CPU has it (`apicv=on`, the default); `apicv=off` forces the software
    /// path (for testing both).
    pub apicv: bool,
    /// Stamp each partition console line with the TSC ticks since the partition was
    /// created (`console_timestamps=on`; for measurements such as Linux boot time).
    pub console_timestamps: bool,
}

impl Default for BootConf {
    fn default() -> Self {
        Self {
            log_level: LogLevel::Info,
            when_idle: WhenIdle::Halt,
            selftest: SelfTest::None,
            apicv: true,
            console_timestamps: false,
        }
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
    /// A `partition=` line that was rejected (and skipped), with the reason.
    BadPartition(&'static str),
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
            ProblemKind::BadPartition(why) => {
                write!(f, "hypervisor.conf line {}: partition skipped: {why}", self.line)
            }
        }
    }
}

/// Most CPUs a partition line may list (and most vCPUs a partition may have).
pub const MAX_VCPUS: usize = 64;
/// Largest partition the hypervisor accepts, in MiB (64 GiB).
pub const MAX_MEMORY_MIB: u32 = 65_536;
/// Most Multiboot modules a partition line may list.
pub const MAX_MODULES: usize = hv_abi::service::MAX_MULTIBOOT_MODULES;

/// The kind of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKind {
    Service,
    Guest,
}

/// The mode a partition's boot vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// 64-bit mode with the hypervisor's boot page tables (`hv_abi::start`).
    Long,
    /// Real mode at the entry point (below 1 MiB); the guest does the rest.
    Real,
    /// 32-bit flat protected mode, paging off.
    Protected,
}

/// What a guest's platform reset (0xCF9, the keyboard controller, the FADT reset
/// register) does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReset {
    /// The service partition rebuilds and restarts it, as a PC reboots.
    #[default]
    Reboot,
    /// It is stopped.
    Stop,
}

/// One Multiboot module of a `modules=` list: two files of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModuleFiles<'a> {
    /// Path of the module's contents.
    pub data: &'a str,
    /// Path of the module's string (a text file, checked as a command line is).
    pub string: &'a str,
}

/// One `partition=` line, validated:
/// `partition=name=N,kind=guest|service,memory_mib=M,vcpus=V[,cpus=A+B],image=P[,load=0x..,entry=0x..][,devices=D+E][,initrd=P][,cmdline=P][,modules=D:S+D:S][,on_reset=reboot|stop]`.
///
/// `modules` lists 1 to [`MAX_MODULES`] Multiboot modules, each as the payload paths of
/// its contents and of its string, `DATA:STRING`, joined by `+`; a second `modules=`
/// field replaces the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpec<'a> {
    pub name: &'a str,
    pub kind: PartitionKind,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Physical CPU of each vCPU, when pinned (`cpus_len == vcpus`), else `cpus_len == 0`.
    pub cpus: [u32; MAX_VCPUS],
    pub cpus_len: usize,
    /// Path of the image inside the payload.
    pub image: &'a str,
    /// Load address and entry point of a flat image the hypervisor can start itself.
    pub flat: Option<(u64, u64)>,
    pub start: StartMode,
    /// The emulated devices whose ports are forwarded to the service partition.
    pub devices: hv_abi::platform::devices::DeviceSet,
    /// Path inside the payload of the initial RAM disk (Linux `initrd`), if any.
    pub initrd: Option<&'a str>,
    /// Path inside the payload of the kernel command line (a text file), if any.
    pub cmdline: Option<&'a str>,
    /// The Multiboot modules, in order: the first `modules_len` entries.
    pub modules: [ModuleFiles<'a>; MAX_MODULES],
    pub modules_len: usize,
    /// What a platform reset of the guest does (default: reboot).
    pub on_reset: OnReset,
}

impl<'a> PartitionSpec<'a> {
    /// The physical CPUs the vCPUs are pinned to (empty when not pinned).
    #[must_use]
    pub fn pinned_cpus(&self) -> &[u32] {
        &self.cpus[..self.cpus_len]
    }

    /// The Multiboot modules listed (empty when none).
    #[must_use]
    pub fn modules(&self) -> &[ModuleFiles<'a>] {
        self.modules.get(..self.modules_len).unwrap_or(&[])
    }

    /// RAM size in bytes.
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Whether `name` is a valid partition name: 1 to 32 of a-z, 0-9 and '-'.
#[must_use]
pub fn is_partition_name(name: &[u8]) -> bool {
    (1..=32).contains(&name.len()) && name.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses the value of a `partition=` line.
pub fn parse_partition(value: &str) -> Result<PartitionSpec<'_>, &'static str> {
    let mut spec = PartitionSpec {
        name: "",
        kind: PartitionKind::Guest,
        memory_mib: 0,
        vcpus: 0,
        cpus: [0; MAX_VCPUS],
        cpus_len: 0,
        image: "",
        flat: None,
        start: StartMode::Long,
        devices: hv_abi::platform::devices::DeviceSet(0),
        initrd: None,
        cmdline: None,
        modules: [ModuleFiles::default(); MAX_MODULES],
        modules_len: 0,
        on_reset: OnReset::Reboot,
    };
    let (mut kind, mut load, mut entry) = (None, None, None);
    for field in value.split(',') {
        let (key, val) = field.split_once('=').ok_or("a field without '='")?;
        let val = val.trim();
        match key.trim() {
            "name" => spec.name = val,
            "kind" => {
                kind = Some(match val {
                    "guest" => PartitionKind::Guest,
                    "service" => PartitionKind::Service,
                    _ => return Err("kind must be guest or service"),
                })
            }
            "memory_mib" => {
                spec.memory_mib = parse_number(val)
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| (1..=MAX_MEMORY_MIB).contains(m))
                    .ok_or("memory_mib must be 1 to 65536")?
            }
            "vcpus" => {
                spec.vcpus = parse_number(val)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| (1..=MAX_VCPUS as u32).contains(v))
                    .ok_or("vcpus must be 1 to 64")?
            }
            "cpus" => {
                for cpu in val.split('+') {
                    if spec.cpus_len == MAX_VCPUS {
                        return Err("more than 64 cpus listed");
                    }
                    let cpu = parse_number(cpu).and_then(|c| u32::try_from(c).ok()).ok_or("cpus must be numbers")?;
                    if spec.pinned_cpus().contains(&cpu) {
                        return Err("a cpu is listed twice");
                    }
                    spec.cpus[spec.cpus_len] = cpu;
                    spec.cpus_len += 1;
                }
            }
            "image" => spec.image = val,
            "start" => {
                spec.start = match val {
                    "long" => StartMode::Long,
                    "real" => StartMode::Real,
                    "protected" => StartMode::Protected,
                    _ => return Err("start must be long, protected or real"),
                }
            }
            "devices" => {
                for name in val.split('+') {
                    spec.devices = spec.devices.with(name.trim()).ok_or("devices names an unknown device")?;
                }
            }
            "initrd" if !val.is_empty() => spec.initrd = Some(val),
            "cmdline" if !val.is_empty() => spec.cmdline = Some(val),
            "modules" => {
                spec.modules_len = 0;
                for entry in val.split('+') {
                    let (data, string) = entry.split_once(':').ok_or("modules entries must be DATA:STRING paths")?;
                    let (data, string) = (data.trim(), string.trim());
                    if data.is_empty() || string.is_empty() {
                        return Err("modules entries must be DATA:STRING paths");
                    }
                    let slot = spec.modules.get_mut(spec.modules_len).ok_or("more than 16 modules listed")?;
                    *slot = ModuleFiles { data, string };
                    spec.modules_len += 1;
                }
            }
            "on_reset" => {
                spec.on_reset = match val {
                    "reboot" => OnReset::Reboot,
                    "stop" => OnReset::Stop,
                    _ => return Err("on_reset must be reboot or stop"),
                }
            }
            "load" => load = Some(parse_number(val).ok_or("load must be a number")?),
            "entry" => entry = Some(parse_number(val).ok_or("entry must be a number")?),
            _ => return Err("unknown field"),
        }
    }
    spec.kind = kind.ok_or("kind is missing")?;
    if !is_partition_name(spec.name.as_bytes()) {
        return Err("name must be 1 to 32 of a-z, 0-9, '-'");
    }
    if spec.memory_mib == 0 || spec.vcpus == 0 || spec.image.is_empty() {
        return Err("memory_mib, vcpus and image are required");
    }
    if spec.cpus_len != 0 && spec.cpus_len != spec.vcpus as usize {
        return Err("cpus must list one cpu per vcpu");
    }
    spec.flat = match (load, entry) {
        (Some(l), Some(e)) => Some((l, e)),
        (None, None) => None,
        _ => return Err("load and entry go together"),
    };
    Ok(spec)
}

/// Parses the file without collecting partitions (see [`parse_with_partitions`]).
pub fn parse<'a>(bytes: &'a [u8], report: impl FnMut(ConfProblem<'a>)) -> BootConf {
    parse_with_partitions(bytes, report, |_| {})
}

/// Parses the file. Returns the settings (defaults where a line was bad), calls
/// `report` for every problem and `partition` for every valid `partition=` line.
pub fn parse_with_partitions<'a>(
    bytes: &'a [u8],
    mut report: impl FnMut(ConfProblem<'a>),
    mut partition: impl FnMut(PartitionSpec<'a>),
) -> BootConf {
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
            "partition" => match parse_partition(value) {
                Ok(spec) => partition(spec),
                Err(why) => report(ConfProblem { line, kind: ProblemKind::BadPartition(why) }),
            },
            "selftest" => match value {
                "none" => conf.selftest = SelfTest::None,
                "cpu-fault" => conf.selftest = SelfTest::CpuFault,
                _ => report(bad),
            },
            "apicv" => match value {
                "on" => conf.apicv = true,
                "off" => conf.apicv = false,
                _ => report(bad),
            },
            "console_timestamps" => match value {
                "on" => conf.console_timestamps = true,
                "off" => conf.console_timestamps = false,
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
            BootConf {
                log_level: LogLevel::Debug,
                when_idle: WhenIdle::PowerOff,
                selftest: SelfTest::CpuFault,
                apicv: true,
                console_timestamps: false,
            }
        );
    }

    #[test]
    fn apicv_is_on_unless_turned_off() {
        assert!(BootConf::default().apicv);
        assert!(!BootConf::default().console_timestamps);
        assert!(parse_all(b"console_timestamps=on\n").0.console_timestamps);
        let (conf, problems) = parse_all(b"apicv=off\n");
        assert!(problems.is_empty());
        assert_eq!(conf, BootConf { apicv: false, ..BootConf::default() });
        let (conf, problems) = parse_all(b"apicv=off\napicv = on\n");
        assert!(problems.is_empty());
        assert!(conf.apicv);
        let (conf, problems) = parse_all(b"apicv=false\n");
        assert!(conf.apicv);
        assert_eq!(problems, [ConfProblem { line: 1, kind: ProblemKind::BadValue { key: "apicv", value: "false" } }]);
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
    fn partition_lines_are_parsed_and_validated() {
        let text = b"partition=name=hello,kind=guest,memory_mib=16,vcpus=2,cpus=1+3,image=images/hello,load=0x200000,entry=0x200010,start=real\n\
                     partition=name=svc,kind=service,memory_mib=64,vcpus=1,image=images/svc\n\
                     partition=name=BAD,kind=guest,memory_mib=16,vcpus=1,image=x\n\
                     partition=name=a,kind=guest,memory_mib=0,vcpus=1,image=x\n\
                     partition=name=b,kind=guest,memory_mib=1,vcpus=2,cpus=1,image=x\n\
                     partition=name=c,kind=guest,memory_mib=1,vcpus=1,image=x,load=0x1000\n\
                     partition=name=d,kind=vm,memory_mib=1,vcpus=1,image=x\n";
        let mut parts = Vec::new();
        let mut problems = Vec::new();
        parse_with_partitions(text, |p| problems.push(p), |s| parts.push(s));
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name, parts[0].vcpus, parts[0].pinned_cpus()), ("hello", 2, &[1, 3][..]));
        assert_eq!(parts[0].flat, Some((0x20_0000, 0x20_0010)));
        assert_eq!((parts[0].start, parts[1].start), (StartMode::Real, StartMode::Long));
        assert_eq!(parts[0].memory_bytes(), 16 << 20);
        assert_eq!((parts[1].kind, parts[1].flat, parts[1].pinned_cpus()), (PartitionKind::Service, None, &[][..]));
        assert!(parts[0].devices.is_empty());
        assert_eq!((parts[0].on_reset, parts[1].on_reset), (OnReset::Reboot, OnReset::Reboot));
        let with = parse_partition("name=g,kind=guest,memory_mib=16,vcpus=1,image=x,devices=com1+pci").unwrap();
        assert!(with.devices.claims_port(0x3f8) && with.devices.claims_port(0xcfc) && !with.devices.claims_port(0x40));
        assert!(parse_partition("name=g,kind=guest,memory_mib=16,vcpus=1,image=x,devices=floppy").is_err());
        assert_eq!((with.initrd, with.cmdline), (None, None));
        let linux = parse_partition(
            "name=g,kind=guest,memory_mib=16,vcpus=1,image=x,initrd=images/g.initrd,cmdline=images/g.cmdline",
        )
        .unwrap();
        assert_eq!((linux.initrd, linux.cmdline), (Some("images/g.initrd"), Some("images/g.cmdline")));
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7]);
        assert!(problems.iter().all(|p| matches!(p.kind, ProblemKind::BadPartition(_))));
    }

    #[test]
    fn on_reset_is_reboot_unless_stop() {
        let line = "name=g,kind=guest,memory_mib=16,vcpus=1,image=x";
        assert_eq!(parse_partition(line).unwrap().on_reset, OnReset::Reboot);
        let stop = alloc::format!("{line},on_reset=stop");
        assert_eq!(parse_partition(&stop).unwrap().on_reset, OnReset::Stop);
        let reboot = alloc::format!("{line},on_reset=stop,on_reset=reboot");
        assert_eq!(parse_partition(&reboot).unwrap().on_reset, OnReset::Reboot);
        for bad in ["halt", "", "Stop"] {
            let text = alloc::format!("{line},on_reset={bad}");
            assert_eq!(parse_partition(&text), Err("on_reset must be reboot or stop"), "{bad:?}");
        }
    }

    #[test]
    fn modules_are_pairs_of_payload_paths() {
        let line = "name=mb,kind=guest,memory_mib=16,vcpus=1,image=images/mb,cmdline=images/mb.cmdline";
        assert!(parse_partition(line).unwrap().modules().is_empty());
        let two = alloc::format!("{line},modules=images/mb.module0:images/mb.module0.string+ a:b ");
        let spec = parse_partition(&two).unwrap();
        assert_eq!(
            spec.modules(),
            [
                ModuleFiles { data: "images/mb.module0", string: "images/mb.module0.string" },
                ModuleFiles { data: "a", string: "b" },
            ]
        );
        assert_eq!(spec.cmdline, Some("images/mb.cmdline"));
        // A second list replaces the first.
        let again = alloc::format!("{two},modules=c:d");
        assert_eq!(parse_partition(&again).unwrap().modules(), [ModuleFiles { data: "c", string: "d" }]);
        for bad in ["", "a", "a:", ":b", "a:b+", "a:b++c:d", " : "] {
            let text = alloc::format!("{line},modules={bad}");
            assert_eq!(parse_partition(&text), Err("modules entries must be DATA:STRING paths"), "{bad:?}");
        }
        let list = |n: usize| (0..n).map(|i| alloc::format!("d{i}:s{i}")).collect::<Vec<_>>().join("+");
        let full = alloc::format!("{line},modules={}", list(MAX_MODULES));
        let spec = parse_partition(&full).unwrap();
        assert_eq!(spec.modules().len(), MAX_MODULES);
        assert_eq!(spec.modules()[MAX_MODULES - 1], ModuleFiles { data: "d15", string: "s15" });
        let over = alloc::format!("{line},modules={}", list(MAX_MODULES + 1));
        assert_eq!(parse_partition(&over), Err("more than 16 modules listed"));
        assert_eq!(MAX_MODULES, 16, "the message above names the limit");
        // Through the whole-file parser: a bad list skips the partition with a line.
        let text = alloc::format!("partition={line},modules=x\npartition={full}\n");
        let mut parts = Vec::new();
        let mut problems = Vec::new();
        parse_with_partitions(text.as_bytes(), |p| problems.push(p), |s| parts.push(s));
        assert_eq!(parts.len(), 1);
        assert_eq!(
            problems,
            [ConfProblem { line: 1, kind: ProblemKind::BadPartition("modules entries must be DATA:STRING paths") }]
        );
    }

    #[test]
    fn binary_junk_is_rejected_whole() {
        let (conf, problems) = parse_all(&[0xff, 0xfe, b'=']);
        assert_eq!(conf, BootConf::default());
        assert_eq!(problems[0].kind, ProblemKind::NotText);
    }
}
