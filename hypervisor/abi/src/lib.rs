//! The binary interface between the hypervisor and the software it runs.
//!
//! Changing anything here changes both sides on purpose: the hypervisor
//! (`hypervisor/`), the test guests and (later) the service partition all build
//! against this crate.
//!
//! # Hypercalls
//! A partition calls the hypervisor with `VMCALL`: RAX holds the hypercall number,
//! RBX, RCX, RDX and RSI the arguments (the KVM convention). The result comes back in
//! RAX: a value `>= 0` is success (and may carry a result), a negative value is an
//! [`Error`]. A bad number or argument returns an error; it never faults the
//! hypervisor. Pointers are guest-physical addresses inside the caller's RAM.
//!
//! # 64-bit start state
//! A guest image is loaded at its link address (its ELF's physical addresses) and
//! entered in 64-bit mode with paging, as [`start`] describes.
#![no_std]

/// Hypercall numbers (RAX).
pub mod hypercall {
    /// Writes bytes to the hypervisor console, prefixed with the partition's name.
    /// RBX = guest-physical address, RCX = length (at most [`super::CONSOLE_WRITE_MAX`]).
    /// Returns the number of bytes written.
    pub const CONSOLE_WRITE: u64 = 1;
    /// Returns the calling vCPU's id (0-based within its partition).
    pub const VCPU_ID: u64 = 2;
    /// Stops the calling partition (all its vCPUs). RBX = exit code, reported in the log.
    /// Does not return.
    pub const PARTITION_STOP: u64 = 3;
    /// Copies the calling vCPU's exit statistics to RBX (guest-physical address), at most
    /// RCX bytes, as an array of [`super::ExitCount`]; returns the number of entries.
    pub const EXIT_STATS: u64 = 4;
    /// Does nothing and returns 0 (for measuring the hypercall round trip).
    pub const NOP: u64 = 5;
    /// Sets the level of an input pin of the calling partition's own virtual IOAPIC (a
    /// test interrupt source): RBX = pin (0..[`super::platform::IOAPIC_PINS`]), RCX = level
    /// (0 low, 1 high). An edge-triggered pin fires on a 0 -> 1 change; a level-triggered
    /// pin stays asserted while high. Returns 0; `BadArgument` for a bad pin or level.
    pub const IRQ_LINE: u64 = 6;
    /// Changes the access rights of part of the caller's own RAM: RBX = guest-physical
    /// address, RCX = length (both multiples of 4096, inside its RAM), RDX = rights
    /// (bit 0 read, bit 1 write, bit 2 execute; write needs read; 0 = no access).
    /// The change is in effect on every vCPU of the partition when the call returns. An
    /// access the rights forbid stops the partition, with a line naming the access.
    /// Returns 0; `BadAddress` or `BadArgument` for bad ranges or rights.
    pub const MEMORY_PROTECT: u64 = 7;

    // Service partition only (see [`super::service`]); any other caller gets
    // `NotPermitted`.

    /// Answers the request in slot RBX (or nothing: [`super::service::NO_REPLY`]) with
    /// status RSI ([`super::io_request::status`] `DONE`, `FAILED` or `DEFERRED`) and, for
    /// a read, data RDX; then waits for the next request that this vCPU's physical CPU
    /// forwards, or until the TSC reaches RCX (an absolute TSC value; 0 = no deadline;
    /// the device models' timers; kept to within about a millisecond). Returns the slot
    /// index of the new request, with the request itself in RBX, RCX, RDX, RSI and RDI
    /// (the slot's five words, [`super::io_request::IoRequestSlot::to_words`], which the
    /// slot holds too); or [`super::service::TIMER_EXPIRED`] when the deadline passed
    /// first (it is then cleared; the next call sets a new one). The answer is validated
    /// against the request the hypervisor posted (`hv_core::io_request::validate_reply`:
    /// the status, and a read's data within the access size); one that fails fails the
    /// access as an open bus, with a warning line. A slot index that has no request
    /// pending on this CPU is refused with `BadArgument` and the pending request stays
    /// pending (the vCPU keeps the turn). An answer with status `DEFERRED` leaves the
    /// guest waiting on its instruction until [`SERVICE_COMPLETE`] (see
    /// [`super::io_request`], "Deferred completion").
    pub const SERVICE_REPLY_WAIT: u64 = 8;
    /// Sets the level of IRQ line RCX (0..[`super::platform::IOAPIC_PINS`]) of guest VM
    /// RBX (a [`super::service::VmId`]) to RDX (0 low, 1 high). Returns 0;
    /// `BadArgument` for an unknown or destroyed VM, a pin out of range or another
    /// level, `NotPermitted` for any caller but the service partition (nothing
    /// changes).
    pub const GUEST_IRQ_LINE: u64 = 9;
    /// A power action for guest VM RBX: RCX = [`super::service::power::OFF`] (RDX = exit
    /// code) or [`super::service::power::RESET`]. The guest is stopped with a line naming
    /// the action. Returns 0. (A guest that the service partition reboots after a reset
    /// goes through [`VM_RESET`] instead.)
    pub const GUEST_POWER: u64 = 10;
    /// Writes RDX bytes (at most [`super::CONSOLE_WRITE_MAX`]) at the service partition's
    /// guest-physical address RCX to the console as output of guest VM RBX, prefixed with
    /// that guest's name. Returns the number of bytes written.
    pub const GUEST_CONSOLE_WRITE: u64 = 11;

    // The control interface, for the service partition only (KVM's system, VM and vCPU
    // levels; see [`super::service::control`]). VM arguments are
    // [`super::service::VmId`]s; every call checks them (a destroyed VM's id is
    // refused) and every other argument before it changes anything.

    /// System: RBX = [`super::service::control::info`] item; returns its value.
    pub const SYSTEM_INFO: u64 = 12;
    /// System: creates a VM named by the RCX bytes at service address RBX (1 to 32 of
    /// a-z, 0-9, '-'); returns its VmId.
    pub const VM_CREATE: u64 = 13;
    /// VM RBX: gives it RAM at guest-physical 0 from the service partition's memory
    /// pool: RDX bytes at pool offset RCX (both multiples of 2 MiB, inside the pool,
    /// overlapping no other VM's RAM). The service partition sees the same bytes at
    /// `POOL_GPA + RCX`. Returns 0.
    pub const VM_MAP_RAM: u64 = 14;
    /// VM RBX: forwards the devices of `DeviceSet` RCX to the service partition.
    pub const VM_SET_DEVICES: u64 = 15;
    /// VM RBX: creates its next vCPU, pinned to physical CPU RCX (one that runs no other
    /// guest vCPU); returns the vCPU id.
    pub const VCPU_CREATE: u64 = 16;
    /// vCPU RCX of VM RBX: sets its start state from the
    /// [`super::service::control::VcpuStartState`] at service address RDX (before it
    /// starts). Returns 0.
    pub const VCPU_SET_STATE: u64 = 17;
    /// vCPU RCX of VM RBX: starts it (it runs on its CPU from then on). Returns 0.
    pub const VCPU_START: u64 = 18;
    /// VM RBX: stops every vCPU, logging exit code RCX. Returns 0.
    pub const VM_STOP: u64 = 19;

