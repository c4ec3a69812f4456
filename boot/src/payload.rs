//! The boot payload: the ustar archive handed to the kernel as its ramdisk.
//!
//! Layout:
//! - `config.toml`: the validated config, canonically re-serialised
//!   ([`Config::to_canonical_toml`]);
//! - `hypervisor.conf`: `key=value` lines (`log_level=...`, `when_idle=...`), then one
//!   `partition=` line per partition (see [`partition_line`]);
//! - `images/<name>`: one file per partition: an ELF64 image flattened (see
//!   [`crate::flat`]), anything else (and an ELF Multiboot kernel) as it is;
//!   `images/<name>.initrd` and `images/<name>.cmdline` beside it when the partition
//!   has an initrd or a command line (the command line the guest gets:
//!   [`Partition::kernel_cmdline`], which a Multiboot kernel always has), and per
//!   Multiboot module `images/<name>.module<K>` (its contents) and
//!   `images/<name>.module<K>.string` (its string), K = 0, 1, ...
//!
//! Entries are written in that order with mode 0644, owner 0 and mtime 0, so the same
//! config always produces the same bytes.

use crate::config::{Config, OnReset, Partition, PartitionKind, StartMode};
use crate::flat::{self, FlatImage};
use std::io;
use std::path::Path;

/// Name of the canonical config inside the archive.
pub const CONFIG_ENTRY: &str = "config.toml";
/// Name of the kernel settings file inside the archive.
pub const SETTINGS_ENTRY: &str = "hypervisor.conf";

/// Builds the payload archive in memory.
pub fn build(config: &Config) -> io::Result<Vec<u8>> {
    let mut settings = config.hypervisor_conf();
    let mut images = Vec::with_capacity(config.partitions.len());
    for partition in &config.partitions {
        let data = std::fs::read(&partition.image).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading image of partition {:?} ({}): {e}", partition.name, partition.image.display()),
            )
        })?;
        // An ELF file with a Multiboot header is a Multiboot kernel: it goes to the
        // service partition's Multiboot loader as it is, as QEMU's `-kernel` takes it.
        let multiboot = hv_loader::detect(&data) == hv_loader::ImageKind::Multiboot;
        let (bytes, flat) = if flat::is_elf(&data) && !multiboot {
            let min_load = match partition.start {
                StartMode::Long | StartMode::Protected => hv_abi::start::MIN_LOAD_ADDRESS,
                StartMode::Real => flat::REAL_MODE_MIN_LOAD,
            };
            let image = flat::flatten_above(&data, u64::from(partition.memory_mib) << 20, min_load).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("image of partition {:?} ({}): {e}", partition.name, partition.image.display()),
                )
            })?;
            (image.bytes.clone(), Some(image))
        } else {
            (data, None)
        };
        settings.push_str(&partition_line(partition, flat.as_ref()));
        images.push((partition.payload_image_path(), bytes));
        if let Some(initrd) = &partition.initrd {
            let data = std::fs::read(initrd).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading initrd of partition {:?} ({}): {e}", partition.name, initrd.display()),
                )
            })?;
            images.push((partition.payload_initrd_path(), data));
        }
        if let Some(cmdline) = &partition.kernel_cmdline {
            images.push((partition.payload_cmdline_path(), cmdline.as_bytes().to_vec()));
        }
        for (k, module) in partition.modules.iter().enumerate() {
            let data = std::fs::read(&module.file).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading module {k} of partition {:?} ({}): {e}", partition.name, module.file.display()),
                )
            })?;
            images.push((partition.payload_module_path(k), data));
            images.push((partition.payload_module_string_path(k), module.string.as_bytes().to_vec()));
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, CONFIG_ENTRY, config.to_canonical_toml().as_bytes())?;
    append(&mut builder, SETTINGS_ENTRY, settings.as_bytes())?;
    for (path, bytes) in images {
        append(&mut builder, &path, &bytes)?;
    }
    builder.into_inner()
}

