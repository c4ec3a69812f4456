//! The scenario catalogue: every emulator test described as data.

use serde::Serialize;
use std::time::Duration;

/// Which machine a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Emulator {
    /// Bochs with OVMF (emulates VMX).
    Bochs,
    /// QEMU TCG with OVMF (no VMX).
    Qemu,
    /// QEMU with KVM and `-cpu host` (nested VMX on an Intel host), with OVMF. No
    /// catalogue scenario uses it: the machines that run the suite have no VMX. `cargo
    /// xtask bench --exits-only --emulator kvm` does.
    Kvm,
    /// No emulator: the scenario inspects the built image on the host.
    None,
}

impl Emulator {
    /// Lower-case name, as in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Emulator::Bochs => "bochs",
            Emulator::Qemu => "qemu",
            Emulator::Kvm => "kvm",
            Emulator::None => "none",
        }
    }
}

/// One test scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Unique name (what `cargo xtask test FILTER` matches against).
    pub name: &'static str,
    /// Where it runs.
    pub emulator: Emulator,
    /// Emulated CPU model (Bochs `cpu: model=`), if any.
    pub cpu_model: Option<&'static str>,
    /// Number of emulated CPUs.
    pub cpus: u32,
    /// Partition config file used to build the image, relative to the workspace root.
    pub config: &'static str,
    /// Wall-clock limit for the emulator; the process group is killed after it.
    pub timeout: Duration,
    /// Text that must each appear in some line of the serial log.
    pub expected: Vec<String>,
    /// Whether the emulator must exit by itself (the kernel powering off).
    pub require_self_exit: bool,
    /// Whether `FATAL:` lines are part of the expected output (a deliberate CPU fault);
    /// they must then be listed in `expected`. A panic still fails the scenario.
    pub fatal_expected: bool,
    /// Memory of the emulated machine in MiB (room for the hypervisor, the partitions'
    /// RAM, the service partition's pool and the boot payload).
    pub memory_mib: u32,
    /// Console input typed into COM1: (wait until the serial log contains this text, then
    /// type these bytes), step by step. Scenarios with input connect COM1 to the harness
    /// by TCP (Bochs `mode=socket-client`); the others write it to a file.
    pub input: Vec<(String, String)>,
    /// Text that must appear in no line of the serial log (what a test guest must keep
    /// off the console, e.g. bytes sent in UART loopback).
    pub forbidden: Vec<String>,
    /// Pairs of texts (A, B): the first line containing A must come before the first
    /// line containing B (both must appear), e.g. one guest finishing while another is
    /// still at work.
    pub ordered: Vec<(String, String)>,
}

/// Emulated machine memory of the scenarios with small partitions.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// The Bochs CPU model with the richest VMX support.
pub const ICELAKE: &str = "corei7_icelake_u";
/// A Bochs CPU model with fewer VMX features.
pub const SKYLAKE: &str = "corei7_skylake_x";
/// A Bochs model with VMX but without APIC virtualization (no virtual-interrupt
/// delivery, no APIC-access virtualization, no 1 GiB EPT pages, no EPT A/D bits): the
/// guest scenarios run on it too, which tests the software interrupt path the
/// hypervisor falls back to.
pub const IVYBRIDGE: &str = "corei7_ivy_bridge_3770k";
/// The guest scenarios that need APIC virtualization; every other one runs again on
/// [`IVYBRIDGE`].
const NEEDS_APICV: [&str; 1] = ["guest-apicv"];
/// The boot log line of a CPU without APIC virtualization.
const NO_APICV_LINE: &str = "virq: this CPU has no APIC virtualization; interrupts are injected by software";
/// Config of the boot scenarios (power off once ready).
pub const BOOT_CONFIG: &str = "tests/configs/boot.toml";

/// The lines a successful boot with `cpus` CPUs prints.
pub fn boot_expectations(cpus: u32) -> Vec<String> {
    let mut lines: Vec<String> = (0..cpus).map(|n| format!("vmx: cpu {n} on")).collect();
    lines.push(format!("hypervisor: ready, {cpus} cpus, vmx on {cpus}"));
    lines.push("platform: power off (code 0)".to_string());
    lines
}

/// A Bochs boot scenario.
fn bochs_boot(name: &'static str, model: &'static str, cpus: u32, timeout_s: u64) -> Scenario {
    Scenario {
        name,
        emulator: Emulator::Bochs,
        cpu_model: Some(model),
        cpus,
        config: BOOT_CONFIG,
        timeout: Duration::from_secs(timeout_s),
        expected: boot_expectations(cpus),
        require_self_exit: true,
        fatal_expected: false,
        memory_mib: DEFAULT_MEMORY_MIB,
        input: Vec::new(),
        forbidden: Vec::new(),
        ordered: Vec::new(),
    }
}

/// Config of the `cpu-fault` scenario (`selftest = "cpu-fault"`).
pub const CPU_FAULT_CONFIG: &str = "tests/configs/cpu-fault.toml";

/// The deliberate fault of the last AP: dumped, that CPU halted, the rest carries on.
fn cpu_fault() -> Scenario {
    let mut expected = vec![
        "selftest: cpu 1 reads its stack guard page".to_string(),
        "FATAL: cpu 1: #PF page fault (vector 14) error code 0x0 (stack overflow: guard page hit)".to_string(),
        "FATAL:   rip 0x".to_string(),
        "cr2 0x".to_string(),
        "FATAL:   rax 0x".to_string(),
        "FATAL: cpu 1 halted".to_string(),
        "selftest: 1 cpu halted by its own fault; cpu 0 keeps running".to_string(),
    ];
    expected.extend(boot_expectations(2));
    Scenario {
        name: "cpu-fault",
        emulator: Emulator::Bochs,
        cpu_model: Some(ICELAKE),
        cpus: 2,
        config: CPU_FAULT_CONFIG,
        timeout: Duration::from_secs(180),
        expected,
        require_self_exit: true,
        fatal_expected: true,
        memory_mib: DEFAULT_MEMORY_MIB,
        input: Vec::new(),
        forbidden: Vec::new(),
        ordered: Vec::new(),
    }
}

/// Logged for each partition destroyed after all stopped, once its old handles were
/// refused by the control interface.
pub const STALE_HANDLES_REFUSED: &str = "control: partition destroyed; its stale VM and vCPU handles are refused";

/// A scenario running test guests: each partition's own `PASS` line must appear, the
/// partitions must stop themselves with code 0, and the hypervisor must power off.
fn guests(
    name: &'static str,
    model: &'static str,
    cpus: u32,
    config: &'static str,
    partitions: &[(&str, &str)],
) -> Scenario {
    let mut expected = Vec::new();
    for (partition, guest) in partitions {
        expected.push(format!("[{partition}] PASS {guest}"));
        expected.push(format!("partition {partition}: stopped itself (code 0)"));
    }
    expected.push("hypervisor: all partitions stopped".to_string());
    expected.push(STALE_HANDLES_REFUSED.to_string());
    expected.push("platform: power off (code 0)".to_string());
    Scenario {
        name,
        emulator: Emulator::Bochs,
        cpu_model: Some(model),
        cpus,
        config,
        timeout: Duration::from_secs(180),
        expected,
        require_self_exit: true,
        fatal_expected: false,
        memory_mib: DEFAULT_MEMORY_MIB,
        input: Vec::new(),
        forbidden: Vec::new(),
        ordered: Vec::new(),
    }
}

