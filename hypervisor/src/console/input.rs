//! Console input: bytes typed on the physical console (COM1's receiver) go to one guest
//! partition with a UART, the *focus*; `Ctrl-A n` moves it to the next such partition.
//!
//! The hypervisor does not feed guests itself: the service partition, which emulates the
//! guests' UARTs, polls with `SERVICE_CONSOLE_READ` and pushes the bytes into the target
//! guest's receiver. This module reads the physical UART without waiting
//! ([`serial::Serial::try_read`]) and runs the escape sequences and the focus through
//! `hv_core::console_input`, where that logic is host-tested. A change of focus is
//! logged as `console: input goes to partition NAME (Ctrl-A n switches)`.

use core::sync::atomic::Ordering;

use hv_abi::platform::devices;
use hv_abi::service::console::{encode, READ_MAX};
use hv_abi::service::{VmId, MAX_VMS};
use hv_abi::Error as HcError;
use hv_core::console_input::{read_args, ConsoleInput};
use spin::Mutex;

use super::serial::Serial;
use crate::mm::frames;
use crate::partition::{self, Vcpu};

/// The escape machine and focus (keyed by raw `VmId`), and the receiving side of COM1.
struct Input {
    state: ConsoleInput<u32>,
    uart: Serial,
}

static INPUT: Mutex<Input> = Mutex::new(Input { state: ConsoleInput::new(), uart: Serial::com1() });

/// The `DeviceSet` bit of `com1` (0 if the ABI had no such device: nobody qualifies).
fn com1_bit() -> u32 {
    devices::ALL.iter().position(|d| d.name == "com1").map_or(0, |i| 1 << i)
}

/// The guest partitions that can take input now, in VM-table order: not the service
/// partition, not stopped, with a `com1` device. Returns how many entries of `out` hold
/// their raw `VmId`s.
fn candidates(out: &mut [u32; MAX_VMS as usize]) -> usize {
    let bit = com1_bit();
    let mut n = 0;
    for vm in partition::all_vms().filter_map(partition::guest_vm) {
        let wanted = bit != 0
            && !vm.is_service.load(Ordering::Acquire)
            && !vm.stopped.load(Ordering::Acquire)
            && vm.devices.load(Ordering::Acquire) & bit != 0;
        if let (true, Some(slot)) = (wanted, out.get_mut(n)) {
            *slot = VmId::new(vm.index, vm.generation).0;
            n += 1;
        }
    }
    n
}

/// `SERVICE_CONSOLE_READ(gpa, len, expected)` (see `hv_abi::hypercall`): service
/// partition only. Never waits: when another CPU is reading at the same moment, this
/// call takes nothing and echoes `expected` as the target (no news), and the service
/// partition asks again later.
pub fn hypercall_read(caller: &'static Vcpu, gpa: u64, len: u64, expected: u64) -> Result<u64, HcError> {
    if !caller.vm.is_service.load(Ordering::Acquire) {
        return Err(HcError::NotPermitted);
    }
    let args = read_args(len, expected)?;
    let host = if args.len > 0 { Some(caller.vm.guest_range(gpa, len).ok_or(HcError::BadAddress)?) } else { None };
    let mut ids = [0u32; MAX_VMS as usize];
    let n = candidates(&mut ids);
    let mut buf = [0u8; READ_MAX as usize];
    let wanted = buf.get_mut(..args.len).unwrap_or_default();
    let outcome = {
        let Some(mut input) = INPUT.try_lock() else { return Ok(encode(0, args.expected.map(VmId))) };
        let Input { state, uart } = &mut *input;
        state.read(ids.get(..n).unwrap_or_default(), args.expected, || uart.try_read(), wanted)
    };
    let count = outcome.count.min(args.len);
    if let (Some(host), Some(bytes)) = (host, buf.get(..count)) {
        // SAFETY: `host .. host + len` lies inside the service partition's RAM (checked
        // above), which is direct-mapped and stays allocated; `count <= len`. The service
        // may touch the buffer concurrently, which only garbles its own input.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), frames::phys_to_virt(host), count) };
    }
    if let Some(vm) = outcome.announce.and_then(|id| partition::guest_vm_by_id(VmId(id))) {
        log::info!("console: input goes to partition {} (Ctrl-A n switches)", vm.name);
    }
    // `count` <= READ_MAX (64) fits a u16.
    Ok(encode(count as u16, outcome.target.map(VmId)))
}
