//! The PC "board": every device model of this crate at its PC port address, routed by
//! port, with the ISA interrupt wiring in between. The service partition keeps one
//! [`PcBoard`] per guest VM and hands it the port accesses the hypervisor forwards.
//!
//! | device ([`hv_abi::platform::devices::ALL`] name) | ports | ISA IRQ |
//! |---|---|---|
//! | `com1`: [`Uart16550`] | 0x3F8-0x3FF | 4 |
//! | `pit`: [`Pit8254`] (port 0x61: speaker gate, refresh toggle, OUT 2) | 0x40-0x43, 0x61 | 0 |
//! | `pic`: [`PicPair`] (ELCR at 0x4D0/0x4D1) | 0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1 | - |
//! | `rtc`: [`RtcCmos`] | 0x70-0x71 | 8 |
//! | `acpi-pm`: [`AcpiPm`] (PM1 event 0x600, PM1 control 0x604, PM timer 0x608) | 0x600-0x60B | 9 (SCI) |
//! | `pci`: [`PciHost`] (with the reset control register at 0xCF9) | 0xCF8-0xCFF | - |
//! | `kbd`: [`KbdResetPort`] | 0x60, 0x64 | - |
//! | `debug-exit`: [`IsaDebugExit`] | 0xF4 | - |
//! | `debugcon`: [`DebugCon`] | 0xE9 | - |
//! | `fw-cfg`: [`FwCfg`] | 0x510-0x511 | - |
//! | `post`: POST diagnostic port (writes ignored, reads all-ones) | 0x80 | - |
//!
//! and, by MMIO (guest-physical addresses, [`PcBoard::mmio_read`] and
//! [`PcBoard::mmio_write`]):
//!
//! | device | range | ISA IRQ |
//! |---|---|---|
//! | `mmio-test`: [`MmioScratch`] (a test device, not part of the PC) | 0xFEB0_0000-0xFEB0_0FFF | - |
//!
//! **Routing.** An access goes to the device that decodes its *first* port; that
//! device answers for all of its byte lanes (the models read 0xFF for, and do not
//! write, lanes outside their own ports). An access whose first port belongs to no
//! device reads all-ones and is ignored, as an open ISA bus. Sizes other than 1, 2 and
//! 4 read all-ones and are ignored. The port map is the same as
//! `hv_abi::platform::devices::ALL` (a test checks every port both ways).
//!
//! **MMIO routing.** An MMIO access goes to the device whose range holds its *first*
//! byte ([`MmioDeviceKind::at`]); the device answers for all of its bytes (bytes past
//! the end of its range are its business: [`MmioScratch`] reads them as 0). An address
//! no device decodes, or a size other than 1, 2, 4 and 8, gives `None` / `false`, so
//! that the owner can fail the request (the hypervisor then completes it as an open
//! bus). The board holds every MMIO device whether or not a guest has it: the
//! hypervisor forwards only the ranges of the guest's own devices. The MMIO map is the
//! same as the `mmio` ranges of `hv_abi::platform::devices::ALL` (a test checks it).
//!
//! **Interrupts.** The devices report ISA IRQ levels; the board feeds each level to
//! its [`PicPair`] (so a guest that programs the 8259s sees the requests in IRR) and
//! passes it on to the platform around the board as an I/O APIC input, GSI
//! [`isa_irq_to_gsi`] (IRQ 0 → GSI 2, the MADT's interrupt source override, as on
//! QEMU's PIIX machines; every other IRQ n → GSI n). The pair's INT output
//! ([`PcBoard::pic`], `PicPair::output`) is the owner's to watch: the service partition
//! reports it to the hypervisor, which wires it to the boot vCPU's LINT0 (ExtINT), and
//! answers the hypervisor's interrupt-acknowledge requests with
//! [`PcBoard::pic_mut`]`.acknowledge()`. Power and reset requests ([`PlatformRequest`])
//! pass through unchanged.
//!
//! **Time.** As everywhere in the crate, `now` is [`Nanos`] since the board was
//! created; time never goes back for a device. Every access lets its own device catch
//! up, but the board does not tick the others: the owner calls [`PcBoard::tick`]
//! (before each access, and when [`PcBoard::next_event`] is due) so that timers of all
//! devices raise their interrupts on time.
//!
//! **Lazy ticks.** A device's [`PortIo::next_event`] is the next time its
//! [`PortIo::tick`] has anything to do: before it, a tick changes nothing a guest can
//! observe (every read and write brings its own device to `now` first). The board keeps
//! each timed device's next event ([`PcBoard::next_event`] is their minimum, without
//! asking the devices), refreshes a device's entry after every access to it and after
//! console input, and [`PcBoard::tick`] returns at once while `now` is before the
//! minimum. So the owner may call `tick` before every access at the cost of a
//! comparison; a test checks that a board ticked lazily and one whose devices are ticked
//! on every access behave the same.
//!
//! **Fast path.** A one-byte access to COM1 (a guest polling LSR, or printing a byte
//! through THR) is the hottest access of all: [`PcBoard::read`] and [`PcBoard::write`]
//! check for it first, with one range compare, and go straight to the UART's one-byte
//! register access ([`Uart16550::read_at_lazy`], [`Uart16550::write_at_lazy`]),
//! skipping the port decode and the device dispatch. The UART says when its interrupt
//! line may move; only then does the board build its wiring and call out of line to
//! drive it (so the common access makes no call at all), and it recomputes
//! [`PcBoard::next_event`] only when the UART's entry changed. The result is the same as
//! the general path's (a test checks).
//!
//! **Changes.** [`PcBoard::take_changed`] tells the owner whether anything it reacts to
//! after an access (the PIC pair's INT output, new console output, the next event) may
//! have changed since it last asked, so that it can skip that work after most accesses.

use hv_abi::platform::devices;

use crate::acpi_pm::{AcpiPm, AcpiPmPorts, KbdResetPort, KBD_COMMAND_PORT, KBD_DATA_PORT};
use crate::fw_cfg::FwCfg;
use crate::pci_host::PciHost;
use crate::pic8259::{PicPair, ELCR_MASTER, ELCR_SLAVE, MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA};
use crate::pit8254::{Pit8254, PIT_BASE, PIT_CONTROL, PORT_B};
use crate::rtc_cmos::RtcCmos;
use crate::test_devices::{
    DebugCon, IsaDebugExit, MmioScratch, DEBUGCON_PORT, ISA_DEBUG_EXIT_PORT, MMIO_SCRATCH_BYTES,
};
use crate::uart16550::{Uart16550, COM1_BASE, COM1_IRQ};
use crate::{open_bus, Nanos, Platform, PlatformRequest, PortIo};

/// The ACPI register blocks' ports, as the FADT built for this board names them
/// (`PM1a_EVT_BLK`, `PM1a_CNT_BLK`, `PM_TMR_BLK`).
pub const ACPI_PM_PORTS: AcpiPmPorts = AcpiPmPorts { pm1_evt: 0x600, pm1_cnt: 0x604, pm_tmr: 0x608 };

/// `SLP_TYPa` of the DSDT's `\_S5` package: a guest that writes PM1 control with
/// `SLP_EN` and this `SLP_TYP` powers off. The value itself is a choice of this
/// platform (ACPI leaves `SLP_TYP` encodings to the chipset, and the guest learns it
/// from `\_S5`); 5 is non-zero, so a stray `SLP_EN` write with `SLP_TYP` left at 0 does
/// not power off. The DSDT built for this board (`hv-tables`, its `s5_slp_typ`) must
/// put this value in `\_S5`.
pub const S5_SLP_TYP: u8 = 5;

/// The POST diagnostic port.
pub const POST_PORT: u16 = 0x80;

/// The GSI (I/O APIC input) that ISA IRQ `irq` drives: IRQ 0 (the PIT) is wired to
/// GSI 2, as the MADT's interrupt source override for IRQ 0 says on QEMU's PIIX
/// machines (I/O APIC input 0 is the 8259's ExtINT there); every other IRQ n → GSI n.
#[must_use]
pub const fn isa_irq_to_gsi(irq: u8) -> u32 {
    match irq {
        0 => 2,
        n => n as u32,
    }
}

/// What the board is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardConfig {
    /// The guest's vCPUs (fw_cfg `FW_CFG_NB_CPUS` and `FW_CFG_MAX_CPUS`, at most 65535).
    pub vcpus: u32,
    /// The guest's RAM in bytes (fw_cfg `FW_CFG_RAM_SIZE`).
    pub ram_bytes: u64,
    /// The wall-clock time the RTC shows when the board is created (Unix seconds).
    pub epoch_seconds: u64,
}

/// The devices of the board, in the order of `hv_abi::platform::devices::ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Com1,
    Pit,
    Pic,
    Rtc,
    AcpiPm,
    Pci,
    Kbd,
    DebugExit,
    DebugCon,
    FwCfg,
    Post,
}

impl DeviceKind {
    /// Every device.
    pub const ALL: [Self; 11] = [
        Self::Com1,
        Self::Pit,
        Self::Pic,
        Self::Rtc,
        Self::AcpiPm,
        Self::Pci,
        Self::Kbd,
        Self::DebugExit,
        Self::DebugCon,
        Self::FwCfg,
        Self::Post,
    ];