    /// VM RBX: its platform was reset (0xCF9, the keyboard controller, the FADT reset
    /// register) and the caller reboots it. Every vCPU of the VM leaves guest mode
    /// (those on other CPUs are kicked, and the call returns only once each of them has
    /// stopped running guest code) and is *held*: it does not enter the guest again
    /// until [`VCPU_START`] names it. Each vCPU is back in its power-on state (LAPIC,
    /// pending NMI/INIT/SIPI dropped, runnable), the VM's I/O APIC too; on its next
    /// entry it starts from the state [`VCPU_SET_STATE`] gives it (as before its first
    /// start; `WAIT_FOR_SIPI` makes it an AP again). RAM, the EPT and the devices set
    /// are kept: the caller rewrites the RAM while the vCPUs are held. A forwarded
    /// access that a vCPU had in flight is dropped, not completed. Returns the number
    /// of this reboot (1 for the first); `BadArgument`, with nothing changed, for a bad
    /// VmId or a VM that is stopping, has no RAM, has a vCPU that was never started,
    /// or is held already (a reset in progress). A vCPU on another CPU that does not
    /// leave guest mode within a second stops the VM (with a line) and the call
    /// returns `BadArgument`.
    pub const VM_RESET: u64 = 22;

    /// Service partition only: takes console input for a guest (see
    /// [`super::service::console`]). RBX = service address of a buffer, RCX = its length
    /// (0 ..= [`super::service::console::READ_MAX`]; 0 only asks where input goes now),
    /// RDX = the guest VmId the caller has room for, or
    /// [`super::service::console::ANY_TARGET`]. The hypervisor reads the bytes waiting in
    /// the physical console's UART, handles the escape sequences (Ctrl-A n switches the
    /// partition that gets input, Ctrl-A Ctrl-A is a literal Ctrl-A) and writes up to RCX
    /// of the remaining bytes to the buffer; the bytes are for the partition that had the
    /// input focus when the call began, and a switch ends the call. When RDX names
    /// another VM than that one, nothing is taken. Never waits. Returns
    /// [`super::service::console::encode`]`(count, target)`; `BadLength` for RCX > 64,
    /// `BadAddress` for a buffer outside the caller's RAM, `BadArgument` for an RDX that
    /// is neither a VmId nor `ANY_TARGET`.
    pub const SERVICE_CONSOLE_READ: u64 = 20;

    /// Service partition only: the INTR output of guest VM RBX's 8259 pair (the master's
    /// INT pin, `hv_devices::pic8259::PicPair::output`) is now RCX (0 low, 1 high). The
    /// service partition makes this call whenever the level changes (after a port
    /// access, a timer tick or an interrupt acknowledge). The hypervisor wires the line
    /// to the LINT0 input of the VM's boot vCPU (vCPU 0): while it is high and that
    /// vCPU's LAPIC passes it on (LINT0 unmasked with delivery mode ExtINT, or the LAPIC
    /// software- or hardware-disabled), the vCPU gets the interrupt as soon as it can
    /// take it, its vector coming from an interrupt-acknowledge request
    /// ([`super::io_request::kind::INTERRUPT_ACK`]). Returns 0; `BadArgument` for a
    /// level other than 0 or 1 or an unknown VM.
    pub const GUEST_PIC_INTR: u64 = 21;

    /// Service partition only: completes a request it answered
    /// [`super::io_request::status::DEFERRED`] (see [`super::io_request`], "Deferred
    /// completion"). RBX = the slot index, RCX = the request's `sequence` (as posted in
    /// the slot), RDX = a read's data (in the low `size` bytes; ignored for a write and
    /// for `FAILED`), RSI = [`super::io_request::status::DONE`] or
    /// [`super::io_request::status::FAILED`]. The hypervisor completes the waiting
    /// guest's instruction and wakes its vCPU (on whichever CPU it sits). Returns 0;
    /// `BadArgument` (with a warning line, nothing changed) for a slot index out of range
    /// or of no guest vCPU, a vCPU that waits on no deferred request, another sequence
    /// number, another status, or data wider than the access.
    pub const SERVICE_COMPLETE: u64 = 23;
}

/// Most bytes one `CONSOLE_WRITE` takes.
pub const CONSOLE_WRITE_MAX: u64 = 256;

/// Hypercall errors, returned in RAX as negative numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// No such hypercall number.
    UnknownHypercall = -1,
    /// A pointer argument is outside the caller's RAM (or the range wraps).
    BadAddress = -2,
    /// A length argument is zero or too large.
    BadLength = -3,
    /// The caller may not use this hypercall.
    NotPermitted = -4,
    /// A non-pointer argument is out of range.
    BadArgument = -5,
}

impl Error {
    /// The error a RAX value encodes, if it is an error.
    #[must_use]
    pub fn from_rax(rax: u64) -> Option<Self> {
        match rax as i64 {
            -1 => Some(Self::UnknownHypercall),
            -2 => Some(Self::BadAddress),
            -3 => Some(Self::BadLength),
            -4 => Some(Self::NotPermitted),
            -5 => Some(Self::BadArgument),
            _ => None,
        }
    }

    /// The value placed in RAX.
    #[must_use]
    pub const fn to_rax(self) -> u64 {
        self as i64 as u64
    }
}

/// One entry of the `EXIT_STATS` result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ExitCount {
    /// Basic exit reason (Intel SDM Vol. 3 appendix C).
    pub reason: u32,
    pub _reserved: u32,
    pub count: u64,
}

/// The 64-bit start state the hypervisor gives a guest's boot vCPU.
pub mod start {
    /// Guest-physical address of the PML4 the hypervisor writes; PDPT and page
    /// directories follow it. They identity-map the first 4 GiB (whatever the RAM size:
    /// the LAPIC, the IOAPIC and the service partition's request slots lie there) with
    /// 2 MiB pages, read/write/execute.
    pub const PAGE_TABLES: u64 = 0x1000;
    /// Guest-physical address of a 4-entry GDT: null, 64-bit code (selector 0x08), flat
    /// 32-bit code (0x10), flat data (0x18). GDTR limit is 31. The 32-bit selectors are
    /// the x86 boot protocol's `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18)
    /// (Documentation/arch/x86/boot.rst, "32-bit Boot Protocol"), so a Linux kernel
    /// entered at its 32-bit entry may reload them from this GDT.
    pub const GDT: u64 = 0x800;
    pub const GDT_LIMIT: u16 = 31;
    pub const CODE_SELECTOR: u16 = 0x08;
    pub const DATA_SELECTOR: u16 = 0x18;
    pub const CODE32_SELECTOR: u16 = 0x10;
    pub const DATA32_SELECTOR: u16 = 0x18;
    /// GiB the boot page tables identity-map (2 MiB pages).
    pub const IDENTITY_GIB: u64 = 4;
    /// Pages of boot page tables at [`PAGE_TABLES`]: PML4, PDPT, one PD per GiB.
    pub const PAGE_TABLE_PAGES: u64 = 2 + IDENTITY_GIB;
    /// Page-table entry bits: present, writable, 2 MiB page (SDM Vol. 3 4.5).
    const PTE_PRESENT_WRITABLE: u64 = 0x3;
    const PTE_LARGE: u64 = 0x80;
    /// The boot GDT's descriptors (SDM Vol. 3 3.4.5): null, 64-bit code (0x08: L set,
    /// execute/read, accessed), flat 32-bit code (0x10: G and D set, base 0, limit 4 GiB,
    /// execute/read, accessed), flat data (0x18: G and B set, base 0, limit 4 GiB,
    /// read/write, accessed). The data descriptor serves 64-bit mode as well.
    const GDT_DESCRIPTORS: [u64; 4] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

