//! The `image-layout` scenario: inspect a built disk image without booting it.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

/// Partition type GUID of an EFI System Partition.
pub const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The removable-media boot loader path UEFI firmware looks for on x86_64.
pub const BOOT_LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// Checks that `image` has a GPT with an EFI System Partition whose FAT file system holds
/// a non-empty `EFI/BOOT/BOOTX64.EFI`. Returns a description of what was found.
pub fn check_image_layout(image: &Path) -> Result<String, String> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .open(image)
        .map_err(|e| format!("{}: no readable GPT: {e}", image.display()))?;
    let block = u64::from(*disk.logical_block_size());
    let partitions = disk.partitions();
    let (index, esp) = partitions
        .iter()
        .find(|(_, p)| p.part_type_guid.guid.eq_ignore_ascii_case(ESP_TYPE_GUID))
        .ok_or_else(|| {
            format!(
                "{}: GPT has {} partition(s), none of type EFI System ({ESP_TYPE_GUID})",
                image.display(),
                partitions.len()
            )
        })?;
    let start = esp.first_lba * block;
    let len = (esp.last_lba + 1 - esp.first_lba) * block;

    let mut file = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut bytes = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| format!("{}: reading the ESP: {e}", image.display()))?;
    let fs = fatfs::FileSystem::new(Cursor::new(bytes), fatfs::FsOptions::new())
        .map_err(|e| format!("ESP (partition {index}) holds no FAT file system: {e}"))?;
    let mut loader = fs
        .root_dir()
        .open_file(BOOT_LOADER_PATH)
        .map_err(|e| format!("ESP (partition {index}) has no {BOOT_LOADER_PATH}: {e}"))?;
    let mut content = Vec::new();
    loader.read_to_end(&mut content).map_err(|e| format!("reading {BOOT_LOADER_PATH}: {e}"))?;
    if content.is_empty() {
        return Err(format!("{BOOT_LOADER_PATH} on the ESP is empty"));
    }
    let mut root: Vec<String> =
        fs.root_dir().iter().filter_map(Result::ok).map(|e| e.file_name()).filter(|n| n != "." && n != "..").collect();
    root.sort();
    Ok(format!(
        "GPT with {} partition(s); ESP is partition {index} (LBA {}..={}, {} KiB, {:?}); \
         FAT root: [{}]; {BOOT_LOADER_PATH}: {} bytes{}",
        partitions.len(),
        esp.first_lba,
        esp.last_lba,
        len / 1024,
        fs.fat_type(),
        root.join(", "),
        content.len(),
        if content.starts_with(b"MZ") { " (PE image)" } else { "" }
    ))
}
