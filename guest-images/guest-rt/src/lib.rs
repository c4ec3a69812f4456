//! The runtime of the test guests: console output through the `CONSOLE_WRITE`
//! hypercall, `PASS`/`FAIL` verdict lines that the scenarios judge, stopping the
//! partition, and a panic handler that reports `FAIL` and stops.
#![no_std]

use core::fmt::{self, Write};

pub use hv_abi;
use hv_abi::{guest::hypercall, hypercall as hc};

/// The console, as a `fmt::Write` target.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(hv_abi::CONSOLE_WRITE_MAX as usize) {
            // SAFETY: runs in a guest of this hypervisor; the pointer and length describe
            // `chunk`, which lives in the guest's identity-mapped RAM.
            unsafe { hypercall(hc::CONSOLE_WRITE, chunk.as_ptr() as u64, chunk.len() as u64, 0, 0) };
        }
        Ok(())
    }
}

/// A line being formatted: sent in one hypercall when full or dropped.
pub struct LineBuffer {
    buf: [u8; hv_abi::CONSOLE_WRITE_MAX as usize],
    len: usize,
}

impl LineBuffer {
    pub const fn new() -> Self {
        Self { buf: [0; hv_abi::CONSOLE_WRITE_MAX as usize], len: 0 }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            // Console::write_str never fails.
            let _ = Console.write_str(core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?"));
            self.len = 0;
        }
    }
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Prints a line to the hypervisor console (one hypercall per line when it fits).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut line = $crate::LineBuffer::new();
        let _ = writeln!(line, $($arg)*);
    }};
}

/// Issues a raw hypercall (for tests of the hypercall interface itself).
pub fn raw_hypercall(nr: u64, a: u64, b: u64, c: u64, d: u64) -> u64 {
    // SAFETY: runs in a guest of this hypervisor; a bad pointer argument is exactly
    // what some tests pass on purpose, and the hypervisor validates it.
    unsafe { hypercall(nr, a, b, c, d) }
}

/// This vCPU's id.
pub fn vcpu_id() -> u64 {
    raw_hypercall(hc::VCPU_ID, 0, 0, 0, 0)
}

/// Stops the partition with `code`.
pub fn stop(code: u64) -> ! {
    raw_hypercall(hc::PARTITION_STOP, code, 0, 0, 0);
    // PARTITION_STOP does not return; if it ever did, spin without exits.
    loop {
        core::hint::spin_loop();
    }
}

/// Records one check: prints `PASS name: what` or `FAIL name: what` and returns `ok`.
pub fn check(name: &str, what: &str, ok: bool) -> bool {
    println!("{} {name}: {what}", if ok { "PASS" } else { "FAIL" });
    ok
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("FAIL guest panic: {info}");
    stop(1)
}