    /// The boot GDT, as the bytes written at [`GDT`] ([`GDT_LIMIT`] + 1 bytes).
    #[must_use]
    pub fn gdt_bytes() -> [u8; GDT_LIMIT as usize + 1] {
        let mut bytes = [0u8; GDT_LIMIT as usize + 1];
        for (chunk, d) in bytes.as_chunks_mut::<8>().0.iter_mut().zip(GDT_DESCRIPTORS) {
            *chunk = d.to_le_bytes();
        }
        bytes
    }

    /// Page `index` (0..[`PAGE_TABLE_PAGES`]) of the boot page tables, which go at
    /// [`PAGE_TABLES`] + index * 4096: the PML4 (its entry 0 → the PDPT), the PDPT
    /// (entries 0..4 → the PDs), then one PD per GiB of 2 MiB identity pages. Any other
    /// index gives a zero page.
    #[must_use]
    pub fn page_table_page(index: u64) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        let pdpt = PAGE_TABLES + 0x1000;
        let pd = pdpt + 0x1000;
        let entries = page.as_chunks_mut::<8>().0;
        match index {
            0 => entries[0] = (pdpt | PTE_PRESENT_WRITABLE).to_le_bytes(),
            1 => {
                for (gib, e) in entries.iter_mut().enumerate().take(IDENTITY_GIB as usize) {
                    *e = ((pd + gib as u64 * 0x1000) | PTE_PRESENT_WRITABLE).to_le_bytes();
                }
            }
            i if i < PAGE_TABLE_PAGES => {
                let gib = i - 2;
                for (j, e) in entries.iter_mut().enumerate() {
                    let addr = (gib << 30) + ((j as u64) << 21);
                    *e = (addr | PTE_PRESENT_WRITABLE | PTE_LARGE).to_le_bytes();
                }
            }
            _ => {}
        }
        page
    }

    /// Lowest address a guest image may be linked at (everything below holds the boot
    /// structures and the initial stack).
    pub const MIN_LOAD_ADDRESS: u64 = 0x20_0000;
    // Registers at entry: RIP = the image's entry point; RSP = the image's lowest load
    // address minus 8 (the stack grows down from there; minus 8 gives an
    // `extern "C" fn` entry the alignment it would have after a call); RDI = vCPU id; RSI = RAM size in bytes;
    // RFLAGS = 0x2 (interrupts off); CR0 = PE|MP|ET|NE|WP|PG; CR4 = PAE (+ VMXE hidden);
    // EFER = LME|LMA|NXE; all other GPRs 0.
    //
    // A partition with `start = "protected"` gets the same GDT and page tables but starts
    // in 32-bit flat protected mode with paging off: CS = 0x10, other segments 0x18,
    // CR0 = PE|ET|NE, EFER = 0; EIP, ESP, EDI and ESI as above.
}

/// The virtual platform every partition sees (besides its RAM at guest-physical 0).
pub mod platform {
    /// Each vCPU has a virtual local APIC whose ID is the vCPU id. It starts enabled in
    /// xAPIC mode at this guest-physical base (IA32_APIC_BASE = base | EN, plus BSP on
    /// vCPU 0); x2APIC mode (MSRs 0x800-0x8FF) is entered through IA32_APIC_BASE.EXTD.
    /// CPUID.1:ECX shows x2APIC (bit 21) and TSC-deadline (bit 24).
    pub const LAPIC_BASE: u64 = 0xfee0_0000;
    /// The LAPIC timer counts at this bus frequency, before the divide configuration.
    pub const LAPIC_BUS_HZ: u64 = 100_000_000;
    /// CPUID leaf with the timing facts: EAX = TSC frequency in kHz, EBX = LAPIC bus
    /// frequency in kHz. CPUID 0x15 says the same (ECX = bus = crystal frequency in Hz,
    /// TSC = ECX * EBX / EAX).
    pub const CPUID_TIMING_LEAF: u32 = 0x4000_0010;
    /// One virtual IOAPIC (82093AA register interface: IOREGSEL at +0, IOWIN at +0x10)
    /// with this many input pins, at this guest-physical base.
    pub const IOAPIC_BASE: u64 = 0xfec0_0000;
    pub const IOAPIC_PINS: u32 = 24;
    // Several vCPUs: vCPU 0 starts at the image's entry point (`start`); every other
    // vCPU waits for INIT and then a start-up IPI from another vCPU's LAPIC, as on a PC
    // (SDM 9.4, MP initialisation). A SIPI with vector V starts it in real mode at
    // CS = V << 8, IP = 0. The GDT and page tables of `start` stay where they are, so an
    // AP trampoline may reuse them.

    /// The emulated PC devices a guest partition can have (its config's `devices`
    /// list): a name, the inclusive port ranges the hypervisor forwards to the service
    /// partition for it, and the ISA IRQ it raises (if any). Ports of devices a guest
    /// does not have stay unclaimed: reads return all-ones, writes are ignored.
    /// PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, §3.2.2.3.2), the
    /// `pci` device's ports: `CONFIG_ADDRESS` (a 32-bit register at 0xCF8: bit 31
    /// enables configuration cycles, bits 23:16 bus, 15:11 device, 10:8 function, 7:2
    /// register; 30:24 reserved, 1:0 read 0) and `CONFIG_DATA` (0xCFC-0xCFF).
    pub mod pci {
        pub const CONFIG_ADDRESS_PORT: u16 = 0xCF8;
        /// The first port of `CONFIG_DATA`.
        pub const CONFIG_DATA_PORT: u16 = 0xCFC;
        /// `CONFIG_ADDRESS` bit 31: configuration cycles enabled.
        pub const CONFIG_ENABLE: u32 = 1 << 31;
        /// The bits of `CONFIG_ADDRESS` that are kept: enable, bus, device, function,
        /// register.
        pub const CONFIG_ADDRESS_MASK: u32 = CONFIG_ENABLE | 0x00FF_FFFC;
    }

    pub mod devices {
        /// One emulated device.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Device {
            pub name: &'static str,
            pub ports: &'static [(u16, u16)],
            pub isa_irq: Option<u8>,
            /// Inclusive guest-physical ranges forwarded as MMIO (above every guest's
            /// RAM, never mapped in its EPT).
            pub mmio: &'static [(u64, u64)],
            /// Part of the PC platform (the config's `"pc"`); false for test devices.
            pub pc: bool,
        }

