//! The instruction fetch behind an MMIO exit walks the guest's own page tables and reads
//! its code: with any CPU mode, code segment, control registers and guest memory, the
//! fetch must never panic, stay within 15 bytes and the code segment's window, return
//! the bytes of guest RAM, and say what a processor would do about a missing byte
//! (#GP only at the limit, #PF with CR2 at the byte whose walk failed).
#![no_main]

use hv_core::guest_paging::PagingState;
use hv_core::instruction_fetch::{fetch, fetch_window, CodeLocation, FetchEnd, Missing, GP_VECTOR, PF_VECTOR};
use hv_core::mmio_decode::{CpuMode, MAX_INSTRUCTION_LEN};
use libfuzzer_sys::fuzz_target;

const MODES: [CpuMode; 4] = [CpuMode::Real16, CpuMode::Protected16, CpuMode::Protected32, CpuMode::Long64];
/// Bytes of the header that sets the registers; the rest is the guest's RAM.
const HEADER: usize = 81;

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let ram = &data[HEADER..];
    // Small addresses, so that the tables and the code can lie in the fuzzer's RAM; the
    // top bit of each keeps whole-range values reachable.
    let small = |v: u64| if v >> 63 == 0 { v % 0x2_0000 } else { v };
    let at = CodeLocation {
        mode: MODES[usize::from(data[0] & 3)],
        cs_base: small(u64_at(data, 1)),
        cs_limit: u64_at(data, 9) as u32,
        rip: small(u64_at(data, 17)),
        cpl: (data[0] >> 2) & 3,
    };
    let paging = PagingState {
        cr0: u64_at(data, 25) | 1,
        cr3: small(u64_at(data, 33)),
        cr4: u64::from(data[41]) << 4 | u64::from(data[42]) << 16,
        efer: u64::from(data[43] & 0x0d) << 8,
        phys_bits: data[44],
        pdptes: [49, 57, 65, 73].map(|at| small(u64_at(data, at)) | u64_at(data, at) & 0xfff),
    };
    let read_entry = |gpa: u64| {
        let start = usize::try_from(gpa).ok()?;
        (gpa % 8 == 0).then_some(())?;
        Some(u64::from_le_bytes(ram.get(start..start.checked_add(8)?)?.try_into().ok()?))
    };
    let read_ram = |gpa: u64, dst: &mut [u8]| {
        let Some(src) = usize::try_from(gpa).ok().and_then(|s| ram.get(s..s.checked_add(dst.len())?)) else {
            return false;
        };
        dst.copy_from_slice(src);
        true
    };
    let fetched = fetch(&at, &paging, read_entry, read_ram);
    let (linear, allowed) = fetch_window(&at);
    assert_eq!(fetched.linear, linear);
    assert!(allowed <= MAX_INSTRUCTION_LEN);
    assert!(fetched.len <= allowed, "fetched past the code segment's window");
    assert_eq!(fetched.bytes().len(), fetched.len);
    match fetched.end {
        FetchEnd::Complete => assert_eq!(fetched.len, MAX_INSTRUCTION_LEN),
        FetchEnd::Limit => assert_eq!(fetched.len, allowed),
        FetchEnd::Walk { .. } | FetchEnd::OutsideRam { .. } => assert!(fetched.len < allowed),
    }
    match fetched.missing() {
        Missing::Fault(fault) if fault.vector == GP_VECTOR => {
            assert_eq!(fetched.end, FetchEnd::Limit);
            assert!(fault.cr2.is_none());
        }
        Missing::Fault(fault) => {
            assert_eq!(fault.vector, PF_VECTOR);
            let FetchEnd::Walk { linear: failed, .. } = fetched.end else {
                panic!("#PF without a failed walk: {fetched:?}");
            };
            assert_eq!(fault.cr2, Some(failed));
            assert!(fault.error_code.is_some());
        }
        Missing::Stop { .. } => assert!(!matches!(fetched.end, FetchEnd::Limit)),
    }
});
