use std::path::Path;
pub fn make_image(kernel: &Path, out: &Path) {
    bootloader::UefiBoot::new(kernel).create_disk_image(out).unwrap();
}
