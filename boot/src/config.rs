//! The partition config file: schema, parsing and validation.
//!
//! A config file is TOML:
//!
//! ```toml
//! [hypervisor]
//! log_level = "info"      # error|warn|info|debug|trace (default info)
//! when_idle = "halt"      # "halt" | "power-off" (default halt)
//! selftest = "none"       # "none" | "cpu-fault" (default none; see SelfTest)
//! console_timestamps = false  # stamp partition console lines with the TSC ticks since
//!                         # the partition was created: `[name +TICKS] ` (default false)
//! apicv = true            # use APIC virtualization (virtual-interrupt delivery) for guests
//!                         # in x2APIC mode when the CPU has it; false forces the software
//!                         # path (for testing both) (default true)
//!
//! [[partition]]           # zero to 16 (hv_abi::service::MAX_VMS, the service included)
//! name = "hello"          # [a-z0-9-]{1,32}, unique
//! kind = "guest"          # "service" | "guest"; at most one service
//! memory_mib = 16         # 2..=65536, even (2 MiB pages); with a service partition the
//!                         # guests' total must fit its pool (2 GiB)
//! vcpus = 1               # 1..=64 (the service partition gets one vCPU on every CPU instead)
//! cpus = [1]              # optional; if present length == vcpus, no duplicates
//! start = "long"         # optional: "long" (default), "protected" or "real" (see
//!                         # StartMode); the service partition only "long"
//! devices = ["pc"]       # optional: emulated devices whose ports go to the service
//!                         # partition: "pc" (all) or names of hv_abi::platform::devices
//!                         # (com1, pit, pic, rtc, acpi-pm, pci, kbd, debug-exit, debugcon,
//!                         # fw-cfg, post; the test devices svc-fault-test, mmio-test and
//!                         # delay-test); default none (every port unclaimed)
//! image = "path/to/file"  # relative to the config file's directory, or
//!                         # "guest:NAME" for a test guest from guest-images/ (built by xtask),
//!                         # or "linux:NAME" for the Linux guest material xtask fetches
//!                         # and builds (linux:bzImage, linux:initramfs.cpio.gz)
//! initrd = "path"         # optional (Linux bzImage guests): the initial RAM disk, resolved
//!                         # like `image`
//! cmdline = "console=ttyS0"  # optional (Linux bzImage and Multiboot guests): the kernel
//!                         # command line, printable ASCII, at most 2047 bytes (Linux
//!                         # default "console=ttyS0"); a Multiboot kernel gets the `image`
//!                         # value, a space and this, as QEMU's -kernel/-append give it
//!                         # (just the `image` value without `cmdline`)
//! modules = ["path args"] # optional (Multiboot guests): the boot modules, in order, as
//!                         # QEMU's -initrd "path args,path2" gives them: each string up to
//!                         # its first space names the file (resolved like `image`), and the
//!                         # whole string, printable ASCII, at most 2047 bytes, is the
//!                         # module's string; at most 16 modules
//! on_reset = "reboot"     # optional (guests): what a platform reset (0xCF9, the keyboard
//!                         # controller, the FADT reset register) does: "reboot" (default;
//!                         # the service partition rebuilds and restarts the guest) or
//!                         # "stop" (the guest is stopped)
//! ```
//!
//! [`load`] parses a file and validates it into a [`Config`]; every problem is reported
//! as a [`ConfigError`] whose `Display` names the file, the field and the fix.
//!
//! `cmdline`, `initrd` and `modules` must suit the image: a Linux bzImage takes
//! `cmdline` and `initrd`, a Multiboot kernel `cmdline` and `modules` (`initrd` is
//! refused with the fix to use `modules`, which is what QEMU makes of `-initrd` for a
//! Multiboot kernel), and an x86-64 ELF image none of them (its start contract passes
//! only the RAM size, so they would be dropped without a word). An image of none of
//! these kinds is not judged here: the service partition reports it when it builds the
//! guest.

use hv_loader::ImageKind;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Longest allowed partition name.
pub const MAX_NAME_LEN: usize = 32;
/// Allowed range of `memory_mib`.
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<i64> = 1..=65536;
/// Allowed range of `vcpus`.
pub const VCPUS_RANGE: std::ops::RangeInclusive<i64> = 1..=64;

/// Verbosity of the kernel's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The normal level.
    #[default]
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The spelling used in config files and in `hypervisor.conf`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// What the kernel does once it is ready and has nothing left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenIdle {
    /// Idle forever (interactive use, `cargo xtask run`).
    #[default]
    Halt,
    /// Power the machine off with code 0 (tests).
    PowerOff,
}

impl WhenIdle {
    /// The spelling used in config files and in `hypervisor.conf`.
    pub fn as_str(self) -> &'static str {
        match self {
            WhenIdle::Halt => "halt",
            WhenIdle::PowerOff => "power-off",
        }
    }
}

/// A fault the kernel injects into itself at boot (`selftest` in `[hypervisor]`), to
/// show that a CPU exception is reported and halts only the CPU that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelfTest {
    /// No self-test (the default).
    #[default]
    None,
    /// The last application processor reads its own stack guard page after VMXON.
    CpuFault,
}

impl SelfTest {
    /// The spelling used in config files and in `hypervisor.conf`.
    pub fn as_str(self) -> &'static str {
        match self {
            SelfTest::None => "none",
            SelfTest::CpuFault => "cpu-fault",
        }
    }
}

/// The CPU mode a partition's boot vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// 64-bit mode with identity page tables (`hv_abi::start`).
    #[default]
    Long,
    /// Real mode at the image's entry point (below 1 MiB), as after INIT-SIPI; the
    /// guest sets up protected and long mode itself.
    Real,
    /// 32-bit flat protected mode, paging off (as Multiboot loaders hand over).
    Protected,
}

/// What a guest's platform reset does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReset {
    /// The service partition rebuilds and restarts the guest, as a PC reboots.
    #[default]
    Reboot,
    /// The guest is stopped.
    Stop,
}

/// The kind of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionKind {
    /// The (single) service partition.
    Service,
    /// An ordinary guest.
    Guest,
}

/// The `[hypervisor]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypervisorSettings {
    /// Kernel log level.
    #[serde(default)]
    pub log_level: LogLevel,
    /// Behaviour once ready.
    #[serde(default)]
    pub when_idle: WhenIdle,
    /// A deliberate fault at boot (tests and new-machine checks).
    #[serde(default, skip_serializing_if = "is_no_selftest")]
    pub selftest: SelfTest,
    /// Use APIC virtualization (virtual-interrupt delivery) for guests in x2APIC mode
    /// when the CPU has it; `false` forces the software path (for testing both).
    #[serde(default = "default_apicv")]
    pub apicv: bool,
    /// Stamp each partition console line with the TSC ticks since the partition was
    /// created, as `[name +TICKS] ` (measurements such as `cargo xtask bench`'s Linux
    /// boot profile).
    #[serde(default, skip_serializing_if = "is_false")]
    pub console_timestamps: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for HypervisorSettings {
    fn default() -> Self {
        Self {
            log_level: LogLevel::default(),
            when_idle: WhenIdle::default(),
            selftest: SelfTest::default(),
            apicv: default_apicv(),
            console_timestamps: false,
        }
    }
}