        /// Every device, in bit order of a [`DeviceSet`].
        pub const ALL: &[Device] = &[
            Device { name: "com1", ports: &[(0x3f8, 0x3ff)], isa_irq: Some(4), mmio: &[], pc: true },
            Device { name: "pit", ports: &[(0x40, 0x43), (0x61, 0x61)], isa_irq: Some(0), mmio: &[], pc: true },
            Device {
                name: "pic",
                ports: &[(0x20, 0x21), (0xa0, 0xa1), (0x4d0, 0x4d1)],
                isa_irq: None,
                mmio: &[],
                pc: true,
            },
            Device { name: "rtc", ports: &[(0x70, 0x71)], isa_irq: Some(8), mmio: &[], pc: true },
            Device { name: "acpi-pm", ports: &[(0x600, 0x60b)], isa_irq: Some(9), mmio: &[], pc: true },
            Device { name: "pci", ports: &[(0xcf8, 0xcff)], isa_irq: None, mmio: &[], pc: true },
            Device { name: "kbd", ports: &[(0x60, 0x60), (0x64, 0x64)], isa_irq: None, mmio: &[], pc: true },
            Device { name: "debug-exit", ports: &[(0xf4, 0xf4)], isa_irq: None, mmio: &[], pc: true },
            Device { name: "debugcon", ports: &[(0xe9, 0xe9)], isa_irq: None, mmio: &[], pc: true },
            Device { name: "fw-cfg", ports: &[(0x510, 0x511)], isa_irq: None, mmio: &[], pc: true },
            Device { name: "post", ports: &[(0x80, 0x80)], isa_irq: None, mmio: &[], pc: true },
            // Not a device: the service partition's fault-injection port for the
            // svc-crash scenarios. A write of FAULT_TEST_CRASH makes the service vCPU
            // triple-fault; FAULT_TEST_HANG makes it spin with interrupts off (it misses
            // the request deadline); FAULT_TEST_CREATE_FLOOD makes it call VM_CREATE in
            // a loop. Only configs that name it get it.
            Device { name: "svc-fault-test", ports: &[(0xf6, 0xf6)], isa_irq: None, mmio: &[], pc: false },
            // Not a PC device: a page of scratch registers for the svc-mmio scenario
            // (every MMIO instruction form the hypervisor decodes, forwarded).
            Device {
                name: "mmio-test",
                ports: &[],
                isa_irq: None,
                mmio: &[(MMIO_TEST_BASE, MMIO_TEST_BASE + 0xfff)],
                pc: false,
            },
            // Not a PC device: a port whose reads complete only after a delay, through
            // the deferred completion of `io_request` (the svc-deferred scenario). A
            // write sets the delay in milliseconds of device time
            // (DELAY_TEST_NEVER: reads never complete); a read returns
            // DELAY_TEST_VALUE_BASE plus the number of reads completed before it.
            Device {
                name: "delay-test",
                ports: &[(DELAY_TEST_PORT, DELAY_TEST_PORT)],
                isa_irq: None,
                mmio: &[],
                pc: false,
            },
        ];

        /// The `delay-test` port.
        pub const DELAY_TEST_PORT: u16 = 0xf8;
        /// `delay-test` delay value: reads are never completed (the guest waits until
        /// the hypervisor's deferred deadline stops it).
        pub const DELAY_TEST_NEVER: u32 = u32::MAX;
        /// What the first completed `delay-test` read returns; each later one returns
        /// one more.
        pub const DELAY_TEST_VALUE_BASE: u32 = 0xde1a_0000;

        /// Guest-physical base of the `mmio-test` page.
        pub const MMIO_TEST_BASE: u64 = 0xfeb0_0000;

        /// `svc-fault-test` values.
        pub const FAULT_TEST_CRASH: u8 = 1;
        pub const FAULT_TEST_HANG: u8 = 2;
        /// Makes the service vCPU halt with interrupts off (`cli; hlt`) instead of
        /// answering: it sleeps, owing the answer, until the request deadline.
        pub const FAULT_TEST_HALT: u8 = 4;
        /// Makes the service vCPU send itself an INIT instead of answering: it waits for
        /// a start-up IPI, owing the answer, until the request deadline.
        pub const FAULT_TEST_INIT: u8 = 5;
        /// Makes the service vCPU call `VM_CREATE` [`FAULT_TEST_CREATE_FLOOD_CALLS`]
        /// times (a control interface called in a loop must not exhaust the
        /// hypervisor's memory), stop the VMs it got, report, and answer.
        pub const FAULT_TEST_CREATE_FLOOD: u8 = 3;
        /// The `VM_CREATE` calls of one [`FAULT_TEST_CREATE_FLOOD`] request, each with a
        /// 32-byte name (few enough to answer within the request deadline under
        /// Bochs).
        pub const FAULT_TEST_CREATE_FLOOD_CALLS: u32 = 40_000;
        /// The [`FAULT_TEST_CREATE_FLOOD`] requests the `svc-crash` guest makes: 320 000
        /// calls in all, more than enough to exhaust the hypervisor's heap (8 MiB) if a
        /// refused call allocated its 32-byte name.
        pub const FAULT_TEST_CREATE_FLOOD_REQUESTS: u32 = 8;

        /// A set of devices: bit `i` = `ALL[i]`.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct DeviceSet(pub u32);

        impl DeviceSet {
            /// Every device of the PC platform (the config's `"pc"`).
            pub const PC: Self = {
                let mut bits = 0;
                let mut i = 0;
                while i < ALL.len() {
                    if ALL[i].pc {
                        bits |= 1 << i;
                    }
                    i += 1;
                }
                Self(bits)
            };

            /// The set with the device called `name` added (`"pc"` adds all); `None` for
            /// an unknown name.
            #[must_use]
            pub fn with(self, name: &str) -> Option<Self> {
                if name == "pc" {
                    return Some(Self(self.0 | Self::PC.0));
                }
                Some(Self(self.0 | 1 << Self::index(name)?))
            }

            #[must_use]
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// Whether the device called `name` is in the set (false for an unknown
            /// name).
            #[must_use]
            pub fn has(self, name: &str) -> bool {
                Self::index(name).is_some_and(|i| self.0 & (1 << i) != 0)
            }

            /// The bit of the device called `name` (its place in [`ALL`]).
            fn index(name: &str) -> Option<usize> {
                ALL.iter().position(|d| d.name == name)
            }

            /// Whether guest-physical `gpa` lies in an MMIO range of a device in the set.
            #[must_use]
            pub fn claims_mmio(self, gpa: u64) -> bool {
                let mut bits = self.0 & ((1 << ALL.len()) - 1);
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if ALL[i].mmio.iter().any(|&(first, last)| (first..=last).contains(&gpa)) {
                        return true;
                    }
                }
                false
            }

            /// Every port range (first, last) of the devices in the set.
            pub fn port_ranges(self) -> impl Iterator<Item = (u16, u16)> {
                ALL.iter()
                    .enumerate()
                    .filter(move |&(i, _)| self.0 & (1 << i) != 0)
                    .flat_map(|(_, device)| device.ports.iter().copied())
            }

