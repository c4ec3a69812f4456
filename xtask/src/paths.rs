//! Where things are: the workspace root and the (possibly redirected) target directory.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of the xtask crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace").to_path_buf()
}

/// The target directory: `CARGO_TARGET_DIR` (relative to the current directory, as cargo
/// reads it) or `<workspace>/target`.
pub fn target() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir)
            }
        }
        _ => workspace().join("target"),
    }
}

/// The cargo to run (`CARGO` as set by cargo, else `cargo`).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// The default partition config.
pub fn default_config() -> PathBuf {
    workspace().join("boot/configs/default.toml")
}

/// The default disk image.
pub fn default_image() -> PathBuf {
    target().join("hypervisor.img")
}

/// Where emulator scenarios put their run directories.
pub fn scenarios_dir() -> PathBuf {
    target().join("scenarios")
}
