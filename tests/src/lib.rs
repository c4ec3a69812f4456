//! Emulator test scenarios for the hypervisor, used by `cargo xtask test` and
//! `cargo xtask bench`.
//!
//! - [`scenario`]: the catalogue, as data;
//! - [`emulator`]: starting Bochs/QEMU in a private run directory, following the serial
//!   log, time-outs (whole process group killed);
//! - [`judge`]: the verdict from the serial log;
//! - [`layout`]: the host-only `image-layout` check (GPT + ESP + FAT);
//! - [`runner`]: running scenarios two at a time and the JSON report;
//! - [`deps`]: host packages the emulators need, and installing them.

pub mod deps;
pub mod emulator;
pub mod judge;
pub mod layout;
pub mod runner;
pub mod scenario;
