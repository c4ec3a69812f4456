//! `guest-cpuid`: checks the virtual CPUID contract (see `hv_core::virt_cpuid`):
//! hypervisor bit set, VMX hidden, the hypervisor leaves with their signature, APIC IDs
//! equal to vCPU ids, topology leaves matching the partition's vCPU count, the TSC
//! frequency in leaves 0x15/0x16, MONITOR hidden, an XSAVE leaf whose sizes match its
//! components.
#![no_std]
#![no_main]

use core::arch::x86_64::{__cpuid_count, CpuidResult};

use guest_rt::{check, println, stop};

fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    __cpuid_count(leaf, subleaf)
}

/// Entry point (see `hv_abi::start`): RDI = vCPU id, RSI = RAM size in bytes.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(vcpu: u64, _ram_bytes: u64) -> ! {
    const NAME: &str = "guest-cpuid";
    let vcpus = 1;
    let mut ok = true;
    let l1 = cpuid(1, 0);
    ok &= check(NAME, "leaf 1: hypervisor bit (ECX 31) set", l1.ecx & (1 << 31) != 0);
    ok &= check(NAME, "leaf 1: VMX (ECX 5) hidden", l1.ecx & (1 << 5) == 0);
    ok &= check(NAME, "leaf 1: SMX (ECX 6) hidden", l1.ecx & (1 << 6) == 0);
    ok &= check(NAME, "leaf 1: initial APIC ID equals the vCPU id", u64::from(l1.ebx >> 24) == vcpu);
    let h = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&h.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&h.ecx.to_le_bytes());
    sig[8..].copy_from_slice(&h.edx.to_le_bytes());
    println!("{NAME}: hypervisor signature {:?}, highest leaf {:#x}", core::str::from_utf8(&sig).unwrap_or("?"), h.eax);
    ok &= check(NAME, "leaf 0x40000000: signature HVRSHVRSHVRS", &sig == b"HVRSHVRSHVRS");
    ok &= check(NAME, "leaf 0x40000000: highest hypervisor leaf >= 0x40000001", h.eax >= 0x4000_0001);
    ok &= check(NAME, "leaf 0x40000001: interface version 1", cpuid(0x4000_0001, 0).eax == 1);
    let max = cpuid(0, 0).eax;
    if max >= 0xb {
        let smt = cpuid(0xb, 0);
        let core = cpuid(0xb, 1);
        ok &= check(NAME, "leaf 0xB: x2APIC id equals the vCPU id", u64::from(smt.edx) == vcpu);
        ok &= check(NAME, "leaf 0xB: one thread per core", smt.ebx & 0xffff == 1);
        ok &= check(NAME, "leaf 0xB: logical processors = vCPU count", core.ebx & 0xffff == vcpus);
    }
    let vendor = cpuid(0, 0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&vendor.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&vendor.edx.to_le_bytes());
    v[8..].copy_from_slice(&vendor.ecx.to_le_bytes());
    println!("{NAME}: vendor {:?}, highest basic leaf {max:#x}", core::str::from_utf8(&v).unwrap_or("?"));
    ok &= check(NAME, "leaf 0: highest basic leaf >= 0x16 (TSC frequency leaves)", max >= 0x16);
    if max >= 0x16 {
        let (l15, l16) = (cpuid(0x15, 0), cpuid(0x16, 0));
        println!(
            "{NAME}: leaf 0x15 {:#x}/{:#x} crystal {} Hz, leaf 0x16 base {} MHz",
            l15.ebx, l15.eax, l15.ecx, l16.eax
        );
        ok &= check(
            NAME,
            "leaf 0x15: TSC/crystal ratio and crystal Hz given",
            l15.eax != 0 && l15.ebx != 0 && l15.ecx != 0,
        );
        ok &= check(NAME, "leaf 0x16: base MHz given", l16.eax != 0);
        // Linux multiplies crystal kHz by the numerator in 32 bits.
        let product = u64::from(l15.ecx / 1000) * u64::from(l15.ebx);
        ok &= check(NAME, "leaf 0x15: crystal kHz x numerator fits 32 bits", product <= u64::from(u32::MAX));
    }
    ok &= check(NAME, "leaf 1: MONITOR/MWAIT (ECX 3) hidden", l1.ecx & (1 << 3) == 0);
    if l1.ecx & (1 << 26) != 0 {
        let d0 = cpuid(0xd, 0);
        let mut end = 576;
        for i in 2..32 {
            if d0.eax & (1 << i) != 0 {
                let c = cpuid(0xd, i);
                ok &= check(NAME, "leaf 0xD: every listed component has a size", c.eax != 0);
                end = end.max(c.ebx + c.eax);
            }
        }
        println!("{NAME}: xsave components {:#x}, all-components size {} (computed {end})", d0.eax, d0.ecx);
        ok &= check(NAME, "leaf 0xD: size of all components matches their layout", d0.ecx == end);
    }
    if ok {
        println!("PASS {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