fn is_no_selftest(s: &SelfTest) -> bool {
    *s == SelfTest::None
}

fn default_apicv() -> bool {
    true
}

/// A `[[partition]]` entry exactly as written in the file (before validation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    name: String,
    kind: PartitionKind,
    memory_mib: i64,
    vcpus: i64,
    #[serde(default)]
    cpus: Option<Vec<i64>>,
    image: String,
    #[serde(default)]
    start: StartMode,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    initrd: Option<String>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    modules: Option<Vec<String>>,
    #[serde(default)]
    on_reset: Option<OnReset>,
}

/// The whole file exactly as written (before validation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    hypervisor: HypervisorSettings,
    #[serde(default)]
    partition: Vec<RawPartition>,
}

/// A validated partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Unique name, `[a-z0-9-]{1,32}`.
    pub name: String,
    /// Service or guest.
    pub kind: PartitionKind,
    /// Memory size in MiB.
    pub memory_mib: u32,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Physical CPUs to pin the virtual CPUs to, if given (one per vCPU).
    pub cpus: Option<Vec<u32>>,
    /// The image file on the host (the config's relative path resolved).
    pub image: PathBuf,
    /// The boot vCPU's start mode.
    pub start: StartMode,
    /// The emulated devices (names of `hv_abi::platform::devices::ALL`) whose ports
    /// are forwarded to the service partition; empty: none.
    pub devices: Vec<String>,
    /// The initial RAM disk on the host, if any (Linux guests).
    pub initrd: Option<PathBuf>,
    /// The kernel command line, if given (Linux and Multiboot guests), as written.
    pub cmdline: Option<String>,
    /// The command line the guest gets (`images/NAME.cmdline` in the payload), if any:
    /// `cmdline` for a Linux guest; for a Multiboot kernel the `image` value as written,
    /// then a space and `cmdline` when given, as QEMU's `-kernel` gives it.
    pub kernel_cmdline: Option<String>,
    /// The Multiboot modules, in order (empty: none).
    pub modules: Vec<Module>,
    /// What a platform reset does (guests; the service partition keeps the default).
    pub on_reset: OnReset,
}

/// A Multiboot module of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The file on the host (the string's first word, resolved like `image`).
    pub file: PathBuf,
    /// The module's string as written in the config (file name and arguments): what the
    /// guest finds as the module's `string`.
    pub string: String,
}

impl Partition {
    /// Path of this partition's image inside the boot payload.
    pub fn payload_image_path(&self) -> String {
        format!("images/{}", self.name)
    }

    /// Path of this partition's initial RAM disk inside the boot payload.
    pub fn payload_initrd_path(&self) -> String {
        format!("images/{}.initrd", self.name)
    }

    /// Path of this partition's kernel command line inside the boot payload.
    pub fn payload_cmdline_path(&self) -> String {
        format!("images/{}.cmdline", self.name)
    }

    /// Path of the contents of this partition's Multiboot module `index` inside the
    /// boot payload.
    pub fn payload_module_path(&self, index: usize) -> String {
        format!("images/{}.module{index}", self.name)
    }

    /// Path of the string of this partition's Multiboot module `index` inside the boot
    /// payload.
    pub fn payload_module_string_path(&self, index: usize) -> String {
        format!("images/{}.module{index}.string", self.name)
    }
}

/// Most Multiboot modules of a partition (see `hv_abi::service::MAX_MULTIBOOT_MODULES`).
pub use hv_abi::service::MAX_MULTIBOOT_MODULES;

/// Longest kernel command line accepted (see `hv_abi::service::MAX_CMDLINE_LEN`).
pub use hv_abi::service::MAX_CMDLINE_LEN;

/// Where the material that `cargo xtask` builds lives: `image = "guest:NAME"` resolves
/// in `guests`, `"linux:NAME"` in `linux`. Without a directory such names are an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltMaterial<'a> {
    /// The directory of the built test guests and the service partition.
    pub guests: Option<&'a Path>,
    /// The directory of the Linux guest material (kernel, initramfs).
    pub linux: Option<&'a Path>,
}

/// A validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// The `[hypervisor]` settings (defaults filled in).
    pub hypervisor: HypervisorSettings,
    /// The partitions, in file order.
    pub partitions: Vec<Partition>,
}

/// Serialisable form of a partition inside the payload's `config.toml`.
#[derive(Serialize)]
struct CanonicalPartition<'a> {
    name: &'a str,
    kind: PartitionKind,
    memory_mib: u32,
    vcpus: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<&'a [u32]>,
    image: String,
    start: StartMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    modules: Vec<String>,
    on_reset: OnReset,
}

/// Serialisable form of the payload's `config.toml`.
#[derive(Serialize)]
struct CanonicalConfig<'a> {
    hypervisor: HypervisorSettings,
    partition: Vec<CanonicalPartition<'a>>,
}

impl Config {
    /// The canonical re-serialisation stored as `config.toml` in the boot payload (for
    /// the record; nothing at run time reads it): the defaults written out (but
    /// `selftest` and `console_timestamps` only when set, and no `devices`), and each
    /// `image` rewritten to its path inside the payload (`images/<name>`).
    pub fn to_canonical_toml(&self) -> String {
        let canonical = CanonicalConfig {
            hypervisor: self.hypervisor,
            partition: self
                .partitions
                .iter()
                .map(|p| CanonicalPartition {
                    name: &p.name,
                    kind: p.kind,
                    memory_mib: p.memory_mib,
                    vcpus: p.vcpus,
                    cpus: p.cpus.as_deref(),
                    image: p.payload_image_path(),
                    start: p.start,
                    initrd: p.initrd.as_ref().map(|_| p.payload_initrd_path()),
                    cmdline: p.cmdline.as_deref(),
                    modules: (0..p.modules.len()).map(|k| canonical_module(p, k)).collect(),
                    on_reset: p.on_reset,
                })
                .collect(),
        };
        toml::to_string(&canonical).expect("a validated config always serialises")
    }

