//! `guest-ipi`: multiprocessor start-up and inter-processor interrupts between the
//! vCPUs of one partition, through the xAPIC ICR as on a PC. The vCPU count comes from
//! CPUID.1:EBX[23:16]; the verdict line is `PASS guest-ipi-N` for N vCPUs, so one image
//! serves the 2- and 4-vCPU scenarios.
//!
//! 1. INIT, SIPI, SIPI brings up every AP; each checks in once with its APIC ID.
//! 2. Ping-pong: the BSP sends a fixed IPI to one AP (physical destination), whose
//!    handler answers with another fixed IPI to the BSP (`bench ipi.roundtrip`).
//! 3. Logical destination, flat model: vCPU k has logical ID 1 << k; an IPI to a mask
//!    reaches exactly the vCPUs in it.
//! 4. Shorthands: all-excluding-self reaches every AP once and not the sender;
//!    all-including-self reaches the sender too.
//! 5. An NMI IPI reaches the AP's vector-2 handler.
//! 6. Lowest priority to all APs reaches exactly one of them.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::interrupts::{count_on, delay_us, last_tsc_on, set_hook, sti, sti_hlt, tsc, us_to_tsc, wait_for};
use guest_rt::lapic::{self, icr, reg};
use guest_rt::smp::{self, MAX_CPUS};
use guest_rt::{check, exceptions, println, stop, vcpu_id};

const PING: u8 = 0x50;
const PONG: u8 = 0x51;
const LOGICAL: u8 = 0x52;
const BROADCAST: u8 = 0x53;
const LOWEST: u8 = 0x54;
const NMI: u8 = 2;
/// Ping-pong round trips per AP.
const ROUNDS: u64 = 16;
/// How long to wait for an IPI that should arrive: a bound against hanging, not a
/// timing check (a target may be inside a console hypercall, which takes ~20 ms of
/// guest time per line under Bochs, and with 4 emulated CPUs each runs at a quarter
/// of the TSC rate).
const ARRIVAL_US: u64 = 500_000;
/// How long to keep watching for IPIs that should not arrive.
const SETTLE_US: u64 = 500;

/// The vCPU count (CPUID), for the verdict name.
static VCPUS: AtomicU32 = AtomicU32::new(0);
/// What each AP reported: APIC ID and vCPU id (u64::MAX: nothing yet).
static AP_APIC_ID: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
static AP_VCPU_ID: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
/// APs done with their set-up (logical ID written).
static READY: AtomicU32 = AtomicU32::new(0);

fn name() -> &'static str {
    match VCPUS.load(Ordering::SeqCst) {
        2 => "guest-ipi-2",
        3 => "guest-ipi-3",
        4 => "guest-ipi-4",
        5 => "guest-ipi-5",
        6 => "guest-ipi-6",
        7 => "guest-ipi-7",
        8 => "guest-ipi-8",
        _ => "guest-ipi",
    }
}

/// Flat logical model (DFR = all ones), logical ID 1 << APIC ID (SDM 11.6.2.2).
fn set_logical_id(apic_id: u32) {
    lapic::write(reg::DFR, 0xffff_ffff);
    lapic::write(reg::LDR, 1 << (24 + apic_id.min(7)));
}

/// The ping handler on an AP: answer the BSP (APIC ID 0) with a fixed IPI.
fn pong(_vector: u8) -> bool {
    lapic::send_ipi(0, icr::FIXED | icr::ASSERT | u32::from(PONG));
    true
}

extern "C" fn ap_entry(apic_id: u32) -> ! {
    let k = smp::cpu_index();
    set_logical_id(apic_id);
    let vcpu = vcpu_id();
    AP_APIC_ID[k].store(u64::from(apic_id), Ordering::SeqCst);
    AP_VCPU_ID[k].store(vcpu, Ordering::SeqCst);
    println!("{}: ap {k} online (APIC ID {apic_id}, vCPU {vcpu})", name());
    READY.fetch_add(1, Ordering::SeqCst);
    loop {
        sti_hlt();
    }
}

