//! Starting Bochs and QEMU on a disk image, following their serial log and ending them.
//!
//! Every emulator runs in its own process group (so a time-out can kill it together with
//! the `script` wrapper Bochs runs under) and COM1's output ends up in `serial.log` in
//! its run directory, which the caller follows while it grows. COM1 is either a file the
//! emulator writes ([`Com1::File`], output only), or, for runs that type input, a TCP
//! connection on the loopback interface that the emulator opens to the harness
//! ([`Com1::Socket`], Bochs `mode=socket-client`, QEMU `-serial tcp:`): a
//! [`SerialBridge`] thread copies what arrives into `serial.log` and sends the input.

use crate::judge::{is_fatal_line, Ending};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// OVMF build for Bochs (Debian package `ovmf`).
pub const OVMF_FD: &str = "/usr/share/ovmf/OVMF.fd";
/// OVMF code flash for QEMU (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// OVMF variable store template for QEMU (Debian package `ovmf`).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// VGA BIOS for Bochs (Debian package `vgabios`).
pub const VGABIOS: &str = "/usr/share/vgabios/vgabios-stdvga.bin";

/// Where Bochs' clock (the machine's CMOS RTC) starts: 2026-07-01T12:00:00Z, in Unix
/// seconds. A fixed start makes runs repeatable; `guest-rtc` checks that its RTC shows
/// this date, read by the hypervisor from the machine's RTC. Bochs shows it in the
/// local time zone of its process, which [`command`] sets to UTC.
pub const BOCHS_CLOCK_START: u64 = 1_782_907_200;

/// Bochs instructions per emulated second. With `clock: sync=none` this sets how fast
/// emulated time passes per instruction: the lower it is, the fewer instructions a
/// firmware or kernel delay costs, but also the fewer instructions other CPUs execute
/// during a delay the kernel measures in time (its wait for application processors).
/// Measured here (wall s, two scenarios at a time):
/// - OVMF to the kernel's first line, 1 CPU: 4 M 9.3, 10 M 11.5, 50 M 9.8, 200 M 11.1;
/// - `boot-1cpu` with the real kernel: 4 M 14.0, 50 M 14.1, 100 M 14.8, 200 M 18.1;
/// - `boot-4cpu`: 4 M and 20 M fail (only 2 of 4 CPUs check in before the kernel stops
///   waiting), 50 M passes (24-32 s), 100 M passes (25.4 s).
///
/// 100 M keeps the firmware fast and leaves the application processors enough
/// instructions. `HV_BOCHS_IPS` overrides it.
pub const BOCHS_IPS: u64 = 100_000_000;

/// The Bochs ips to use: `HV_BOCHS_IPS` from the environment, else [`BOCHS_IPS`].
pub fn bochs_ips() -> u64 {
    std::env::var("HV_BOCHS_IPS").ok().and_then(|v| v.trim().parse().ok()).filter(|&v| v > 0).unwrap_or(BOCHS_IPS)
}

/// Name of the serial log in a run directory.
pub const SERIAL_LOG: &str = "serial.log";
/// Name of the disk image copy in a run directory.
pub const IMAGE_NAME: &str = "hypervisor.img";

/// The machine to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Machine {
    /// Bochs with OVMF; emulates VMX.
    Bochs {
        /// Bochs CPU model, e.g. `corei7_icelake_u`.
        model: String,
        /// Number of CPUs.
        cpus: u32,
        /// Instructions per emulated second.
        ips: u64,
        /// Memory in MiB.
        memory_mib: u32,
    },
    /// QEMU (q35) with OVMF.
    Qemu {
        /// Number of CPUs.
        cpus: u32,
        /// Use KVM with `-cpu host` (nested VMX) instead of TCG.
        kvm: bool,
        /// Memory in MiB.
        memory_mib: u32,
    },
}

/// Where the emulated machine's COM1 goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Com1 {
    /// The emulator writes it to `serial.log` (output only).
    #[default]
    File,
    /// The emulator connects to the harness at `127.0.0.1:PORT` (input and output; see
    /// [`SerialBridge`]).
    Socket(u16),
}

/// A prepared run directory: a private copy of the image plus generated files.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory.
    pub dir: PathBuf,
    /// Notes worth telling the user (e.g. a stale lock file was removed).
    pub notes: Vec<String>,
    /// Where COM1 goes.
    pub com1: Com1,
}