    /// The `hypervisor.conf` file of the boot payload (`key=value` lines).
    pub fn hypervisor_conf(&self) -> String {
        let mut conf = format!(
            "log_level={}\nwhen_idle={}\n",
            self.hypervisor.log_level.as_str(),
            self.hypervisor.when_idle.as_str()
        );
        if self.hypervisor.selftest != SelfTest::None {
            conf.push_str(&format!("selftest={}\n", self.hypervisor.selftest.as_str()));
        }
        if !self.hypervisor.apicv {
            conf.push_str("apicv=off\n");
        }
        if self.hypervisor.console_timestamps {
            conf.push_str("console_timestamps=on\n");
        }
        conf
    }
}

/// Why a config file was rejected.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The config file.
        file: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown field, wrong type,
    /// unknown value...). The message from the parser names the field and the line.
    Parse {
        /// The config file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field has a value the hypervisor cannot accept.
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The field, e.g. `partition[1].memory_mib` (index 0-based, as in the file).
        field: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, error } => write!(
                f,
                "config file {}: cannot read it: {error}; fix: check the path given with --config",
                file.display()
            ),
            ConfigError::Parse { file, message } => {
                write!(f, "config file {}: ", file.display())?;
                for line in message.trim_end().lines() {
                    writeln!(f, "{line}")?;
                }
                write!(
                    f,
                    "fix: correct the field or value shown (fields: [hypervisor] log_level, \
                     when_idle, selftest, apicv, console_timestamps; [[partition]] name, kind, memory_mib, vcpus, cpus, image, start, \
                     devices, initrd, cmdline, modules, on_reset)"
                )
            }
            ConfigError::Invalid { file, field, problem, fix } => {
                write!(f, "config file {}: field `{field}`: {problem}; fix: {fix}", file.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The field a validation error is about (`None` for read/parse errors).
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Reads and validates a config file. Relative `image` paths are resolved against the
/// directory containing `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_guests(path, None)
}

/// Like [`load`], resolving `image = "guest:NAME"` to `NAME` in `guests`, the directory of
/// the test guests built by `cargo xtask` (without it such images are an error).
pub fn load_with_guests(path: &Path, guests: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_material(path, BuiltMaterial { guests, linux: None })
}

/// Like [`load`], resolving `guest:` and `linux:` names in the directories of `built`.
pub fn load_with_material(path: &Path, built: BuiltMaterial<'_>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { file: path.to_path_buf(), error })?;
    let raw: RawConfig =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { file: path.to_path_buf(), message: e.to_string() })?;
    validate(raw, path, built)
}

/// Whether the config file names Linux guest material (`"linux:..."` as an image or
/// initrd), which `cargo xtask` then fetches and builds first. A file that cannot be read
/// or parsed names none (loading it reports the problem).
pub fn uses_linux_material(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    let Ok(raw) = toml::from_str::<RawConfig>(&text) else { return false };
    raw.partition.iter().any(|p| {
        p.image.starts_with(LINUX_MATERIAL_PREFIX)
            || p.initrd.as_deref().is_some_and(|i| i.starts_with(LINUX_MATERIAL_PREFIX))
            || p.modules.iter().flatten().any(|m| m.starts_with(LINUX_MATERIAL_PREFIX))
    })
}

/// Parses and validates config text as if read from `path` (used to name the file in
/// errors and to resolve relative image paths).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with_guests(text, path, None)
}

/// [`parse`] with the built test guests' directory (see [`load_with_guests`]).
pub fn parse_with_guests(text: &str, path: &Path, guests: Option<&Path>) -> Result<Config, ConfigError> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| ConfigError::Parse { file: path.to_path_buf(), message: e.to_string() })?;
    validate(raw, path, BuiltMaterial { guests, linux: None })
}

/// The prefix of `image` values that name a test guest from `guest-images/`.
pub const GUEST_IMAGE_PREFIX: &str = "guest:";

/// The prefix of `image`/`initrd` values that name Linux guest material built by
/// `cargo xtask` (`linux:bzImage`, `linux:initramfs.cpio.gz`).
pub const LINUX_MATERIAL_PREFIX: &str = "linux:";