/// One partition as the hypervisor reads it from `hypervisor.conf`:
/// `partition=name=N,kind=guest|service,memory_mib=M,vcpus=V[,cpus=A+B+...],image=images/N[,load=0x..,entry=0x..][,devices=..][,initrd=images/N.initrd][,cmdline=images/N.cmdline][,modules=images/N.module0:images/N.module0.string+...][,start=..][,on_reset=stop]`
/// (`cmdline` when the guest gets a command line, [`Partition::kernel_cmdline`];
/// `on_reset` only when it is not the default, reboot).
/// `load` and `entry` are present for flattened ELF images (partitions the hypervisor
/// can start itself).
#[must_use]
pub fn partition_line(p: &Partition, flat: Option<&FlatImage>) -> String {
    let kind = match p.kind {
        PartitionKind::Service => "service",
        PartitionKind::Guest => "guest",
    };
    let mut line = format!("partition=name={},kind={kind},memory_mib={},vcpus={}", p.name, p.memory_mib, p.vcpus);
    if let Some(cpus) = &p.cpus {
        let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
        line.push_str(&format!(",cpus={}", list.join("+")));
    }
    line.push_str(&format!(",image={}", p.payload_image_path()));
    if let Some(f) = flat {
        line.push_str(&format!(",load={:#x},entry={:#x}", f.load, f.entry));
    }
    if !p.devices.is_empty() {
        line.push_str(&format!(",devices={}", p.devices.join("+")));
    }
    if p.initrd.is_some() {
        line.push_str(&format!(",initrd={}", p.payload_initrd_path()));
    }
    if p.kernel_cmdline.is_some() {
        line.push_str(&format!(",cmdline={}", p.payload_cmdline_path()));
    }
    if !p.modules.is_empty() {
        let list: Vec<String> = (0..p.modules.len())
            .map(|k| format!("{}:{}", p.payload_module_path(k), p.payload_module_string_path(k)))
            .collect();
        line.push_str(&format!(",modules={}", list.join("+")));
    }
    match p.start {
        StartMode::Long => {}
        StartMode::Real => line.push_str(",start=real"),
        StartMode::Protected => line.push_str(",start=protected"),
    }
    if p.on_reset == OnReset::Stop {
        line.push_str(",on_reset=stop");
    }
    line.push('\n');
    line
}

/// Builds the payload archive and writes it to `out`.
pub fn write(config: &Config, out: &Path) -> io::Result<()> {
    let bytes = build(config)?;
    std::fs::write(out, bytes)
}