impl RunDir {
    /// Path of the serial log.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join(SERIAL_LOG)
    }

    /// Path of the image copy.
    pub fn image(&self) -> PathBuf {
        self.dir.join(IMAGE_NAME)
    }
}

/// Creates (or cleans) `dir`, copies `image` into it and writes the emulator's files,
/// with COM1 written to `serial.log`.
///
/// A `hypervisor.img.lock` left by a killed Bochs is removed (and noted), as are the logs
/// of the previous run.
pub fn prepare(dir: &Path, image: &Path, machine: &Machine) -> std::io::Result<RunDir> {
    prepare_with(dir, image, machine, Com1::File)
}

/// [`prepare`] with COM1 going to `com1`.
pub fn prepare_with(dir: &Path, image: &Path, machine: &Machine, com1: Com1) -> std::io::Result<RunDir> {
    std::fs::create_dir_all(dir)?;
    let mut notes = Vec::new();
    let lock = dir.join(format!("{IMAGE_NAME}.lock"));
    if lock.exists() {
        std::fs::remove_file(&lock)?;
        notes.push(format!("removed stale Bochs lock file {}", lock.display()));
    }
    for old in [SERIAL_LOG, "bochs.log", "terminal.log", "qemu.log", "OVMF_VARS.fd"] {
        match std::fs::remove_file(dir.join(old)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    if !image.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("disk image {} does not exist; build it with `cargo xtask build`", image.display()),
        ));
    }
    std::fs::copy(image, dir.join(IMAGE_NAME))?;
    // Create the log so followers can open it before the emulator does.
    File::create(dir.join(SERIAL_LOG))?;
    match machine {
        Machine::Bochs { model, cpus, ips, memory_mib } => {
            std::fs::write(dir.join("bochsrc"), bochsrc_with(dir, model, *cpus, *ips, *memory_mib, com1))?;
            // The Debian build has the internal debugger: `c` continues at once.
            std::fs::write(dir.join("bochs.rc"), "c\n")?;
        }
        Machine::Qemu { .. } => {
            std::fs::copy(OVMF_VARS, dir.join("OVMF_VARS.fd"))?;
        }
    }
    Ok(RunDir { dir: dir.to_path_buf(), notes, com1 })
}

/// Memory of the emulated machine for a config whose partitions have `partitions_mib`
/// MiB of RAM in all (the service partition's pool holds the guests' RAM) and whose boot
/// payload has `payload_bytes`: 192 MiB for the firmware and the hypervisor, the
/// partitions' RAM, twice the payload (the ramdisk and the service partition's copy),
/// rounded up to 64 MiB and at least 256 MiB.
#[must_use]
pub fn memory_for(partitions_mib: u64, payload_bytes: u64) -> u32 {
    let payload_mib = payload_bytes.div_ceil(1 << 20);
    let need = 192 + partitions_mib + 2 * payload_mib;
    u32::try_from(need.div_ceil(64) * 64).unwrap_or(u32::MAX).max(256)
}

impl Machine {
    /// The same machine with `memory_mib` MiB of memory.
    #[must_use]
    pub fn with_memory(self, mib: u32) -> Machine {
        match self {
            Machine::Bochs { model, cpus, ips, .. } => Machine::Bochs { model, cpus, ips, memory_mib: mib },
            Machine::Qemu { cpus, kvm, .. } => Machine::Qemu { cpus, kvm, memory_mib: mib },
        }
    }
}

/// The Bochs configuration for a run in `dir`, COM1 written to `serial.log`.
pub fn bochsrc(dir: &Path, model: &str, cpus: u32, ips: u64, memory_mib: u32) -> String {
    bochsrc_with(dir, model, cpus, ips, memory_mib, Com1::File)
}

