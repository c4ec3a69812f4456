//! `guest-x2apic`: the local APIC in x2APIC mode (SDM 11.12). The guest switches over
//! through IA32_APIC_BASE.EXTD, reads the ID, version and derived logical ID through
//! MSRs, checks the #GP rules of the x2APIC MSR range (reserved MSRs, writes to
//! read-only registers, reads of write-only ones, non-zero reserved bits, the MSRs that
//! no longer exist: DFR, ICR high), sends itself IPIs through SELF IPI and the 64-bit
//! ICR, runs the timer through MSRs, and walks the IA32_APIC_BASE state machine:
//! x2APIC → xAPIC directly is refused, x2APIC → disabled → xAPIC works (and resets the
//! APIC), disabled → x2APIC directly is refused.
//!
//! The xAPIC MMIO page is not touched while in x2APIC mode (what it returns then is
//! not architectural).
#![no_std]
#![no_main]

use guest_rt::exceptions::{install, msr_gp};
use guest_rt::interrupts::{bus_to_tsc, count, delay, delay_us, last_tsc, sti, tsc, us_to_tsc, wait_for};
use guest_rt::lapic::{self, base, divide, icr, lvt, reg, x2apic_msr};
use guest_rt::{check, msr, println, stop};

const NAME: &str = "guest-x2apic";
const VECTOR: u8 = 0x50;
const TIMER: u8 = 0x40;
const APIC_BASE: u32 = lapic::msrs::APIC_BASE;
const XAPIC_ENABLED_BSP: u64 = 0xfee0_0000 | base::EN | base::BSP;

fn read_gp(m: u32) -> bool {
    msr_gp(|| {
        msr::read(m);
    })
}

fn write_gp(m: u32, value: u64) -> bool {
    msr_gp(|| msr::write(m, value))
}

/// Checks that every access in `list` raises #GP, printing the ones that do not.
fn all_gp(what: &str, list: &[(u32, Option<u64>)]) -> bool {
    let mut all = true;
    for &(m, write) in list {
        let gp = match write {
            None => read_gp(m),
            Some(v) => write_gp(m, v),
        };
        if !gp {
            match write {
                None => println!("{NAME}: RDMSR {m:#x} did not raise #GP"),
                Some(v) => println!("{NAME}: WRMSR {m:#x} <- {v:#x} did not raise #GP"),
            }
        }
        all &= gp;
    }
    check(NAME, what, all)
}

/// Waits for one more interrupt of `vector` than `before`.
fn arrives(vector: u8, before: u64) -> bool {
    wait_for(|| count(vector) > before, us_to_tsc(1000))
}

