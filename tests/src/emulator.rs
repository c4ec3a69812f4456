//! Starting Bochs and QEMU on a disk image, following their serial log and ending them.
//!
//! Every emulator runs in its own process group (so a time-out can kill it together with
//! the `script` wrapper Bochs runs under) and writes COM1 to `serial.log` in its run
//! directory, which the caller follows while it grows.

use crate::judge::{is_fatal_line, Ending};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// OVMF build for Bochs (Debian package `ovmf`).
pub const OVMF_FD: &str = "/usr/share/ovmf/OVMF.fd";
/// OVMF code flash for QEMU (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// OVMF variable store template for QEMU (Debian package `ovmf`).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// VGA BIOS for Bochs (Debian package `vgabios`).
pub const VGABIOS: &str = "/usr/share/vgabios/vgabios-stdvga.bin";

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

/// A prepared run directory: a private copy of the image plus generated files.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory.
    pub dir: PathBuf,
    /// Notes worth telling the user (e.g. a stale lock file was removed).
    pub notes: Vec<String>,
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

/// Creates (or cleans) `dir`, copies `image` into it and writes the emulator's files.
///
/// A `hypervisor.img.lock` left by a killed Bochs is removed (and noted), as are the logs
/// of the previous run.
pub fn prepare(dir: &Path, image: &Path, machine: &Machine) -> std::io::Result<RunDir> {
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
            std::fs::write(dir.join("bochsrc"), bochsrc(dir, model, *cpus, *ips, *memory_mib))?;
            // The Debian build has the internal debugger: `c` continues at once.
            std::fs::write(dir.join("bochs.rc"), "c\n")?;
        }
        Machine::Qemu { .. } => {
            std::fs::copy(OVMF_VARS, dir.join("OVMF_VARS.fd"))?;
        }
    }
    Ok(RunDir { dir: dir.to_path_buf(), notes })
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

/// The Bochs configuration for a run in `dir`.
pub fn bochsrc(dir: &Path, model: &str, cpus: u32, ips: u64, memory_mib: u32) -> String {
    let d = dir.display();
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
         com1: enabled=1, mode=file, dev={d}/{SERIAL_LOG}\n\
         port_e9_hack: enabled=1\n\
         clock: sync=none\n\
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
                .arg(format!("file:{}", run.serial_log().display()))
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
    Ok(Running { child, pgid, run: run.clone(), started: Instant::now() })
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

    /// Waits for the emulator to end, passing new serial output to `on_output` as it
    /// appears. Returns how it ended and the whole serial log.
    pub fn wait(&mut self, options: &WaitOptions<'_>, mut on_output: impl FnMut(&str)) -> (Ending, String) {
        let mut log = Follower::new(self.run.serial_log());
        let mut fatal_seen: Option<Instant> = None;
        let ending = loop {
            let new = log.poll();
            if !new.is_empty() {
                on_output(&new);
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
            "clock: sync=none",
            "display_library: term",
            "log: /tmp/x/bochs.log",
        ] {
            assert!(rc.lines().any(|l| l == want), "missing {want:?} in\n{rc}");
        }
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
        let run = RunDir { dir: PathBuf::from("/r"), notes: Vec::new() };
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
