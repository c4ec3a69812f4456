//! The boot payload: a ustar archive passed as the bootloader's ramdisk, holding
//! `config.toml` (the validated partition config, kept for the record: nothing at run
//! time reads it), `hypervisor.conf` (the hypervisor's settings and one `partition=`
//! line per partition, which the service partition reads too) and partition images.
//! The hypervisor only indexes the archive (via `tar-no-std`) and reads
//! `hypervisor.conf`.

use alloc::vec::Vec;

use hv_core::boot_conf::{self, BootConf, PartitionSpec};
use tar_no_std::TarArchiveRef;

/// Reads the payload; logs what it holds and any problem, and returns the settings
/// (defaults when there is no payload or it is damaged) and the partitions it names.
pub fn read(ramdisk: Option<&'static [u8]>) -> (BootConf, Vec<PartitionSpec<'static>>) {
    let mut partitions = Vec::new();
    let conf = read_into(ramdisk, &mut partitions);
    (conf, partitions)
}

fn read_into(ramdisk: Option<&'static [u8]>, partitions: &mut Vec<PartitionSpec<'static>>) -> BootConf {
    let Some(bytes) = ramdisk else {
        log::warn!("payload: no boot payload (ramdisk) was passed; using default settings");
        return BootConf::default();
    };
    let archive = match TarArchiveRef::new(bytes) {
        Ok(a) => a,
        Err(_) => {
            log::error!("payload: the ramdisk ({} bytes) is not a valid tar archive; rebuild the image with `cargo xtask build`", bytes.len());
            return BootConf::default();
        }
    };
    let mut conf = None;
    let mut entries = 0;
    for entry in archive.entries() {
        entries += 1;
        let name = entry.filename();
        let name = name.as_str().unwrap_or("?");
        log::info!("payload: {name} ({} bytes)", entry.data().len());
        if name == "hypervisor.conf" {
            conf = Some(boot_conf::parse_with_partitions(
                entry.data(),
                |problem| log::warn!("payload: {problem}"),
                |spec| partitions.push(spec),
            ));
        }
    }
    log::info!("payload: {entries} entries, {} bytes", bytes.len());
    conf.unwrap_or_else(|| {
        log::warn!("payload: no hypervisor.conf; using default settings");
        BootConf::default()
    })
}
