//! Host tests of the service partition's guest-builder logic: CPU choice, pool
//! placement, e820, flat-image layout rules, start states, boot structures and the
//! payload's ustar reader. The modules are the service's own source files, compiled
//! here as they are (the service is a `no_std` binary linked for the guest, which
//! `cargo test` cannot run).
#![no_std]
#![allow(dead_code, reason = "the service uses these items; the host build only runs their tests")]

#[cfg(test)]
extern crate std;

#[path = "../../../guest-images/service/src/builder/plan.rs"]
pub mod plan;
#[path = "../../../guest-images/service/src/builder/ustar.rs"]
pub mod ustar;
