//! The device models take guest-controlled port I/O: any sequence of reads, writes and
//! time steps must leave them without a panic, with reads inside the access size and
//! interrupt lines that the platform recorder can account for.
#![no_main]

use hv_devices::acpi_pm::{AcpiPm, AcpiPmPorts, KbdResetPort, ResetControl};
use hv_devices::fw_cfg::FwCfg;
use hv_devices::pci_host::PciHost;
use hv_devices::pic8259::PicPair;
use hv_devices::pit8254::Pit8254;
use hv_devices::rtc_cmos::RtcCmos;
use hv_devices::test_devices::{DebugCon, IsaDebugExit};
use hv_devices::uart16550::Uart16550;
use hv_devices::{PortIo, RecordingPlatform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ports = AcpiPmPorts { pm1_evt: 0x600, pm1_cnt: 0x604, pm_tmr: 0x608 };
    // Each device with the bases of its port blocks (a step picks one, then an offset
    // of up to 15 in it): the 8259 pair's slave and ELCR, the PIT's port B and the
    // reset control beside the PCI ports are reached too.
    let mut devices: [(&mut dyn PortIo, &[u16]); 11] = [
        (&mut Uart16550::new(0x3f8, 4), &[0x3f8]),
        (&mut IsaDebugExit::new(), &[0xf4]),
        (&mut DebugCon::new(), &[0xe9]),
        (&mut RtcCmos::new(1_700_000_000, 0), &[0x70]),
        (&mut AcpiPm::new(ports, 5, 0), &[0x600]),
        (&mut KbdResetPort::new(), &[0x60]),
        (&mut PciHost::new(), &[0xcf8, 0xcf0]),
        (&mut Pit8254::new(), &[0x40, 0x61]),
        (&mut PicPair::new(), &[0x20, 0xa0, 0x4d0]),
        (&mut FwCfg::new(64 << 20, 2, 2), &[0x510]),
        (&mut ResetControl::new(), &[0xcf9]),
    ];
    let mut platform = RecordingPlatform::default();
    let mut now: u64 = 0;
    // Each step: device, base and port offset, size, op (read / write / tick), value,
    // time step.
    for step in data.chunks_exact(8) {
        let count = devices.len();
        let (device, bases) = &mut devices[usize::from(step[0]) % count];
        let base = bases[usize::from(step[1] >> 4) % bases.len()];
        let port = base.wrapping_add(u16::from(step[1] & 0x0f));
        let size = [1u8, 2, 4, 3][usize::from(step[2] & 3)];
        let value = u32::from_le_bytes([step[3], step[4], step[5], step[6]]);
        now = now.saturating_add(u64::from(step[7]) * 997);
        match step[2] >> 6 {
            0 => {
                let read = device.read(port, size, now, &mut platform);
                if size < 4 {
                    assert!(read < 1u32 << (8 * u32::from(size)) || size == 3, "read wider than the access");
                }
            }
            1 => device.write(port, size, value, now, &mut platform),
            _ => {
                if device.next_event().is_some_and(|t| t <= now) {
                    device.tick(now, &mut platform);
                }
            }
        }
    }
});
