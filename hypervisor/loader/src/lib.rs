//! Guest image loaders for the service partition's guest builder (Linux bzImage per the x86 boot protocol, Multiboot v1, ELF64): no_std, no unsafe, host-tested and fuzzed.
#![no_std]
#![forbid(unsafe_code)]
