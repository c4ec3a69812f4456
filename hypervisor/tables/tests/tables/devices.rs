//! The tables against the platform they describe: the `hv-abi` platform contract and the
//! `hv-devices` models. An OS that follows the FADT and the DSDT must reach the models'
//! registers and get the documented behaviour.

use hv_devices::acpi_pm::{
    AcpiPm, AcpiPmPorts, ResetControl, DEFAULT_SCI_IRQ, PWRBTN_EN, RESET_CONTROL_PORT, SCI_EN, SLP_EN, SLP_TYP_SHIFT,
};
use hv_devices::{PlatformRequest, PortIo, RecordingPlatform};
use hv_tables::PlatformDesc;

use crate::parse::{self, AmlObject};

#[test]
fn defaults_match_the_platform() {
    let d = PlatformDesc::pc_defaults(4);
    assert_eq!(d.lapic_base, hv_abi::platform::LAPIC_BASE);
    assert_eq!(d.ioapic_base, hv_abi::platform::IOAPIC_BASE);
    assert_eq!(d.ioapic_pins, hv_abi::platform::IOAPIC_PINS);
    assert_eq!(d.ioapic_id, 4, "the I/O APIC ID is the vCPU count");
    let board = hv_devices::board::ACPI_PM_PORTS;
    assert_eq!((d.pm1_evt_port, d.pm1_cnt_port, d.pm_tmr_port), (board.pm1_evt, board.pm1_cnt, board.pm_tmr));
    assert_eq!(
        d.s5_slp_typ,
        hv_devices::board::S5_SLP_TYP,
        "the DSDT's \\_S5 must be what the board's PM1 control powers off on"
    );
    assert_eq!(d.sci_irq, DEFAULT_SCI_IRQ);
    assert_eq!(d.reset_port, RESET_CONTROL_PORT);
    assert_eq!(d.reset_value, 0x06);
    assert_eq!(d.century_cmos_index, hv_devices::rtc_cmos::CENTURY_INDEX);
    assert!(!d.pm_timer_32bit, "the AcpiPm model counts 24 bits");
}

/// Builds the tables for `desc`, reads the FADT and `\_S5` back, and drives the models
/// the way ACPI OSPM does.
fn drive_models(desc: &PlatformDesc) {
    let (g, layout) = parse::build_guest(desc, 0xF_0000, 0x1_0000).unwrap();
    let acpi = parse::acpi(&g, layout.rsdp);
    let f = &acpi.fadt;
    let port = |p: u32| u16::try_from(p).unwrap();
    let ports =
        AcpiPmPorts { pm1_evt: port(f.pm1a_evt_blk), pm1_cnt: port(f.pm1a_cnt_blk), pm_tmr: port(f.pm_tmr_blk) };
    let s5 = parse::aml_objects(acpi.aml())
        .into_iter()
        .find_map(|(path, obj)| match (path.as_str(), obj) {
            ("\\_S5_", AmlObject::Package(p)) => Some(p[0]),
            _ => None,
        })
        .expect("\\_S5");
    let sci = u8::try_from(f.sci_int).unwrap();
    let mut pm = AcpiPm::new(ports, desc.s5_slp_typ, 0).with_sci_irq(sci);
    let mut p = RecordingPlatform::default();

    // SMI_CMD = 0, so OSPM must find SCI_EN already set (ACPI 6.5 §16.3.1).
    assert_eq!(f.smi_cmd, 0);
    assert_ne!(pm.read(ports.pm1_cnt, 2, 0, &mut p) & u32::from(SCI_EN), 0, "SCI_EN reads 1");

    // The fixed power button (PWR_BUTTON = 0) raises the SCI on the FADT's SCI_INT.
    assert_eq!(f.flags & (1 << 4), 0);
    pm.write(ports.pm1_evt + 2, 2, u32::from(PWRBTN_EN), 0, &mut p);
    pm.press_power_button(0, &mut p);
    assert_ne!(p.lines & (1 << sci), 0, "SCI asserted on IRQ {sci}");

    // The PM timer's width matches TMR_VAL_EXT: 24 bits count up to 2^24 - 1.
    let ten_seconds = 10_000_000_000;
    let value = pm.read(ports.pm_tmr, 4, ten_seconds, &mut p);
    let ext = f.flags & (1 << 8) != 0;
    assert!(!ext && value < 1 << 24, "TMR_VAL_EXT = {ext}, timer {value:#x}");

    // Soft-off: SLP_TYPa from \_S5, with SLP_EN, written to PM1a_CNT (§16.1.7).
    assert_eq!(p.last_request, None);
    let slp = (u32::try_from(s5).unwrap() << SLP_TYP_SHIFT) | u32::from(SLP_EN);
    pm.write(ports.pm1_cnt, f.x_pm1a_cnt_blk.bit_width / 8, slp, 0, &mut p);
    assert_eq!(p.last_request, Some(PlatformRequest::PowerOff));

    // Reset: RESET_VALUE written to RESET_REG (byte, system I/O).
    assert_eq!((f.reset_reg.space, f.reset_reg.bit_width), (1, 8));
    let mut reset = ResetControl::new();
    let mut p = RecordingPlatform::default();
    reset.write(port(u32::try_from(f.reset_reg.address).unwrap()), 1, u32::from(f.reset_value), 0, &mut p);
    assert_eq!(p.last_request, Some(PlatformRequest::Reset));
}

#[test]
fn ospm_reaches_soft_off_and_reset_through_the_tables() {
    drive_models(&PlatformDesc::pc_defaults(1));
    drive_models(&PlatformDesc {
        pm1_evt_port: 0x1800,
        pm1_cnt_port: 0x1804,
        pm_tmr_port: 0x1808,
        s5_slp_typ: 5,
        sci_irq: 10,
        ..PlatformDesc::pc_defaults(12)
    });
}