            /// Whether `port` belongs to a device in the set.
            #[must_use]
            pub fn claims_port(self, port: u16) -> bool {
                let mut bits = self.0 & ((1 << ALL.len()) - 1);
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if ALL[i].ports.iter().any(|&(first, last)| (first..=last).contains(&port)) {
                        return true;
                    }
                }
                false
            }
        }
    }
}

/// The I/O request protocol between the hypervisor and the service partition (version
/// [`io_request::VERSION`]): one [`io_request::IoRequestSlot`] per guest vCPU, in memory
/// both can reach. For an exit that the service partition emulates (port I/O, MMIO, PCI
/// configuration), the hypervisor fills the slot (the record of the request), marks it
/// `Pending` and switches to the service partition, whose `SERVICE_REPLY_WAIT` returns
/// the slot index with the slot's five words in registers; the service partition
/// performs the access and answers with its next `SERVICE_REPLY_WAIT`: a status (`Done`,
/// `Failed` or `Deferred`) and, for a read, the data, in registers. The hypervisor
/// checks the answer against its own copy of the request: the status must be an answer
/// and a read's data must fit the access size (`hv_core::io_request::validate_reply`).
/// The service partition does not write the slot. An interrupt acknowledge of the guest's 8259
/// pair ([`io_request::kind::INTERRUPT_ACK`]) travels the same way, as a one-byte read
/// whose data is the vector.
///
/// # Deferred completion
/// A request that starts work the service partition finishes later (a device that
/// answers after a delay) may be answered `Deferred` instead: the guest vCPU stays on its instruction (RIP not advanced, nothing
/// written) and its physical CPU goes on (the service vCPU waits for its next request
/// or timer; the CPU sleeps and runs the service's device timers meanwhile). The
/// service partition completes the request later, from any of its vCPUs, with
/// [`crate::hypercall::SERVICE_COMPLETE`]`(slot, sequence, data, status)`: the
/// hypervisor checks it against the request it posted (`hv_core::io_request::deferred`)
/// and only then completes the guest's instruction and wakes its vCPU. The slot keeps
/// the request until then (the hypervisor posts nothing else to it). A completion may
/// not overtake its `DEFERRED` reply: the hypervisor waits on the request only once it
/// took that reply, which it has when the service vCPU that replied returns from its
/// next `SERVICE_REPLY_WAIT` (with any result; asking for a wake-up deadline already
/// past makes that immediate); a completion before then is refused. A deferred request
/// not completed within the hypervisor's deferred deadline (5 s of TSC time) stops the
/// waiting guest with a line naming the access; a guest that stops or is reset while it
/// waits drops the request, and a later completion of it is refused.
pub mod io_request {
    /// Version of this layout; bumped on any change. 2: [`kind::INTERRUPT_ACK`]; 3:
    /// [`status::DEFERRED`] (and `SERVICE_COMPLETE`); 4: the hypervisor reads back only
    /// `status` and `data`; 5: the request and the answer travel in the registers of
    /// `SERVICE_REPLY_WAIT` (the slot stays the record of the request); 6: accesses to
    /// `CONFIG_DATA` are posted as [`kind::PCI_CONFIG`].
    pub const VERSION: u32 = 6;

