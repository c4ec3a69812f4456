//! The boot payload: the ustar archive handed to the kernel as its ramdisk.
//!
//! Layout:
//! - `config.toml`: the validated config, canonically re-serialised
//!   ([`Config::to_canonical_toml`]);
//! - `hypervisor.conf`: `key=value` lines (`log_level=...`, `when_idle=...`);
//! - `images/<name>`: one file per partition, the partition's image.
//!
//! Entries are written in that order with mode 0644, owner 0 and mtime 0, so the same
//! config always produces the same bytes.

use crate::config::Config;
use std::io;
use std::path::Path;

/// Name of the canonical config inside the archive.
pub const CONFIG_ENTRY: &str = "config.toml";
/// Name of the kernel settings file inside the archive.
pub const SETTINGS_ENTRY: &str = "hypervisor.conf";

/// Builds the payload archive in memory.
pub fn build(config: &Config) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, CONFIG_ENTRY, config.to_canonical_toml().as_bytes())?;
    append(&mut builder, SETTINGS_ENTRY, config.hypervisor_conf().as_bytes())?;
    for partition in &config.partitions {
        let data = std::fs::read(&partition.image).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading image of partition {:?} ({}): {e}", partition.name, partition.image.display()),
            )
        })?;
        append(&mut builder, &partition.payload_image_path(), &data)?;
    }
    builder.into_inner()
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
        assert_eq!(entries[1].1, "log_level=info\nwhen_idle=power-off\n");
        assert!(entries[0].1.contains("image = \"images/hello\""));
        assert_eq!(entries[2].1, "guest image bytes");
    }
}
