//! The pre-flight report: whether this machine can host guests, at a glance.
//!
//! Someone booting an unknown machine from USB reads this on the screen, so each line
//! is one feature marked yes/no, and the last line is the verdict with the reason.

use core::fmt::{self, Write};

use crate::cpu_features::CpuFeatures;
use crate::vmx_caps::VmxCapabilities;

/// Why VMX cannot be used on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmxUnavailable {
    /// Not an Intel CPU: VT-x is Intel's.
    NotIntel,
    /// CPUID.1:ECX.VMX is clear.
    NotReported { under_hypervisor: bool },
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled.
    LockedOffByFirmware,
    /// VMXON failed even though everything looked right.
    VmxonFailed,
}

impl VmxUnavailable {
    /// A short reason.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotIntel => "not an Intel CPU (VT-x is required)",
            Self::NotReported { under_hypervisor: true } => {
                "the CPU does not report VMX (CPUID.1:ECX.VMX = 0); this machine is virtual and its hypervisor does not pass VMX through"
            }
            Self::NotReported { under_hypervisor: false } => "the CPU does not report VMX (CPUID.1:ECX.VMX = 0)",
            Self::LockedOffByFirmware => "the firmware locked VMX off (IA32_FEATURE_CONTROL locked, VMX-outside-SMX = 0)",
            Self::VmxonFailed => "VMXON failed",
        }
    }

    /// What the user can do about it.
    #[must_use]
    pub fn fix(&self) -> &'static str {
        match self {
            Self::NotIntel => "run on an Intel CPU with VT-x",
            Self::NotReported { under_hypervisor: true } => {
                "enable nested virtualisation on the host (kvm_intel nested=1, QEMU -enable-kvm -cpu host) or run under Bochs"
            }
            Self::NotReported { under_hypervisor: false } | Self::LockedOffByFirmware => {
                "enable Intel Virtualization Technology (VT-x) in the firmware setup, then power-cycle the machine"
            }
            Self::VmxonFailed => "check the firmware's VT-x setting and report this machine's log",
        }
    }
}

/// Where the CPU count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSource {
    Madt,
    /// No ACPI tables: INIT-SIPI-SIPI broadcast and counted check-ins.
    Broadcast,
}