/// A scenario with the service partition `svc` (one vCPU on every CPU), which builds and
/// starts the `guests` guest partitions of the config and emulates their devices: the
/// service vCPUs report ready, the service reports every guest started, every line of
/// `expected` appears, the service partition stops after the last guest, and the
/// hypervisor powers off.
fn service_scenario(name: &'static str, cpus: u32, config: &'static str, guests: u32, expected: &[&str]) -> Scenario {
    let mut lines: Vec<String> = (0..cpus).map(|v| format!("[svc] service: vcpu {v} ready")).collect();
    lines.push(format!("[svc] service: {guests} of {guests} guest partitions started"));
    lines.extend(expected.iter().map(|l| l.to_string()));
    lines.push("partition svc: stopped (no guest left to serve)".to_string());
    lines.push("hypervisor: all partitions stopped".to_string());
    lines.push(STALE_HANDLES_REFUSED.to_string());
    lines.push("platform: power off (code 0)".to_string());
    Scenario {
        name,
        emulator: Emulator::Bochs,
        cpu_model: Some(ICELAKE),
        cpus,
        config,
        timeout: Duration::from_secs(240),
        expected: lines,
        require_self_exit: true,
        fatal_expected: false,
        memory_mib: DEFAULT_MEMORY_MIB,
        input: Vec::new(),
        forbidden: Vec::new(),
        ordered: Vec::new(),
    }
}

/// `scenario` with `texts` that must appear in no line of the serial log.
pub fn forbidding(mut scenario: Scenario, texts: &[&str]) -> Scenario {
    scenario.forbidden = texts.iter().map(|t| t.to_string()).collect();
    scenario
}

impl Scenario {
    /// This scenario with another time limit.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// This scenario with more `lines` the serial log must contain.
    #[must_use]
    pub fn expecting(mut self, lines: &[&str]) -> Self {
        self.expected.extend(lines.iter().map(|l| l.to_string()));
        self
    }
}

/// `scenario` with `pairs` of texts (A, B) whose first lines must come in that order.
pub fn in_order(mut scenario: Scenario, pairs: &[(&str, &str)]) -> Scenario {
    scenario.ordered = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    scenario
}

/// `scenario` with console input: `steps` of (text the serial log must contain, bytes
/// to type into COM1 then), in order (see [`Scenario::input`]).
pub fn with_input(mut scenario: Scenario, steps: &[(&str, &str)]) -> Scenario {
    scenario.input = steps.iter().map(|(text, bytes)| (text.to_string(), bytes.to_string())).collect();
    scenario
}

/// `svc-console-input`: two guests read a line from their UART. Input goes to `alpha`
/// first. Once both are ready everything is typed at once: `hello alpha` without its
/// CR, `Ctrl-A n` (the switch to `beta`, while alpha still waits for its line), beta's
/// line with `Ctrl-A Ctrl-A` (a literal 0x01, shown as `.`) and `Ctrl-A z` (ignored),
/// `Ctrl-A n` again (cycling back to alpha) and the CR that ends alpha's line.
fn svc_console_input() -> Scenario {
    let s = service_scenario(
        "svc-console-input",
        2,
        "tests/configs/svc-console-input.toml",
        2,
        &[
            "console: input goes to partition alpha (Ctrl-A n switches)",
            "[alpha] ready for input",
            "[beta] ready for input",
            "[alpha] got: hello alpha",
            "console: input goes to partition beta (Ctrl-A n switches)",
            "[beta] got: hello beta .!",
            "partition alpha: stopped itself (code 0)",
            "partition beta: stopped itself (code 0)",
        ],
    );
    with_input(
        s,
        &[
            ("[alpha] ready for input", ""),
            ("[beta] ready for input", "hello alpha\u{1}nhello beta \u{1}\u{1}\u{1}z!\r\u{1}n\r"),
        ],
    )
}