    /// Why a service partition built for [`VERSION`] must not serve the hypervisor it
    /// runs on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum VersionMismatch {
        /// The hypervisor speaks this other version.
        Other(u64),
        /// The hypervisor does not say (`SYSTEM_INFO(IO_REQUEST_VERSION)` failed: a
        /// hypervisor older than the item).
        Unknown,
    }

    /// Checks what `SYSTEM_INFO(IO_REQUEST_VERSION)` returned (`rax`) against
    /// [`VERSION`]: the hypervisor and the service partition must speak the same
    /// layout, or requests and answers would be misread on both sides.
    pub fn check_version(rax: u64) -> Result<(), VersionMismatch> {
        if crate::Error::from_rax(rax).is_some() {
            Err(VersionMismatch::Unknown)
        } else if rax == u64::from(VERSION) {
            Ok(())
        } else {
            Err(VersionMismatch::Other(rax))
        }
    }
    /// Bytes per slot in the shared page (the struct plus padding to a cache line).
    pub const SLOT_BYTES: usize = 64;

    /// The highest [`kind::PCI_CONFIG`] address: bus 255, device 31, function 7,
    /// register 0xFF.
    pub const MAX_PCI_CONFIG_ADDRESS: u64 = 0x00FF_FFFF;

    /// The bus, device, function and register a [`kind::PCI_CONFIG`] address names, if it
    /// is one ([`MAX_PCI_CONFIG_ADDRESS`] or below).
    #[must_use]
    pub const fn pci_config_target(address: u64) -> Option<(u8, u8, u8, u8)> {
        if address > MAX_PCI_CONFIG_ADDRESS {
            return None;
        }
        Some(((address >> 16) as u8, (address >> 11) as u8 & 0x1F, (address >> 8) as u8 & 0x07, address as u8))
    }

    /// What kind of access a slot describes.
    pub mod kind {
        /// Port I/O: `address` is the port.
        pub const PORT: u8 = 1;
        /// Memory-mapped I/O: `address` is the guest-physical address.
        pub const MMIO: u8 = 2;
        /// PCI configuration space: `address` is bus << 16 | device << 11 | function << 8 |
        /// register (at most 0xFF_FFFF), the register being the byte the access starts
        /// at; `size` is 1, 2 or 4. Posted for an access that starts in `CONFIG_DATA`
        /// (ports 0xCFC-0xCFF) of configuration mechanism #1 while the VM's
        /// `CONFIG_ADDRESS` has its enable bit set: the hypervisor keeps a copy of
        /// `CONFIG_ADDRESS` from the guest's dword writes at 0xCF8, each of which it
        /// still forwards as a port write (`hv_core::pci_config`). Bytes of an access
        /// beyond the register's dword are not configuration space (they read 0xFF).
        /// Every other access in 0xCF8-0xCFF (the reset control register at 0xCF9, reads
        /// of `CONFIG_ADDRESS`, `CONFIG_DATA` with the enable bit clear) is a port
        /// request.
        pub const PCI_CONFIG: u8 = 3;
        /// An interrupt-acknowledge (INTA) cycle of the guest's 8259 pair, posted for the
        /// boot vCPU when it takes the PIC's INTR (see
        /// [`crate::hypercall::GUEST_PIC_INTR`]): `address` 0, `size` 1, direction
        /// `READ`. The service partition acknowledges the PIC's highest request (IRR to
        /// ISR, the cascade, the spurious IR7 vector when nothing requests) and replies
        /// `DONE` with the vector in `data`, or `FAILED` when the PIC gives no vector
        /// (uninitialized, MCS-80 mode): then no interrupt is delivered.
        pub const INTERRUPT_ACK: u8 = 4;
    }

    /// Access direction, from the guest's point of view.
    pub mod direction {
        pub const READ: u8 = 0;
        pub const WRITE: u8 = 1;
    }

    /// Slot states.
    pub mod status {
        /// No request.
        pub const FREE: u8 = 0;
        /// Posted by the hypervisor, not yet answered.
        pub const PENDING: u8 = 1;
        /// Answered: the access was performed (`data` holds a read's result).
        pub const DONE: u8 = 2;
        /// Answered: the service partition could not perform it (the hypervisor then
        /// completes a read with all-ones and drops a write, as an open bus does).
        pub const FAILED: u8 = 3;
        /// Answered: accepted, and completed later with
        /// [`crate::hypercall::SERVICE_COMPLETE`] (see "Deferred completion" above).
        pub const DEFERRED: u8 = 4;
    }

    /// One request slot. Little-endian, laid out as the fields appear here (40 bytes),
    /// followed by padding to [`SLOT_BYTES`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct IoRequestSlot {
        /// Incremented by the hypervisor for every request on this slot.
        pub sequence: u64,
        /// Port, guest-physical address or PCI configuration address ([`kind`]).
        pub address: u64,
        /// The data of a write (from the hypervisor) or of a read (from the service
        /// partition), in the low `size` bytes.
        pub data: u64,
        /// The guest VM's id and the vCPU that made the access.
        pub vm: u32,
        pub vcpu: u32,
        /// [`kind`], access size in bytes (1, 2, 4 or 8), [`direction`] and [`status`].
        pub kind: u8,
        pub size: u8,
        pub direction: u8,
        pub status: u8,
        /// Must be 0.
        pub reserved: u32,
    }

    impl IoRequestSlot {
        /// The five little-endian 64-bit words the fields fill (the first 40 bytes of
        /// [`IoRequestSlot::to_bytes`]; the rest of a slot is padding). Also what
        /// `SERVICE_REPLY_WAIT` returns in RBX, RCX, RDX, RSI and RDI.
        #[must_use]
        #[inline]
        pub fn to_words(&self) -> [u64; 5] {
            [
                self.sequence,
                self.address,
                self.data,
                u64::from(self.vm) | u64::from(self.vcpu) << 32,
                u64::from(self.kind)
                    | u64::from(self.size) << 8
                    | u64::from(self.direction) << 16
                    | u64::from(self.status) << 24
                    | u64::from(self.reserved) << 32,
            ]
        }

        /// The slot whose five words are `words` ([`IoRequestSlot::to_words`]).
        #[must_use]
        #[inline]
        pub fn from_words(words: [u64; 5]) -> Self {
            let [sequence, address, data, ids, bytes] = words;
            Self {
                sequence,
                address,
                data,
                vm: ids as u32,
                vcpu: (ids >> 32) as u32,
                kind: bytes as u8,
                size: (bytes >> 8) as u8,
                direction: (bytes >> 16) as u8,
                status: (bytes >> 24) as u8,
                reserved: (bytes >> 32) as u32,
            }
        }

        /// The slot as the bytes of the shared page.
        #[must_use]
        pub fn to_bytes(&self) -> [u8; SLOT_BYTES] {
            let mut b = [0u8; SLOT_BYTES];
            b[0..8].copy_from_slice(&self.sequence.to_le_bytes());
            b[8..16].copy_from_slice(&self.address.to_le_bytes());
            b[16..24].copy_from_slice(&self.data.to_le_bytes());
            b[24..28].copy_from_slice(&self.vm.to_le_bytes());
            b[28..32].copy_from_slice(&self.vcpu.to_le_bytes());
            b[32] = self.kind;
            b[33] = self.size;
            b[34] = self.direction;
            b[35] = self.status;
            b[36..40].copy_from_slice(&self.reserved.to_le_bytes());
            b
        }

        /// The slot read back from the bytes of the shared page (any bytes decode; the
        /// hypervisor validates the result).
        #[must_use]
        pub fn from_bytes(b: &[u8; SLOT_BYTES]) -> Self {
            let u64_at = |i: usize| {
                u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]])
            };
            let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            Self {
                sequence: u64_at(0),
                address: u64_at(8),
                data: u64_at(16),
                vm: u32_at(24),
                vcpu: u32_at(28),
                kind: b[32],
                size: b[33],
                direction: b[34],
                status: b[35],
                reserved: u32_at(36),
            }
        }
    }
}

/// The service partition's side of the I/O forwarding protocol.
///
/// The hypervisor maps the request slots ([`SLOTS`] of [`io_request::SLOT_BYTES`]
/// each) into the service partition at [`SLOTS_GPA`], read/write. Slot
/// `vm_index * MAX_VCPUS_PER_VM + vcpu` belongs to that guest vCPU. A guest's port
/// access in a forwarded range is posted to its slot and the physical CPU switches to
/// the service partition's vCPU on the same CPU, which returns from
/// [`hypercall::SERVICE_REPLY_WAIT`] with the slot index.
pub mod service {
    /// Where the request slots appear in the service partition.
    pub const SLOTS_GPA: u64 = 0xf000_0000;
    /// Guest VMs the slot array covers.
    pub const MAX_VMS: u32 = 16;
    /// vCPUs per guest VM the slot array covers.
    pub const MAX_VCPUS_PER_VM: u32 = 64;
    /// Number of slots.
    pub const SLOTS: u32 = MAX_VMS * MAX_VCPUS_PER_VM;
    /// Bytes of the slot array (a multiple of 4096).
    pub const SLOTS_BYTES: u64 = SLOTS as u64 * super::io_request::SLOT_BYTES as u64;
    /// `SERVICE_REPLY_WAIT` argument for "no reply" (the first call of each vCPU).
    pub const NO_REPLY: u64 = u64::MAX;
    /// `SERVICE_REPLY_WAIT` result when the wake-up deadline passed (not a slot index,
    /// not an error).
    pub const TIMER_EXPIRED: u64 = 0x1_0000_0000;
    /// The service partition has one vCPU on every physical CPU that runs guest vCPUs.
    /// Every one starts at the image's entry point in the 64-bit start state of
    /// [`super::start`], with RDI = its vCPU id and RSP = the image's load address - 8 -
    /// id * `STACK_BYTES` (so each has its own stack below the image).
    pub const STACK_BYTES: u64 = 0x1_0000;

    /// A guest VM as the service partition names it: the VM's index in the low 16 bits
    /// and the low 16 bits of its generation above, so that an id of a destroyed VM is
    /// refused even when its index is reused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VmId(pub u32);

    impl VmId {
        #[must_use]
        pub const fn new(index: u16, generation: u32) -> Self {
            Self(index as u32 | (generation & 0xffff) << 16)
        }
        #[must_use]
        pub const fn index(self) -> u16 {
            (self.0 & 0xffff) as u16
        }
        #[must_use]
        pub const fn generation_low(self) -> u16 {
            (self.0 >> 16) as u16
        }
    }

    /// The slot of vCPU `vcpu` of the VM with index `vm_index`, if the array covers it.
    #[must_use]
    pub const fn slot_index(vm_index: u16, vcpu: u32) -> Option<u32> {
        if (vm_index as u32) < MAX_VMS && vcpu < MAX_VCPUS_PER_VM {
            Some(vm_index as u32 * MAX_VCPUS_PER_VM + vcpu)
        } else {
            None
        }
    }