/// The Bochs configuration for a run in `dir` with COM1 going to `com1`. Bochs 2.7's
/// `socket-client` mode connects once, at start-up, and reads a received byte only while
/// its receiver is empty (so input is never overrun, however fast the harness sends).
pub fn bochsrc_with(dir: &Path, model: &str, cpus: u32, ips: u64, memory_mib: u32, com1: Com1) -> String {
    let d = dir.display();
    let com1 = match com1 {
        Com1::File => format!("mode=file, dev={d}/{SERIAL_LOG}"),
        Com1::Socket(port) => format!("mode=socket-client, dev=127.0.0.1:{port}"),
    };
    format!(
        "# Generated by hv-tests; see tests/src/emulator.rs.\n\
         megs: {memory_mib}\n\
         romimage: file={OVMF_FD}\n\
         vgaromimage: file={VGABIOS}\n\
         vga: extension=vbe\n\
         pci: enabled=1, chipset=i440fx, slot1=pcivga\n\
         cpu: model={model}, count={cpus}, ips={ips}, reset_on_triple_fault=0\n\
         ata0-master: type=disk, path={d}/{IMAGE_NAME}, mode=flat\n\
         boot: disk\n\
         com1: enabled=1, {com1}\n\
         port_e9_hack: enabled=1\n\
         clock: sync=none, time0={BOCHS_CLOCK_START}\n\
         display_library: term\n\
         log: {d}/bochs.log\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n"
    )
}

/// The command line that starts `machine` in the prepared `run` directory.
pub fn command(run: &RunDir, machine: &Machine) -> Command {
    let d = &run.dir;
    match machine {
        Machine::Bochs { .. } => {
            // Bochs' `term` display needs a terminal: `script` provides a pseudo-terminal.
            let inner = format!("bochs -q -f '{}' -rc '{}'", d.join("bochsrc").display(), d.join("bochs.rc").display());
            let mut cmd = Command::new("script");
            cmd.arg("-qec").arg(inner).arg("/dev/null");
            // Bochs shows `time0` in its local time zone: UTC, as the guests expect.
            cmd.env("TZ", "UTC");
            cmd
        }
        Machine::Qemu { cpus, kvm, memory_mib } => {
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args(["-machine", "q35"]).args(["-smp", &cpus.to_string()]).args(["-m", &format!("{memory_mib}M")]);
            if *kvm {
                cmd.args(["-enable-kvm", "-cpu", "host"]);
            } else {
                // An Intel model: TCG strips VMX from it, which is the no-VMX path we
                // want (QEMU's default model is AMD-branded). TCG's warnings about
                // other features it lacks go to stderr.
                cmd.args(["-cpu", "Skylake-Client"]);
            }
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", d.join("OVMF_VARS.fd").display()))
                .arg("-drive")
                .arg(format!("format=raw,file={}", run.image().display()))
                .args(["-display", "none", "-no-reboot", "-monitor", "none"])
                .arg("-serial")
                .arg(match run.com1 {
                    Com1::File => format!("file:{}", run.serial_log().display()),
                    Com1::Socket(port) => format!("tcp:127.0.0.1:{port}"),
                })
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
            cmd
        }
    }
}

/// A started emulator.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// Process group id (= the emulator's pid).
    pub pgid: u32,
    run: RunDir,
    started: Instant,
    /// The COM1 connection, for runs with [`Com1::Socket`].
    bridge: Option<Bridge>,
    /// The text a scripted input step was still waiting for when the run ended.
    input_waiting_for: Option<String>,
}

/// Options for [`Running::wait`].
#[derive(Debug, Default)]
pub struct WaitOptions<'a> {
    /// Kill the emulator after this long (`None`: wait forever).
    pub timeout: Option<Duration>,
    /// Stop the emulator (gracefully) when this becomes true.
    pub stop: Option<&'a AtomicBool>,
    /// End the run a moment after a fatal line appears in the serial log.
    pub cut_short_on_fatal: bool,
    /// Scripted console input (see [`InputScript`]); needs a run started with
    /// [`start_with_bridge`].
    pub input: &'a [(String, String)],
}

/// Scripted console input: steps of (text, bytes). Step by step, once the serial log
/// contains the step's text (anywhere in the whole log), its bytes are typed; the next
/// step waits until then.
#[derive(Debug, Clone)]
pub struct InputScript {
    steps: Vec<(String, Vec<u8>)>,
    next: usize,
}

impl InputScript {
    /// The script of `steps` (text to wait for, bytes to type).
    pub fn new(steps: &[(String, String)]) -> Self {
        InputScript { steps: steps.iter().map(|(t, b)| (t.clone(), b.clone().into_bytes())).collect(), next: 0 }
    }

