//! The DSDT is firmware-provided bytes: the `_S5` scan must never panic or read out
//! of bounds, and any result it returns holds 3-bit SLP_TYP values.
#![no_main]

use hv_core::acpi_s5::find_s5;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(types) = find_s5(data) {
        assert!(types.slp_typ_a < 8 && types.slp_typ_b < 8);
    }
});