    /// The device's name in `hv_abi::platform::devices::ALL` (and in configs).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Com1 => "com1",
            Self::Pit => "pit",
            Self::Pic => "pic",
            Self::Rtc => "rtc",
            Self::AcpiPm => "acpi-pm",
            Self::Pci => "pci",
            Self::Kbd => "kbd",
            Self::DebugExit => "debug-exit",
            Self::DebugCon => "debugcon",
            Self::FwCfg => "fw-cfg",
            Self::Post => "post",
        }
    }

    /// The ISA IRQ the device raises, if any.
    #[must_use]
    pub const fn isa_irq(self) -> Option<u8> {
        match self {
            Self::Com1 => Some(COM1_IRQ),
            Self::Pit => Some(crate::pit8254::PIT_IRQ),
            Self::Rtc => Some(crate::rtc_cmos::IRQ),
            Self::AcpiPm => Some(crate::acpi_pm::DEFAULT_SCI_IRQ),
            _ => None,
        }
    }

    /// The device that decodes `port`, if any.
    ///
    /// Ports below 0x100, where most devices sit, are looked up in a table built at
    /// compile time from the port map (`DeviceKind::decode`); the ports above are a
    /// few ranges.
    #[must_use]
    #[inline]
    pub const fn at(port: u16) -> Option<Self> {
        if port < 0x100 {
            LOW_PORTS[port as usize]
        } else {
            Self::decode(port)
        }
    }

    /// The port map itself: the device that decodes `port`, by one match.
    #[must_use]
    const fn decode(port: u16) -> Option<Self> {
        const COM1_LAST: u16 = COM1_BASE + 7;
        const PM_FIRST: u16 = ACPI_PM_PORTS.pm1_evt;
        const PM_LAST: u16 = ACPI_PM_PORTS.pm_tmr + 3;
        const PCI_FIRST: u16 = crate::pci_host::CONFIG_ADDRESS_PORT;
        const PCI_LAST: u16 = crate::pci_host::CONFIG_DATA_PORT + 3;
        Some(match port {
            COM1_BASE..=COM1_LAST => Self::Com1,
            PIT_BASE..=PIT_CONTROL | PORT_B => Self::Pit,
            MASTER_CMD | MASTER_DATA | SLAVE_CMD | SLAVE_DATA | ELCR_MASTER | ELCR_SLAVE => Self::Pic,
            crate::rtc_cmos::INDEX_PORT | crate::rtc_cmos::DATA_PORT => Self::Rtc,
            PM_FIRST..=PM_LAST => Self::AcpiPm,
            PCI_FIRST..=PCI_LAST => Self::Pci,
            KBD_DATA_PORT | KBD_COMMAND_PORT => Self::Kbd,
            ISA_DEBUG_EXIT_PORT => Self::DebugExit,
            DEBUGCON_PORT => Self::DebugCon,
            crate::fw_cfg::SELECTOR_PORT | crate::fw_cfg::DATA_PORT => Self::FwCfg,
            POST_PORT => Self::Post,
            _ => return None,
        })
    }

    /// The same device's entry in `hv_abi::platform::devices::ALL`.
    #[must_use]
    pub fn abi_device(self) -> Option<&'static devices::Device> {
        devices::ALL.iter().find(|d| d.name == self.name())
    }
}

/// [`DeviceKind::decode`] of every port below 0x100, for [`DeviceKind::at`].
const LOW_PORTS: [Option<DeviceKind>; 0x100] = {
    let mut table = [None; 0x100];
    let mut port = 0;
    while port < table.len() {
        table[port] = DeviceKind::decode(port as u16);
        port += 1;
    }
    table
};

/// The devices of the board reached by MMIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioDeviceKind {
    /// The `mmio-test` scratch page ([`MmioScratch`]).
    MmioTest,
}

impl MmioDeviceKind {
    /// Every MMIO device.
    pub const ALL: [Self; 1] = [Self::MmioTest];

    /// The device's name in `hv_abi::platform::devices::ALL` (and in configs).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::MmioTest => "mmio-test",
        }
    }

    /// The guest-physical range the device decodes (inclusive).
    #[must_use]
    pub const fn range(self) -> (u64, u64) {
        match self {
            Self::MmioTest => (devices::MMIO_TEST_BASE, devices::MMIO_TEST_BASE + (MMIO_SCRATCH_BYTES - 1)),
        }
    }

    /// The device that decodes guest-physical address `gpa`, with the offset of `gpa`
    /// in its range.
    #[must_use]
    pub const fn at(gpa: u64) -> Option<(Self, u64)> {
        let mut i = 0;
        while i < Self::ALL.len() {
            let (first, last) = Self::ALL[i].range();
            if gpa >= first && gpa <= last {
                return Some((Self::ALL[i], gpa - first));
            }
            i += 1;
        }
        None
    }

    /// The same device's entry in `hv_abi::platform::devices::ALL`.
    #[must_use]
    pub fn abi_device(self) -> Option<&'static devices::Device> {
        devices::ALL.iter().find(|d| d.name == self.name())
    }
}

/// The POST diagnostic port: writes are ignored, reads return all-ones.
#[derive(Debug, Clone, Copy, Default)]
struct PostPort;

impl PortIo for PostPort {
    fn read(&mut self, _port: u16, size: u8, _now: Nanos, _platform: &mut dyn Platform) -> u32 {
        open_bus(size)
    }

    fn write(&mut self, _port: u16, _size: u8, _value: u32, _now: Nanos, _platform: &mut dyn Platform) {}
}

/// The wiring between the devices and the platform around the board: ISA IRQ levels
/// go to the PIC pair and, as GSIs, outwards; power requests go outwards. A level
/// reported marks the board changed (`PcBoard::changed`): the PIC pair's INT output may
/// have moved with it.
struct Wires<'a> {
    pic: &'a mut PicPair,
    outer: &'a mut dyn Platform,
    changed: &'a mut bool,
}

impl Platform for Wires<'_> {
    fn set_irq(&mut self, irq: u8, high: bool) {
        *self.changed = true;
        self.pic.set_irq(irq, high);
        if let Ok(gsi) = u8::try_from(isa_irq_to_gsi(irq)) {
            self.outer.set_irq(gsi, high);
        }
    }

    fn request(&mut self, request: PlatformRequest) {
        self.outer.request(request);
    }
}

/// The mask of an access of `size` bytes.
const fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => u32::MAX,
    }
}