    /// The inputs that are due now that the serial log reads `log`, in order; each step
    /// is returned once (a step without bytes only orders the ones after it).
    pub fn due(&mut self, log: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((text, bytes)) = self.steps.get(self.next) {
            if !log.contains(text.as_str()) {
                break;
            }
            if !bytes.is_empty() {
                out.push(bytes.clone());
            }
            self.next += 1;
        }
        out
    }

    /// The text the next step waits for (`None`: every step is done).
    pub fn waiting_for(&self) -> Option<&str> {
        self.steps.get(self.next).map(|(t, _)| t.as_str())
    }
}

/// The harness end of a [`Com1::Socket`] run: a listening TCP socket on the loopback
/// interface (port chosen by the system), to which the emulator connects at start-up.
#[derive(Debug)]
pub struct SerialBridge {
    listener: TcpListener,
    port: u16,
}

impl SerialBridge {
    /// Listens on `127.0.0.1`, on a free port.
    pub fn listen() -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        Ok(SerialBridge { listener, port })
    }

    /// The port the emulator must connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The COM1 setting for the emulator.
    pub fn com1(&self) -> Com1 {
        Com1::Socket(self.port)
    }
}

/// Sends console input into a running emulator's COM1 (clonable, for other threads).
#[derive(Debug, Clone)]
pub struct InputSender(mpsc::Sender<Vec<u8>>);

impl InputSender {
    /// Queues `bytes` for COM1; false when the connection is gone.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        self.0.send(bytes).is_ok()
    }
}

/// The bridge thread of a running emulator.
#[derive(Debug)]
struct Bridge {
    input: mpsc::Sender<Vec<u8>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Lets the thread take what the emulator still sends, then ends it.
    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the bridge waits for the emulator to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The bridge thread: accepts the emulator's connection, then appends everything it
/// sends to `log` and sends it the queued input, until the connection closes or `stop`
/// is set (then it reads what is left for a moment and ends).
fn bridge_thread(listener: TcpListener, log: PathBuf, input: mpsc::Receiver<Vec<u8>>, stop: Arc<AtomicBool>) {
    let Ok(mut stream) = accept(&listener, &stop) else { return };
    let Ok(mut file) = std::fs::OpenOptions::new().append(true).create(true).open(&log) else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 4096];
    let mut quiet_after_stop = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if file.write_all(&buf[..n]).and_then(|()| file.flush()).is_err() {
                    break;
                }
                quiet_after_stop = 0;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    quiet_after_stop += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        while let Ok(bytes) = input.try_recv() {
            if stream.write_all(&bytes).and_then(|()| stream.flush()).is_err() {
                return;
            }
        }
        // After a stop, 100 ms without output ends the thread.
        if quiet_after_stop >= 5 {
            break;
        }
    }
}

/// Waits (bounded by [`CONNECT_TIMEOUT`] and `stop`) for the emulator's connection.
fn accept(listener: &TcpListener, stop: &AtomicBool) -> std::io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the emulator did not connect"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts `machine` in the prepared directory, in a new process group, with stdin from
/// `/dev/null` and its terminal output in `terminal.log`.
pub fn start(run: &RunDir, machine: &Machine) -> std::io::Result<Running> {
    let mut cmd = command(run, machine);
    let out_name = match machine {
        Machine::Bochs { .. } => "terminal.log",
        Machine::Qemu { .. } => "qemu.log",
    };
    let out = File::create(run.dir.join(out_name))?;
    cmd.current_dir(&run.dir).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
    let child =
        cmd.spawn().map_err(|e| std::io::Error::new(e.kind(), format!("starting {:?}: {e}", cmd.get_program())))?;
    let pgid = child.id();
    Ok(Running { child, pgid, run: run.clone(), started: Instant::now(), bridge: None, input_waiting_for: None })
}

/// [`start`] for a run prepared with `bridge`'s [`SerialBridge::com1`]: a thread accepts
/// the emulator's COM1 connection, copies its output into `serial.log` and sends it the
/// input of [`Running::input`] and of [`WaitOptions::input`].
pub fn start_with_bridge(run: &RunDir, machine: &Machine, bridge: SerialBridge) -> std::io::Result<Running> {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let log = run.serial_log();
    let thread = std::thread::Builder::new()
        .name("com1-bridge".into())
        .spawn(move || bridge_thread(bridge.listener, log, rx, thread_stop))?;
    let mut bridge = Bridge { input: tx, stop, thread: Some(thread) };
    match start(run, machine) {
        Ok(mut running) => {
            running.bridge = Some(bridge);
            Ok(running)
        }
        Err(e) => {
            bridge.finish();
            Err(e)
        }
    }
}

