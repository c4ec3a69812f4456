//! Decoding the guest instruction behind an MMIO exit (placeholder; being written).