/// `vector`'s count on each vCPU.
fn counts(n: usize, vector: u8) -> [u64; MAX_CPUS] {
    let mut c = [0; MAX_CPUS];
    for (cpu, slot) in c.iter_mut().enumerate().take(n) {
        *slot = count_on(cpu, vector);
    }
    c
}

/// Per-vCPU increase of `vector`'s count since `before`.
fn deltas(n: usize, vector: u8, before: &[u64; MAX_CPUS]) -> [u64; MAX_CPUS] {
    let now = counts(n, vector);
    let mut d = [0; MAX_CPUS];
    for cpu in 0..n {
        d[cpu] = now[cpu] - before[cpu];
    }
    d
}

/// Sends one IPI and waits until `expected` deliveries of `vector` arrived in total,
/// then a little longer for extra ones; returns the per-vCPU deliveries.
fn deliver(n: usize, vector: u8, dest: u32, low: u32, expected: u64) -> [u64; MAX_CPUS] {
    let before = counts(n, vector);
    lapic::send_ipi(dest, low);
    wait_for(|| deltas(n, vector, &before).iter().sum::<u64>() >= expected, us_to_tsc(ARRIVAL_US));
    delay_us(SETTLE_US);
    deltas(n, vector, &before)
}

/// Entry point (see `hv_abi::start`): the BSP.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(_vcpu: u64, _ram: u64) -> ! {
    exceptions::install();
    lapic::sync_mode();
    lapic::enable();
    set_logical_id(0);
    let n32 = smp::vcpu_count();
    VCPUS.store(n32, Ordering::SeqCst);
    let n = n32 as usize;
    let name = name();
    let mut ok = check(name, "CPUID.1:EBX[23:16] reports 2 to 8 vCPUs", (2..=MAX_CPUS).contains(&n));
    if !ok {
        println!("{name}: CPUID reports {n} vCPUs");
        finish(name, false);
    }
    ok &= check(name, "the BSP's APIC ID is 0", lapic::id() == 0);
    set_hook(PING, Some(pong));
    sti();

    // 1. Bring-up.
    let aps = n32 - 1;
    let online = smp::start_aps(aps, ap_entry);
    let ready = wait_for(|| READY.load(Ordering::SeqCst) == aps, us_to_tsc(ARRIVAL_US));
    ok &= check(name, "INIT, SIPI, SIPI brought every AP online", online == aps && ready);
    if !(online == aps && ready) {
        println!("{name}: {online} of {aps} APs online, {} ready", READY.load(Ordering::SeqCst));
        finish(name, false);
    }
    // A second start-up IPI honoured by a running AP would make it check in again.
    delay_us(1000);
    ok &= check(name, "each AP checked in exactly once (the second SIPI was ignored)", smp::online() == aps);
    let ids_ok = (1..n)
        .all(|k| AP_APIC_ID[k].load(Ordering::SeqCst) == k as u64 && AP_VCPU_ID[k].load(Ordering::SeqCst) == k as u64);
    ok &= check(name, "AP k has APIC ID k and vCPU id k", ids_ok);

    // 2. Ping-pong with each AP, physical destination.
    let mut roundtrip = [0u64; ROUNDS as usize];
    let mut measured = 0;
    for k in 1..n {
        let pings = counts(n, PING);
        let pongs = count_on(0, PONG);
        let mut answered = 0;
        for _ in 0..ROUNDS {
            let before = count_on(0, PONG);
            let t0 = tsc();
            lapic::send_ipi(k as u32, icr::FIXED | icr::ASSERT | u32::from(PING));
            if !wait_for(|| count_on(0, PONG) > before, us_to_tsc(ARRIVAL_US)) {
                break;
            }
            answered += 1;
            if k == 1 && measured < roundtrip.len() {
                roundtrip[measured] = last_tsc_on(0, PONG).wrapping_sub(t0);
                measured += 1;
            }
        }
        delay_us(SETTLE_US);
        let d = deltas(n, PING, &pings);
        let only_k = (0..n).all(|cpu| d[cpu] == if cpu == k { ROUNDS } else { 0 });
        let pong_total = count_on(0, PONG) - pongs;
        ok &= check(name, "ping-pong: each fixed IPI reaches only its AP and is answered once", {
            answered == ROUNDS && only_k && pong_total == ROUNDS
        });
        if answered != ROUNDS || !only_k || pong_total != ROUNDS {
            println!("{name}: AP {k}: {answered} of {ROUNDS} answered, pings {:?}, pongs {pong_total}", &d[..n]);
        }
    }
    guest_rt::bench::report("ipi.roundtrip", &mut roundtrip[..measured]);

    // 3. Logical destinations (flat model).
    let all_aps = ((1u32 << n) - 1) & !1;
    let mut masks = [0u32; MAX_CPUS + 3];
    let mut m = 0;
    for k in 1..n {
        masks[m] = 1 << k;
        m += 1;
    }
    masks[m] = all_aps;
    masks[m + 1] = 0b11; // the BSP itself and AP 1
    masks[m + 2] = all_aps & 0b1010_1010; // the odd APIC IDs
    let mut logical_ok = true;
    for &mask in &masks[..m + 3] {
        let d = deliver(
            n,
            LOGICAL,
            mask,
            icr::FIXED | icr::LOGICAL | icr::ASSERT | u32::from(LOGICAL),
            u64::from(mask.count_ones()),
        );
        let right = (0..n).all(|cpu| d[cpu] == u64::from((mask >> cpu) & 1));
        if !right {
            println!("{name}: logical mask {mask:#04x} delivered {:?}", &d[..n]);
        }
        logical_ok &= right;
    }
    ok &= check(name, "a logical (flat) destination reaches exactly the vCPUs in the mask", logical_ok);

    // 4. Shorthands.
    let d =
        deliver(n, BROADCAST, 0, icr::FIXED | icr::ALL_EXCLUDING_SELF | icr::ASSERT | u32::from(BROADCAST), aps.into());
    let right = d[0] == 0 && (1..n).all(|cpu| d[cpu] == 1);
    if !right {
        println!("{name}: all-excluding-self delivered {:?}", &d[..n]);
    }
    ok &= check(name, "all-excluding-self reaches every AP once and not the sender", right);
    let d =
        deliver(n, BROADCAST, 0, icr::FIXED | icr::ALL_INCLUDING_SELF | icr::ASSERT | u32::from(BROADCAST), n as u64);
    let right = (0..n).all(|cpu| d[cpu] == 1);
    if !right {
        println!("{name}: all-including-self delivered {:?}", &d[..n]);
    }
    ok &= check(name, "all-including-self reaches every vCPU once, the sender too", right);

    // 5. NMI to each AP.
    let mut nmi_ok = true;
    for k in 1..n {
        let d = deliver(n, NMI, k as u32, icr::NMI | icr::ASSERT, 1);
        let right = (0..n).all(|cpu| d[cpu] == u64::from(cpu == k));
        if !right {
            println!("{name}: NMI to AP {k} delivered {:?}", &d[..n]);
        }
        nmi_ok &= right;
    }
    ok &= check(name, "an NMI IPI reaches the AP's NMI handler (vector 2) and no one else", nmi_ok);

    // 6. Lowest priority to all APs: exactly one accepts each.
    let mut lowest_ok = true;
    for _ in 0..4 {
        let d = deliver(n, LOWEST, all_aps, icr::LOWEST_PRIORITY | icr::LOGICAL | icr::ASSERT | u32::from(LOWEST), 1);
        let right = d[0] == 0 && d[..n].iter().sum::<u64>() == 1;
        if !right {
            println!("{name}: lowest priority to {all_aps:#04x} delivered {:?}", &d[..n]);
        }
        lowest_ok &= right;
    }
    ok &= check(name, "a lowest-priority IPI to all APs reaches exactly one of them", lowest_ok);

    finish(name, ok)
}

fn finish(name: &str, ok: bool) -> ! {
    println!("{} {name}", if ok { "PASS" } else { "FAIL" });
    stop(if ok { 0 } else { 1 })
}