/// Checks a partition name against `[a-z0-9-]{1,32}`.
fn name_is_valid(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn validate(raw: RawConfig, path: &Path, built: BuiltMaterial<'_>) -> Result<Config, ConfigError> {
    let invalid = |field: String, problem: String, fix: String| ConfigError::Invalid {
        file: path.to_path_buf(),
        field,
        problem,
        fix,
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };

    let max_partitions = hv_abi::service::MAX_VMS as usize;
    if raw.partition.len() > max_partitions {
        return Err(invalid(
            "partition".to_string(),
            format!("{} partitions are declared; the hypervisor holds {max_partitions}", raw.partition.len()),
            format!("declare at most {max_partitions} partitions, the service partition included"),
        ));
    }
    let mut partitions: Vec<Partition> = Vec::with_capacity(raw.partition.len());
    let mut service: Option<usize> = None;
    for (i, p) in raw.partition.into_iter().enumerate() {
        let field = |name: &str| format!("partition[{i}].{name}");

        if !name_is_valid(&p.name) {
            return Err(invalid(
                field("name"),
                format!("{:?} is not a valid partition name", p.name),
                format!("use 1 to {MAX_NAME_LEN} characters from a-z, 0-9 and '-' (e.g. \"guest-1\")"),
            ));
        }
        if let Some(j) = partitions.iter().position(|q| q.name == p.name) {
            return Err(invalid(
                field("name"),
                format!("name {:?} is already used by partition[{j}]", p.name),
                "give every partition a unique name".to_string(),
            ));
        }
        if p.kind == PartitionKind::Service {
            if let Some(j) = service {
                return Err(invalid(
                    field("kind"),
                    format!("partition[{j}] is already the service partition"),
                    "declare at most one partition with kind = \"service\"; make the others \
                     kind = \"guest\""
                        .to_string(),
                ));
            }
            service = Some(i);
        }
        if !MEMORY_MIB_RANGE.contains(&p.memory_mib) {
            return Err(invalid(
                field("memory_mib"),
                format!("{} MiB is out of range", p.memory_mib),
                format!("use a value from {} to {}", MEMORY_MIB_RANGE.start(), MEMORY_MIB_RANGE.end()),
            ));
        }
        if p.memory_mib % 2 != 0 {
            return Err(invalid(
                field("memory_mib"),
                format!("{} MiB is not a multiple of 2", p.memory_mib),
                "use an even number of MiB: guest RAM is mapped in 2 MiB pages".to_string(),
            ));
        }
        if p.kind == PartitionKind::Service && p.start != StartMode::Long {
            return Err(invalid(
                field("start"),
                "the service partition always starts in 64-bit mode".to_string(),
                "remove `start` from the service partition".to_string(),
            ));
        }
        if !VCPUS_RANGE.contains(&p.vcpus) {
            return Err(invalid(
                field("vcpus"),
                format!("{} vCPUs is out of range", p.vcpus),
                format!("use a value from {} to {}", VCPUS_RANGE.start(), VCPUS_RANGE.end()),
            ));
        }
        let cpus = match p.cpus {
            None => None,
            Some(list) => {
                if list.len() as i64 != p.vcpus {
                    return Err(invalid(
                        field("cpus"),
                        format!("lists {} CPUs but vcpus = {}", list.len(), p.vcpus),
                        "list exactly one physical CPU per vCPU, or remove `cpus`".to_string(),
                    ));
                }
                let mut out = Vec::with_capacity(list.len());
                for (k, &cpu) in list.iter().enumerate() {
                    let cpu = u32::try_from(cpu).map_err(|_| {
                        invalid(
                            format!("partition[{i}].cpus[{k}]"),
                            format!("{cpu} is not a CPU number"),
                            "use CPU numbers starting at 0".to_string(),
                        )
                    })?;
                    if out.contains(&cpu) {
                        return Err(invalid(
                            field("cpus"),
                            format!("CPU {cpu} is listed twice"),
                            "list each physical CPU at most once".to_string(),
                        ));
                    }
                    out.push(cpu);
                }
                Some(out)
            }
        };
        let image = resolve_file(&p.image, "image", &base_dir, built)
            .map_err(|(problem, fix)| invalid(field("image"), problem, fix))?;
        let initrd = match &p.initrd {
            None => None,
            Some(initrd) => Some(
                resolve_file(initrd, "initrd", &base_dir, built)
                    .map_err(|(problem, fix)| invalid(field("initrd"), problem, fix))?,
            ),
        };
        if let Some(cmdline) = &p.cmdline {
            if !hv_abi::service::is_valid_cmdline(cmdline.as_bytes()) {
                return Err(invalid(
                    field("cmdline"),
                    format!("the command line is {} bytes or has characters other than printable ASCII", cmdline.len()),
                    format!("use at most {MAX_CMDLINE_LEN} printable ASCII characters"),
                ));
            }
        }
        let module_strings = p.modules.unwrap_or_default();
        if (initrd.is_some() || p.cmdline.is_some() || !module_strings.is_empty()) && p.kind == PartitionKind::Service {
            let which = if initrd.is_some() {
                "initrd"
            } else if p.cmdline.is_some() {
                "cmdline"
            } else {
                "modules"
            };
            return Err(invalid(
                field(which),
                "the service partition is no Linux or Multiboot kernel".to_string(),
                "remove `initrd`, `cmdline` and `modules` from the service partition".to_string(),
            ));
        }
        if module_strings.len() > MAX_MULTIBOOT_MODULES {
            return Err(invalid(
                field("modules"),
                format!("{} modules are listed", module_strings.len()),
                format!("give at most {MAX_MULTIBOOT_MODULES} modules"),
            ));
        }
        let mut modules = Vec::with_capacity(module_strings.len());
        for (k, string) in module_strings.into_iter().enumerate() {
            let module_field = format!("partition[{i}].modules[{k}]");
            if !hv_abi::service::is_valid_cmdline(string.as_bytes()) {
                return Err(invalid(
                    module_field,
                    format!("the module string is {} bytes or has characters other than printable ASCII", string.len()),
                    format!("use at most {MAX_CMDLINE_LEN} printable ASCII characters: the file, then its arguments"),
                ));
            }
            // As QEMU's -initrd: the string up to its first space names the file.
            let name = string.split(' ').next().unwrap_or("");
            let file = resolve_file(name, "module", &base_dir, built)
                .map_err(|(problem, fix)| invalid(module_field, problem, fix))?;
            modules.push(Module { file, string });
        }
        let kind = match p.kind {
            PartitionKind::Service => ImageKind::Unknown,
            PartitionKind::Guest => boot_files_kind(&image, p.cmdline.is_some(), initrd.is_some(), !modules.is_empty())
                .map_err(|(which, problem, fix)| invalid(field(which), problem, fix))?,
        };
        let kernel_cmdline = match kind {
            ImageKind::Multiboot => {
                let line = match &p.cmdline {
                    Some(cmdline) => format!("{} {cmdline}", p.image),
                    None => p.image.clone(),
                };
                if !hv_abi::service::is_valid_cmdline(line.as_bytes()) {
                    return Err(invalid(
                        field(if p.cmdline.is_some() { "cmdline" } else { "image" }),
                        format!(
                            "the Multiboot command line (the `image` value, a space and `cmdline`) is {} bytes or \
                             has characters other than printable ASCII",
                            line.len()
                        ),
                        format!(
                            "keep `image` and `cmdline` together within {MAX_CMDLINE_LEN} printable ASCII characters"
                        ),
                    ));
                }
                Some(line)
            }
            _ => p.cmdline.clone(),
        };

        if p.on_reset.is_some() && p.kind == PartitionKind::Service {
            return Err(invalid(
                field("on_reset"),
                "the service partition has no platform of its own to reset".to_string(),
                "remove `on_reset` from the service partition".to_string(),
            ));
        }

        let devices = p.devices.unwrap_or_default();
        let mut set = hv_abi::platform::devices::DeviceSet::default();
        for (k, d) in devices.iter().enumerate() {
            set = set.with(d).ok_or_else(|| {
                let known: Vec<&str> = hv_abi::platform::devices::ALL.iter().map(|d| d.name).collect();
                invalid(
                    format!("partition[{i}].devices[{k}]"),
                    format!("{d:?} is not an emulated device"),
                    format!("use \"pc\" (all of them) or some of: {}", known.join(", ")),
                )
            })?;
        }
        if !devices.is_empty() && p.kind == PartitionKind::Service {
            return Err(invalid(
                field("devices"),
                "the service partition emulates devices; it has none of its own".to_string(),
                "remove `devices` from the service partition".to_string(),
            ));
        }
        partitions.push(Partition {
            devices,
            name: p.name,
            kind: p.kind,
            memory_mib: p.memory_mib as u32,
            vcpus: p.vcpus as u32,
            cpus,
            image,
            start: p.start,
            initrd,
            cmdline: p.cmdline,
            kernel_cmdline,
            modules,
            on_reset: p.on_reset.unwrap_or_default(),
        });
    }
    if let Some(svc) = service {
        // The service partition's pool holds every guest's RAM, in one window.
        let guest_mib: u64 =
            partitions.iter().filter(|p| p.kind == PartitionKind::Guest).map(|p| u64::from(p.memory_mib)).sum();
        let pool_mib = hv_abi::service::POOL_MAX_BYTES >> 20;
        if guest_mib > pool_mib {
            return Err(invalid(
                format!("partition[{svc}]"),
                format!("the guests' memory_mib add up to {guest_mib} MiB, more than the service partition's pool ({pool_mib} MiB)"),
                format!("give the guests at most {pool_mib} MiB together"),
            ));
        }
    }

    Ok(Config { source: path.to_path_buf(), hypervisor: raw.hypervisor, partitions })
}

/// A module in the payload's `config.toml`: the payload path of its contents, then its
/// arguments (its string after the file name), as `image` and `initrd` are rewritten to
/// their payload paths.
fn canonical_module(p: &Partition, index: usize) -> String {
    let args = p.modules.get(index).and_then(|m| m.string.split_once(' ')).map_or("", |(_, args)| args);
    let path = p.payload_module_path(index);
    if args.is_empty() {
        path
    } else {
        format!("{path} {args}")
    }
}

/// Checks that a guest's boot files (whether it has a command line, an initrd and
/// modules) suit its image, whose kind is read from the file `image`; returns the kind.
/// The error is (field, problem, fix).
fn boot_files_kind(
    image: &Path,
    has_cmdline: bool,
    has_initrd: bool,
    has_modules: bool,
) -> Result<ImageKind, (&'static str, String, String)> {
    let bytes = std::fs::read(image).map_err(|e| {
        ("image", format!("image file {} cannot be read: {e}", image.display()), "check the file".to_string())
    })?;
    let kind = hv_loader::detect(&bytes);
    match kind {
        ImageKind::LinuxBzImage if has_modules => Err((
            "modules",
            format!("image {} is a Linux bzImage, which takes no Multiboot modules", image.display()),
            "remove `modules`; a Linux kernel takes its initial RAM disk as `initrd`".to_string(),
        )),
        ImageKind::Multiboot if has_initrd => Err((
            "initrd",
            format!("image {} is a Multiboot kernel, which gets its boot files as modules", image.display()),
            "replace `initrd = \"FILE\"` with `modules = [\"FILE\"]` (QEMU's -initrd gives a Multiboot kernel \
             modules too)"
                .to_string(),
        )),
        ImageKind::Elf64 if has_cmdline || has_initrd || has_modules => Err((
            if has_initrd {
                "initrd"
            } else if has_modules {
                "modules"
            } else {
                "cmdline"
            },
            format!(
                "image {} is an x86-64 ELF image, which gets no command line, initrd or modules (its start \
                 state passes only the RAM size)",
                image.display()
            ),
            "remove `cmdline`, `initrd` and `modules` from this partition".to_string(),
        )),
        _ => Ok(kind),
    }
}

/// Resolves an `image` or `initrd` value (`what` names the field in messages) to a
/// non-empty regular file: `guest:NAME` and `linux:NAME` in the directories of `built`,
/// anything else relative to `base_dir`. The error is (problem, fix).
fn resolve_file(
    value: &str,
    what: &str,
    base_dir: &Path,
    built: BuiltMaterial<'_>,
) -> Result<PathBuf, (String, String)> {
    if value.is_empty() {
        return Err((
            format!("the {what} path is empty"),
            "give the path of the file, relative to the config file".to_string(),
        ));
    }
    let path = if let Some(guest) = value.strip_prefix(GUEST_IMAGE_PREFIX) {
        match built.guests {
            Some(dir) if name_is_valid(guest) => dir.join(guest),
            Some(_) => {
                return Err((
                    format!("{guest:?} is not a valid test guest name"),
                    "name a crate of guest-images/, e.g. \"guest:guest-hello\"".to_string(),
                ))
            }
            None => {
                return Err((
                    format!("{value:?} names a test guest, which only `cargo xtask` builds"),
                    "build the image with `cargo xtask build --config FILE` (or `cargo xtask test`)".to_string(),
                ))
            }
        }
    } else if let Some(name) = value.strip_prefix(LINUX_MATERIAL_PREFIX) {
        match built.linux {
            Some(dir) if !name.is_empty() && !name.contains('/') && !name.starts_with('.') => dir.join(name),
            Some(_) => {
                return Err((
                    format!("{name:?} is not a file name of the Linux guest material"),
                    "use \"linux:bzImage\" or \"linux:initramfs.cpio.gz\"".to_string(),
                ))
            }
            None => {
                return Err((
                    format!("{value:?} names Linux guest material, which only `cargo xtask` fetches and builds"),
                    "build the image with `cargo xtask build --config FILE` (or run `cargo xtask linux`)".to_string(),
                ))
            }
        }
    } else {
        base_dir.join(value)
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() > 0 => Ok(path),
        Ok(m) if m.is_file() => Err((
            format!("{what} file {} is empty", path.display()),
            "build the file first, or point the field at a non-empty file".to_string(),
        )),
        Ok(_) => Err((
            format!("{} is not a regular file", path.display()),
            "point the field at a file (relative to the config file's directory)".to_string(),
        )),
        Err(e) => Err((
            format!("{what} file {} cannot be read: {e}", path.display()),
            "build the file first, or correct the path (it is relative to the config file's directory)".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory holding a config file and a non-empty image `guest.bin`.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("guest.bin"), b"\x90\x90\xf4").unwrap();
            std::fs::write(dir.path().join("empty.bin"), b"").unwrap();
            Fixture { dir }
        }

        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            let path = self.dir.path().join("config.toml");
            std::fs::write(&path, text).unwrap();
            load(&path)
        }
    }

    fn partition(name: &str, extra: &str) -> String {
        format!(
            "[[partition]]\nname = \"{name}\"\nkind = \"guest\"\nmemory_mib = 16\nvcpus = 1\n\
             image = \"guest.bin\"\n{extra}\n"
        )
    }

    #[test]
    fn empty_file_gives_defaults() {
        let f = Fixture::new();
        let c = f.parse("").unwrap();
        assert_eq!(c.hypervisor.log_level, LogLevel::Info);
        assert_eq!(c.hypervisor.when_idle, WhenIdle::Halt);
        assert!(c.partitions.is_empty());
        assert_eq!(c.hypervisor_conf(), "log_level=info\nwhen_idle=halt\n");
    }

    #[test]
    fn full_config_is_accepted() {
        let f = Fixture::new();
        let text = format!(
            "[hypervisor]\nlog_level = \"trace\"\nwhen_idle = \"power-off\"\n\
             [[partition]]\nname = \"svc\"\nkind = \"service\"\nmemory_mib = 64\nvcpus = 2\n\
             cpus = [1, 0]\nimage = \"guest.bin\"\n{}",
            partition("hello-2", "")
        );
        let c = f.parse(&text).unwrap();
        assert_eq!(c.hypervisor.log_level, LogLevel::Trace);
        assert_eq!(c.hypervisor.when_idle, WhenIdle::PowerOff);
        assert_eq!(c.partitions.len(), 2);
        assert_eq!(c.partitions[0].cpus, Some(vec![1, 0]));
        assert_eq!(c.partitions[0].kind, PartitionKind::Service);
        assert_eq!(c.partitions[1].cpus, None);
        assert_eq!(c.partitions[1].image, f.dir.path().join("guest.bin"));
        assert_eq!(c.hypervisor_conf(), "log_level=trace\nwhen_idle=power-off\n");
        let canonical = c.to_canonical_toml();
        assert!(canonical.contains("image = \"images/svc\""), "{canonical}");
        assert!(canonical.contains("when_idle = \"power-off\""), "{canonical}");
        // The canonical form parses back to the same settings.
        let again: RawConfig = toml::from_str(&canonical).unwrap();
        assert_eq!(again.hypervisor, c.hypervisor);
        assert_eq!(again.partition.len(), 2);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let f = Fixture::new();
        let e = f.parse("[hypervisor]\nlog_lvl = \"info\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("config.toml"), "{msg}");
        assert!(msg.contains("log_lvl"), "{msg}");
        assert!(msg.contains("fix:"), "{msg}");

        let e = f.parse(&partition("a", "colour = \"red\"")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");

        let e = f.parse("[hypervisr]\n").unwrap_err();
        assert!(e.to_string().contains("hypervisr"), "{e}");
    }

    #[test]
    fn bad_enum_values_are_rejected() {
        let f = Fixture::new();
        let e = f.parse("[hypervisor]\nlog_level = \"loud\"\n").unwrap_err();
        assert!(e.to_string().contains("loud"), "{e}");
        let e = f.parse("[hypervisor]\nwhen_idle = \"sleep\"\n").unwrap_err();
        assert!(e.to_string().contains("sleep"), "{e}");
        let e = f.parse("[hypervisor]\nselftest = \"explode\"\n").unwrap_err();
        assert!(e.to_string().contains("explode"), "{e}");
        let e = f.parse("[hypervisor]\napicv = \"off\"\n").unwrap_err();
        assert!(e.to_string().contains("apicv"), "{e}");
        let text = partition("a", "").replace("\"guest\"", "\"vm\"");
        assert!(f.parse(&text).is_err());
    }

    #[test]
    fn selftest_reaches_hypervisor_conf_only_when_set() {
        let f = Fixture::new();
        let c = f.parse("[hypervisor]\nselftest = \"cpu-fault\"\n").unwrap();
        assert_eq!(c.hypervisor.selftest, SelfTest::CpuFault);
        assert_eq!(c.hypervisor_conf(), "log_level=info\nwhen_idle=halt\nselftest=cpu-fault\n");
        let plain = f.parse("[hypervisor]\n").unwrap();
        assert!(!plain.hypervisor_conf().contains("selftest"));
    }

    #[test]
    fn apicv_reaches_hypervisor_conf_only_when_off() {
        let f = Fixture::new();
        let c = f.parse("[hypervisor]\napicv = false\n").unwrap();
        assert!(!c.hypervisor.apicv);
        assert_eq!(c.hypervisor_conf(), "log_level=info\nwhen_idle=halt\napicv=off\n");
        let canonical = c.to_canonical_toml();
        assert!(canonical.contains("apicv = false"), "{canonical}");
        let again: RawConfig = toml::from_str(&canonical).unwrap();
        assert_eq!(again.hypervisor, c.hypervisor);
        let on = f.parse("[hypervisor]\napicv = true\n").unwrap();
        assert!(on.hypervisor.apicv);
        assert!(!on.hypervisor_conf().contains("apicv"));
        let plain = f.parse("").unwrap();
        assert!(plain.hypervisor.apicv);
        assert!(!plain.hypervisor_conf().contains("apicv"));
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let f = Fixture::new();
        let e = f.parse(&format!("{}{}", partition("a", ""), partition("a", ""))).unwrap_err();
        assert_eq!(e.field(), Some("partition[1].name"));
        let msg = e.to_string();
        assert!(msg.contains("config.toml") && msg.contains("unique"), "{msg}");
    }

    #[test]
    fn bad_names_are_rejected() {
        let f = Fixture::new();
        for name in ["", "Upper", "under_score", "a.b", &"x".repeat(33)] {
            let e = f.parse(&partition(name, "")).unwrap_err();
            assert_eq!(e.field(), Some("partition[0].name"), "{name:?}: {e}");
        }
        assert!(f.parse(&partition(&"x".repeat(32), "")).is_ok());
    }

    #[test]
    fn two_services_are_rejected() {
        let f = Fixture::new();
        let text = format!("{}{}", partition("a", ""), partition("b", "")).replace("guest\"", "service\"");
        let e = f.parse(&text).unwrap_err();
        assert_eq!(e.field(), Some("partition[1].kind"));
    }

    #[test]
    fn device_lists_are_checked() {
        let f = Fixture::new();
        let c = f.parse(&partition("a", "devices = [\"pc\"]")).unwrap();
        assert_eq!(c.partitions[0].devices, vec!["pc".to_string()]);
        assert!(f.parse(&partition("a", "devices = [\"com1\", \"pci\"]")).is_ok());
        let e = f.parse(&partition("a", "devices = [\"com1\", \"floppy\"]")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].devices[1]"));
        assert!(e.to_string().contains("com1, pit"), "{e}");
        let svc = partition("a", "devices = [\"pc\"]").replace("guest\"", "service\"");
        assert_eq!(f.parse(&svc).unwrap_err().field(), Some("partition[0].devices"));
    }

    #[test]
    fn out_of_range_numbers_are_rejected() {
        let f = Fixture::new();
        for (from, to, field) in [
            ("memory_mib = 16", "memory_mib = 0", "partition[0].memory_mib"),
            ("memory_mib = 16", "memory_mib = 65537", "partition[0].memory_mib"),
            ("memory_mib = 16", "memory_mib = -5", "partition[0].memory_mib"),
            ("vcpus = 1", "vcpus = 0", "partition[0].vcpus"),
            ("vcpus = 1", "vcpus = 65", "partition[0].vcpus"),
        ] {
            let e = f.parse(&partition("a", "").replace(from, to)).unwrap_err();
            assert_eq!(e.field(), Some(field), "{to}: {e}");
            assert!(e.to_string().contains("fix: use a value from"), "{e}");
        }
        assert!(f.parse(&partition("a", "").replace("memory_mib = 16", "memory_mib = 65536")).is_ok());
    }

    #[test]
    fn what_the_machine_cannot_hold_is_rejected_when_the_config_is_read() {
        let f = Fixture::new();
        // Guest RAM comes in 2 MiB pages.
        let e = f.parse(&partition("a", "").replace("memory_mib = 16", "memory_mib = 15")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].memory_mib"));
        assert!(e.to_string().contains("not a multiple of 2"), "{e}");
        // At most MAX_VMS partitions, the service partition included.
        let seventeen: String = (0..17).map(|i| partition(&format!("g{i}"), "")).collect();
        let e = f.parse(&seventeen).unwrap_err();
        assert_eq!(e.field(), Some("partition"));
        assert!(e.to_string().contains("at most 16 partitions"), "{e}");
        let sixteen: String = (0..16).map(|i| partition(&format!("g{i}"), "")).collect();
        assert!(f.parse(&sixteen).is_ok());
        // The service partition starts in 64-bit mode only.
        let svc = partition("svc", "start = \"real\"").replace("guest\"", "service\"");
        assert_eq!(f.parse(&svc).unwrap_err().field(), Some("partition[0].start"));
        // The guests' RAM must fit the service partition's pool (2 GiB).
        let svc = partition("svc", "").replace("guest\"", "service\"");
        let big = |name: &str, mib: u32| partition(name, "").replace("memory_mib = 16", &format!("memory_mib = {mib}"));
        let e = f.parse(&format!("{svc}{}{}", big("a", 1024), big("b", 1026))).unwrap_err();
        assert_eq!(e.field(), Some("partition[0]"));
        assert!(e.to_string().contains("2050 MiB"), "{e}");
        assert!(f.parse(&format!("{svc}{}{}", big("a", 1024), big("b", 1024))).is_ok());
        // Without a service partition there is no pool to fit.
        assert!(f.parse(&format!("{}{}", big("a", 1024), big("b", 1026))).is_ok());
    }

    #[test]
    fn bad_cpu_lists_are_rejected() {
        let f = Fixture::new();
        let e = f.parse(&partition("a", "cpus = [0, 1]")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].cpus"));
        let text = partition("a", "cpus = [2, 2]").replace("vcpus = 1", "vcpus = 2");
        let e = f.parse(&text).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = f.parse(&partition("a", "cpus = [-1]")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].cpus[0]"));
        assert!(f.parse(&partition("a", "cpus = [3]")).is_ok());
    }

    #[test]
    fn missing_or_empty_image_is_rejected() {
        let f = Fixture::new();
        let e = f.parse(&partition("a", "").replace("guest.bin", "nope.bin")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].image"));
        let msg = e.to_string();
        assert!(msg.contains("nope.bin") && msg.contains("fix:"), "{msg}");
        let e = f.parse(&partition("a", "").replace("guest.bin", "empty.bin")).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn missing_required_field_is_rejected() {
        let f = Fixture::new();
        let e = f.parse(&partition("a", "").replace("vcpus = 1\n", "")).unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
    }

    #[test]
    fn missing_file_names_the_fix() {
        let e = load(Path::new("/nonexistent/dir/cfg.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/dir/cfg.toml") && msg.contains("fix:"), "{msg}");
    }

    #[test]
    fn initrd_and_cmdline_are_checked() {
        let f = Fixture::new();
        let c = f.parse(&partition("lx", "initrd = \"guest.bin\"\ncmdline = \"console=ttyS0 quiet\"")).unwrap();
        assert_eq!(c.partitions[0].initrd, Some(f.dir.path().join("guest.bin")));
        assert_eq!(c.partitions[0].cmdline.as_deref(), Some("console=ttyS0 quiet"));
        let bad = f.parse(&partition("lx", "cmdline = \"tab\there\"")).unwrap_err().to_string();
        assert!(bad.contains("partition[0].cmdline") && bad.contains("printable ASCII"), "{bad}");
        let long = format!("cmdline = \"{}\"", "x".repeat(MAX_CMDLINE_LEN + 1));
        assert!(f.parse(&partition("lx", &long)).unwrap_err().to_string().contains("cmdline"));
        let missing = f.parse(&partition("lx", "initrd = \"nope.img\"")).unwrap_err().to_string();
        assert!(missing.contains("partition[0].initrd") && missing.contains("nope.img"), "{missing}");
        let linux = f.parse(&partition("lx", "initrd = \"linux:initramfs.cpio.gz\"")).unwrap_err().to_string();
        assert!(linux.contains("only `cargo xtask` fetches and builds"), "{linux}");
        let svc = "[[partition]]\nname = \"svc\"\nkind = \"service\"\nmemory_mib = 16\nvcpus = 1\n\
                   image = \"guest.bin\"\ncmdline = \"x\"\n";
        assert!(f.parse(svc).unwrap_err().to_string().contains("remove `initrd`, `cmdline` and `modules`"));
    }

    /// Writes the smallest files the loaders' `detect` takes for each kind into the
    /// fixture's directory: `bz.img` (a Linux bzImage), `mb.elf` (a Multiboot kernel)
    /// and `elf64.elf` (an x86-64 ELF image).
    fn write_kernels(f: &Fixture) {
        let mut bz = vec![0u8; 0x210];
        bz[0x1FE..0x200].copy_from_slice(&[0x55, 0xAA]);
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(f.dir.path().join("bz.img"), bz).unwrap();
        let magic = hv_loader::multiboot::HEADER_MAGIC;
        let mut mb = Vec::new();
        for word in [magic, 0, 0u32.wrapping_sub(magic)] {
            mb.extend_from_slice(&word.to_le_bytes());
        }
        std::fs::write(f.dir.path().join("mb.elf"), mb).unwrap();
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        elf[18] = 62; // EM_X86_64
        std::fs::write(f.dir.path().join("elf64.elf"), elf).unwrap();
        std::fs::write(f.dir.path().join("mod-a"), b"module a").unwrap();
        std::fs::write(f.dir.path().join("mod-b"), b"module b").unwrap();
    }

    fn kernel(image: &str, extra: &str) -> String {
        partition("k", extra).replace("\"guest.bin\"", &format!("\"{image}\""))
    }

    #[test]
    fn multiboot_kernels_take_a_command_line_and_modules() {
        let f = Fixture::new();
        write_kernels(&f);
        let c = f
            .parse(&kernel("mb.elf", "cmdline = \"debug answer=42\"\nmodules = [\"mod-a alpha=1 beta\", \"mod-b\"]"))
            .unwrap();
        let p = &c.partitions[0];
        assert_eq!(p.cmdline.as_deref(), Some("debug answer=42"));
        // The kernel's name first, as QEMU's -kernel puts it.
        assert_eq!(p.kernel_cmdline.as_deref(), Some("mb.elf debug answer=42"));
        assert_eq!(
            p.modules,
            [
                Module { file: f.dir.path().join("mod-a"), string: "mod-a alpha=1 beta".into() },
                Module { file: f.dir.path().join("mod-b"), string: "mod-b".into() },
            ]
        );
        let canonical = c.to_canonical_toml();
        assert!(
            canonical.contains("modules = [\"images/k.module0 alpha=1 beta\", \"images/k.module1\"]"),
            "{canonical}"
        );
        assert!(canonical.contains("cmdline = \"debug answer=42\""), "{canonical}");
        // Without `cmdline` the kernel still gets its name; without modules, none.
        let plain = f.parse(&kernel("mb.elf", "")).unwrap();
        assert_eq!(plain.partitions[0].kernel_cmdline.as_deref(), Some("mb.elf"));
        assert!(plain.partitions[0].modules.is_empty());
        assert!(!plain.to_canonical_toml().contains("modules"));
        let empty = f.parse(&kernel("mb.elf", "modules = []")).unwrap();
        assert!(empty.partitions[0].modules.is_empty());
        // The name and the command line together obey the command line's limit.
        let long = format!("cmdline = \"{}\"", "x".repeat(MAX_CMDLINE_LEN - 5));
        let e = f.parse(&kernel("mb.elf", &long)).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].cmdline"), "{e}");
        assert!(e.to_string().contains("Multiboot command line"), "{e}");
    }

    #[test]
    fn bad_modules_name_the_module_and_the_fix() {
        let f = Fixture::new();
        write_kernels(&f);
        let e = f.parse(&kernel("mb.elf", "modules = [\"mod-a\", \"nope.bin arg\"]")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].modules[1]"));
        let msg = e.to_string();
        assert!(msg.contains("module file") && msg.contains("nope.bin") && msg.contains("fix:"), "{msg}");
        let e = f.parse(&kernel("mb.elf", "modules = [\"empty.bin\"]")).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = f.parse(&kernel("mb.elf", "modules = [\" mod-a\"]")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].modules[0]"));
        assert!(e.to_string().contains("path is empty"), "{e}");
        let e = f.parse(&kernel("mb.elf", "modules = [\"mod-a tab\\there\"]")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].modules[0]"));
        assert!(e.to_string().contains("printable ASCII"), "{e}");
        let e = f.parse(&kernel("mb.elf", "modules = [\"guest:guest-mod\"]")).unwrap_err();
        assert!(e.to_string().contains("cargo xtask"), "{e}");
        let many = format!("modules = [{}]", vec!["\"mod-a\""; MAX_MULTIBOOT_MODULES + 1].join(", "));
        let e = f.parse(&kernel("mb.elf", &many)).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].modules"));
        assert!(e.to_string().contains("at most 16"), "{e}");
        let full = format!("modules = [{}]", vec!["\"mod-a\""; MAX_MULTIBOOT_MODULES].join(", "));
        assert_eq!(f.parse(&kernel("mb.elf", &full)).unwrap().partitions[0].modules.len(), MAX_MULTIBOOT_MODULES);
        let e = f.parse(&kernel("mb.elf", "modules = \"mod-a\"")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }) && e.to_string().contains("modules"), "{e}");
        let svc = kernel("mb.elf", "modules = [\"mod-a\"]").replace("guest\"", "service\"");
        let e = f.parse(&svc).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].modules"));
    }

    #[test]
    fn boot_files_must_suit_the_image() {
        let f = Fixture::new();
        write_kernels(&f);
        // A Linux kernel takes an initrd and a command line as they are, no modules.
        let linux = f.parse(&kernel("bz.img", "initrd = \"mod-a\"\ncmdline = \"console=ttyS0\"")).unwrap();
        assert_eq!(linux.partitions[0].kernel_cmdline.as_deref(), Some("console=ttyS0"));
        let e = f.parse(&kernel("bz.img", "modules = [\"mod-a\"]")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].modules"));
        assert!(e.to_string().contains("Linux bzImage") && e.to_string().contains("`initrd`"), "{e}");
        // A Multiboot kernel takes modules, not an initrd.
        let e = f.parse(&kernel("mb.elf", "initrd = \"mod-a\"")).unwrap_err();
        assert_eq!(e.field(), Some("partition[0].initrd"));
        assert!(e.to_string().contains("modules = [\"FILE\"]"), "{e}");
        // An ELF64 image takes none of them.
        for (extra, which) in
            [("cmdline = \"quiet\"", "cmdline"), ("initrd = \"mod-a\"", "initrd"), ("modules = [\"mod-a\"]", "modules")]
        {
            let e = f.parse(&kernel("elf64.elf", extra)).unwrap_err();
            assert_eq!(e.field(), Some(format!("partition[0].{which}").as_str()), "{e}");
            assert!(e.to_string().contains("x86-64 ELF image") && e.to_string().contains("remove"), "{e}");
        }
        let plain = f.parse(&kernel("elf64.elf", "")).unwrap();
        assert_eq!((plain.partitions[0].kernel_cmdline.as_ref(), plain.partitions[0].modules.len()), (None, 0));
        // An image of no known kind is left to the service partition to report.
        let unknown = f.parse(&kernel("guest.bin", "modules = [\"mod-a\"]\ncmdline = \"x\"")).unwrap();
        assert_eq!(unknown.partitions[0].kernel_cmdline.as_deref(), Some("x"));
    }

    #[test]
    fn on_reset_defaults_to_reboot_and_is_for_guests() {
        let f = Fixture::new();
        let c = f.parse(&partition("g", "")).unwrap();
        assert_eq!(c.partitions[0].on_reset, OnReset::Reboot);
        let c = f.parse(&partition("g", "on_reset = \"stop\"")).unwrap();
        assert_eq!(c.partitions[0].on_reset, OnReset::Stop);
        assert!(c.to_canonical_toml().contains("on_reset = \"stop\""));
        let bad = f.parse(&partition("g", "on_reset = \"halt\"")).unwrap_err().to_string();
        assert!(bad.contains("on_reset"), "{bad}");
        let svc = "[[partition]]\nname = \"svc\"\nkind = \"service\"\nmemory_mib = 16\nvcpus = 1\n\
                   image = \"guest.bin\"\non_reset = \"reboot\"\n";
        let err = f.parse(svc).unwrap_err();
        assert_eq!(err.field(), Some("partition[0].on_reset"));
    }

    #[test]
    fn linux_material_names_resolve_in_their_directory() {
        let f = Fixture::new();
        let path = f.dir.path().join("config.toml");
        std::fs::write(&path, partition("lx", "initrd = \"linux:guest.bin\"")).unwrap();
        assert!(uses_linux_material(&path));
        let built = BuiltMaterial { guests: None, linux: Some(f.dir.path()) };
        let c = load_with_material(&path, built).unwrap();
        assert_eq!(c.partitions[0].initrd, Some(f.dir.path().join("guest.bin")));
        std::fs::write(&path, partition("lx", "initrd = \"linux:../guest.bin\"")).unwrap();
        assert!(load_with_material(&path, built).unwrap_err().to_string().contains("not a file name"));
        std::fs::write(&path, partition("lx", "")).unwrap();
        assert!(!uses_linux_material(&path));
        std::fs::write(&path, partition("mb", "modules = [\"linux:guest.bin arg\"]")).unwrap();
        assert!(uses_linux_material(&path));
    }
}
