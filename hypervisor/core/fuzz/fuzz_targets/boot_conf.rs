//! `hypervisor.conf` comes from the boot payload: any bytes must parse without
//! panicking, and every problem must be reported rather than applied.
#![no_main]

use hv_core::boot_conf::{parse_with_partitions, BootConf, MAX_MODULES, MAX_VCPUS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut problems = 0usize;
    let conf = parse_with_partitions(
        data,
        |_| problems += 1,
        |p| {
            // Whatever the bytes, an accepted partition is within the documented limits.
            assert!(p.vcpus >= 1 && p.vcpus as usize <= MAX_VCPUS && p.memory_mib >= 1);
            assert!(p.cpus_len == 0 || p.cpus_len == p.vcpus as usize);
            assert!(p.modules_len <= MAX_MODULES && p.modules().len() == p.modules_len);
            assert!(p.modules().iter().all(|m| !m.data.is_empty() && !m.string.is_empty()));
        },
    );
    if core::str::from_utf8(data).is_err() {
        assert_eq!(conf, BootConf::default());
        assert_eq!(problems, 1);
    }
});