/// The service-partition scenarios (issue 5).
fn service_scenarios() -> Vec<Scenario> {
    vec![
        // The bytes the guest sends in loopback must come back through RBR and never
        // reach the console.
        forbidding(
            service_scenario(
                "svc-uart",
                2,
                "tests/configs/svc-uart.toml",
                1,
                &[
                    "[uart] uart: hello through the 16550",
                    "[uart] uart: interrupt-driven line",
                    "[uart] PASS guest-uart",
                    "partition uart: stopped itself (code 0)",
                ],
            ),
            &["LOOPBACK"],
        ),
        service_scenario(
            "svc-pci",
            2,
            "tests/configs/svc-pci.toml",
            1,
            &[
                "[pci] pci: 00:00.0 8086:1237 class 060000",
                "[pci] PASS guest-pci: vendor ID as bytes at 0xCFC/0xCFD is 0x8086, as the dword says",
                "[pci] PASS guest-pci: vendor ID as a word at 0xCFC is 0x8086",
                "[pci] PASS guest-pci: device ID as a word at 0xCFE is 0x1237, as the dword says",
                "[pci] PASS guest-pci: unaligned word at 0xCFD is bytes 1-2 of the dword, 0x3780",
                "[pci] PASS guest-pci: register 0x08 as bytes: revision 0x02 (0xCFC), subclass 0x00 (0xCFE), base class 0x06 (0xCFF), as the dword says",
                "[pci] pci: bytes 0x86 0x80, words 0x8086 (0xCFC) 0x1237 (0xCFE) 0x3780 (0xCFD)",
                "[pci] pci: command register ",
                "[pci] PASS guest-pci: command/status: all ones written as a dword read back 0x00000147",
                "[pci] PASS guest-pci: command: a byte write of 0 at 0xCFC clears only the low byte",
                "[pci] PASS guest-pci: command: byte 0 at 0xCFD, then word 0x0006 at 0xCFC read back 0x00000006",
                "[pci] PASS guest-pci: status: a word of all ones at 0xCFE leaves the dword at 0x00000006",
                "[pci] PASS guest-pci: IDs: all ones written leave 0x12378086",
                "[pci] PASS guest-pci: command: a dword written with CONFIG_ENABLE clear is ignored",
                "[pci] PASS guest-pci: command: set back to its first value",
                "[pci] PASS guest-pci",
                // CONFIG_DATA accesses reach the service as PCI_CONFIG requests.
                "partition pci: vcpu 0 PCI configuration requests: ",
                "partition pci: stopped itself (code 0)",
            ],
        ),
        // The UART guest runs its whole course, every check and its interrupt-driven
        // output, while the flood is still going (600 000 forwarded accesses).
        in_order(
            service_scenario(
                "svc-flood",
                2,
                "tests/configs/svc-flood.toml",
                2,
                &[
                    "[flood] io-flood: 600000 accesses, all answered",
                    "[flood] PASS guest-io-flood",
                    "partition flood: stopped itself (code 0)",
                    "[uart] uart: hello through the 16550",
                    "[uart] PASS guest-uart",
                    "partition uart: stopped itself (code 0)",
                ],
            ),
            &[("partition uart: stopped itself (code 0)", "[flood] io-flood: ")],
        )
        .with_timeout(Duration::from_secs(360)),
        service_scenario(
            "svc-crash",
            2,
            "tests/configs/svc-crash.toml",
            2,
            &[
                "[victim] svc-fault: the service partition answers",
                "[victim] svc-fault: asking the service partition to flood VM_CREATE",
                // 320 000 calls with a 32-byte name: 13 VMs fit beside the three of the
                // config; the hypervisor refuses the rest without allocating anything.
                "[svc] service: fault test: VM_CREATE called 320000 times so far: 13 created (stopped again), 319987 refused (no free VM), 0 failed otherwise",
                "[victim] svc-fault: the service partition answers after its VM_CREATE flood",
                "[victim] svc-fault: asking the service partition to crash",
                "[svc] service: fault test: crashing this vcpu with a triple fault",
                "partition svc: vcpu 1: triple fault",
                "partition victim: vcpu 0: port 0xf6 write failed: the service partition has stopped; stopping this partition",
                "partition victim: stopped by the hypervisor",
                "[bystander] PASS guest-hello",
                "partition bystander: stopped itself (code 0)",
            ],
        ),
        svc_missed_deadline("svc-deadline", "tests/configs/svc-deadline.toml", "hang", &["[svc] service: fault test: hanging this vcpu with interrupts off"]),
        // The service vCPU sleeps (HLT with interrupts off; waiting for a start-up IPI
        // after an INIT) instead of answering: the request deadline covers the sleep.
        svc_missed_deadline(
            "svc-halt",
            "tests/configs/svc-halt.toml",
            "halt",
            &[
                "[svc] service: fault test: halting this vcpu with interrupts off",
                "partition svc: vcpu 1 is halted (HLT) past the deadline of the work it owes",
            ],
        ),
        svc_missed_deadline(
            "svc-init",
            "tests/configs/svc-init.toml",
            "take an INIT",
            &[
                "[svc] service: fault test: sending this vcpu an INIT",
                "partition svc: vcpu 1 waits for a start-up IPI (after an INIT) past the deadline of the work it owes",
            ],
        ),
        service_scenario(
            "svc-deferred",
            2,
            "tests/configs/svc-deferred.toml",
            2,
            &[
                "[delay] deferred: read 1 of 3: 0xde1a0000 after ",
                "[delay] deferred: read 2 of 3: 0xde1a0001 after ",
                "[delay] deferred: read 3 of 3: 0xde1a0002 after ",
                "[delay] deferred: read with no delay: 0xde1a0003",
                "[delay] PASS guest-deferred: 4 deferred reads completed with their values and delays",
                "[delay] deferred: reading with a delay that never ends",
                "partition delay: vcpu 0: port 0xf8 read failed: the service partition did not complete the deferred request within 5000 ms; stopping this partition",
                "partition delay: stopped by the hypervisor",
                "[busy] busy: 1000 ms",
                "[busy] busy: 7000 ms",
                "[busy] PASS guest-busy: ran 7000 ms, never held up for more than 100 ms",
                "partition busy: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-deferred-stop",
            2,
            "tests/configs/svc-deferred-stop.toml",
            1,
            &[
                "[stopper] deferred-stop: vcpu 1 waits on its deferred read; sending it INIT",
                "partition stopper: vcpu 1: deferred port 0xf8 read dropped: an INIT reached the vCPU while it waited",
                "partition svc: SERVICE_COMPLETE of slot 65 (sequence 0x",
                "refused: that vcpu waits on no deferred request; nothing changed",
                "[stopper] deferred-stop: the dropped read did not return",
                "[stopper] deferred-stop: vcpu 1 waits on its second deferred read; resetting the guest",
                "partition stopper: reset through its platform; rebooting (reboot 1)",
                "partition stopper: vcpu 1: deferred port 0xf8 read dropped: the guest was reset while it waited",
                "[stopper] deferred-stop: boot 2: vcpu 1 waits on its deferred read; stopping the guest",
                "partition stopper: vcpu 1: deferred port 0xf8 read dropped: the guest stopped while it waited",
                "partition stopper: stopped itself (code 0)",
            ],
        ),
        svc_bad_image(),
        service_scenario(
            "svc-acpi",
            2,
            "tests/configs/svc-acpi.toml",
            1,
            &[
                "[svc] service: partition acpi: vcpu 1 on cpu 0, waiting for INIT and start-up IPIs",
                "[acpi] acpi: RSDP at 0x",
                "[acpi] acpi: MADT: 2 CPUs, IOAPIC at 0xfec00000",
                "[acpi] acpi: FADT: PM1a_CNT 0x604, PM_TMR 0x608, reset 0xcf9=6",
                "[acpi] acpi: \\_S5 SLP_TYP 5",
                "[acpi] PASS guest-acpi",
                "partition acpi: powered off through its platform (code 0)",
                "partition acpi: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-acpi-reduced",
            2,
            "tests/configs/svc-acpi-reduced.toml",
            1,
            &[
                "[acpi] acpi: RSDP at 0x",
                "[acpi] acpi: MADT: 1 CPUs, IOAPIC at 0xfec00000",
                "[acpi] acpi: FADT: hardware-reduced, no PM blocks, no reset register",
                "[acpi] acpi: \\_S5 SLP_TYP 5",
                "[acpi] PASS guest-acpi",
                "partition acpi: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-reset-shutdown",
            3,
            "tests/configs/svc-reset-shutdown.toml",
            2,
            &[
                "[off] PASS guest-acpi",
                "partition off: powered off through its platform (code 0)",
                "partition off: stopped itself (code 0)",
                "[svc] service: partition reset: vcpu 1 on cpu 2, waiting for INIT and start-up IPIs",
                "[reset] acpi: boot 1 (CMOS 0x48 = 0x00)",
                "[reset] acpi: boot 1: the AP is running",
                "[reset] acpi: MADT: 2 CPUs, IOAPIC at 0xfec00000",
                "[reset] PASS guest-acpi",
                "[reset] acpi: boot 1: resetting through the FADT reset register (0xcf9 = 6)",
                "partition reset: reset through its platform; rebooting (reboot 1)",
                "[svc] service: partition reset: reboot 1: flat image loaded again, entry 0x",
                "[reset] acpi: boot 2 (CMOS 0x48 = 0xb1)",
                "[reset] acpi: boot 2: the AP is running",
                "[reset] acpi: boot 2: resetting through the keyboard controller (0x64 = 0xfe)",
                "partition reset: reset through its platform; rebooting (reboot 2)",
                "[svc] service: partition reset: reboot 2: flat image loaded again, entry 0x",
                "[reset] acpi: boot 3 (CMOS 0x48 = 0xb2)",
                "[reset] acpi: boot 3: the AP is running",
                "[reset] acpi: boot 3: powering off through PM1a_CNT (S5)",
                "partition reset: powered off through its platform (code 0)",
                "partition reset: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-reset-stop",
            2,
            "tests/configs/svc-reset-stop.toml",
            1,
            &[
                "[once] acpi: boot 1 (CMOS 0x48 = 0x00)",
                "[once] PASS guest-acpi",
                "[once] acpi: boot 1: resetting through the FADT reset register (0xcf9 = 6)",
                "[svc] service: partition once: on_reset = stop, so it is not rebooted",
                "partition once: reset through its platform; not rebooted, so it stops",
                "partition once: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-multiboot",
            2,
            "tests/configs/svc-multiboot.toml",
            1,
            &[
                "[svc] service: partition mb: Multiboot image, 16 MiB, vcpu 0 on cpu 1, entry 0x",
                "[mb] multiboot: command line 'guest:guest-multiboot hvtest=multiboot answer=42'",
                "[mb] multiboot: 2 modules",
                "[mb] multiboot: module 0: 45 bytes, fnv-1a 0x999e4b4a, string 'images/multiboot-module-a.txt alpha=1 beta'",
                "[mb] multiboot: module 1: 5000 bytes, fnv-1a 0xe89740d5, string 'images/multiboot-module-b.bin'",
                "[mb] multiboot: magic and boot information ok",
                "partition mb: powered off through its platform (code 16)",
                "partition mb: stopped itself (code 16)",
            ],
        ),
        service_scenario(
            "svc-pit",
            2,
            "tests/configs/svc-pit.toml",
            1,
            &[
                "[pit] pit: latched count ",
                " interrupts in 200 ms",
                "[pit] pit: channel 2 OUT rose ",
                "[pit] PASS guest-pit: read-back status of counter 0 shows LSB/MSB access, mode 3, binary",
                "[pit] pit: mode 3: ",
                "[pit] PASS guest-pit: counter 0 in mode 3: IRQ 0 came ",
                "[pit] PASS guest-pit: counter 2 in mode 3: OUT is high after the control word",
                "[pit] PASS guest-pit: counter 2 in mode 3: with the gate low, OUT stays high (15 ms)",
                "[pit] pit: channel 2 square wave half-periods ",
                "[pit] PASS guest-pit: counter 2 in mode 3: OUT changes level 6 times, high first, every ~10000 us",
                "[pit] PASS guest-pit: counter 2 in mode 3: latched counts are even, in 2..=23864 and change",
                "[pit] PASS guest-pit: counter 2 in mode 3: taking the gate low while OUT is low sets OUT high at once",
                "[pit] PASS guest-pit: counter 2 in mode 3: with the gate low again, OUT stays high (25 ms)",
                "[pit] PASS guest-pit: counter 2 LSB only: read-back status is 0x10",
                "[pit] PASS guest-pit: counter 2 LSB only: a latched read and the next read both give the byte written, 0xa5",
                "[pit] PASS guest-pit: counter 2 MSB only: read-back status is 0x20",
                "[pit] PASS guest-pit: counter 2 MSB only: a latched read and the next read both give the byte written, 0x5a",
                "[pit] PASS guest-pit",
                "partition pit: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-rtc",
            2,
            "tests/configs/svc-rtc.toml",
            1,
            &[
                "clock: host time 2026-07-01 12:0",
                "[rtc] rtc: 2026-07-01 12:0",
                "[rtc] PASS guest-rtc: the CMOS memory-size bytes match the 16 MiB of RAM: base 640 KiB, extended 15360 KiB (copy 15360), 0 x 64 KiB above 16 MiB",
                " periodic interrupts in 200 ms",
                "[rtc] PASS guest-rtc: UIP (register A bit 7) is seen set before the update, clears within 10 ms",
                "[rtc] PASS guest-rtc: alarm at an exact time (12:0",
                "[rtc] PASS guest-rtc: alarm with don't-care minutes and hours (ff:c0:",
                "[rtc] PASS guest-rtc",
                "partition rtc: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-pic",
            2,
            "tests/configs/svc-pic.toml",
            1,
            &[
                "[pic] PASS guest-pic: I/O APIC pin 8 (IRQ 8) is masked",
                "[pic] PASS guest-pic: master IR2 masked: slave IRQ 8 (RTC) shows in slave IRR bit 0 and master IRR bit 2",
                "[pic] PASS guest-pic: IR2 unmasked: the master's poll reports the cascade (0x82, ISR 0x04), the slave's poll IRQ 8 (0x80, ISR 0x01",
                "[pic] PASS guest-pic: with slave IR0 in service a new IRQ 8 stays in slave IRR, master IRR bit 2 clear",
                "[pic] PASS guest-pic: a non-specific EOI to the slave clears its ISR and passes the request to master IR2",
                "[pic] PASS guest-pic: the master's specific EOI for IR2 lets the pending IRQ 8 be polled (0x82 / 0x80",
                "[pic] PASS guest-pic: specific EOI to the slave, non-specific to the master: both ISRs 0",
                "[pic] PASS guest-pic",
                "partition pic: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-extint",
            2,
            "tests/configs/svc-extint.toml",
            1,
            &[
                "[extint] PASS guest-extint: LINT0 masked: the PIC's INTR does not reach the vCPU",
                "[extint] PASS guest-extint: LINT0 ExtINT: IRQ 0 arrives at vector 0x20 with PIC EOIs",
                "[extint] PASS guest-extint: every IRQ 0 was ended at the master",
                "[extint] PASS guest-extint: ExtINT vectors are not in the LAPIC's ISR",
                "[extint] PASS guest-extint: IRQ 0 masked in the IMR does not arrive",
                "[extint] PASS guest-extint: unmasked, the latched IRQ 0 arrives (1 taken)",
                "[extint] PASS guest-extint: LAPIC software-disabled (LINT0 0x10700): IRQ 0 still arrives at vector 0x20",
                "[extint] PASS guest-extint: slave IRQ 8 (RTC) arrives at vector 0x28 through the cascade",
                "[extint] PASS guest-extint: IRQ 8 in service on both chips until its EOIs",
                "[extint] PASS guest-extint: IR2 masked on the master: IRQ 8 does not arrive (0 taken",
                "[extint] PASS guest-extint: IR2 unmasked: the latched IRQ 8 arrives at vector 0x28",
                "[extint] PASS guest-extint: x2APIC mode (LINT0 0x700): IRQ 0 arrives at vector 0x20",
                "[extint] PASS guest-extint: spurious IRQ 15 arrives at 0x2f with master IR2 in service (1 taken",
                "[extint] PASS guest-extint: no other PIC vector arrived",
                "[extint] PASS guest-extint",
                "partition extint: stopped itself (code 0)",
            ],
        ),
        service_scenario(
            "svc-mmio",
            2,
            "tests/configs/svc-mmio.toml",
            2,
            &[
                // Every form the guest tries (a decoder that lost one would fail the
                // guest's own check, and change this count).
                "[mmio] mmio: 180 instruction forms checked",
                // The hypervisor's walk for the MMIO instruction fails on the
                // guest's cleared PTE (the CPU ran it from a stale TLB entry): the
                // guest gets #PF, not a stop.
                "partition mmio: vcpu 0: MMIO instruction fetch at 0x100000000 failed: injected #PF (error code 0x10, CR2 0x100000000)",
                "[mmio] mmio: #PF with error code 0x10 at cr2 0x100000000, then the retried load read the device",
                "[mmio] PASS guest-mmio",
                "partition mmio: stopped itself (code 0)",
                // An instruction the decoder does not take stops that guest alone.
                "[mmio-bad] mmio: trying LOCK CMPXCHG on the device page, which is not emulated",
                "partition mmio-bad: vcpu 0: MMIO instruction not emulated",
                "partition mmio-bad: stopped by the hypervisor",
            ],
        ),
        service_scenario(
            "svc-debug-exit",
            2,
            "tests/configs/svc-debug-exit.toml",
            2,
            &[
                "[power] PASS guest-power",
                "partition power: powered off through its platform (code 49)",
                "partition power: stopped itself (code 49)",
                "[plain] PASS guest-hello",
                "partition plain: stopped itself (code 0)",
            ],
        ),
        svc_console_input(),
        svc_cpus("svc-1cpu", 1, "tests/configs/svc-1cpu.toml", &[("uart", UART_LINES)]),
        svc_cpus(
            "svc-4cpu",
            4,
            "tests/configs/svc-4cpu.toml",
            &[("uart", UART_LINES), ("pit", PIT_LINES), ("rtc", RTC_LINES), ("mmio", MMIO_LINES)],
        ),
    ]
}

/// What the 16550 guest prints when its polled and interrupt-driven output work.
const UART_LINES: &[&str] =
    &["[uart] uart: hello through the 16550", "[uart] uart: interrupt-driven line", "[uart] PASS guest-uart"];
/// What the PIT guest prints when the latch, IRQ 0 and channel 2 work.
const PIT_LINES: &[&str] =
    &["[pit] pit: latched count ", " interrupts in 200 ms", "[pit] pit: channel 2 OUT rose ", "[pit] PASS guest-pit"];
/// What the RTC guest prints when the clock and its periodic interrupt work.
const RTC_LINES: &[&str] = &["[rtc] rtc: 2026-07-01 12:0", " periodic interrupts in 200 ms", "[rtc] PASS guest-rtc"];
/// What the MMIO guest prints when every decoded instruction form works.
const MMIO_LINES: &[&str] = &["[mmio] mmio: ", " instruction forms checked", "[mmio] PASS guest-mmio"];

/// A service scenario on `cpus` CPUs whose guests (partition name, the lines it must
/// print) each pass and stop themselves: the same device guests as the two-CPU
/// scenarios, on one CPU (guest and service vCPU share it) or on four.
fn svc_cpus(name: &'static str, cpus: u32, config: &'static str, guests: &[(&str, &[&str])]) -> Scenario {
    let mut expected: Vec<String> = Vec::new();
    for (partition, lines) in guests {
        expected.extend(lines.iter().map(|l| l.to_string()));
        expected.push(format!("partition {partition}: stopped itself (code 0)"));
    }
    let borrowed: Vec<&str> = expected.iter().map(String::as_str).collect();
    let mut s = service_scenario(name, cpus, config, guests.len() as u32, &borrowed);
    s.timeout = Duration::from_secs(120 + 90 * u64::from(cpus));
    s
}

/// A scenario in which the service partition's vCPU is made (`guest-svc-fault`, the
/// `svc-fault-test` port) to `fault` and so misses the request deadline, with the lines
/// `how` between the request and the hypervisor's verdict: the hypervisor stops the
/// service partition and the guest waiting on it, each with a line, and the guest with
/// no devices (`bystander`) runs to its end.
fn svc_missed_deadline(name: &'static str, config: &'static str, fault: &str, how: &[&str]) -> Scenario {
    let asking = format!("[victim] svc-fault: asking the service partition to {fault}");
    let mut lines = vec!["[victim] svc-fault: the service partition answers", asking.as_str()];
    lines.extend_from_slice(how);
    lines.extend_from_slice(&[
        "partition svc: missed the 2000 ms deadline on a request (port 0xf6); stopping it",
        "partition victim: vcpu 0: port 0xf6 write failed: the service partition missed the request deadline; stopping this partition",
        "partition victim: stopped by the hypervisor",
        "[bystander] PASS guest-hello",
        "partition bystander: stopped itself (code 0)",
    ]);
    service_scenario(name, 2, config, 2, &lines)
}

/// `svc-bad-image`: three bad images (a kernel cut short of the size its header's
/// `syssize` gives, no kernel at all, a kernel that needs more than the guest's RAM) are refused with a line naming the problem, the good
/// guest beside them runs.
fn svc_bad_image() -> Scenario {
    let mut s = service_scenario(
        "svc-bad-image",
        2,
        "tests/configs/svc-bad-image.toml",
        1,
        &[
            "[svc] service: partition cut-short not started: image truncated: protected-mode kernel needs 6656 bytes, the image has 4608",
            "[svc] service: partition no-kernel not started: its image is not a Linux bzImage, a Multiboot kernel or an x86-64 ELF executable",
            "[svc] service: partition too-big not started: kernel with its init_size (0x4f00000 bytes at 0x100000) does not fit below 0x1000000",
            "[svc] service: partition good: flat image, 16 MiB",
            "[good] PASS guest-hello",
            "partition good: stopped itself (code 0)",
        ],
    );
    for line in &mut s.expected {
        if line.ends_with("1 of 1 guest partitions started") {
            *line = "[svc] service: 1 of 4 guest partitions started".to_string();
        }
    }
    s
}

/// `guest-apicv` with APIC virtualization: both vCPUs switch to x2APIC mode and get it.
fn guest_apicv() -> Scenario {
    let mut s = guests("guest-apicv", ICELAKE, 2, "tests/configs/guest-apicv.toml", &[("apicv", "guest-apicv")]);
    let mut lines = vec!["virq: vCPUs in x2APIC mode use APIC virtualization (virtual-interrupt delivery)".to_string()];
    for vcpu in 0..2 {
        lines.push(format!(
            "partition apicv: vcpu {vcpu}: x2APIC mode with APIC virtualization (virtual-interrupt delivery)"
        ));
    }
    lines.extend(s.expected);
    s.expected = lines;
    s
}

/// `guest-apicv` with `apicv = false`: the same checks on the software path.
fn guest_apicv_off() -> Scenario {
    let mut s =
        guests("guest-apicv-off", ICELAKE, 2, "tests/configs/guest-apicv-off.toml", &[("apicv-off", "guest-apicv")]);
    s.expected
        .insert(0, "virq: APIC virtualization turned off (apicv = false); interrupts are injected by software".into());
    s
}

/// A Bochs scenario on `corei7_icelake_u` with 2 CPUs and explicit expectations.
fn bochs_expect(name: &'static str, config: &'static str, expected: &[&str]) -> Scenario {
    Scenario {
        name,
        emulator: Emulator::Bochs,
        cpu_model: Some(ICELAKE),
        cpus: 2,
        config,
        timeout: Duration::from_secs(180),
        expected: expected.iter().map(|s| s.to_string()).collect(),
        require_self_exit: true,
        fatal_expected: false,
        memory_mib: DEFAULT_MEMORY_MIB,
        input: Vec::new(),
        forbidden: Vec::new(),
        ordered: Vec::new(),
    }
}

/// Every scenario, in the order they are run.
pub fn catalogue() -> Vec<Scenario> {
    let mut all = base_catalogue();
    // Every guest scenario runs again on a second CPU model with fewer VMX features.
    let variants: Vec<Scenario> = all
        .iter()
        .filter(|s| s.name.starts_with("guest-") || s.name == "two-guests")
        .map(|s| Scenario { name: variant_name(s.name, "skylake"), cpu_model: Some(SKYLAKE), ..s.clone() })
        .collect();
    // The guest scenarios that do not need APICv run once more on a model without it
    // (and with fewer VMX features).
    let without_apicv: Vec<Scenario> = all
        .iter()
        .filter(|s| (s.name.starts_with("guest-") || s.name == "two-guests") && !NEEDS_APICV.contains(&s.name))
        .map(|s| {
            let mut expected = s.expected.clone();
            if s.name != "guest-apicv-off" {
                expected.insert(0, NO_APICV_LINE.to_string());
            }
            Scenario { name: variant_name(s.name, "ivybridge"), cpu_model: Some(IVYBRIDGE), expected, ..s.clone() }
        })
        .collect();
    all.extend(variants);
    all.extend(without_apicv);
    let service = service_scenarios();
    // Every service scenario runs again on the two other models: forwarding, the device
    // models' interrupts and the guest builder on fewer VMX features (`-skylake`) and on
    // the software interrupt path without APICv (`-ivybridge`).
    let service_on_other_models: Vec<Scenario> = service
        .iter()
        .flat_map(|s| {
            let mut expected = s.expected.clone();
            expected.insert(0, NO_APICV_LINE.to_string());
            [
                Scenario { name: variant_name(s.name, "skylake"), cpu_model: Some(SKYLAKE), ..s.clone() },
                Scenario { name: variant_name(s.name, "ivybridge"), cpu_model: Some(IVYBRIDGE), expected, ..s.clone() },
            ]
        })
        .collect();
    all.extend(service);
    all.extend(service_on_other_models);
    all.extend(linux_scenarios());
    all
}

/// A Linux guest scenario: the service partition builds the Debian kernel of
/// `cargo xtask linux` with its initramfs (`guests` guest partitions in all); the
/// scenario checks `expected`, that the kernel powered the partition off through ACPI
/// S5, and (through the judge) that no guest console line reports an oops, BUG,
/// WARNING, call trace or panic.
fn linux_scenario(
    name: &'static str,
    config: &'static str,
    guests: u32,
    timeout_s: u64,
    expected: &[&str],
) -> Scenario {
    let mut lines: Vec<&str> = vec![
        "[linux] linux-init: reached /init (kernel 6.1",
        "[linux] linux-init: log check: 0 suspicious lines",
        "[linux] linux-init: powering off",
        "ACPI: PM: Preparing to enter system sleep state S5",
        "partition linux: powered off through its platform (code 0)",
        "partition linux: stopped itself (code 0)",
    ];
    lines.extend_from_slice(expected);
    let mut s = service_scenario(name, 2, config, guests, &lines);
    s.timeout = Duration::from_secs(timeout_s);
    s
}

/// `linux-console-input`: Linux starts a shell on ttyS0; the scenario types a command at
/// its prompt through COM1 (the hypervisor gives the input to the only guest with a
/// UART) and checks the output, then powers the guest off from the shell.
fn linux_console_input() -> Scenario {
    let mut s = service_scenario(
        "linux-console-input",
        2,
        "tests/configs/linux-console-input.toml",
        1,
        &[
            "[linux] linux-init: starting shell on the console",
            "console: input goes to partition linux (Ctrl-A n switches)",
            "[linux] hv-42",
            "ACPI: PM: Preparing to enter system sleep state S5",
            "partition linux: powered off through its platform (code 0)",
            "partition linux: stopped itself (code 0)",
        ],
    );
    s.timeout = Duration::from_secs(900);
    with_input(s, &[("linux# ", "echo hv-$((6*7))\r"), ("[linux] hv-42", "poweroff -f\r")])
}

/// The scenarios that boot an unmodified Linux.
fn linux_scenarios() -> Vec<Scenario> {
    vec![
        linux_scenario(
            "linux-boot",
            "tests/configs/linux-boot.toml",
            1,
            900,
            &[
                "[svc] service: partition linux: bzImage image, 128 MiB, vcpu 0 on cpu 1",
                "[linux] linux-init: cpuinfo begin",
                "[linux] vendor_id\t: GenuineIntel",
                "[linux] linux-init: cpuinfo end",
            ],
        ),
        linux_scenario(
            "linux-smp",
            "tests/configs/linux-smp.toml",
            1,
            1200,
            &[
                "[svc] service: partition linux: vcpu 1 on cpu 0, waiting for INIT and start-up IPIs",
                "smpboot: Total of 2 processors activated",
                "[linux] linux-init: online 0-1",
                "[linux] linux-init: nproc 2",
                "[linux] linux-init: worker 0 done on cpu 0",
                "[linux] linux-init: worker 1 done on cpu 1",
                "[linux] linux-init: workload done",
            ],
        ),
        linux_console_input(),
        linux_scenario(
            "linux-reboot",
            "tests/configs/linux-reboot.toml",
            1,
            1500,
            &[
                "[linux] linux-init: reboot test: boot 1, rebooting",
                "partition linux: reset through its platform; rebooting (reboot 1)",
                "[svc] service: partition linux: reboot 1: bzImage image loaded again, entry 0x",
                "[linux] linux-init: reboot test: boot 2",
            ],
        ),
        linux_scenario(
            "linux-with-guest",
            "tests/configs/linux-with-guest.toml",
            2,
            900,
            &["[uart] PASS guest-uart", "partition uart: stopped itself (code 0)"],
        ),
    ]
}

/// `NAME-SUFFIX`, as a `'static` name (the catalogue is built a handful of times per
/// run, so the few leaked bytes do not matter).
fn variant_name(name: &str, suffix: &str) -> &'static str {
    Box::leak(format!("{name}-{suffix}").into_boxed_str())
}

/// The scenarios on their primary CPU model.
fn base_catalogue() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "image-layout",
            emulator: Emulator::None,
            cpu_model: None,
            cpus: 0,
            config: BOOT_CONFIG,
            timeout: Duration::from_secs(30),
            expected: Vec::new(),
            require_self_exit: false,
            fatal_expected: false,
            memory_mib: DEFAULT_MEMORY_MIB,
            input: Vec::new(),
            forbidden: Vec::new(),
            ordered: Vec::new(),
        },
        bochs_boot("boot-4cpu", ICELAKE, 4, 300),
        bochs_boot("boot-2cpu", ICELAKE, 2, 180),
        bochs_boot("boot-1cpu", ICELAKE, 1, 120),
        bochs_boot("boot-skylake", SKYLAKE, 2, 180),
        Scenario {
            name: "no-vmx",
            emulator: Emulator::Qemu,
            cpu_model: None,
            cpus: 2,
            config: BOOT_CONFIG,
            timeout: Duration::from_secs(90),
            expected: vec!["vmx: unavailable: ".to_string(), "platform: power off".to_string()],
            require_self_exit: true,
            fatal_expected: false,
            memory_mib: DEFAULT_MEMORY_MIB,
            input: Vec::new(),
            forbidden: Vec::new(),
            ordered: Vec::new(),
        },
        cpu_fault(),
        guests("guest-hello", ICELAKE, 2, "tests/configs/guest-hello.toml", &[("hello", "guest-hello")]),
        guests("guest-cpuid", ICELAKE, 2, "tests/configs/guest-cpuid.toml", &[("cpuid", "guest-cpuid")]),
        guests("guest-msr", ICELAKE, 2, "tests/configs/guest-msr.toml", &[("msr", "guest-msr")]),
        guests("guest-io", ICELAKE, 2, "tests/configs/guest-io.toml", &[("io", "guest-io")]).expecting(&[
            "[io] PASS guest-io: REP INSB with a 0x67 prefix transfers ECX bytes at EDI; RCX = 0, RDI = EDI + 16 zero-extended",
            "[io] PASS guest-io: FS: OUTSB reads at FS base + RSI (#PF with CR2 = FS base + RSI)",
            "[io] PASS guest-io: CPL 3 REP INSB into a supervisor page: #PF with P | W | U/S (0x7), CR2 = the target",
            "[io] PASS guest-io: CPL 3 REP OUTSB from a supervisor page: #PF with P | U/S (0x5), CR2 = the target",
        ]),
        guests("guest-realmode", ICELAKE, 2, "tests/configs/guest-realmode.toml", &[("realmode", "guest-realmode")]),
        guests(
            "guest-protected",
            ICELAKE,
            2,
            "tests/configs/guest-protected.toml",
            &[("protected", "guest-protected")],
        ),
        guests(
            "guest-exceptions",
            ICELAKE,
            2,
            "tests/configs/guest-exceptions.toml",
            &[("exceptions", "guest-exceptions")],
        )
        .expecting(&[
            "[exceptions] PASS guest-exceptions: single-step over CPUID: one #DB with DR6.BS after it",
            "[exceptions] PASS guest-exceptions: single-step over IN: one #DB with DR6.BS after it",
        ]),
        service_scenario(
            "guest-hypercall",
            2,
            "tests/configs/guest-hypercall.toml",
            1,
            &[
                "[hypercall] PASS guest-hypercall: the 16 service-only hypercalls from a guest -> NotPermitted",
                "[hypercall] PASS guest-hypercall",
                "partition hypercall: stopped itself (code 0)",
            ],
        ),
        bochs_expect(
            "guest-triplefault",
            "tests/configs/guest-triplefault.toml",
            &[
                "[crash] guest-triplefault: loading an empty IDT and executing UD2",
                "partition crash: vcpu 0: triple fault",
                "partition crash: vcpu 0 (cpu 1) state: rip 0x",
                "partition crash: stopped by the hypervisor",
                "[survivor] PASS guest-hello",
                "partition survivor: stopped itself (code 0)",
                "hypervisor: all partitions stopped",
                STALE_HANDLES_REFUSED,
                "platform: power off (code 0)",
            ],
        ),
        bochs_expect(
            "guest-ept",
            "tests/configs/guest-ept.toml",
            &[
                "[ept] PASS guest-ept: all RAM above 4 MiB keeps what was written",
                "[ept] PASS guest-ept: no other partition's tag is visible",
                "[ept] PASS guest-ept: no hypervisor canary is visible",
                "[ept] PASS guest-ept: the canary detector recognises the canary",
                "[ept-peer] PASS guest-ept: 18 MiB touched and isolated",
                "partition ept: vcpu 0: read at guest-physical 0x1000000, outside its RAM (16 MiB)",
                "partition ept: stopped by the hypervisor",
                "partition ept-peer: vcpu 0: read at guest-physical 0x1200000, outside its RAM (18 MiB)",
                "hypervisor: all partitions stopped",
                STALE_HANDLES_REFUSED,
                "platform: power off (code 0)",
            ],
        ),
        guests(
            "guest-apic-timer",
            ICELAKE,
            2,
            "tests/configs/guest-apic-timer.toml",
            &[("apic-timer", "guest-apic-timer")],
        ),
        guests("guest-x2apic", ICELAKE, 2, "tests/configs/guest-x2apic.toml", &[("x2apic", "guest-x2apic")]),
        guests("guest-tpr", ICELAKE, 2, "tests/configs/guest-tpr.toml", &[("tpr", "guest-tpr")]),
        guests("guest-hlt", ICELAKE, 2, "tests/configs/guest-hlt.toml", &[("hlt", "guest-hlt")]),
        guests("guest-ipi-2", ICELAKE, 2, "tests/configs/guest-ipi-2.toml", &[("ipi-2", "guest-ipi-2")]),
        guests("guest-ipi-4", ICELAKE, 4, "tests/configs/guest-ipi-4.toml", &[("ipi-4", "guest-ipi-4")]),
        guests("guest-ioapic", ICELAKE, 2, "tests/configs/guest-ioapic.toml", &[("ioapic", "guest-ioapic")]),
        // A guest with a 1-tick periodic LAPIC timer and a self-IPI flood beside a
        // well-behaved one: the flood slows only itself.
        guests(
            "guest-irq-flood",
            ICELAKE,
            2,
            "tests/configs/guest-irq-flood.toml",
            &[("flood", "guest-irq-flood"), ("survivor", "guest-hello")],
        ),
        bochs_expect(
            "guest-memprotect",
            "tests/configs/guest-memprotect.toml",
            &[
                "[memprotect] PASS guest-memprotect: both vCPUs called MEMORY_PROTECT 200 times at once, every call succeeded",
                "[memprotect] PASS guest-memprotect: checks done; making vCPU 1's page read-only",
                "partition memprotect: vcpu 1: write at guest-physical 0x",
                "which its memory rights forbid (MEMORY_PROTECT); stopping this partition",
                "partition memprotect: stopped by the hypervisor",
                "control: vcpu 0 stopped at rip 0x",
                "hypervisor: all partitions stopped",
                STALE_HANDLES_REFUSED,
                "platform: power off (code 0)",
            ],
        ),
        guest_apicv(),
        guest_apicv_off(),
        guests(
            "two-guests",
            ICELAKE,
            2,
            "tests/configs/two-guests.toml",
            &[("alpha", "guest-hello"), ("beta", "guest-hello")],
        ),
    ]
}

/// The scenarios whose name contains any of `filters` (all of them when `filters` is
/// empty), in catalogue order.
pub fn select(filters: &[String]) -> Vec<Scenario> {
    catalogue()
        .into_iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_required_ones_exist() {
        let all = catalogue();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
        for required in ["boot-1cpu", "boot-2cpu", "boot-4cpu", "boot-skylake", "no-vmx", "image-layout", "cpu-fault"] {
            assert!(names.contains(&required), "{required}");
        }
    }

    #[test]
    fn boot_scenarios_expect_every_cpu() {
        let s = select(&["boot-4cpu".to_string()]);
        assert_eq!(s.len(), 1);
        for n in 0..4 {
            assert!(s[0].expected.contains(&format!("vmx: cpu {n} on")));
        }
        assert!(s[0].expected.contains(&"hypervisor: ready, 4 cpus, vmx on 4".to_string()));
        assert!(s[0].require_self_exit);
    }

    #[test]
    fn every_guest_scenario_also_runs_on_a_second_model() {
        let all = catalogue();
        let primary = |s: &&Scenario| !s.name.ends_with("-skylake") && !s.name.ends_with("-ivybridge");
        for s in all.iter().filter(|s| s.name.starts_with("guest-")).filter(primary) {
            let variant = all.iter().find(|v| v.name == format!("{}-skylake", s.name)).expect(s.name);
            assert_eq!(variant.cpu_model, Some(SKYLAKE));
            assert_eq!(s.cpu_model, Some(ICELAKE));
            assert_eq!(variant.expected, s.expected);
        }
    }

    #[test]
    fn guest_scenarios_also_run_without_apicv() {
        let all = catalogue();
        let names: Vec<&str> = all
            .iter()
            .filter(|s| {
                s.name.starts_with("guest-") && !s.name.ends_with("-skylake") && !s.name.ends_with("-ivybridge")
            })
            .map(|s| s.name)
            .filter(|n| !NEEDS_APICV.contains(n))
            .collect();
        assert!(names.contains(&"guest-hello") && names.contains(&"guest-ipi-4"));
        for name in names {
            let primary = all.iter().find(|s| s.name == name).expect(name);
            let variant = all.iter().find(|v| v.name == format!("{name}-ivybridge")).expect(name);
            assert_eq!(variant.cpu_model, Some(IVYBRIDGE));
            assert!(primary.expected.iter().all(|line| variant.expected.contains(line)));
        }
        assert!(!all.iter().any(|s| s.name == "guest-apicv-ivybridge"), "guest-apicv needs APICv");
    }

    #[test]
    fn every_service_scenario_also_runs_on_two_other_models() {
        let all = catalogue();
        let primary: Vec<&Scenario> = all
            .iter()
            .filter(|s| s.name.starts_with("svc-") && !s.name.ends_with("-skylake") && !s.name.ends_with("-ivybridge"))
            .collect();
        assert!(primary.iter().any(|s| s.name == "svc-bad-image") && primary.iter().any(|s| s.name == "svc-4cpu"));
        for s in primary {
            assert_eq!(s.cpu_model, Some(ICELAKE), "{}", s.name);
            let skylake = all.iter().find(|v| v.name == format!("{}-skylake", s.name)).expect(s.name);
            assert_eq!((skylake.cpu_model, &skylake.expected, skylake.cpus), (Some(SKYLAKE), &s.expected, s.cpus));
            let ivybridge = all.iter().find(|v| v.name == format!("{}-ivybridge", s.name)).expect(s.name);
            assert_eq!(ivybridge.cpu_model, Some(IVYBRIDGE));
            assert_eq!(ivybridge.expected[0], NO_APICV_LINE);
            assert_eq!(&ivybridge.expected[1..], &s.expected[..]);
            assert_eq!(ivybridge.input, s.input);
        }
    }

    #[test]
    fn svc_uart_keeps_loopback_bytes_off_the_console_on_every_model() {
        let all = catalogue();
        for name in ["svc-uart", "svc-uart-skylake", "svc-uart-ivybridge"] {
            let s = all.iter().find(|s| s.name == name).expect(name);
            assert_eq!(s.forbidden, ["LOOPBACK"], "{name}");
        }
    }

    #[test]
    fn service_scenarios_run_on_one_two_and_four_cpus() {
        let all = catalogue();
        let cpus = |name: &str| all.iter().find(|s| s.name == name).expect(name).cpus;
        assert_eq!((cpus("svc-1cpu"), cpus("svc-uart"), cpus("svc-4cpu")), (1, 2, 4));
        let four = all.iter().find(|s| s.name == "svc-4cpu").unwrap();
        for v in 0..4 {
            assert!(four.expected.contains(&format!("[svc] service: vcpu {v} ready")));
        }
        assert!(four.expected.contains(&"[svc] service: 4 of 4 guest partitions started".to_string()));
        for guest in ["uart", "pit", "rtc", "mmio"] {
            assert!(four.expected.contains(&format!("partition {guest}: stopped itself (code 0)")), "{guest}");
        }
    }

    #[test]
    fn only_console_input_scenarios_type_input() {
        let all = catalogue();
        let with: Vec<&str> = all.iter().filter(|s| !s.input.is_empty()).map(|s| s.name).collect();
        assert!(with.contains(&"svc-console-input"), "{with:?}");
        let s = all.iter().find(|s| s.name == "svc-console-input").unwrap();
        assert_eq!(s.input[0], ("[alpha] ready for input".to_string(), String::new()));
        assert!(s.input[1].1.contains("\u{1}n"), "the switch is typed");
        assert!(all
            .iter()
            .filter(|s| s.name.starts_with("guest-") || s.name.starts_with("boot-"))
            .all(|s| s.input.is_empty()));
    }

    #[test]
    fn filters_match_substrings() {
        assert_eq!(select(&[]).len(), catalogue().len());
        let names: Vec<&str> = select(&["boot".to_string()]).iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "boot-4cpu",
                "boot-2cpu",
                "boot-1cpu",
                "boot-skylake",
                "svc-multiboot",
                "svc-multiboot-skylake",
                "svc-multiboot-ivybridge",
                "linux-boot",
                "linux-reboot"
            ]
        );
        let names: Vec<&str> = select(&["vmx".to_string(), "layout".to_string()]).iter().map(|s| s.name).collect();
        assert_eq!(names, ["image-layout", "no-vmx"]);
        let names: Vec<&str> = select(&["fault".to_string()]).iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["cpu-fault", "guest-triplefault", "guest-triplefault-skylake", "guest-triplefault-ivybridge"]
        );
        assert!(select(&["nothing-matches".to_string()]).is_empty());
    }
}