/// Appends one regular file with a deterministic ustar header.
fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder.append_data(&mut header, path, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn archive_holds_config_settings_and_images() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("img"), b"guest image bytes").unwrap();
        let cfg_path = dir.path().join("c.toml");
        std::fs::write(
            &cfg_path,
            "[hypervisor]\nwhen_idle = \"power-off\"\n[[partition]]\nname = \"hello\"\n\
             kind = \"guest\"\nmemory_mib = 16\nvcpus = 1\nimage = \"img\"\n",
        )
        .unwrap();
        let config = crate::config::load(&cfg_path).unwrap();
        let bytes = build(&config).unwrap();
        assert_eq!(bytes, build(&config).unwrap(), "payload must be deterministic");

        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            assert!(entry.header().as_ustar().is_some(), "entries must be ustar");
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            entries.push((name, data));
        }
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["config.toml", "hypervisor.conf", "images/hello"]);
        assert_eq!(
            entries[1].1,
            "log_level=info\nwhen_idle=power-off\npartition=name=hello,kind=guest,memory_mib=16,vcpus=1,image=images/hello\n"
        );
        assert!(entries[0].1.contains("image = \"images/hello\""));
        assert_eq!(entries[2].1, "guest image bytes");
    }

    #[test]
    fn partition_lines_carry_cpus_and_flat_image_addresses() {
        let p = Partition {
            name: "two".into(),
            kind: PartitionKind::Guest,
            memory_mib: 32,
            vcpus: 2,
            cpus: Some(vec![1, 3]),
            image: "x".into(),
            start: StartMode::Long,
            devices: vec![],
            initrd: None,
            cmdline: None,
            kernel_cmdline: None,
            modules: vec![],
            on_reset: OnReset::Reboot,
        };
        let flat = FlatImage { load: 0x20_0000, entry: 0x20_0040, bytes: vec![] };
        assert_eq!(
            partition_line(&p, Some(&flat)),
            "partition=name=two,kind=guest,memory_mib=32,vcpus=2,cpus=1+3,image=images/two,load=0x200000,entry=0x200040\n"
        );
        let with_devices = Partition { devices: vec!["com1".into(), "pci".into()], ..p };
        assert!(partition_line(&with_devices, None).ends_with(",image=images/two,devices=com1+pci\n"));
        let stops = Partition { on_reset: OnReset::Stop, ..with_devices };
        assert!(partition_line(&stops, None).ends_with(",devices=com1+pci,on_reset=stop\n"));
    }

    #[test]
    fn guest_images_need_the_built_guests_directory() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[partition]]\nname = \"hello\"\nkind = \"guest\"\nmemory_mib = 16\nvcpus = 1\nimage = \"guest:guest-hello\"\n";
        let cfg_path = dir.path().join("c.toml");
        let err = crate::config::parse(text, &cfg_path).unwrap_err().to_string();
        assert!(err.contains("cargo xtask"), "{err}");
        std::fs::write(dir.path().join("guest-hello"), b"elf?").unwrap();
        let config = crate::config::parse_with_guests(text, &cfg_path, Some(dir.path())).unwrap();
        assert_eq!(config.partitions[0].image, dir.path().join("guest-hello"));
    }

    #[test]
    fn initrd_and_cmdline_travel_beside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kernel"), b"kernel bytes").unwrap();
        std::fs::write(dir.path().join("rd"), b"initrd bytes").unwrap();
        let cfg_path = dir.path().join("c.toml");
        std::fs::write(
            &cfg_path,
            "[[partition]]\nname = \"lx\"\nkind = \"guest\"\nmemory_mib = 64\nvcpus = 1\n\
             image = \"kernel\"\ninitrd = \"rd\"\ncmdline = \"console=ttyS0 hvtest=boot\"\n",
        )
        .unwrap();
        let config = crate::config::load(&cfg_path).unwrap();
        let bytes = build(&config).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            files.insert(name, data);
        }
        assert_eq!(files["images/lx.initrd"], "initrd bytes");
        assert_eq!(files["images/lx.cmdline"], "console=ttyS0 hvtest=boot");
        assert!(files["hypervisor.conf"].contains(",initrd=images/lx.initrd,cmdline=images/lx.cmdline"));
        assert!(files["config.toml"].contains("initrd = \"images/lx.initrd\""));
    }

    /// The files of a payload archive by name, as text (bytes that are not UTF-8 as
    /// U+FFFD).
    fn files_of(bytes: &[u8]) -> std::collections::BTreeMap<String, String> {
        let mut archive = tar::Archive::new(bytes);
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(name, String::from_utf8_lossy(&data).into_owned());
        }
        files
    }

    #[test]
    fn multiboot_modules_and_command_line_travel_beside_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let magic = hv_loader::multiboot::HEADER_MAGIC;
        let header: Vec<u8> = [magic, 0, 0u32.wrapping_sub(magic)].iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(dir.path().join("kernel"), header).unwrap();
        std::fs::write(dir.path().join("one.bin"), b"first module").unwrap();
        std::fs::write(dir.path().join("two.txt"), b"second module").unwrap();
        let cfg_path = dir.path().join("c.toml");
        std::fs::write(
            &cfg_path,
            "[[partition]]\nname = \"mb\"\nkind = \"guest\"\nmemory_mib = 16\nvcpus = 1\n\
             image = \"kernel\"\ncmdline = \"answer=42\"\nmodules = [\"one.bin a=1 b\", \"two.txt\"]\n",
        )
        .unwrap();
        let config = crate::config::load(&cfg_path).unwrap();
        let files = files_of(&build(&config).unwrap());
        assert_eq!(files["images/mb.cmdline"], "kernel answer=42");
        assert_eq!(files["images/mb.module0"], "first module");
        assert_eq!(files["images/mb.module0.string"], "one.bin a=1 b");
        assert_eq!(files["images/mb.module1"], "second module");
        assert_eq!(files["images/mb.module1.string"], "two.txt");
        assert!(files["hypervisor.conf"].ends_with(
            ",image=images/mb,cmdline=images/mb.cmdline,modules=images/mb.module0:images/mb.module0.string\
             +images/mb.module1:images/mb.module1.string\n"
        ));
        // The line reads back with the parser the hypervisor and the service use.
        let mut specs = Vec::new();
        hv_core::boot_conf::parse_with_partitions(
            files["hypervisor.conf"].as_bytes(),
            |p| panic!("{p}"),
            |s| specs.push(s),
        );
        let paths: Vec<(&str, &str)> = specs[0].modules().iter().map(|m| (m.data, m.string)).collect();
        assert_eq!(
            paths,
            [("images/mb.module0", "images/mb.module0.string"), ("images/mb.module1", "images/mb.module1.string")]
        );
        assert_eq!(specs[0].cmdline, Some("images/mb.cmdline"));
    }
}