/// The mask of an MMIO access of `size` (1, 2, 4 or 8) bytes.
const fn mmio_size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// Runs `$body` with `$d` bound to device `$kind` of board `$board` and `$p` to the
/// platform it reports to (the PIC pair reports nothing and gets the outer platform
/// `$platform`; the others get the wiring). A macro rather than a function taking a
/// `&mut dyn PortIo`, so that every access calls its device directly. Whatever reaches
/// the PIC pair may change its INT output, so it marks the board changed.
macro_rules! on_device {
    ($board:expr, $kind:expr, $platform:expr, |$d:ident, $p:ident| $body:expr) => {{
        let PcBoard { uart, pit, pic, rtc, acpi, pci, kbd, debug_exit, debugcon, fw_cfg, post, changed, .. } = $board;
        let outer: &mut dyn Platform = $platform;
        match $kind {
            DeviceKind::Pic => {
                *changed = true;
                let ($d, $p) = (pic, outer);
                $body
            }
            DeviceKind::Com1 => {
                let ($d, $p) = (uart, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::Pit => {
                let ($d, $p) = (pit, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::Rtc => {
                let ($d, $p) = (rtc, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::AcpiPm => {
                let ($d, $p) = (acpi, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::Pci => {
                let ($d, $p) = (pci, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::Kbd => {
                let ($d, $p) = (kbd, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::DebugExit => {
                let ($d, $p) = (debug_exit, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::DebugCon => {
                let ($d, $p) = (debugcon, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::FwCfg => {
                let ($d, $p) = (fw_cfg, &mut Wires { pic, outer, changed });
                $body
            }
            DeviceKind::Post => {
                let ($d, $p) = (post, &mut Wires { pic, outer, changed });
                $body
            }
        }
    }};
}

/// A complete PC device set (see the module documentation).
#[derive(Debug, Clone)]
pub struct PcBoard {
    config: BoardConfig,
    uart: Uart16550,
    pit: Pit8254,
    pic: PicPair,
    rtc: RtcCmos,
    acpi: AcpiPm,
    pci: PciHost,
    kbd: KbdResetPort,
    debug_exit: IsaDebugExit,
    debugcon: DebugCon,
    fw_cfg: FwCfg,
    post: PostPort,
    mmio_test: MmioScratch,
    /// The next event of each timed device ([`TIMED`] order; `NO_EVENT`: none), as its
    /// `next_event` said after the board last touched it.
    events: [Nanos; TIMED.len()],
    /// The minimum of `events`.
    earliest: Nanos,
    /// Something the owner reacts to may have changed since [`PcBoard::take_changed`]
    /// last returned: see there for what sets it.
    changed: bool,
}

/// The number of ports of COM1, from [`COM1_BASE`] on. The fast path takes a port
/// whose offset `port.wrapping_sub(COM1_BASE)` is below it as COM1's: one compare,
/// since ports below the base wrap around to large offsets.
const COM1_PORTS: u16 = 8;

/// The devices with timers or deferred interrupt-line changes, which [`PcBoard::tick`]
/// drives, in the order `PcBoard::events` keeps them.
const TIMED: [DeviceKind; 4] = [DeviceKind::Com1, DeviceKind::Pit, DeviceKind::Rtc, DeviceKind::AcpiPm];

/// `PcBoard::events` entry of a device without a next event.
const NO_EVENT: Nanos = Nanos::MAX;

/// The earliest of the timed devices' next events.
#[inline]
fn earliest(events: &[Nanos; TIMED.len()]) -> Nanos {
    let [a, b, c, d] = *events;
    a.min(b).min(c.min(d))
}

/// The CMOS memory-size bytes a PC BIOS leaves for BIOS-less loaders and old kernels,
/// for `ram_bytes` of RAM from 0 (as QEMU's PC fills them, `pc_cmos_init`): base
/// memory in KiB (0x15/0x16: 640), extended memory from 1 MiB in KiB, at most 0xFFFF
/// (0x17/0x18, copied at 0x30/0x31), memory from 16 MiB below 4 GiB in 64 KiB units, at
/// most 0xFFFF (0x34/0x35), and memory from 4 GiB in 64 KiB units (0x5B-0x5D, 24 bits).
/// Each value is little-endian.
fn cmos_memory_size(ram_bytes: u64) -> [(u8, u8); 11] {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB4: u64 = 4 << 30;
    let below_4g = ram_bytes.min(GIB4);
    let base = (below_4g / KIB).min(640);
    let extended = (below_4g.saturating_sub(MIB) / KIB).min(0xFFFF);
    let above_16m = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xFFFF);
    let above_4g = (ram_bytes.saturating_sub(GIB4) / (64 * KIB)).min(0xFF_FFFF);
    let byte = |v: u64, n: u32| (v >> (8 * n)) as u8;
    [
        (0x15, byte(base, 0)),
        (0x16, byte(base, 1)),
        (0x17, byte(extended, 0)),
        (0x18, byte(extended, 1)),
        (0x30, byte(extended, 0)),
        (0x31, byte(extended, 1)),
        (0x34, byte(above_16m, 0)),
        (0x35, byte(above_16m, 1)),
        (0x5B, byte(above_4g, 0)),
        (0x5C, byte(above_4g, 1)),
        (0x5D, byte(above_4g, 2)),
    ]
}

impl PcBoard {
    /// The board in its power-on state at time `now`: the RTC reads
    /// `cfg.epoch_seconds`, the PM timer counts from 0, fw_cfg reports `cfg`'s RAM and
    /// CPUs.
    #[must_use]
    pub fn new(cfg: BoardConfig, now: Nanos) -> Self {
        let mut rtc = RtcCmos::new(cfg.epoch_seconds, now);
        for (index, value) in cmos_memory_size(cfg.ram_bytes) {
            rtc.set_nvram(index, value);
        }
        Self::with_rtc(cfg, rtc, now)
    }

    /// The board in its power-on state at time `now`, around an existing RTC.
    fn with_rtc(cfg: BoardConfig, rtc: RtcCmos, now: Nanos) -> Self {
        let cpus = u16::try_from(cfg.vcpus).unwrap_or(u16::MAX);
        let mut board = Self {
            config: cfg,
            uart: Uart16550::new(COM1_BASE, COM1_IRQ),
            pit: Pit8254::new(),
            pic: PicPair::new(),
            rtc,
            acpi: AcpiPm::new(ACPI_PM_PORTS, S5_SLP_TYP, now),
            pci: PciHost::new(),
            kbd: KbdResetPort::new(),
            debug_exit: IsaDebugExit::with_range(ISA_DEBUG_EXIT_PORT, 1),
            debugcon: DebugCon::new(),
            fw_cfg: FwCfg::new(cfg.ram_bytes, cpus, cpus),
            post: PostPort,
            mmio_test: MmioScratch::new(),
            events: [NO_EVENT; TIMED.len()],
            earliest: NO_EVENT,
            // A new board (also after a reset) is news to the owner.
            changed: true,
        };
        board.refresh_all();
        board
    }

    /// A system reset at `now` (the guest wrote the reset control register 0xCF9 or the
    /// 8042's pulse-reset command, and its owner reboots it): every device is back in
    /// the power-on state [`PcBoard::new`] gives it, its time base continuing at `now`
    /// (the PM timer counts from 0 again), except the RTC/CMOS: on a PC it is
    /// battery-backed, so its clock, calendar, alarm and NVRAM survive and it only sees
    /// its RESET input ([`RtcCmos::reset_pin`], which lowers IRQ 8 through `platform`).
    /// Console output not yet taken is dropped with the UART and the debug console:
    /// the owner drains it first.
    ///
    /// The replaced devices report nothing: their fresh successors hold every
    /// interrupt line low, and the owner, which saw the old levels, must lower every
    /// line it still sees high.
    pub fn reset(&mut self, now: Nanos, platform: &mut dyn Platform) {
        let mut rtc = self.rtc.clone();
        rtc.reset_pin(now, &mut Wires { pic: &mut self.pic, outer: platform, changed: &mut self.changed });
        *self = Self::with_rtc(self.config, rtc, now);
    }

    /// The configuration the board was built with.
    #[must_use]
    pub const fn config(&self) -> BoardConfig {
        self.config
    }

    /// The 8259 pair (its IRR shows the ISA requests).
    #[must_use]
    pub const fn pic(&self) -> &PicPair {
        &self.pic
    }

    /// The 8259 pair, for an INTA cycle ([`PicPair::acknowledge`]). The board counts
    /// itself changed ([`PcBoard::take_changed`]): the pair's INT output may move.
    pub fn pic_mut(&mut self) -> &mut PicPair {
        self.changed = true;
        &mut self.pic
    }

    /// The PCI host, for configuration-space requests
    /// ([`PciHost::config_space_read`], [`PciHost::config_space_write`]), which drive
    /// no line.
    pub fn pci_host_mut(&mut self) -> &mut PciHost {
        &mut self.pci
    }

    /// Whether, since the previous call (or since the board was created or reset),
    /// anything may have changed what an owner does after an access:
    /// - the PIC pair's INT output ([`PicPair::output`] of [`PcBoard::pic`]),
    /// - the console output ([`PcBoard::take_console_output`] has new bytes),
    /// - [`PcBoard::next_event`].
    ///
    /// Clears the flag. `false` is exact: all three are as they were when the previous
    /// call returned (the output has no byte it did not have then, though the owner
    /// may have taken some). `true` may be a false alarm. Power requests are not
    /// covered: they reach the owner's [`Platform`] directly.
    ///
    /// What sets it: any interrupt level a device reports (the PIC pair sees it), any
    /// port access to the PIC pair and [`PcBoard::pic_mut`], a write to COM1's THR (or
    /// its divisor latch, which shares the port) or to the debug console (any write to
    /// either through the general path), a change of [`PcBoard::next_event`], and
    /// [`PcBoard::new`] and [`PcBoard::reset`]. A COM1 LSR read that finds no error
    /// and no stale interrupt line sets none of these.
    #[must_use = "the flag is cleared"]
    #[inline]
    pub fn take_changed(&mut self) -> bool {
        core::mem::replace(&mut self.changed, false)
    }

    /// Reads `size` bytes (1, 2 or 4) at `port`; the result fits the size. Undecoded
    /// ports and other sizes read all-ones.
    ///
    /// A one-byte read of COM1 takes the fast path (module documentation); everything
    /// else is routed by [`DeviceKind::at`].
    #[inline]
    pub fn read(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32 {
        let offset = port.wrapping_sub(COM1_BASE);
        if size == 1 && offset < COM1_PORTS {
            let (value, drive) = self.uart.read_at_lazy(offset, now);
            if drive {
                return self.com1_drive_line(value, platform);
            }
            // No drive: the line is not stale, so COM1 has no next event, and its entry
            // already says so (every path that makes or clears a stale line refreshes it).
            self.debug_check_com1_event();
            return u32::from(value);
        }
        self.read_routed(port, size, now, platform)
    }

    /// Writes the low `size` bytes (1, 2 or 4) of `value` at `port`. Undecoded ports
    /// and other sizes are ignored.
    ///
    /// A one-byte write to COM1 takes the fast path (module documentation); everything
    /// else is routed by [`DeviceKind::at`].
    #[inline]
    pub fn write(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform) {
        let offset = port.wrapping_sub(COM1_BASE);
        if size == 1 && offset < COM1_PORTS {
            // Offset 0 (THR, or DLL with DLAB set) is the only register whose write can
            // add console output.
            self.changed |= offset == 0;
            match self.uart.write_at_lazy(offset, value as u8, now) {
                // As for a read: nothing to refresh.
                Some(false) => self.debug_check_com1_event(),
                Some(true) => {
                    self.com1_drive_line(0, platform);
                }
                None => self.com1_write(offset, value as u8, now, platform),
            }
            return;
        }
        self.write_routed(port, size, value, now, platform);
    }

    /// The end of a COM1 fast-path access that moved the interrupt line: drives it
    /// through the wiring, refreshes COM1's next event, and returns `value` (the value
    /// read, so that the read's fast path can end in a tail call). Out of line: the
    /// fast path then makes no call, and saves no registers, when the line stays.
    #[inline(never)]
    fn com1_drive_line(&mut self, value: u8, platform: &mut dyn Platform) -> u32 {
        self.uart.drive_line(&mut Wires { pic: &mut self.pic, outer: platform, changed: &mut self.changed });
        self.refresh_com1();
        u32::from(value)
    }

    /// A COM1 fast-path write that needs the line driven half-way (a THR write that
    /// clears a pending THRE interrupt; see [`Uart16550::write_at_lazy`]). Out of line,
    /// as [`PcBoard::com1_drive_line`].
    #[inline(never)]
    fn com1_write(&mut self, offset: u16, value: u8, now: Nanos, platform: &mut dyn Platform) {
        let wires = &mut Wires { pic: &mut self.pic, outer: platform, changed: &mut self.changed };
        self.uart.write_at(offset, value, now, wires);
        self.refresh_com1();
    }

    /// [`PcBoard::read`] by the port map: every device, every size. Not inlined, so
    /// that the fast path in `read` stays small.
    #[inline(never)]
    fn read_routed(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32 {
        let Some(kind) = DeviceKind::at(port).filter(|_| matches!(size, 1 | 2 | 4)) else {
            return open_bus(size);
        };
        let value = on_device!(self, kind, platform, |d, p| d.read(port, size, now, p)) & size_mask(size);
        self.refresh(kind);
        value
    }

    /// [`PcBoard::write`] by the port map: every device, every size. Not inlined, so
    /// that the fast path in `write` stays small.
    #[inline(never)]
    fn write_routed(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform) {
        let Some(kind) = DeviceKind::at(port).filter(|_| matches!(size, 1 | 2 | 4)) else { return };
        let value = value & size_mask(size);
        // The devices with console output: any write may add some.
        if matches!(kind, DeviceKind::Com1 | DeviceKind::DebugCon) {
            self.changed = true;
        }
        on_device!(self, kind, platform, |d, p| d.write(port, size, value, now, p));
        self.refresh(kind);
    }

    /// The next event of timed device `kind` as its model says now ([`NO_EVENT`]: none).
    fn device_event(&self, kind: DeviceKind) -> Nanos {
        let event = match kind {
            DeviceKind::Com1 => self.uart.next_event(),
            DeviceKind::Pit => self.pit.next_event(),
            DeviceKind::Rtc => self.rtc.next_event(),
            DeviceKind::AcpiPm => self.acpi.next_event(),
            _ => None,
        };
        event.unwrap_or(NO_EVENT)
    }

    /// Takes the next event of device `kind` anew after the board touched it (nothing
    /// for a device without timers: only the timed devices have one). The minimum is
    /// recomputed only when the device's entry changed. Always inlined: after an
    /// access the device is known, and most devices have no entry to refresh.
    #[inline(always)]
    fn refresh(&mut self, kind: DeviceKind) {
        match kind {
            DeviceKind::Com1 => self.refresh_com1(),
            DeviceKind::Pit => self.set_event(1, self.pit.next_event().unwrap_or(NO_EVENT)),
            DeviceKind::Rtc => self.set_event(2, self.rtc.next_event().unwrap_or(NO_EVENT)),
            DeviceKind::AcpiPm => self.set_event(3, self.acpi.next_event().unwrap_or(NO_EVENT)),
            _ => {}
        }
    }

    /// Debug builds: COM1's entry in `events` is what its model says (what the fast
    /// paths rely on when they skip [`PcBoard::refresh_com1`]).
    #[inline]
    fn debug_check_com1_event(&self) {
        debug_assert_eq!(self.events[0], self.uart.next_event().unwrap_or(NO_EVENT));
    }

    /// [`PcBoard::refresh`] of COM1, for the fast path.
    #[inline]
    fn refresh_com1(&mut self) {
        self.set_event(0, self.uart.next_event().unwrap_or(NO_EVENT));
    }

    /// Sets entry `index` of `events` (and the minimum, if the entry changed).
    #[inline]
    fn set_event(&mut self, index: usize, event: Nanos) {
        if self.events[index] != event {
            self.events[index] = event;
            self.set_earliest(earliest(&self.events));
        }
    }

    /// Takes the next event of every timed device anew.
    fn refresh_all(&mut self) {
        self.events = TIMED.map(|kind| self.device_event(kind));
        self.set_earliest(earliest(&self.events));
    }

    /// Sets the minimum of `events`; a new value marks the board changed.
    #[inline]
    fn set_earliest(&mut self, earliest: Nanos) {
        if self.earliest != earliest {
            self.earliest = earliest;
            self.changed = true;
        }
    }

    /// Reads `size` bytes (1, 2, 4 or 8) at guest-physical address `gpa` from the MMIO
    /// device whose range holds `gpa`; the result fits the size. `None` when no device
    /// decodes `gpa` or for other sizes (see "MMIO routing" in the module documentation).
    /// `now` and `platform` are what a device with timers or interrupts would get; the
    /// current MMIO devices have neither.
    pub fn mmio_read(&mut self, gpa: u64, size: u8, now: Nanos, platform: &mut dyn Platform) -> Option<u64> {
        let _ = (now, platform);
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let (kind, offset) = MmioDeviceKind::at(gpa)?;
        let value = match kind {
            MmioDeviceKind::MmioTest => self.mmio_test.read(offset, size),
        };
        Some(value & mmio_size_mask(size))
    }

    /// Writes the low `size` bytes (1, 2, 4 or 8) of `value` at guest-physical address
    /// `gpa` to the MMIO device whose range holds `gpa`. `false` (and nothing written)
    /// when no device decodes `gpa` or for other sizes.
    pub fn mmio_write(&mut self, gpa: u64, size: u8, value: u64, now: Nanos, platform: &mut dyn Platform) -> bool {
        let _ = (now, platform);
        if !matches!(size, 1 | 2 | 4 | 8) {
            return false;
        }
        let Some((kind, offset)) = MmioDeviceKind::at(gpa) else { return false };
        match kind {
            MmioDeviceKind::MmioTest => self.mmio_test.write(offset, size, value & mmio_size_mask(size)),
        }
    }

    /// The earliest time any device needs [`PcBoard::tick`] (a timer interrupt, or a
    /// line change waiting to be driven), if any. Kept by the board (see "Lazy ticks"
    /// in the module documentation): no device is asked.
    #[must_use]
    #[inline]
    pub const fn next_event(&self) -> Option<Nanos> {
        if self.earliest == NO_EVENT {
            None
        } else {
            Some(self.earliest)
        }
    }

    /// Lets time pass up to `now` for every device with timers or pending line
    /// changes: interrupts due by then are raised. Returns at once while `now` is
    /// before [`PcBoard::next_event`] (nothing is due).
    #[inline]
    pub fn tick(&mut self, now: Nanos, platform: &mut dyn Platform) {
        if now < self.earliest {
            return;
        }
        self.tick_devices(now, platform);
    }

    /// [`PcBoard::tick`] without the early return: ticks every timed device.
    fn tick_devices(&mut self, now: Nanos, platform: &mut dyn Platform) {
        for kind in TIMED {
            on_device!(&mut *self, kind, &mut *platform, |d, p| d.tick(now, p));
        }
        self.refresh_all();
    }

    /// Moves console output into `out` and returns how many bytes it took: first the
    /// bytes the UART transmitted, then those written to the debug console (0xE9),
    /// each oldest first. The two are not interleaved by time: an owner that drains
    /// after every access gets them in the guest's order (each access reaches one
    /// device). Whatever does not fit stays for the next call.
    pub fn take_console_output(&mut self, out: &mut [u8]) -> usize {
        let n = self.uart.take_output(out);
        let rest = out.get_mut(n..).unwrap_or_default();
        n + self.debugcon.take_output(rest)
    }

    /// Console bytes waiting to be taken.
    #[must_use]
    #[inline]
    pub const fn console_output_len(&self) -> usize {
        self.uart.output_len() + self.debugcon.output_len()
    }

    /// Delivers a byte typed on the console to the UART's receiver; false if it was
    /// lost (receiver full, or the UART is in loopback). The interrupt it may raise is
    /// driven at the next [`PcBoard::tick`] (see [`PcBoard::next_event`]).
    pub fn push_console_input(&mut self, byte: u8) -> bool {
        let taken = self.uart.push_input(byte);
        self.refresh(DeviceKind::Com1);
        taken
    }

    /// Bytes the UART's receiver takes before it overruns ([`Uart16550::rx_space`]: 0 in
    /// loopback), for pacing console input.
    #[must_use]
    pub const fn console_input_space(&self) -> usize {
        self.uart.rx_space()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::acpi_pm::{PM_TIMER_HZ, SLP_EN};
    use crate::pci_host::{CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, CONFIG_ENABLE};
    use crate::RecordingPlatform;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// 2026-01-01T00:00:00Z.
    const EPOCH: u64 = 1_767_225_600;
    const SECOND: Nanos = 1_000_000_000;

    fn config() -> BoardConfig {
        BoardConfig { vcpus: 2, ram_bytes: 256 << 20, epoch_seconds: EPOCH }
    }

    struct Rig {
        board: PcBoard,
        platform: RecordingPlatform,
    }

    impl Rig {
        fn new() -> Self {
            Self { board: PcBoard::new(config(), 0), platform: RecordingPlatform::default() }
        }
        fn out(&mut self, port: u16, size: u8, value: u32) {
            self.out_at(port, size, value, 0);
        }
        fn out_at(&mut self, port: u16, size: u8, value: u32, now: Nanos) {
            self.board.write(port, size, value, now, &mut self.platform);
        }
        fn inp(&mut self, port: u16, size: u8) -> u32 {
            self.inp_at(port, size, 0)
        }
        fn inp_at(&mut self, port: u16, size: u8, now: Nanos) -> u32 {
            self.board.read(port, size, now, &mut self.platform)
        }
        fn config_read(&mut self, bus: u8, device: u8, function: u8, offset: u8) -> u32 {
            let address = CONFIG_ENABLE
                | u32::from(bus) << 16
                | u32::from(device) << 11
                | u32::from(function) << 8
                | u32::from(offset & 0xFC);
            self.out(CONFIG_ADDRESS_PORT, 4, address);
            self.inp(CONFIG_DATA_PORT, 4)
        }
    }

    #[test]
    fn the_port_map_is_the_abis() {
        let mut claimed = 0usize;
        // The board is the PC; test devices (`pc: false`) are the service partition's own.
        let pc_devices = || devices::ALL.iter().filter(|d| d.pc);
        for device in pc_devices() {
            for &(first, last) in device.ports {
                for port in first..=last {
                    let kind = DeviceKind::at(port);
                    assert_eq!(kind.map(DeviceKind::name), Some(device.name), "port {port:#x}");
                    claimed += 1;
                }
            }
        }
        let decoded = (0..=u16::MAX).filter(|&p| DeviceKind::at(p).is_some()).count();
        assert_eq!(decoded, claimed, "the board decodes a port outside hv_abi's map");
        assert_eq!(DeviceKind::ALL.len(), pc_devices().count());
        for (kind, device) in DeviceKind::ALL.iter().zip(pc_devices()) {
            assert_eq!(kind.name(), device.name);
            assert_eq!(kind.abi_device(), Some(device));
            assert_eq!(kind.isa_irq(), device.isa_irq, "{}", device.name);
        }
    }

    /// The virtual-wire path the service partition drives: the PIC's INTR output
    /// follows the PIT through timer ticks and the guest's port writes (IMR, EOI), and
    /// an INTA cycle (`pic_mut().acknowledge()`) gives the Linux vectors.
    #[test]
    fn the_pic_output_follows_ticks_port_writes_and_inta() {
        let mut r = Rig::new();
        for (cmd, data, base, icw3) in [(0x20, 0x21, 0x20, 0x04), (0xA0, 0xA1, 0x28, 0x02)] {
            r.out(cmd, 1, 0x11);
            r.out(data, 1, base);
            r.out(data, 1, icw3);
            r.out(data, 1, 0x01);
        }
        r.out(0x21, 1, 0xFF);
        // PIT counter 0, mode 2, divisor 1193 (about 1 ms).
        r.out(0x43, 1, 0x34);
        r.out(0x40, 1, 1193 & 0xFF);
        r.out(0x40, 1, 1193 >> 8);
        r.board.tick(5_000_000, &mut r.platform);
        assert!(!r.board.pic().output(), "IRQ 0 masked: INTR low");
        r.out_at(0x21, 1, 0xFE, 5_000_000);
        assert!(r.board.pic().output(), "unmasking the latched IRQ 0 raises INTR");
        assert_eq!(r.board.pic_mut().acknowledge(), Some(0x20));
        assert!(!r.board.pic().output(), "IRQ 0 in service: INTR low");
        r.board.tick(7_000_000, &mut r.platform);
        assert!(!r.board.pic().output(), "a new IRQ 0 waits for the EOI");
        r.out_at(0x20, 1, 0x20, 7_000_000);
        assert!(r.board.pic().output(), "after the EOI the pending IRQ 0 raises INTR");
        assert_eq!(r.board.pic_mut().acknowledge(), Some(0x20));
        r.out_at(0x20, 1, 0x20, 7_000_000);
        assert!(!r.board.pic().output());
        // Nothing requesting: the INTA gives the master's IR7 vector (spurious IRQ 7).
        assert_eq!(r.board.pic_mut().acknowledge(), Some(0x27));
        // The RTC's periodic IRQ 8 through the cascade.
        r.out(0x21, 1, 0xFB);
        r.out(0xA1, 1, 0xFE);
        r.out(0x70, 1, 0x0A);
        r.out(0x71, 1, 0x26);
        r.out(0x70, 1, 0x0B);
        r.out(0x71, 1, 0x42);
        r.board.tick(9_000_000, &mut r.platform);
        assert!(r.board.pic().output(), "RTC IRQ 8 through IR2 raises INTR");
        assert_eq!(r.board.pic_mut().acknowledge(), Some(0x28));
    }

    /// Ports whose reads have no side effects and show the devices' configurable state:
    /// UART IER/LCR/MCR/scratch, PIC masks, ELCRs, the PCI config address, PM1
    /// status/enable and control, the 8042 status. (fw_cfg's data port is left out:
    /// reading it advances it.)
    const STATE_PORTS: [(u16, u8); 11] = [
        (0x3F9, 1),
        (0x3FB, 1),
        (0x3FC, 1),
        (0x3FF, 1),
        (0x21, 1),
        (0xA1, 1),
        (0x4D0, 2),
        (0xCF8, 4),
        (0x600, 4),
        (0x604, 2),
        (0x64, 1),
    ];

    #[test]
    fn reset_is_power_on_except_the_rtc() {
        let mut r = Rig::new();
        // Change every device's state away from power-on.
        r.out(0x3FB, 1, 0x1B); // UART: 8E1 line control
        r.out(0x3F9, 1, 0x0F); // UART: all interrupts enabled
        r.out(0x3FC, 1, 0x0B); // UART: DTR, RTS, OUT2
        r.out(0x3FF, 1, 0x5A); // UART: scratch
        for (port, value) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFA)] {
            r.out(port, 1, value); // master PIC: ICW1-4, then OCW1
        }
        r.out(0x4D0, 2, 0x0E20); // ELCR
        r.out(0x43, 1, 0x34); // PIT channel 0, mode 2
        r.out(0x40, 1, 0x9C);
        r.out(0x40, 1, 0x2E);
        r.out(0x61, 1, 0x03); // speaker gate
        r.out(CONFIG_ADDRESS_PORT, 4, CONFIG_ENABLE | 0x08);
        r.out(0x602, 2, 0x0121); // PM1 enables
        r.out(0x604, 2, 0x0001); // SCI_EN
        r.out(0x70, 1, 0x48);
        r.out(0x71, 1, 0xA1); // NVRAM marker
        r.out(0x70, 1, 0x0B);
        r.out(0x71, 1, 0x42 | 0x06); // RTC: PIE, binary 24-hour
        let before_date = rtc_date(&mut r, 3 * SECOND);
        let tick = 3 * SECOND;
        r.board.tick(tick, &mut r.platform);
        assert_ne!(r.platform.lines & (1 << 8), 0, "the RTC's periodic interrupt is up");
        assert!(r.board.next_event().is_some());

        r.board.reset(tick, &mut r.platform);
        assert_eq!(r.platform.lines & (1 << 8), 0, "the RTC's reset lowers IRQ 8");
        let mut fresh = Rig { board: PcBoard::new(config(), tick), platform: RecordingPlatform::default() };
        for (port, size) in STATE_PORTS {
            assert_eq!(r.inp_at(port, size, tick), fresh.inp_at(port, size, tick), "port {port:#x}");
        }
        // The PIT's channel 0 is unprogrammed again: no timer runs, and the PM timer
        // counts from the reset.
        assert_eq!(r.inp_at(0x61, 1, tick) & 0x03, 0);
        assert_eq!(r.inp_at(0x608, 4, tick), 0);
        // The RTC keeps its NVRAM, its clock and its data mode; its PIE is cleared.
        r.out_at(0x70, 1, 0x48, tick);
        assert_eq!(r.inp_at(0x71, 1, tick), 0xA1);
        r.out_at(0x70, 1, 0x0B, tick);
        assert_eq!(r.inp_at(0x71, 1, tick), 0x06);
        assert_eq!(rtc_date(&mut r, tick), before_date);
        assert_eq!(r.board.next_event(), None, "nothing is armed after a reset");
        // The console of the board keeps working, and fw_cfg still reports the config.
        assert_eq!(r.board.config(), config());
        r.out_at(0x3F8, 1, u32::from(b'k'), tick);
        let mut out = [0u8; 4];
        assert_eq!(r.board.take_console_output(&mut out), 1);
        assert_eq!(out[0], b'k');
    }

    /// The RTC's date and time bytes (seconds are left out: time passes) at `now`.
    fn rtc_date(r: &mut Rig, now: Nanos) -> [u32; 5] {
        [0x02, 0x04, 0x07, 0x08, 0x09].map(|index| {
            r.out_at(0x70, 1, index, now);
            r.inp_at(0x71, 1, now)
        })
    }

    #[test]
    fn undecoded_ports_and_sizes_are_open_bus() {
        let mut r = Rig::new();
        for port in [0u16, 0x1F, 0x22, 0x62, 0x81, 0xF5, 0x2F8, 0x3F7, 0x400, 0x512, 0x60C, 0xCF7, 0xD00, 0xFFFF] {
            r.out(port, 1, 0);
            assert_eq!(r.inp(port, 1), 0xFF, "{port:#x}");
            assert_eq!(r.inp(port, 2), 0xFFFF, "{port:#x}");
            assert_eq!(r.inp(port, 4), 0xFFFF_FFFF, "{port:#x}");
        }
        // Size 8 (or any other) is not decoded, even at a device's port.
        r.out(0xF4, 8, 1);
        r.out(0xF4, 3, 1);
        assert_eq!(r.inp(0x3FF, 8), 0xFFFF_FFFF);
        assert_eq!(r.platform, RecordingPlatform::default());
    }

    #[test]
    fn every_device_is_reached() {
        let mut r = Rig::new();
        // COM1: the scratch register.
        r.out(0x3FF, 1, 0x5A);
        assert_eq!(r.inp(0x3FF, 1), 0x5A);
        // PIT: port 0x61 keeps bits 3:0; counter 0 counts down.
        r.out(0x61, 1, 0x03);
        assert_eq!(r.inp(0x61, 1) & 0x0F, 0x03);
        r.out(0x43, 1, 0x34); // counter 0, LSB then MSB, mode 2
        r.out(0x40, 1, 0xFF);
        r.out(0x40, 1, 0xFF);
        r.out_at(0x43, 1, 0x00, 1_000_000); // latch counter 0
        let low = r.inp_at(0x40, 1, 1_000_000);
        let high = r.inp_at(0x40, 1, 1_000_000);
        let count = low | high << 8;
        assert!(count < 0xFFFF && count > 0xFFFF - 1300, "{count:#x}");
        // PIC: OCW1 before initialization, and the ELCR.
        r.out(0x21, 1, 0xAB);
        assert_eq!(r.inp(0x21, 1), 0xAB);
        r.out(0xA1, 1, 0xCD);
        assert_eq!(r.inp(0xA1, 1), 0xCD);
        r.out(0x4D1, 1, 0x0E);
        assert_eq!(r.inp(0x4D1, 1), 0x0E);
        // RTC: NVRAM and the clock (24-hour BCD).
        r.out(0x70, 1, 0x0E);
        r.out(0x71, 1, 0x77);
        assert_eq!(r.inp(0x71, 1), 0x77);
        r.out(0x70, 1, 0x00);
        assert_eq!(r.inp_at(0x71, 1, 12 * SECOND + 1), 0x12);
        r.out(0x70, 1, 0x09);
        assert_eq!(r.inp(0x71, 1), 0x26, "year 2026");
        // ACPI PM: the timer counts at 3.579545 MHz from the board's creation.
        assert_eq!(u64::from(r.inp_at(0x608, 4, SECOND)), PM_TIMER_HZ);
        assert_eq!(r.inp(0x606, 2), 0xFFFF, "nothing between PM1 control and the timer");
        // Keyboard controller status.
        assert_eq!(r.inp(0x64, 1), 0x1C);
        assert_eq!(r.inp(0x60, 1), 0);
        // Debug console.
        assert_eq!(r.inp(0xE9, 1), 0xE9);
        // POST port.
        r.out(0x80, 1, 0x42);
        assert_eq!(r.inp(0x80, 1), 0xFF);
        assert_eq!(r.inp(0x80, 2), 0xFFFF);
        // isa-debug-exit reads open bus.
        assert_eq!(r.inp(0xF4, 1), 0xFF);
        assert_eq!(r.platform.last_request, None);
    }

    #[test]
    fn pci_enumeration_finds_only_the_host_bridge() {
        let mut r = Rig::new();
        let mut found = Vec::new();
        for device in 0..32 {
            for function in 0..8 {
                let id = r.config_read(0, device, function, 0);
                if id != 0xFFFF_FFFF {
                    found.push((device, function, id));
                }
            }
        }
        assert_eq!(found, [(0, 0, 0x1237_8086)]);
        assert_eq!(r.config_read(0, 0, 0, 8) >> 8, 0x06_0000);
        assert_eq!(r.config_read(0, 0, 0, 0x0C) >> 16 & 0x80, 0, "single function");
        assert_eq!(r.config_read(1, 0, 0, 0), 0xFFFF_FFFF);
        // CONFIG_ENABLE clear: CONFIG_DATA is ordinary (undecoded) I/O.
        r.out(CONFIG_ADDRESS_PORT, 4, 0);
        assert_eq!(r.inp(CONFIG_DATA_PORT, 4), 0xFFFF_FFFF);
        assert_eq!(r.inp(CONFIG_ADDRESS_PORT, 4), 0);
    }

    #[test]
    fn cmos_holds_the_memory_size() {
        let cmos = |ram_bytes: u64| {
            let mut r =
                Rig { board: PcBoard::new(BoardConfig { ram_bytes, ..config() }, 0), platform: Default::default() };
            let mut byte = |index: u32| {
                r.out(0x70, 1, index);
                r.inp(0x71, 1)
            };
            let word = |lo: u32, byte: &mut dyn FnMut(u32) -> u32| byte(lo) | byte(lo + 1) << 8;
            let base = word(0x15, &mut byte);
            let (extended, extended_copy, above_16m) =
                (word(0x17, &mut byte), word(0x30, &mut byte), word(0x34, &mut byte));
            let above_4g = byte(0x5B) | byte(0x5C) << 8 | byte(0x5D) << 16;
            assert_eq!(extended, extended_copy);
            (base, extended, above_16m, above_4g)
        };
        // 256 MiB: 255 MiB above 1 MiB (more than the 16-bit KiB count holds), 240 MiB
        // above 16 MiB.
        assert_eq!(cmos(256 << 20), (640, 0xFFFF, 240 * 16, 0));
        // 32 MiB: 31 MiB above 1 MiB.
        assert_eq!(cmos(32 << 20), (640, 31 * 1024, 16 * 16, 0));
        // 16 MiB: nothing above 16 MiB.
        assert_eq!(cmos(16 << 20), (640, 15 * 1024, 0, 0));
        // 6 GiB: 4 GiB - 16 MiB in 64 KiB units below 4 GiB, 2 GiB above it.
        assert_eq!(cmos(6 << 30), (640, 0xFFFF, 0x1_0000 - 0x100, 2 * 16 * 1024));
        // Less than 640 KiB.
        assert_eq!(cmos(512 << 10), (512, 0, 0, 0));
        // The bytes are NVRAM: a system reset keeps them.
        let mut r = Rig {
            board: PcBoard::new(BoardConfig { ram_bytes: 64 << 20, ..config() }, 0),
            platform: Default::default(),
        };
        r.board.reset(1_000_000, &mut r.platform);
        // 48 MiB above 16 MiB: 768 = 0x300 units.
        r.out(0x70, 1, 0x35);
        assert_eq!(r.inp(0x71, 1), 3);
    }

    #[test]
    fn fw_cfg_reports_the_configuration() {
        let mut r = Rig::new();
        let item = |r: &mut Rig, key: u16, len: usize| -> Vec<u8> {
            r.out(0x510, 2, u32::from(key));
            (0..len).map(|_| r.inp(0x511, 1) as u8).collect()
        };
        assert_eq!(item(&mut r, 0, 4), b"QEMU");
        assert_eq!(item(&mut r, 1, 4), [1, 0, 0, 0]);
        assert_eq!(item(&mut r, 3, 8), (256u64 << 20).to_le_bytes());
        assert_eq!(item(&mut r, 5, 2), [2, 0]);
        assert_eq!(item(&mut r, 0x0F, 2), [2, 0]);
        let big = PcBoard::new(BoardConfig { vcpus: 100_000, ..config() }, 0);
        let mut r = Rig { board: big, platform: RecordingPlatform::default() };
        assert_eq!(item(&mut r, 5, 2), [0xFF, 0xFF]);
    }

    #[test]
    fn isa_irq_0_is_gsi_2() {
        assert_eq!(isa_irq_to_gsi(0), 2);
        for irq in 1..16 {
            assert_eq!(isa_irq_to_gsi(irq), u32::from(irq));
        }
        let mut r = Rig::new();
        // Counter 0, mode 2, count 1193 (about 1 ms).
        r.out(0x43, 1, 0x34);
        r.out(0x40, 1, 1193 & 0xFF);
        r.out(0x40, 1, 1193 >> 8);
        let due = r.board.next_event().expect("the PIT has a next interrupt");
        assert!((900_000..1_100_000).contains(&due), "{due}");
        r.board.tick(due - 1, &mut r.platform);
        assert_eq!(r.platform.rising_edges[2], 0);
        r.board.tick(due, &mut r.platform);
        assert_eq!(r.platform.rising_edges[2], 1, "IRQ 0 arrives on GSI 2");
        assert_eq!(r.platform.rising_edges[0], 0, "nothing on GSI 0");
        assert_eq!(r.platform.lines, 0, "the PIT pulses its line");
        // The PIC pair saw the edge: IRR bit 0 (OCW3: read IRR).
        r.out(0x20, 1, 0x0A);
        assert_eq!(r.inp(0x20, 1) & 1, 1);
        // Periodic: the next one a period later.
        let next = r.board.next_event().unwrap();
        assert!(next > due && next - due < 1_100_000);
        r.board.tick(next, &mut r.platform);
        assert_eq!(r.platform.rising_edges[2], 2);
    }

    #[test]
    fn uart_thre_interrupt_is_gsi_4() {
        let mut r = Rig::new();
        r.out(0x3FC, 1, 0x08); // MCR: OUT2
        r.out(0x3F9, 1, 0x02); // IER: THRI
        assert_eq!(r.platform.lines, 1 << 4);
        assert_eq!(r.platform.rising_edges[4], 1);
        assert_eq!(r.inp(0x3FA, 1) & 0x0F, 0x02, "IIR: THR empty");
        assert_eq!(r.platform.lines, 0, "reading IIR cleared it");
        // Each byte written raises it again.
        for (i, &b) in b"hi".iter().enumerate() {
            r.out(0x3F8, 1, u32::from(b));
            assert_eq!(r.platform.rising_edges[4], 2 + i as u32);
        }
        let mut out = [0u8; 8];
        assert_eq!(r.board.take_console_output(&mut out), 2);
        assert_eq!(&out[..2], b"hi");
    }

    #[test]
    fn rtc_interrupt_is_gsi_8() {
        let mut r = Rig::new();
        r.out(0x70, 1, 0x0B);
        r.out(0x71, 1, 0x02 | 0x10); // 24-hour, UIE
        let due = r.board.next_event().unwrap();
        assert!(due <= SECOND);
        r.board.tick(due, &mut r.platform);
        assert_eq!(r.platform.lines, 1 << 8);
        r.out(0x70, 1, 0x0C);
        assert_eq!(r.inp(0x71, 1) & 0x90, 0x90, "IRQF and UF");
        assert_eq!(r.platform.lines, 0);
    }

    #[test]
    fn resets_pass_through() {
        let mut r = Rig::new();
        r.out(0xCF9, 1, 0x02);
        assert_eq!(r.platform.last_request, None);
        r.out(0xCF9, 1, 0x06);
        assert_eq!(r.platform.last_request, Some(PlatformRequest::Reset));
        let mut r = Rig::new();
        r.out(0x64, 1, 0xFE);
        assert_eq!(r.platform.last_request, Some(PlatformRequest::Reset));
    }

    #[test]
    fn s5_through_pm1_control() {
        let mut r = Rig::new();
        r.out(0x604, 2, u32::from(SLP_EN)); // SLP_TYP 0: not S5
        assert_eq!(r.platform.last_request, None);
        r.out(0x604, 2, u32::from(SLP_EN) | u32::from(S5_SLP_TYP) << 10);
        assert_eq!(r.platform.last_request, Some(PlatformRequest::PowerOff));
    }

    #[test]
    fn isa_debug_exit_passes_the_code() {
        let mut r = Rig::new();
        r.out(0xF4, 1, 0x31);
        assert_eq!(r.platform.last_request, Some(PlatformRequest::Exit(0x31)));
        r.out(0xF4, 4, 0x1234_5678);
        assert_eq!(r.platform.last_request, Some(PlatformRequest::Exit(0x1234_5678)));
        r.platform.last_request = None;
        r.out(0xF5, 1, 1);
        assert_eq!(r.platform.last_request, None, "only port 0xF4 is forwarded");
    }

    #[test]
    fn console_output_uart_first_then_debugcon() {
        let mut r = Rig::new();
        for &b in b"ab" {
            r.out(0xE9, 1, u32::from(b));
        }
        for &b in b"xyz" {
            r.out(0x3F8, 1, u32::from(b));
        }
        assert_eq!(r.board.console_output_len(), 5);
        let mut out = [0u8; 4];
        assert_eq!(r.board.take_console_output(&mut out), 4);
        assert_eq!(&out, b"xyza");
        assert_eq!(r.board.take_console_output(&mut out), 1);
        assert_eq!(&out[..1], b"b");
        assert_eq!(r.board.take_console_output(&mut out), 0);
        assert_eq!(r.board.take_console_output(&mut []), 0);
    }

    #[test]
    fn console_input_reaches_the_uart() {
        let mut r = Rig::new();
        r.out(0x3FC, 1, 0x08); // OUT2
        r.out(0x3F9, 1, 0x01); // IER: received data
        assert_eq!(r.board.console_input_space(), 1, "16450 mode: RBR only");
        assert!(r.board.push_console_input(b'k'));
        assert_eq!(r.board.console_input_space(), 0);
        assert_eq!(r.board.next_event(), Some(0), "the line change waits for a tick");
        r.board.tick(10, &mut r.platform);
        assert_eq!(r.platform.lines, 1 << 4);
        assert_eq!(r.inp(0x3FD, 1) & 1, 1, "LSR: data ready");
        assert_eq!(r.inp(0x3F8, 1), u32::from(b'k'));
        assert_eq!(r.platform.lines, 0);
    }

    #[test]
    fn the_mmio_map_is_the_abis() {
        // Every device with MMIO ranges in hv_abi is an MMIO device of the board, with
        // the same single range, decoded exactly (first and last byte, not the
        // neighbours).
        let abi_mmio: Vec<_> = devices::ALL.iter().filter(|d| !d.mmio.is_empty()).collect();
        assert_eq!(abi_mmio.len(), MmioDeviceKind::ALL.len());
        for (kind, device) in MmioDeviceKind::ALL.iter().zip(&abi_mmio) {
            assert_eq!(kind.name(), device.name);
            assert_eq!(kind.abi_device(), Some(*device));
            assert_eq!(device.mmio, &[kind.range()], "{}", device.name);
            let (first, last) = kind.range();
            assert_eq!(MmioDeviceKind::at(first), Some((*kind, 0)));
            assert_eq!(MmioDeviceKind::at(last), Some((*kind, last - first)));
            assert_eq!(MmioDeviceKind::at(first - 1), None);
            assert_eq!(MmioDeviceKind::at(last + 1), None);
        }
        for gpa in [0, 0xFEC0_0000, 0xFEE0_0000, 0xFEAF_FFFF, 0xFEB0_1000, u64::MAX] {
            assert_eq!(MmioDeviceKind::at(gpa), None, "{gpa:#x}");
        }
    }

    #[test]
    fn mmio_test_is_reached_by_gpa() {
        use crate::test_devices::MMIO_CONSTANT;
        let base = devices::MMIO_TEST_BASE;
        let mut r = Rig::new();
        let p = &mut r.platform;
        assert_eq!(r.board.mmio_read(base, 8, 0, p), Some(0));
        assert!(r.board.mmio_write(base + 8, 8, 0x0123_4567_89AB_CDEF, 0, p));
        assert_eq!(r.board.mmio_read(base + 8, 8, 0, p), Some(0x0123_4567_89AB_CDEF));
        assert_eq!(r.board.mmio_read(base + 9, 1, 0, p), Some(0xCD));
        assert_eq!(r.board.mmio_read(base + 10, 2, 0, p), Some(0x89AB));
        assert_eq!(r.board.mmio_read(base + 12, 4, 0, p), Some(0x0123_4567));
        // Only the low `size` bytes of the value are written.
        assert!(r.board.mmio_write(base + 8, 2, 0xFFFF_FFFF_FFFF_1111, 0, p));
        assert_eq!(r.board.mmio_read(base + 8, 8, 0, p), Some(0x0123_4567_89AB_1111));
        assert_eq!(r.board.mmio_read(base + 0x100, 8, 0, p), Some(MMIO_CONSTANT));
        assert_eq!(r.board.mmio_read(base + 0x108, 8, 0, p), Some(2), "two writes");
        assert_eq!(r.board.mmio_read(base + 0xFFF, 1, 0, p), Some(0));
        // Undecoded addresses and bad sizes.
        assert_eq!(r.board.mmio_read(base - 1, 1, 0, p), None);
        assert_eq!(r.board.mmio_read(base + 0x1000, 4, 0, p), None);
        assert_eq!(r.board.mmio_read(0xFEE0_0000, 4, 0, p), None);
        assert!(!r.board.mmio_write(base + 0x1000, 4, 1, 0, p));
        assert!(!r.board.mmio_write(0, 8, 1, 0, p));
        for size in [0, 3, 5, 7, 9, 16] {
            assert_eq!(r.board.mmio_read(base, size, 0, p), None);
            assert!(!r.board.mmio_write(base, size, 1, 0, p));
        }
        assert_eq!(r.board.mmio_read(base + 0x108, 8, 0, p), Some(2), "refused writes are not counted");
        // MMIO does not reach the port devices, and ports do not reach MMIO.
        assert_eq!(r.inp(0x3FF, 1), 0);
        assert_eq!(r.platform, RecordingPlatform::default());
    }

    /// The `mmio-test` page as the simplest model: a map from byte address to the value
    /// written, the constant and counter computed on each read.
    #[derive(Default)]
    struct MmioModel {
        written: std::collections::BTreeMap<u64, u8>,
        writes: u64,
    }

    impl MmioModel {
        fn decodes(gpa: u64, size: u8) -> bool {
            let base = devices::MMIO_TEST_BASE;
            matches!(size, 1 | 2 | 4 | 8) && (base..base + 0x1000).contains(&gpa)
        }
        fn byte(&self, gpa: u64) -> u8 {
            let offset = gpa.wrapping_sub(devices::MMIO_TEST_BASE);
            match offset {
                0..0x100 => self.written.get(&gpa).copied().unwrap_or(0),
                0x100..0x108 => 0x1122_3344_5566_7788u64.to_le_bytes()[(offset - 0x100) as usize],
                0x108..0x110 => self.writes.to_le_bytes()[(offset - 0x108) as usize],
                _ => 0,
            }
        }
        fn read(&self, gpa: u64, size: u8) -> Option<u64> {
            Self::decodes(gpa, size).then(|| {
                let mut bytes = [0u8; 8];
                for (i, b) in bytes.iter_mut().enumerate().take(usize::from(size)) {
                    *b = self.byte(gpa + i as u64);
                }
                u64::from_le_bytes(bytes)
            })
        }
        fn write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
            if !Self::decodes(gpa, size) {
                return false;
            }
            for i in 0..u64::from(size) {
                if gpa + i - devices::MMIO_TEST_BASE < 0x100 {
                    self.written.insert(gpa + i, value.to_le_bytes()[i as usize]);
                }
            }
            self.writes += 1;
            true
        }
    }

    /// Addresses worth hitting: the page (denser at the registers), its edges and
    /// neighbours, and any address at all.
    fn interesting_gpa() -> impl Strategy<Value = u64> {
        let base = devices::MMIO_TEST_BASE;
        prop_oneof![
            4 => (0u64..0x118).prop_map(move |o| base + o),
            2 => (0u64..0x1000).prop_map(move |o| base + o),
            1 => (0u64..16).prop_map(move |o| base + 0x1000 - 8 + o),
            1 => (0u64..16).prop_map(move |o| base - 8 + o),
            1 => any::<u64>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_mmio_accesses_match_the_model(
            ops in proptest::collection::vec((any::<bool>(), interesting_gpa(), 0u8..=9, any::<u64>()), 0..300),
        ) {
            let mut board = PcBoard::new(config(), 0);
            let mut platform = RecordingPlatform::default();
            let mut model = MmioModel::default();
            for (i, (write, gpa, size, value)) in ops.into_iter().enumerate() {
                let now = i as Nanos * 1000;
                if write {
                    let expected = model.write(gpa, size, value);
                    prop_assert_eq!(board.mmio_write(gpa, size, value, now, &mut platform), expected);
                } else {
                    let got = board.mmio_read(gpa, size, now, &mut platform);
                    prop_assert_eq!(got, model.read(gpa, size), "read {:#x} size {}", gpa, size);
                    if let Some(v) = got.filter(|_| size < 8) {
                        prop_assert_eq!(v >> (8 * u32::from(size)), 0);
                    }
                }
            }
            prop_assert_eq!(platform, RecordingPlatform::default(), "MMIO raises no interrupts");
        }
    }

    /// Every interrupt-line call and power request, in order.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    struct LogPlatform {
        calls: Vec<(u8, bool)>,
        requests: Vec<PlatformRequest>,
    }

    impl Platform for LogPlatform {
        fn set_irq(&mut self, irq: u8, high: bool) {
            self.calls.push((irq, high));
        }
        fn request(&mut self, request: PlatformRequest) {
            self.requests.push(request);
        }
    }

    /// Accesses that program the timed devices: PIT counters and control words, port B,
    /// RTC registers A-C with rates and enables, the PM timer's enable and status, the
    /// UART's IER, MCR and receiver, and reads of all of them.
    fn timed_op() -> impl Strategy<Value = Op> {
        use std::vec;
        let ports = prop_oneof![
            Just(PIT_BASE),
            Just(PIT_BASE + 2),
            Just(PIT_CONTROL),
            Just(PORT_B),
            Just(crate::rtc_cmos::INDEX_PORT),
            Just(crate::rtc_cmos::DATA_PORT),
            Just(ACPI_PM_PORTS.pm1_evt),
            Just(ACPI_PM_PORTS.pm1_evt + 2),
            Just(ACPI_PM_PORTS.pm_tmr),
            Just(COM1_BASE),
            Just(COM1_BASE + 1),
            Just(COM1_BASE + 2),
            Just(COM1_BASE + 4),
            Just(COM1_BASE + 5),
        ];
        let values = prop_oneof![
            // PIT control words (counters 0 and 2, modes 0-5, LSB/MSB), read-back, latch.
            (0u8..6).prop_map(|mode| u32::from(0x30 | (mode << 1))),
            (0u8..6).prop_map(|mode| u32::from(0xB0 | (mode << 1))),
            Just(0xC2),
            Just(0x00),
            // Counts, RTC indexes A-C, rates and enables; PM enable/status bits; UART bits.
            0u32..0x100,
            Just(0x0A),
            Just(0x0B),
            Just(0x0C),
            // Index and data in one 2-byte write at 0x70: RTC rates and enables.
            Just(0x260A),
            Just(0x2F0A),
            Just(0x520B),
            Just(0x720B),
            Just(0x26),
            Just(0x2F),
            Just(0x52),
            Just(0x72),
            Just(0x01),
            Just(0x08),
            Just(0x0F),
            any::<u32>(),
        ];
        prop_oneof![
            4 => (ports.clone(), 1u8..=2).prop_map(|(p, s)| Op::Read(p, s)),
            6 => (ports, 1u8..=2, values).prop_map(|(p, s, v)| Op::Write(p, s, v)),
            2 => Just(Op::Tick),
            1 => any::<u8>().prop_map(Op::Input),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// A board ticked lazily (`tick` before every access, as the service partition
        /// does, and at `next_event`) behaves as one whose devices are all ticked before
        /// every access: the same reads, the same interrupt-line calls in the same order.
        #[test]
        fn lazy_ticks_match_ticking_every_access(
            start in 0u64..1_000_000_000,
            ops in proptest::collection::vec((timed_op(), prop_oneof![0u64..2_000_000, 0u64..600_000_000]), 0..200),
        ) {
            let mut lazy = PcBoard::new(config(), start);
            let mut eager = PcBoard::new(config(), start);
            let (mut lazy_platform, mut eager_platform) = (LogPlatform::default(), LogPlatform::default());
            let mut now = start;
            for (i, (op, dt)) in ops.into_iter().enumerate() {
                now += dt;
                if let Op::Tick = op {
                    // A timer wake-up: at the lazy board's next event if it is due by then.
                    if let Some(t) = lazy.next_event().filter(|&t| t <= now) {
                        lazy.tick(t.max(start), &mut lazy_platform);
                        eager.tick_devices(t.max(start), &mut eager_platform);
                    }
                    continue;
                }
                lazy.tick(now, &mut lazy_platform);
                eager.tick_devices(now, &mut eager_platform);
                match op {
                    Op::Read(port, size) => {
                        let a = lazy.read(port, size, now, &mut lazy_platform);
                        let b = eager.read(port, size, now, &mut eager_platform);
                        prop_assert_eq!(a, b, "op {}: read {:#x} at {}", i, port, now);
                    }
                    Op::Write(port, size, value) => {
                        lazy.write(port, size, value, now, &mut lazy_platform);
                        eager.write(port, size, value, now, &mut eager_platform);
                    }
                    Op::Input(byte) => {
                        prop_assert_eq!(lazy.push_console_input(byte), eager.push_console_input(byte));
                    }
                    Op::Tick | Op::Drain(_) => {}
                }
                prop_assert_eq!(&lazy_platform, &eager_platform, "op {} at {}", i, now);
                // The same next event; one already due may name different past times (the
                // UART's deferred line change names the latest time it saw).
                let due = |t: Nanos| t.max(now);
                prop_assert_eq!(lazy.next_event().map(due), eager.next_event().map(due), "op {} at {}", i, now);
            }
        }
    }

    /// Ports worth hitting: every decoded port, its neighbours, and a few others.
    fn interesting_port() -> impl Strategy<Value = u16> {
        let mut ports = Vec::new();
        for device in devices::ALL {
            for &(first, last) in device.ports {
                ports.extend(first.saturating_sub(1)..=last.saturating_add(1));
            }
        }
        prop_oneof![proptest::sample::select(ports), any::<u16>()]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Read(u16, u8),
        Write(u16, u8, u32),
        Tick,
        Input(u8),
        Drain(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (interesting_port(), 0u8..=8).prop_map(|(p, s)| Op::Read(p, s)),
            4 => (interesting_port(), 0u8..=8, any::<u32>()).prop_map(|(p, s, v)| Op::Write(p, s, v)),
            1 => Just(Op::Tick),
            1 => any::<u8>().prop_map(Op::Input),
            1 => (0usize..300).prop_map(Op::Drain),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_accesses_never_panic(
            start in any::<u64>(),
            epoch in any::<u64>(),
            vcpus in any::<u32>(),
            ram in any::<u64>(),
            ops in proptest::collection::vec((op(), 0u64..5_000_000), 0..300),
        ) {
            let cfg = BoardConfig { vcpus, ram_bytes: ram, epoch_seconds: epoch };
            let mut board = PcBoard::new(cfg, start);
            let mut platform = RecordingPlatform::default();
            let mut now = start;
            let mut buf = [0u8; 300];
            for (op, dt) in ops {
                now = now.saturating_add(dt);
                match op {
                    Op::Read(port, size) => {
                        let v = board.read(port, size, now, &mut platform);
                        if matches!(size, 1 | 2) {
                            prop_assert_eq!(v >> (8 * u32::from(size)), 0);
                        }
                    }
                    Op::Write(port, size, value) => board.write(port, size, value, now, &mut platform),
                    Op::Tick => {
                        if let Some(t) = board.next_event() {
                            board.tick(t.max(now), &mut platform);
                            now = now.max(t);
                        } else {
                            board.tick(now, &mut platform);
                        }
                    }
                    Op::Input(b) => {
                        board.push_console_input(b);
                    }
                    Op::Drain(n) => {
                        let n = n.min(buf.len());
                        let got = board.take_console_output(&mut buf[..n]);
                        prop_assert!(got <= n);
                    }
                }
                prop_assert!(platform.lines & !0x0000_FFFF == 0, "only ISA GSIs: {:#x}", platform.lines);
                prop_assert!(platform.lines & 1 == 0, "nothing drives GSI 0");
            }
        }
    }

    #[test]
    fn the_port_table_is_the_port_map() {
        for port in 0..=u16::MAX {
            assert_eq!(DeviceKind::at(port), DeviceKind::decode(port), "port {port:#x}");
        }
    }

    impl PcBoard {
        /// [`PcBoard::read`] as it was before the fast path, the tests' reference: every
        /// access routed by the port map, the UART driving its line after every register
        /// access (`EAGER`), every refresh recomputing the minimum.
        fn read_reference(&mut self, port: u16, size: u8, now: Nanos, platform: &mut dyn Platform) -> u32 {
            let Some(kind) = DeviceKind::decode(port).filter(|_| matches!(size, 1 | 2 | 4)) else {
                return open_bus(size);
            };
            let value = if kind == DeviceKind::Com1 {
                let wires = &mut Wires { pic: &mut self.pic, outer: platform, changed: &mut self.changed };
                self.uart.read_with::<true>(port, size, now, wires)
            } else {
                on_device!(&mut *self, kind, platform, |d, p| d.read(port, size, now, p))
            };
            self.refresh_reference(kind);
            value & size_mask(size)
        }

        /// [`PcBoard::write`] as it was before the fast path (see `read_reference`).
        fn write_reference(&mut self, port: u16, size: u8, value: u32, now: Nanos, platform: &mut dyn Platform) {
            let Some(kind) = DeviceKind::decode(port).filter(|_| matches!(size, 1 | 2 | 4)) else { return };
            let value = value & size_mask(size);
            if kind == DeviceKind::Com1 {
                let wires = &mut Wires { pic: &mut self.pic, outer: platform, changed: &mut self.changed };
                self.uart.write_with::<true>(port, size, value, now, wires);
            } else {
                on_device!(&mut *self, kind, platform, |d, p| d.write(port, size, value, now, p));
            }
            self.refresh_reference(kind);
        }

        /// The refresh as it was: the entry and the minimum, recomputed every time.
        fn refresh_reference(&mut self, kind: DeviceKind) {
            if let Some(i) = TIMED.iter().position(|&k| k == kind) {
                self.events[i] = self.device_event(kind);
                self.earliest = earliest(&self.events);
            }
        }

        /// Every console byte the board ever took in: waiting, taken (`taken`, counted
        /// by the caller) or dropped from a full ring.
        fn console_bytes_ever(&self, taken: u64) -> u64 {
            let waiting = self.console_output_len() as u64;
            taken + waiting + self.uart.output_dropped() + self.debugcon.output_dropped()
        }
    }

    /// What a test does to a board, beyond port accesses.
    #[derive(Debug, Clone)]
    enum BoardOp {
        Port(Op),
        Acknowledge,
        Reset,
        /// Programs the 8259 pair as a PC BIOS does (vectors 0x20 and 0x28, cascade on
        /// IRQ 2, 8086 mode), every IRQ unmasked, and sets OUT2 on COM1: interrupts
        /// then reach the PIC's output.
        InitPic,
    }

    /// One-byte COM1 accesses that matter to the fast path: every register, with the
    /// values that switch interrupts (IER), FIFOs (FCR), DLAB (LCR), OUT2 and loopback
    /// (MCR), and any value.
    fn com1_op() -> impl Strategy<Value = Op> {
        use std::vec;
        let ports = (COM1_BASE..COM1_BASE + 8).prop_map(|p| p);
        let values = prop_oneof![
            Just(0x00u32),
            Just(0x01),
            Just(0x02),
            Just(0x0F),
            Just(0x08),
            Just(0x0B),
            Just(0x18),
            Just(0x80),
            Just(0x03),
            Just(0xC7),
            any::<u32>(),
        ];
        prop_oneof![
            4 => ports.clone().prop_map(|p| Op::Read(p, 1)),
            4 => (ports, values).prop_map(|(p, v)| Op::Write(p, 1, v)),
            1 => any::<u8>().prop_map(Op::Input),
            1 => Just(Op::Tick),
            1 => (0usize..300).prop_map(Op::Drain),
        ]
    }

    fn board_op() -> impl Strategy<Value = BoardOp> {
        prop_oneof![
            8 => com1_op().prop_map(BoardOp::Port),
            6 => op().prop_map(BoardOp::Port),
            3 => timed_op().prop_map(BoardOp::Port),
            1 => Just(BoardOp::Acknowledge),
            1 => (0u8..20).prop_map(|n| if n == 0 { BoardOp::Reset } else { BoardOp::Acknowledge }),
            1 => Just(BoardOp::InitPic),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

        /// The fast path (and the lazy line and refresh behind it) behaves as the board did
        /// before it: the same values, the same interrupt-line calls in the same order,
        /// the same console output, next event and PIC output, the same state. And
        /// [`PcBoard::take_changed`] keeps its contract: when it says `false`, the PIC's
        /// output and the next event are as they were at the previous call, and no
        /// console byte came in.
        #[test]
        fn the_fast_path_matches_the_general_path(
            start in 0u64..1_000_000_000,
            ops in proptest::collection::vec((board_op(), prop_oneof![0u64..2_000, 0u64..5_000_000]), 0..300),
        ) {
            let mut fast = PcBoard::new(config(), start);
            let mut reference = PcBoard::new(config(), start);
            let (mut fast_platform, mut reference_platform) = (LogPlatform::default(), LogPlatform::default());
            let (mut fast_out, mut reference_out) = ([0u8; 300], [0u8; 300]);
            let mut taken = 0u64;
            let _ = fast.take_changed();
            let mut seen = (fast.pic().output(), fast.next_event(), fast.console_bytes_ever(taken));
            let mut now = start;
            for (i, (op, dt)) in ops.into_iter().enumerate() {
                now += dt;
                match op {
                    BoardOp::Port(Op::Read(port, size)) => {
                        let a = fast.read(port, size, now, &mut fast_platform);
                        let b = reference.read_reference(port, size, now, &mut reference_platform);
                        prop_assert_eq!(a, b, "op {}: read {:#x}/{}", i, port, size);
                    }
                    BoardOp::Port(Op::Write(port, size, value)) => {
                        fast.write(port, size, value, now, &mut fast_platform);
                        reference.write_reference(port, size, value, now, &mut reference_platform);
                    }
                    BoardOp::Port(Op::Tick) => {
                        if let Some(t) = fast.next_event() {
                            now = now.max(t);
                        }
                        fast.tick(now, &mut fast_platform);
                        reference.tick(now, &mut reference_platform);
                    }
                    BoardOp::Port(Op::Input(byte)) => {
                        prop_assert_eq!(fast.push_console_input(byte), reference.push_console_input(byte));
                    }
                    BoardOp::Port(Op::Drain(n)) => {
                        let a = fast.take_console_output(&mut fast_out[..n]);
                        let b = reference.take_console_output(&mut reference_out[..n]);
                        prop_assert_eq!(&fast_out[..a], &reference_out[..b], "op {}", i);
                        taken += a as u64;
                    }
                    BoardOp::Acknowledge => {
                        prop_assert_eq!(fast.pic_mut().acknowledge(), reference.pic_mut().acknowledge());
                    }
                    BoardOp::InitPic => {
                        let writes = [
                            (MASTER_CMD, 0x11),
                            (MASTER_DATA, 0x20),
                            (MASTER_DATA, 0x04),
                            (MASTER_DATA, 0x01),
                            (SLAVE_CMD, 0x11),
                            (SLAVE_DATA, 0x28),
                            (SLAVE_DATA, 0x02),
                            (SLAVE_DATA, 0x01),
                            (MASTER_DATA, 0x00),
                            (SLAVE_DATA, 0x00),
                            (COM1_BASE + 4, 0x08),
                        ];
                        for (port, value) in writes {
                            fast.write(port, 1, value, now, &mut fast_platform);
                            reference.write_reference(port, 1, value, now, &mut reference_platform);
                        }
                    }
                    BoardOp::Reset => {
                        let (a, b) = (fast.console_output_len(), reference.console_output_len());
                        prop_assert_eq!(a, b);
                        taken += a as u64;
                        // The reset drops the waiting output: count it as taken.
                        taken += fast.uart.output_dropped() + fast.debugcon.output_dropped();
                        fast.reset(now, &mut fast_platform);
                        reference.reset(now, &mut reference_platform);
                    }
                }
                prop_assert_eq!(&fast_platform, &reference_platform, "op {} at {}", i, now);
                prop_assert_eq!(fast.next_event(), reference.next_event(), "op {}", i);
                prop_assert_eq!(fast.pic().output(), reference.pic().output(), "op {}", i);
                prop_assert_eq!(std::format!("{:?}", fast.uart), std::format!("{:?}", reference.uart), "op {}", i);

                let now_seen = (fast.pic().output(), fast.next_event(), fast.console_bytes_ever(taken));
                if !fast.take_changed() {
                    prop_assert_eq!(now_seen, seen, "op {}: unchanged, says take_changed", i);
                }
                seen = now_seen;
            }
            // The whole state, but the flag the reference does not keep.
            reference.changed = fast.changed;
            prop_assert_eq!(std::format!("{fast:?}"), std::format!("{reference:?}"));
        }
    }

    #[test]
    fn an_lsr_poll_changes_nothing() {
        let mut r = Rig::new();
        let _ = r.board.take_changed();
        for _ in 0..3 {
            assert_eq!(r.inp(COM1_BASE + 5, 1), 0x60);
            assert!(!r.board.take_changed());
        }
        // A byte written to THR is console output.
        r.out(COM1_BASE, 1, u32::from(b'x'));
        assert!(r.board.take_changed());
        let mut out = [0u8; 4];
        assert_eq!(r.board.take_console_output(&mut out), 1);
        assert!(!r.board.take_changed(), "taking output is the owner's own doing");
        // Received data with its interrupt enabled: the line rises at the next tick.
        r.out(COM1_BASE + 1, 1, 0x01);
        r.out(COM1_BASE + 4, 1, 0x08);
        let _ = r.board.take_changed();
        assert!(r.board.push_console_input(b'a'));
        assert!(r.board.take_changed(), "the next event moved");
        r.board.tick(0, &mut r.platform);
        assert!(r.board.take_changed());
        assert!(r.board.pic().output() || r.platform.lines & (1 << COM1_IRQ) != 0);
        assert_eq!(r.inp(COM1_BASE + 5, 1), 0x61);
        assert!(!r.board.take_changed(), "LSR with data ready, nothing cleared");
        assert_eq!(r.inp(COM1_BASE, 1), u32::from(b'a'));
        assert!(r.board.take_changed(), "the line fell");
        // The PIC: any access, and an acknowledge.
        let _ = r.inp(MASTER_DATA, 1);
        assert!(r.board.take_changed());
        let _ = r.board.pic_mut();
        assert!(r.board.take_changed());
        assert!(!r.board.take_changed());
    }
}
