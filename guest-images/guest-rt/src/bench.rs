//! Benchmark lines in the form `cargo xtask bench` parses:
//! `bench: NAME n=N min=A median=B p99=C max=D` (TSC ticks).

/// Heap sort in place (no allocation; O(n log n) keeps it cheap under emulation).
pub fn sort(v: &mut [u64]) {
    fn sift_down(v: &mut [u64], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child + 1] > v[child] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    for root in (0..n / 2).rev() {
        sift_down(v, root, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

/// Sorts `samples` and prints the metric line for `name` (nothing for no samples).
pub fn report(name: &str, samples: &mut [u64]) {
    let n = samples.len();
    if n == 0 {
        return;
    }
    sort(samples);
    let p99 = samples[(n * 99 / 100).min(n - 1)];
    crate::println!(
        "bench: {name} n={n} min={} median={} p99={p99} max={}",
        samples[0],
        samples[n / 2],
        samples[n - 1]
    );
}