    /// Where the service partition sees its memory pool (the RAM it gives guests) and the
    /// boot payload (read-only: `hypervisor.conf`, `config.toml`, `images/NAME`).
    pub const POOL_GPA: u64 = 0x4000_0000;
    /// Largest pool (it ends where the payload begins).
    pub const POOL_MAX_BYTES: u64 = PAYLOAD_GPA - POOL_GPA;
    pub const PAYLOAD_GPA: u64 = 0xc000_0000;
    /// Largest payload (it ends where the request slots begin).
    pub const PAYLOAD_MAX_BYTES: u64 = SLOTS_GPA - PAYLOAD_GPA;

    /// Longest kernel command line of a payload's `images/NAME.cmdline` (the x86 boot
    /// protocol's `cmdline_size` is 2047 for the 2.06+ kernels the loader takes).
    pub const MAX_CMDLINE_LEN: usize = 2047;

    /// Most boot modules a Multiboot guest may be given (`modules` in the config, a
    /// `modules=` list on its `partition=` line). Each module's string follows the
    /// command line's rule ([`is_valid_cmdline`]).
    pub const MAX_MULTIBOOT_MODULES: usize = 16;

    /// Whether `bytes` may be a kernel command line: at most [`MAX_CMDLINE_LEN`] bytes
    /// of printable ASCII. The config checks it when the payload is built, the service
    /// partition again when it reads the payload.
    #[must_use]
    pub fn is_valid_cmdline(bytes: &[u8]) -> bool {
        bytes.len() <= MAX_CMDLINE_LEN && bytes.iter().all(|&b| (0x20..=0x7e).contains(&b))
    }

    /// The control interface's data (see the hypercalls `SYSTEM_INFO` .. `VM_STOP`).
    pub mod control {
        /// `SYSTEM_INFO` items.
        pub mod info {
            /// Physical CPUs online (guest vCPUs may be pinned to 0 .. n-1).
            pub const CPUS_ONLINE: u64 = 0;
            /// Bytes of the memory pool at `POOL_GPA`.
            pub const POOL_BYTES: u64 = 1;
            /// Bytes of the boot payload at `PAYLOAD_GPA` (a ustar archive).
            pub const PAYLOAD_BYTES: u64 = 2;
            /// The machine's wall-clock time now, in Unix seconds (UTC): the CMOS RTC
            /// read at boot plus the TSC time since. `BadArgument` when the machine's
            /// clock could not be read (no RTC, or one showing no valid time).
            pub const WALL_CLOCK_SECONDS: u64 = 3;
            /// The version of the I/O request protocol the hypervisor speaks
            /// ([`crate::io_request::VERSION`]); the service partition checks it with
            /// [`crate::io_request::check_version`] before it serves anything.
            pub const IO_REQUEST_VERSION: u64 = 4;
        }

        /// Start modes of [`VcpuStartState::mode`].
        pub mod mode {
            /// 64-bit mode with paging: CR3 = `cr3`, GDTR = `gdt_base`/`gdt_limit`
            /// holding the descriptors of [`crate::start`] (CS 0x08, data 0x18).
            pub const LONG64: u32 = 0;
            /// 32-bit flat protected mode, paging off (CS 0x10, data 0x18 of the same
            /// GDT, as the boot protocol's `__BOOT_CS` and `__BOOT_DS`): Linux's 32-bit
            /// boot protocol and Multiboot.
            pub const PROTECTED32: u32 = 1;
            /// Real mode at `rip` (CS = rip >> 4, IP = rip & 0xF).
            pub const REAL16: u32 = 2;
            /// An application processor: waits for INIT and a start-up IPI.
            pub const WAIT_FOR_SIPI: u32 = 3;
        }

        /// Bytes of [`VcpuStartState`] in the service partition's memory.
        pub const START_STATE_BYTES: usize = 72;

        /// A vCPU's start state, as the service partition writes it for
        /// `VCPU_SET_STATE`: little-endian, in this field order, no padding but after
        /// `mode` (`gdt_limit` is a u32 whose high half must be 0).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct VcpuStartState {
            pub mode: u32,
            pub gdt_limit: u32,
            pub rip: u64,
            pub rsp: u64,
            pub rax: u64,
            pub rbx: u64,
            pub rsi: u64,
            pub rdi: u64,
            pub cr3: u64,
            pub gdt_base: u64,
        }

        impl VcpuStartState {
            #[must_use]
            pub fn to_bytes(&self) -> [u8; START_STATE_BYTES] {
                let mut b = [0u8; START_STATE_BYTES];
                b[0..4].copy_from_slice(&self.mode.to_le_bytes());
                b[4..8].copy_from_slice(&self.gdt_limit.to_le_bytes());
                let words = [self.rip, self.rsp, self.rax, self.rbx, self.rsi, self.rdi, self.cr3, self.gdt_base];
                for (i, w) in words.iter().enumerate() {
                    b[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
                }
                b
            }

            #[must_use]
            pub fn from_bytes(b: &[u8; START_STATE_BYTES]) -> Self {
                let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                let u64_at = |i: usize| {
                    u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]])
                };
                Self {
                    mode: u32_at(0),
                    gdt_limit: u32_at(4),
                    rip: u64_at(8),
                    rsp: u64_at(16),
                    rax: u64_at(24),
                    rbx: u64_at(32),
                    rsi: u64_at(40),
                    rdi: u64_at(48),
                    cr3: u64_at(56),
                    gdt_base: u64_at(64),
                }
            }
        }
    }

    /// Console input (`SERVICE_CONSOLE_READ`): the physical console's input goes to one
    /// guest partition with a UART (`com1`) at a time, its *focus*. The service partition
    /// polls for it and feeds the bytes to that guest's UART receiver, keeping what the
    /// receiver cannot take yet.
    pub mod console {
        use super::VmId;

        /// Most bytes one `SERVICE_CONSOLE_READ` returns.
        pub const READ_MAX: u64 = 64;
        /// RDX of `SERVICE_CONSOLE_READ`: the caller takes input for any guest.
        pub const ANY_TARGET: u64 = u64::MAX;
        /// Result bit: bits 16..48 hold the target VmId (clear: no guest takes input).
        pub const TARGET_VALID: u64 = 1 << 48;

        /// The result of `SERVICE_CONSOLE_READ`: `count` (bits 0..16, at most
        /// [`READ_MAX`]), the target's VmId (bits 16..48) and [`TARGET_VALID`]. Never
        /// negative, so never mistaken for an error.
        #[must_use]
        pub const fn encode(count: u16, target: Option<VmId>) -> u64 {
            match target {
                Some(id) => count as u64 | (id.0 as u64) << 16 | TARGET_VALID,
                None => count as u64,
            }
        }

        /// `(count, target)` from a successful result (`None` for an error value).
        #[must_use]
        pub fn decode(rax: u64) -> Option<(usize, Option<VmId>)> {
            if (rax as i64) < 0 {
                return None;
            }
            let count = (rax & 0xffff) as usize;
            let target = (rax & TARGET_VALID != 0).then_some(VmId((rax >> 16) as u32));
            Some((count, target))
        }
    }

    /// `GUEST_POWER` actions.
    pub mod power {
        /// Power off (ACPI S5, `isa-debug-exit`): RDX = exit code.
        pub const OFF: u64 = 0;
        /// System reset (0xCF9, keyboard controller).
        pub const RESET: u64 = 1;
    }
}