/// Entry point (see `hv_abi::start`).
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    install();
    lapic::sync_mode();
    lapic::enable();
    sti();
    let mut ok = true;
    let leaf1 = core::arch::x86_64::__cpuid(1);
    ok &= check(NAME, "CPUID.1:ECX shows x2APIC (bit 21)", leaf1.ecx & (1 << 21) != 0);
    ok &= check(NAME, "IA32_APIC_BASE starts as an enabled xAPIC BSP at 0xfee00000", {
        lapic::apic_base() == XAPIC_ENABLED_BSP
    });

    // Into x2APIC mode.
    lapic::enter_x2apic();
    ok &= check(NAME, "IA32_APIC_BASE.EXTD switches to x2APIC mode", {
        lapic::apic_base() == XAPIC_ENABLED_BSP | base::EXTD && lapic::is_x2apic()
    });
    ok &= check(NAME, "x2APIC ID (MSR 0x802) reads 0", msr::read(0x802) == 0);
    ok &= check(NAME, "version (MSR 0x803) reads 0x00050014", msr::read(0x803) == 0x0005_0014);
    // SDM 11.12.10.2: logical x2APIC ID = cluster (ID[19:4]) << 16 | 1 << ID[3:0].
    ok &= check(NAME, "LDR (MSR 0x80d) holds the derived logical ID 1", msr::read(0x80d) == 1);
    ok &= check(NAME, "the SVR survives the switch (still enabled)", msr::read(0x80f) & 0x1ff == 0x1ff);
    msr::write(0x808, 0x20);
    ok &= check(NAME, "TPR (0x808) reads back and PPR (0x80a) follows it", {
        msr::read(0x808) == 0x20 && msr::read(0x80a) == 0x20
    });
    msr::write(0x808, 0);

    // #GP rules (SDM 11.12.1.2, table 11-6).
    ok &= all_gp(
        "reading reserved x2APIC MSRs raises #GP (0x800, 0x801, 0x804-0x807, 0x809, 0x80c, 0x829, 0x83a, 0x83d, 0x840, 0x8ff)",
        &[
            (0x800, None),
            (0x801, None),
            (0x804, None),
            (0x805, None),
            (0x806, None),
            (0x807, None),
            (0x809, None),
            (0x80c, None),
            (0x829, None),
            (0x83a, None),
            (0x83d, None),
            (0x840, None),
            (0x8ff, None),
        ],
    );
    ok &= all_gp(
        "DFR (0x80e) and ICR high (0x831) do not exist in x2APIC mode: #GP on read and write",
        &[(0x80e, None), (0x80e, Some(0xffff_ffff)), (0x831, None), (0x831, Some(0))],
    );
    ok &= all_gp(
        "writing read-only registers raises #GP (ID, version, PPR, LDR, ISR, IRR, current count)",
        &[
            (0x802, Some(0)),
            (0x803, Some(0)),
            (0x80a, Some(0)),
            (0x80d, Some(1)),
            (0x810, Some(0)),
            (0x820, Some(0)),
            (0x839, Some(0)),
        ],
    );
    ok &= all_gp("reading write-only EOI (0x80b) and SELF IPI (0x83f) raises #GP", &[(0x80b, None), (0x83f, None)]);
    ok &= all_gp(
        "non-zero reserved bits raise #GP (EOI 1, TPR bit 32, SELF IPI bit 8, ESR 1)",
        &[(0x80b, Some(1)), (0x808, Some(1 << 32)), (0x83f, Some(0x100 | u64::from(VECTOR))), (0x828, Some(1))],
    );
    ok &= check(NAME, "writing 0 to EOI (nothing in service) is fine", !write_gp(0x80b, 0));

    // Self IPIs.
    let before = count(VECTOR);
    msr::write(0x83f, u64::from(VECTOR));
    ok &= check(NAME, "SELF IPI (0x83f) delivers the vector", arrives(VECTOR, before));
    let isr = x2apic_msr(reg::ISR) + u32::from(VECTOR) / 32;
    ok &= check(NAME, "the handler's EOI through MSR 0x80b retired it (ISR clear)", {
        msr::read(isr) & (1 << (VECTOR % 32)) == 0
    });
    let before = count(VECTOR);
    let value = icr::FIXED | icr::ASSERT | u32::from(VECTOR);
    msr::write(0x830, u64::from(value)); // physical destination: x2APIC ID 0, this vCPU
    ok &= check(NAME, "a fixed IPI through the 64-bit ICR (0x830) to ID 0 arrives", arrives(VECTOR, before));
    let dest = 0x1234_5678u64 << 32;
    let before = count(VECTOR);
    msr::write(0x830, dest | u64::from(value));
    delay_us(300);
    ok &= check(NAME, "an IPI to a non-existent x2APIC ID does not come back", count(VECTOR) == before);
    ok &= check(NAME, "the ICR reads back all 64 bits", msr::read(0x830) & !(1 << 12) == dest | u64::from(value));

    // Timer through MSRs.
    let before = count(TIMER);
    let initial = 20_000u32; // 200 µs
    let expected = bus_to_tsc(u64::from(initial));
    msr::write(0x83e, u64::from(divide::BY_1));
    msr::write(0x832, u64::from(TIMER) | u64::from(lvt::ONE_SHOT));
    let t0 = tsc();
    msr::write(0x838, u64::from(initial));
    let running = msr::read(0x839);
    let fired = wait_for(|| count(TIMER) > before, expected + us_to_tsc(10_000));
    let took = last_tsc(TIMER).wrapping_sub(t0);
    ok &= check(NAME, "the timer runs through MSRs 0x832/0x838/0x839/0x83e", {
        running > 0 && running <= u64::from(initial) && msr::read(0x839) == 0
    });
    ok &= check(NAME, "the one-shot fires, not before its time, once", {
        fired && took >= expected && {
            delay(2 * expected);
            count(TIMER) == before + 1
        }
    });
    msr::write(0x832, u64::from(lvt::MASKED | u32::from(TIMER)));

    // IA32_APIC_BASE transitions (SDM 11.12.5, figure 11-28).
    let x2 = lapic::apic_base();
    ok &= check(NAME, "x2APIC -> xAPIC directly (EXTD 0, EN 1) raises #GP", {
        write_gp(APIC_BASE, x2 & !base::EXTD) && lapic::apic_base() == x2
    });
    ok &= check(NAME, "EXTD without EN raises #GP", write_gp(APIC_BASE, x2 & !base::EN));
    ok &= check(NAME, "a reserved IA32_APIC_BASE bit (9) raises #GP", write_gp(APIC_BASE, x2 | 1 << 9));
    let disabled = x2 & !(base::EN | base::EXTD);
    ok &= check(NAME, "x2APIC -> disabled (EN 0, EXTD 0) is allowed", !write_gp(APIC_BASE, disabled));
    lapic::sync_mode();
    ok &= check(NAME, "IA32_APIC_BASE then shows the APIC disabled", lapic::apic_base() & (base::EN | base::EXTD) == 0);
    ok &= check(NAME, "x2APIC MSRs raise #GP while the APIC is disabled", read_gp(0x802));
    ok &= check(NAME, "disabled -> x2APIC directly raises #GP", write_gp(APIC_BASE, disabled | base::EN | base::EXTD));
    ok &= check(NAME, "disabled -> xAPIC (EN 1) is allowed", !write_gp(APIC_BASE, disabled | base::EN));
    lapic::sync_mode();
    ok &= check(NAME, "IA32_APIC_BASE shows an enabled xAPIC again", lapic::apic_base() == XAPIC_ENABLED_BSP);
    ok &= check(NAME, "x2APIC MSRs raise #GP in xAPIC mode", read_gp(0x802) && read_gp(0x830));
    ok &= check(NAME, "the xAPIC registers are back at 0xfee00000 (ID 0, version 0x00050014)", {
        lapic::mmio_read(reg::ID) == 0 && lapic::mmio_read(reg::VERSION) == 0x0005_0014
    });
    ok &=
        check(NAME, "passing through the disabled state reset the APIC (SVR 0xff)", lapic::mmio_read(reg::SVR) == 0xff);
    lapic::enable();
    let before = count(VECTOR);
    lapic::self_ipi(VECTOR);
    ok &= check(NAME, "after re-enabling, a self IPI through the xAPIC ICR arrives", arrives(VECTOR, before));

    if ok {
        println!("PASS {NAME}");
    } else {
        println!("FAIL {NAME}");
    }
    stop(if ok { 0 } else { 1 })
}