/// Everything the report shows.
#[derive(Debug, Clone, Copy)]
pub struct Preflight<'a> {
    pub cpu: &'a CpuFeatures,
    pub cpus_found: u32,
    pub cpu_source: CpuSource,
    /// `Ok` with the decoded capabilities, or why VMX cannot be used.
    pub vmx: Result<&'a VmxCapabilities, VmxUnavailable>,
    pub acpi: bool,
    pub dmar: bool,
    pub tsc_hz: u64,
}

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl Preflight<'_> {
    /// The verdict: `Ok(())` when guests can run, otherwise what is missing.
    pub fn verdict(&self) -> Result<(), &'static str> {
        match self.vmx {
            Err(e) => Err(e.reason()),
            Ok(caps) => caps.missing_for_guests().map_or(Ok(()), Err),
        }
    }

    /// Writes the report, one line per item, each line prefixed with `preflight: `.
    pub fn render<W: Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        let caps = self.vmx.ok();
        let cap = |f: fn(&VmxCapabilities) -> bool| yn(caps.is_some_and(f));
        let p = "preflight:";
        writeln!(
            out,
            "{p} cpu             {} (family {:#x} model {:#x} stepping {})",
            self.cpu.brand, self.cpu.family, self.cpu.model, self.cpu.stepping
        )?;
        let source = match self.cpu_source {
            CpuSource::Madt => "ACPI MADT",
            CpuSource::Broadcast => "no ACPI tables: INIT-SIPI-SIPI broadcast",
        };
        writeln!(out, "{p} cores found     {} ({source})", self.cpus_found)?;
        match self.vmx {
            Ok(_) => writeln!(out, "{p} vmx             yes")?,
            Err(e) => writeln!(out, "{p} vmx             no: {}", e.reason())?,
        }
        writeln!(out, "{p} ept             {}", cap(|c| c.ept))?;
        writeln!(
            out,
            "{p} ept large pages {} (2M {}, 1G {})",
            cap(|c| c.ept_2m || c.ept_1g),
            cap(|c| c.ept_2m),
            cap(|c| c.ept_1g)
        )?;
        writeln!(out, "{p} vpid            {}", cap(|c| c.vpid))?;
        writeln!(out, "{p} unrestricted    {}", cap(|c| c.unrestricted_guest))?;
        writeln!(
            out,
            "{p} apicv           {} (virtual-interrupt delivery {}, posted interrupts {})",
            cap(VmxCapabilities::apicv),
            cap(|c| c.virtual_interrupt_delivery),
            cap(|c| c.posted_interrupts)
        )?;
        writeln!(out, "{p} preempt timer   {}", cap(|c| c.preemption_timer))?;
        writeln!(out, "{p} tsc-deadline    {}", yn(self.cpu.tsc_deadline))?;
        writeln!(out, "{p} x2apic          {}", yn(self.cpu.x2apic))?;
        writeln!(out, "{p} invariant tsc   {} ({} MHz)", yn(self.cpu.invariant_tsc), self.tsc_hz / 1_000_000)?;
        writeln!(out, "{p} acpi tables     {}", yn(self.acpi))?;
        writeln!(out, "{p} dmar (vt-d)     {}", yn(self.dmar))?;
        match self.verdict() {
            Ok(()) => writeln!(out, "{p} verdict         this machine can host guests"),
            Err(why) => writeln!(out, "{p} verdict         this machine cannot host guests: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn caps() -> VmxCapabilities {
        VmxCapabilities {
            ept: true,
            ept_walk_wb: true,
            invept: true,
            unrestricted_guest: true,
            ept_2m: true,
            vpid: true,
            ..Default::default()
        }
    }

    #[test]
    fn capable_machine_report() {
        let cpu = CpuFeatures { x2apic: true, tsc_deadline: true, ..Default::default() };
        let c = caps();
        let p = Preflight {
            cpu: &cpu,
            cpus_found: 4,
            cpu_source: CpuSource::Broadcast,
            vmx: Ok(&c),
            acpi: false,
            dmar: false,
            tsc_hz: 2_000_000_000,
        };
        let mut s = String::new();
        p.render(&mut s).unwrap();
        assert!(s.contains("preflight: cores found     4 (no ACPI tables: INIT-SIPI-SIPI broadcast)"), "{s}");
        assert!(s.contains("preflight: vmx             yes"));
        assert!(s.contains("preflight: ept large pages yes (2M yes, 1G no)"));
        assert!(s.contains("preflight: x2apic          yes"));
        assert!(s.contains("preflight: invariant tsc   no (2000 MHz)"));
        assert!(s.ends_with("preflight: verdict         this machine can host guests\n"));
        assert_eq!(s.lines().count(), 15);
    }

    #[test]
    fn no_vmx_report_names_reason() {
        let cpu = CpuFeatures::default();
        let why = VmxUnavailable::NotReported { under_hypervisor: true };
        let p = Preflight {
            cpu: &cpu,
            cpus_found: 2,
            cpu_source: CpuSource::Madt,
            vmx: Err(why),
            acpi: true,
            dmar: false,
            tsc_hz: 0,
        };
        let mut s = String::new();
        p.render(&mut s).unwrap();
        assert!(s.contains("preflight: vmx             no: the CPU does not report VMX"));
        assert!(s.contains("preflight: ept             no"));
        assert!(s.contains("cannot host guests: the CPU does not report VMX"));
        assert!(why.fix().contains("nested"));
    }

    #[test]
    fn vmx_without_ept_cannot_host_guests() {
        let cpu = CpuFeatures::default();
        let c = VmxCapabilities::default();
        let p = Preflight {
            cpu: &cpu,
            cpus_found: 1,
            cpu_source: CpuSource::Madt,
            vmx: Ok(&c),
            acpi: true,
            dmar: true,
            tsc_hz: 0,
        };
        assert_eq!(p.verdict(), Err("EPT"));
    }
}
