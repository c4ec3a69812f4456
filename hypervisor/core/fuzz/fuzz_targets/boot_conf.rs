//! `hypervisor.conf` comes from the boot payload: any bytes must parse without
//! panicking, and every problem must be reported rather than applied.
#![no_main]

use hv_core::boot_conf::{parse, BootConf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut problems = 0usize;
    let conf = parse(data, |_| problems += 1);
    if core::str::from_utf8(data).is_err() {
        assert_eq!(conf, BootConf::default());
        assert_eq!(problems, 1);
    }
});
