//! The hypervisor's console: every log line goes to the 16550 serial port (COM1) and,
//! when the firmware gave us one, to the boot framebuffer as text. Many real machines
//! have no serial port, so the screen matters as much as the serial line.

pub mod framebuffer;
pub mod input;
pub mod serial;

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};

use spin::Mutex;

use framebuffer::FramebufferConsole;
use hv_core::boot_conf::LogLevel;

struct Sinks {
    serial: serial::Serial,
    screen: Option<FramebufferConsole>,
}

impl Write for Sinks {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.serial.write_str(s)?;
        if let Some(screen) = &mut self.screen {
            screen.write_str(s)?;
        }
        Ok(())
    }
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks { serial: serial::Serial::com1(), screen: None });
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() as u8 <= LEVEL.load(Ordering::Relaxed) + 1
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Libraries' own messages (e.g. tar-no-std reporting the archive's end blocks
        // as an error) are diagnostics for us, not the user: show them at debug level.
        if !record.target().starts_with("hypervisor") && LEVEL.load(Ordering::Relaxed) < LogLevel::Debug as u8 {
            return;
        }
        let prefix = match record.level() {
            log::Level::Error => "ERROR: ",
            log::Level::Warn => "WARN: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        let mut sinks = SINKS.lock();
        let _ = write!(sinks, "{prefix}{}\r\n", record.args());
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Sets up the serial port and the `log` facade. Called first thing on the BSP.
pub fn init() {
    SINKS.lock().serial.init();
    // A second call cannot happen (BSP only, once); ignore the error rather than panic.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
}

/// Writes a partition's console output, each line prefixed with `[name] `. Terminal
/// control sequences are dropped, CR is dropped (LF ends a line), and the other bytes
/// that are not printable ASCII (or tab, backspace) are shown as `.`, so a guest cannot
/// control the user's terminal.
///
/// `line_start` and `filter_state` are the partition's own "next byte starts a line"
/// and control-sequence states, kept across calls (a guest may write one line in
/// several pieces).
pub fn write_partition_output(
    name: &str,
    bytes: &[u8],
    line_start: &core::sync::atomic::AtomicBool,
    filter_state: &AtomicU8,
    created_tsc: u64,
) {
    let stamp = TIMESTAMPS.load(Ordering::Relaxed).then(|| crate::arch::tsc::now().wrapping_sub(created_tsc));
    let mut sinks = SINKS.lock();
    let mut at_start = line_start.load(Ordering::Relaxed);
    let mut filter = hv_core::console_output::ControlFilter::from_u8(filter_state.load(Ordering::Relaxed));
    for &b in bytes {
        // Serial drivers send CR LF; the LF below ends the line (and prints CR LF).
        // Terminal control sequences are dropped (hv_core::console_output).
        if b == b'\r' || !filter.keep(b) {
            continue;
        }
        if at_start {
            // Plain writes, no formatting machinery: this runs on the hypercall path.
            let _ = sinks.write_str("[");
            let _ = sinks.write_str(name);
            if let Some(ticks) = stamp {
                let _ = write!(sinks, " +{ticks}");
            }
            let _ = sinks.write_str("] ");
            at_start = false;
        }
        match b {
            b'\n' => {
                let _ = sinks.write_str("\r\n");
                at_start = true;
            }
            b'\t' | 0x08 | 0x20..=0x7e => {
                let _ = sinks.write_char(b as char);
            }
            _ => {
                let _ = sinks.write_char('.');
            }
        }
    }
    line_start.store(at_start, Ordering::Relaxed);
    filter_state.store(filter.to_u8(), Ordering::Relaxed);
}

/// Whether partition console lines carry TSC stamps (`console_timestamps=on`).
static TIMESTAMPS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Turns the TSC stamps of partition console lines on or off (from `hypervisor.conf`):
/// `[name +TICKS] `, TICKS since the partition was created, taken when the write
/// arrives (the guest's byte reaches the console synchronously through the service
/// partition, so it is the guest's time of writing within one request).
pub fn set_timestamps(on: bool) {
    TIMESTAMPS.store(on, Ordering::Relaxed);
}

/// Waits until the serial port has sent everything (before power-off).
pub fn drain() {
    if let Some(mut sinks) = SINKS.try_lock() {
        sinks.serial.drain();
    }
}

/// Adds the framebuffer as a second sink.
pub fn attach_screen(screen: FramebufferConsole) {
    SINKS.lock().screen = Some(screen);
}

/// Sets the level threshold (from `hypervisor.conf`).
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Writes a multi-line block (e.g. the pre-flight report) without interleaving with
/// other CPUs' lines.
pub fn write_block(f: impl FnOnce(&mut dyn Write) -> fmt::Result) {
    let mut sinks = SINKS.lock();
    let mut crlf = CrLf(&mut *sinks);
    let _ = f(&mut crlf);
}

/// Translates `\n` into `\r\n` for terminals on the serial line.
struct CrLf<'a>(&'a mut dyn Write);

impl Write for CrLf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                self.0.write_str("\r\n")?;
            }
            self.0.write_str(part)?;
        }
        Ok(())
    }
}

/// Writes a fatal message even when the console lock is held, e.g. by the CPU that is
/// now panicking inside a log call, or by a CPU that died holding it. Waits a bounded
/// time for the lock, then takes it by force: a garbled line beats a silent hang.
pub fn write_fatal(args: fmt::Arguments<'_>) {
    let mut spins = 0u32;
    let mut guard = loop {
        if let Some(g) = SINKS.try_lock() {
            break g;
        }
        spins += 1;
        if spins > 10_000_000 {
            // SAFETY: the holder is stuck (it is this CPU, or a CPU that faulted while
            // holding the lock); console state is plain data that tolerates a torn write.
            unsafe { SINKS.force_unlock() };
        }
        core::hint::spin_loop();
    };
    let mut crlf = CrLf(&mut *guard);
    let _ = crlf.write_fmt(args);
}
