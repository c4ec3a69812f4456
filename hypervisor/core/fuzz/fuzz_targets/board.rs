//! The service partition's whole guest-facing surface: a `PcBoard` driven by any
//! sequence of port and MMIO reads and writes (any port, any address near the MMIO
//! test page, any size), PCI configuration requests, time steps and system resets must
//! never panic, and reads stay inside the access size.
#![no_main]

use hv_devices::board::{BoardConfig, PcBoard};
use hv_devices::RecordingPlatform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = BoardConfig { vcpus: 2, ram_bytes: 16 << 20, epoch_seconds: 1_767_225_600 };
    let mut board = PcBoard::new(config, 0);
    let mut platform = RecordingPlatform::default();
    let mut now: u64 = 0;
    let mut out = [0u8; 64];
    // Each step: op, 2 bytes of port / page offset, size, 4 bytes of value, time step.
    for step in data.chunks_exact(8) {
        let where_ = u16::from_le_bytes([step[1], step[2]]);
        let size = [1u8, 2, 4, 8, 3, 0, 16, 5][usize::from(step[0] >> 5)];
        let value = u64::from(u32::from_le_bytes([step[3], step[4], step[5], step[6]])) * 0x1_0000_0001;
        now = now.saturating_add(u64::from(step[7]) * 9973);
        let mask = if size >= 8 { u64::MAX } else { (1u64 << (8 * u32::from(size))) - 1 };
        match step[0] & 7 {
            0 => {
                let read = board.read(where_, size, now, &mut platform);
                assert!(!matches!(size, 1 | 2 | 4) || u64::from(read) <= mask, "port read wider than the access");
            }
            1 => board.write(where_, size, value as u32, now, &mut platform),
            2 => {
                let gpa = hv_abi::platform::devices::MMIO_TEST_BASE - 0x800 + u64::from(where_ & 0x1fff);
                if let Some(read) = board.mmio_read(gpa, size, now, &mut platform) {
                    assert!(read <= mask, "MMIO read wider than the access");
                }
            }
            3 => {
                let gpa = hv_abi::platform::devices::MMIO_TEST_BASE - 0x800 + u64::from(where_ & 0x1fff);
                let _ = board.mmio_write(gpa, size, value, now, &mut platform);
            }
            4 => {
                let _ = board.push_console_input(step[3]);
            }
            5 => {
                let _ = board.take_console_output(&mut out);
            }
            // A system reset (the guest rebooting), now and then.
            6 if step[3] == 0xFF => board.reset(now, &mut platform),
            // A PCI configuration request as the hypervisor posts it (any address,
            // valid or not, any size).
            6 => {
                let address = u64::from_le_bytes([step[1], step[2], step[4], step[5] & 0x1, 0, 0, 0, 0]);
                let host = board.pci_host_mut();
                if step[6] & 1 == 0 {
                    let read = host.config_space_read(address, size);
                    assert!(!matches!(size, 1 | 2 | 4) || u64::from(read) <= mask, "config read wider than the access");
                } else {
                    host.config_space_write(address, size, value as u32);
                }
            }
            _ => {
                if board.next_event().is_some_and(|t| t <= now) {
                    board.tick(now, &mut platform);
                }
            }
        }
    }
});