/// Sends `signal` (a `kill -s` name such as `TERM` or `KILL`) to a whole process group.
pub fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `(parent pid, process group)` of a process, from `/proc/<pid>/stat`.
fn parent_and_group(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(1); // state
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// All descendants of `root` (children, grandchildren, ...), found through `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((ppid, _)) = parent_and_group(pid) {
                    parent_of.push((pid, ppid));
                }
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// The process groups of an emulator and everything it started. `script` runs Bochs in
/// a new session (its own group), so killing only the emulator's group is not enough.
fn groups_of_tree(pgid: u32, pids: &[u32]) -> Vec<u32> {
    let mut groups = vec![pgid];
    for &pid in pids {
        if let Some((_, g)) = parent_and_group(pid) {
            if g > 1 && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    groups
}

/// Follows a growing file from the position reached so far.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    pos: u64,
    /// Everything read so far.
    pub text: String,
}

impl Follower {
    /// Follows `path` from its start.
    pub fn new(path: PathBuf) -> Self {
        Follower { path, pos: 0, text: String::new() }
    }

    /// Reads what was appended since the last call and returns it.
    pub fn poll(&mut self) -> String {
        let Ok(mut f) = File::open(&self.path) else {
            return String::new();
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return String::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return String::new();
        }
        self.pos += buf.len() as u64;
        let new = String::from_utf8_lossy(&buf).into_owned();
        self.text.push_str(&new);
        new
    }
}

impl Running {
    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// Time since the emulator was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A sender of console input into COM1 (runs started with [`start_with_bridge`]).
    pub fn input(&self) -> Option<InputSender> {
        self.bridge.as_ref().map(|b| InputSender(b.input.clone()))
    }

    /// The text a step of [`WaitOptions::input`] was still waiting for when the last
    /// [`Running::wait`] ended.
    pub fn input_waiting_for(&self) -> Option<&str> {
        self.input_waiting_for.as_deref()
    }

    /// Ends the bridge thread (if any) once it has taken the emulator's last output.
    fn finish_bridge(&mut self) {
        if let Some(bridge) = &mut self.bridge {
            bridge.finish();
        }
    }

    /// Waits for the emulator to end, passing new serial output to `on_output` as it
    /// appears. Returns how it ended and the whole serial log.
    pub fn wait(&mut self, options: &WaitOptions<'_>, mut on_output: impl FnMut(&str)) -> (Ending, String) {
        let mut log = Follower::new(self.run.serial_log());
        let mut fatal_seen: Option<Instant> = None;
        let mut script = InputScript::new(options.input);
        let ending = loop {
            let new = log.poll();
            if !new.is_empty() {
                on_output(&new);
                if let Some(bridge) = &self.bridge {
                    for bytes in script.due(&log.text) {
                        let _ = bridge.input.send(bytes);
                    }
                }
                if options.cut_short_on_fatal && fatal_seen.is_none() && log.text.lines().any(is_fatal_line) {
                    fatal_seen = Some(Instant::now());
                }
            }
            match self.child.try_wait() {
                Ok(Some(status)) => break Ending::Exited(status.code()),
                Ok(None) => {}
                Err(_) => break Ending::Exited(None),
            }
            if let Some(limit) = options.timeout {
                if self.started.elapsed() >= limit {
                    self.kill();
                    break Ending::TimedOut(limit);
                }
            }
            if fatal_seen.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                self.kill();
                break Ending::CutShortAfterFatal;
            }
            if options.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                self.stop();
                break Ending::Stopped;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The emulator is gone; pick up the last bytes it wrote.
        self.finish_bridge();
        self.input_waiting_for = script.waiting_for().map(str::to_string);
        let new = log.poll();
        if !new.is_empty() {
            on_output(&new);
        }
        self.remove_lock();
        (ending, log.text)
    }

    /// Kills the emulator's process group, and the groups of everything it started, at
    /// once; waits until they are gone.
    pub fn kill(&mut self) {
        let tree = descendants(self.pgid);
        for group in groups_of_tree(self.pgid, &tree) {
            signal_group(group, "KILL");
        }
        let _ = self.child.wait();
        wait_gone(&tree, Duration::from_secs(3));
        self.remove_lock();
    }

    /// Asks the emulator (and what it started) to terminate, waits up to 3 s, then kills
    /// whatever is left.
    pub fn stop(&mut self) {
        let tree = descendants(self.pgid);
        for group in groups_of_tree(self.pgid, &tree) {
            signal_group(group, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                if wait_gone(&tree, Duration::from_secs(2)) {
                    self.remove_lock();
                    return;
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pid in &tree {
            let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
        self.kill();
    }

    fn remove_lock(&self) {
        let _ = std::fs::remove_file(self.run.dir.join(format!("{IMAGE_NAME}.lock")));
    }
}

/// Waits until none of `pids` exists any more (or `limit` passes); true when all are gone.
fn wait_gone(pids: &[u32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let alive = pids.iter().any(|pid| {
            // A zombie has exited already; only its parent's wait is missing.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                .unwrap_or(false)
        });
        if !alive {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        self.finish_bridge();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_memory_covers_partitions_and_payload() {
        assert_eq!(memory_for(32, 1 << 20), 256);
        assert_eq!(memory_for(16 + 256, 12 << 20), 512);
        assert_eq!(memory_for(16 + 128 + 16, 12 << 20), 384);
    }

    #[test]
    fn bochsrc_has_the_required_settings() {
        let rc = bochsrc(Path::new("/tmp/x"), "corei7_icelake_u", 4, 1234, 256);
        for want in [
            "megs: 256",
            "romimage: file=/usr/share/ovmf/OVMF.fd",
            "vgaromimage: file=/usr/share/vgabios/vgabios-stdvga.bin",
            "vga: extension=vbe",
            "pci: enabled=1, chipset=i440fx, slot1=pcivga",
            "cpu: model=corei7_icelake_u, count=4, ips=1234, reset_on_triple_fault=0",
            "ata0-master: type=disk, path=/tmp/x/hypervisor.img, mode=flat",
            "boot: disk",
            "com1: enabled=1, mode=file, dev=/tmp/x/serial.log",
            "port_e9_hack: enabled=1",
            "clock: sync=none, time0=1782907200",
            "display_library: term",
            "log: /tmp/x/bochs.log",
        ] {
            assert!(rc.lines().any(|l| l == want), "missing {want:?} in\n{rc}");
        }
    }

    #[test]
    fn socket_com1_settings() {
        let rc = bochsrc_with(Path::new("/tmp/x"), "corei7_icelake_u", 2, 1234, 256, Com1::Socket(4567));
        assert!(rc.lines().any(|l| l == "com1: enabled=1, mode=socket-client, dev=127.0.0.1:4567"), "{rc}");
        assert!(!rc.contains("mode=file"), "{rc}");
        let run = RunDir { dir: PathBuf::from("/r"), notes: Vec::new(), com1: Com1::Socket(4567) };
        let cmd = command(&run, &Machine::Qemu { cpus: 1, kvm: false, memory_mib: 256 });
        let line: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into()).collect();
        assert!(line.join(" ").contains("-serial tcp:127.0.0.1:4567"), "{line:?}");
    }

    #[test]
    fn input_steps_wait_for_their_text_in_order() {
        let steps = vec![
            ("[a] ready".to_string(), String::new()),
            ("[b] ready".to_string(), "hello\r".to_string()),
            ("[b] got: hello".to_string(), "\u{1}n".to_string()),
        ];
        let mut script = InputScript::new(&steps);
        assert!(script.due("boot\n[b] ready\n").is_empty(), "step 1 waits for [a]");
        assert_eq!(script.waiting_for(), Some("[a] ready"));
        // Both texts are there now (in either order): steps 1 and 2 are due, once.
        let log = "boot\n[b] ready\n[a] ready\n";
        assert_eq!(script.due(log), vec![b"hello\r".to_vec()]);
        assert!(script.due(log).is_empty());
        assert_eq!(script.due(&format!("{log}[b] got: hello\n")), vec![vec![1u8, b'n']]);
        assert_eq!(script.waiting_for(), None);
        assert!(InputScript::new(&[]).due("anything").is_empty());
    }

    #[test]
    fn the_bridge_logs_output_and_sends_input() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join(SERIAL_LOG);
        File::create(&log).unwrap();
        let bridge = SerialBridge::listen().unwrap();
        let Com1::Socket(port) = bridge.com1() else { panic!("socket expected") };
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread_log = log.clone();
        let thread = std::thread::spawn(move || bridge_thread(bridge.listener, thread_log, rx, thread_stop));
        // Stands in for the emulator: connects, writes output, reads the input.
        let mut emulator = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        emulator.write_all(b"[a] ready for input\r\n").unwrap();
        let mut follower = Follower::new(log.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !follower.text.contains("ready for input") && Instant::now() < deadline {
            follower.poll();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(follower.text.contains("[a] ready for input"), "{:?}", follower.text);
        tx.send(b"hello hv\r".to_vec()).unwrap();
        let mut got = [0u8; 9];
        emulator.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        emulator.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello hv\r");
        emulator.write_all(b"bye\n").unwrap();
        drop(emulator);
        stop.store(true, Ordering::SeqCst);
        thread.join().unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "[a] ready for input\r\nbye\n");
    }

    #[test]
    fn prepare_removes_stale_lock_and_copies_image() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("src.img");
        std::fs::write(&image, b"disk").unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hypervisor.img.lock"), b"").unwrap();
        let machine = Machine::Bochs { model: "corei7_icelake_u".into(), cpus: 1, ips: BOCHS_IPS, memory_mib: 256 };
        let run = prepare(&dir, &image, &machine).unwrap();
        assert_eq!(run.notes.len(), 1, "{:?}", run.notes);
        assert!(!dir.join("hypervisor.img.lock").exists());
        assert_eq!(std::fs::read(run.image()).unwrap(), b"disk");
        assert!(dir.join("bochsrc").is_file());
        assert_eq!(std::fs::read_to_string(dir.join("bochs.rc")).unwrap(), "c\n");
        let again = prepare(&dir, &image, &machine).unwrap();
        assert!(again.notes.is_empty());
    }

    #[test]
    fn missing_image_names_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let machine = Machine::Qemu { cpus: 1, kvm: false, memory_mib: 256 };
        let err = prepare(tmp.path(), &tmp.path().join("none.img"), &machine).unwrap_err();
        assert!(err.to_string().contains("cargo xtask build"), "{err}");
    }

    #[test]
    fn qemu_command_line() {
        let run = RunDir { dir: PathBuf::from("/r"), notes: Vec::new(), com1: Com1::File };
        let cmd = command(&run, &Machine::Qemu { cpus: 2, kvm: false, memory_mib: 256 });
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into()).collect();
        let line = args.join(" ");
        assert!(line.contains("-machine q35 -smp 2 -m 256M"), "{line}");
        assert!(line.contains("readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"), "{line}");
        assert!(line.contains("file=/r/OVMF_VARS.fd"), "{line}");
        assert!(line.contains("-serial file:/r/serial.log"), "{line}");
        assert!(line.contains("isa-debug-exit,iobase=0xf4,iosize=0x04"), "{line}");
        assert!(line.contains("-no-reboot"), "{line}");
        assert!(!line.contains("kvm"), "{line}");
    }

    #[test]
    fn process_tree_is_found() {
        let mut child = Command::new("sh").args(["-c", "sleep 30 & wait"]).process_group(0).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let tree = descendants(child.id());
        assert!(!tree.is_empty(), "sleep not found under sh");
        assert_eq!(groups_of_tree(child.id(), &tree), [child.id()]);
        signal_group(child.id(), "KILL");
        child.wait().unwrap();
        assert!(wait_gone(&tree, Duration::from_secs(3)));
    }

    #[test]
    fn follower_reads_appended_text() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        let mut f = Follower::new(path.clone());
        assert_eq!(f.poll(), "");
        std::fs::write(&path, "a\n").unwrap();
        assert_eq!(f.poll(), "a\n");
        std::fs::write(&path, "a\nb\n").unwrap();
        assert_eq!(f.poll(), "b\n");
        assert_eq!(f.text, "a\nb\n");
    }
}