/// Guest-side wrappers (used by test guests; compiled everywhere, only called in
/// VMX non-root mode).
pub mod guest {
    /// Issues a hypercall.
    ///
    /// # Safety
    /// Must run in a guest of this hypervisor (VMCALL elsewhere raises #UD), and any
    /// pointer arguments must describe memory the hypervisor may read or write.
    #[inline(always)]
    pub unsafe fn hypercall(nr: u64, a: u64, b: u64, c: u64, d: u64) -> u64 {
        let ret: u64;
        // SAFETY: VMCALL traps to the hypervisor, which only touches the registers named
        // here and, for pointer arguments, the memory the caller vouched for. RBX is
        // reserved by LLVM, so it is swapped in and out around the call.
        unsafe {
            core::arch::asm!(
                "xchg rbx, {a}",
                "vmcall",
                "xchg rbx, {a}",
                a = inout(reg) a => _,
                inout("rax") nr => ret,
                in("rcx") b,
                in("rdx") c,
                in("rsi") d,
                options(nostack),
            );
        }
        ret
    }
}

#[cfg(test)]
mod tests {
    use super::io_request::{check_version, VersionMismatch, VERSION};
    use super::platform::devices::{DeviceSet, ALL};
    use super::service::{slot_index, VmId, MAX_VCPUS_PER_VM, SLOTS};

    #[test]
    fn port_ranges_are_the_claimed_ports() {
        let sets = ALL.iter().filter_map(|d| DeviceSet::default().with(d.name)).chain([DeviceSet::PC]);
        for set in sets {
            let mut claimed = [false; 0x1_0000];
            for (first, last) in set.port_ranges() {
                for port in first..=last {
                    claimed[usize::from(port)] = true;
                }
            }
            for port in 0..=u16::MAX {
                assert_eq!(claimed[usize::from(port)], set.claims_port(port), "{set:?} port {port:#x}");
            }
        }
    }

    #[test]
    fn slot_words_are_the_slot_bytes() {
        use super::io_request::IoRequestSlot;
        let slot = IoRequestSlot {
            sequence: 0x0102_0304_0506_0708,
            address: 0x3fd,
            data: 0xdead_beef,
            vm: 0x0001_0002,
            vcpu: 3,
            kind: 1,
            size: 4,
            direction: 1,
            status: 1,
            reserved: 0x55,
        };
        let bytes = slot.to_bytes();
        for (i, word) in slot.to_words().iter().enumerate() {
            assert_eq!(word.to_le_bytes(), bytes[i * 8..i * 8 + 8], "word {i}");
        }
        assert_eq!(IoRequestSlot::from_bytes(&bytes), slot);
        assert_eq!(IoRequestSlot::from_words(slot.to_words()), slot);
    }

    #[test]
    fn device_sets_claim_their_ports_only() {
        let com1 = DeviceSet::default().with("com1").unwrap();
        assert!(com1.claims_port(0x3f8) && com1.claims_port(0x3ff));
        assert!(!com1.claims_port(0x3f7) && !com1.claims_port(0x400) && !com1.claims_port(0x40));
        let pc = DeviceSet::default().with("pc").unwrap();
        assert_eq!(pc, DeviceSet::PC);
        for d in ALL {
            for &(first, last) in d.ports {
                assert!(first <= last, "{}", d.name);
                assert_eq!(pc.claims_port(first) && pc.claims_port(last), d.pc, "{}", d.name);
            }
        }
        assert!(!pc.claims_port(0x1234));
        assert!(!pc.claims_port(0xf6), "the fault-test port is not part of the PC");
        assert!(DeviceSet::default().with("svc-fault-test").unwrap().claims_port(0xf6));
        assert!(!pc.claims_port(0xf8), "the delay-test port is not part of the PC");
        assert!(DeviceSet::default().with("delay-test").unwrap().claims_port(0xf8));
        let mmio = DeviceSet::default().with("mmio-test").unwrap();
        assert!(mmio.claims_mmio(0xfeb0_0000) && mmio.claims_mmio(0xfeb0_0fff) && !mmio.claims_mmio(0xfeb0_1000));
        assert!(!pc.claims_mmio(0xfeb0_0000) && !mmio.claims_port(0xfeb0));
        assert_eq!(DeviceSet::default().with("floppy"), None);
        assert!(DeviceSet::default().is_empty());
    }

    #[test]
    fn start_states_round_trip_through_bytes() {
        use super::service::control::VcpuStartState;
        let s = VcpuStartState {
            mode: 1,
            gdt_limit: 39,
            rip: 1,
            rsp: 2,
            rax: 3,
            rbx: 4,
            rsi: 5,
            rdi: 6,
            cr3: 7,
            gdt_base: 8,
        };
        assert_eq!(VcpuStartState::from_bytes(&s.to_bytes()), s);
        assert_eq!(s.to_bytes()[8], 1);
        assert_eq!(s.to_bytes()[64], 8);
    }

    #[test]
    fn console_read_results_round_trip() {
        use super::service::console::{decode, encode, READ_MAX};
        let id = VmId::new(15, 0xffff);
        assert_eq!(decode(encode(READ_MAX as u16, Some(id))), Some((64, Some(id))));
        assert_eq!(decode(encode(0, Some(VmId(0)))), Some((0, Some(VmId(0)))));
        assert_eq!(decode(encode(3, None)), Some((3, None)));
        assert!((encode(64, Some(VmId(u32::MAX))) as i64) >= 0);
        assert_eq!(decode(super::Error::BadLength.to_rax()), None);
    }

    #[test]
    fn slot_indices_cover_the_array_exactly() {
        assert_eq!(slot_index(0, 0), Some(0));
        assert_eq!(slot_index(15, MAX_VCPUS_PER_VM - 1), Some(SLOTS - 1));
        assert_eq!(slot_index(16, 0), None);
        assert_eq!(slot_index(0, MAX_VCPUS_PER_VM), None);
        let id = VmId::new(3, 0x1_0007);
        assert_eq!((id.index(), id.generation_low()), (3, 7));
    }

    #[test]
    fn io_request_version_must_match_exactly() {
        assert_eq!(check_version(u64::from(VERSION)), Ok(()));
        assert_eq!(check_version(u64::from(VERSION) - 1), Err(VersionMismatch::Other(u64::from(VERSION) - 1)));
        assert_eq!(check_version(u64::from(VERSION) + 1), Err(VersionMismatch::Other(u64::from(VERSION) + 1)));
        // An older hypervisor refuses the unknown item.
        assert_eq!(check_version(crate::Error::BadArgument.to_rax()), Err(VersionMismatch::Unknown));
        assert_eq!(check_version(crate::Error::NotPermitted.to_rax()), Err(VersionMismatch::Unknown));
    }
}
