//! The exit profile of a Linux boot (`cargo xtask bench`): exits per reason and their
//! handler time from the hypervisor's `partition linux: vcpu N exits: ...` lines, and
//! the TSC ticks from the partition's creation to the kernel's `Run /init as init
//! process` line, from the console stamps of `tests/configs/bench-linux.toml`
//! (`console_timestamps = true`: `[linux +TICKS] ...`).

use std::collections::BTreeMap;

/// The partition the profile is about.
pub const PARTITION: &str = "linux";

/// Exits of one reason, summed over the partition's vCPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitCount {
    /// The exit reason as the hypervisor names it (`io_instruction`, ...).
    pub reason: String,
    /// How many exits.
    pub count: u64,
    /// Their handler time in TSC ticks (count x the sampled average).
    pub ticks: u64,
}

/// Parses every `partition NAME: vcpu N exits: reason COUNT (avg T tsc), ...` line of
/// `partition` and sums the vCPUs; sorted by handler time, largest first.
pub fn exit_counts(log: &str, partition: &str) -> Vec<ExitCount> {
    let prefix = format!("partition {partition}: vcpu ");
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.find(&prefix).map(|at| &line[at + prefix.len()..]) else { continue };
        let Some((_, list)) = rest.split_once(" exits: ") else { continue };
        // Drop the trailing "(handler time: ...)" note.
        let list = list.split(" (handler time").next().unwrap_or(list);
        for item in list.split("), ") {
            let item = item.trim_end_matches(')');
            let Some((head, avg)) = item.split_once(" (avg ") else { continue };
            let Some((reason, count)) = head.rsplit_once(' ') else { continue };
            let (Ok(count), Some(Ok(avg))) =
                (count.parse::<u64>(), avg.strip_suffix(" tsc").map(|a| a.trim().parse::<u64>()))
            else {
                continue;
            };
            let entry = sums.entry(reason.trim().to_string()).or_default();
            entry.0 += count;
            entry.1 += count.saturating_mul(avg);
        }
    }
    let mut out: Vec<ExitCount> =
        sums.into_iter().map(|(reason, (count, ticks))| ExitCount { reason, count, ticks }).collect();
    out.sort_by(|a, b| b.ticks.cmp(&a.ticks).then(a.reason.cmp(&b.reason)));
    out
}

/// The stamp (`[NAME +TICKS] `) of the first console line of `partition` containing
/// `text`.
pub fn stamp_of(log: &str, partition: &str, text: &str) -> Option<u64> {
    let prefix = format!("[{partition} +");
    log.lines().filter(|l| l.contains(text)).find_map(|line| {
        let rest = &line[line.find(&prefix)? + prefix.len()..];
        rest.split_once(']')?.0.parse().ok()
    })
}

/// TSC ticks from the partition's creation to the kernel starting /init.
pub fn boot_to_init_ticks(log: &str) -> Option<u64> {
    stamp_of(log, PARTITION, "Run /init as init process")
}

/// A horizontal bar chart (SVG) of the handler time per exit reason, labelled with the
/// count and the share of the total.
pub fn svg_chart(title: &str, exits: &[ExitCount]) -> String {
    let total: u64 = exits.iter().map(|e| e.ticks).sum::<u64>().max(1);
    let max = exits.iter().map(|e| e.ticks).max().unwrap_or(1).max(1);
    let (row, left, width) = (26u64, 170u64, 520u64);
    let height = 60 + row * exits.len() as u64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"monospace\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"14\">{}</text>\n",
        left + width + 260,
        escape(title)
    );
    for (i, e) in exits.iter().enumerate() {
        let y = 44 + row * i as u64;
        let w = (e.ticks.saturating_mul(width) / max).max(1);
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{w}\" height=\"{}\" fill=\"#4a7ebb\"/>\n\
             <text x=\"{}\" y=\"{}\">{} ticks, {} exits, {:.1}%</text>\n",
            y + 14,
            escape(&e.reason),
            row - 8,
            left + w + 6,
            y + 14,
            e.ticks,
            e.count,
            e.ticks as f64 * 100.0 / total as f64
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[linux +1989000000] [   19.909212] Run /init as init process\n\
[linux +1990000000] linux-init: reached /init\n\
partition linux: vcpu 0 exits: cpuid 1390 (avg 102 tsc), hlt 1 (avg 35 tsc), io_instruction 52750 (avg 8256 tsc) (handler time: 1 exit in 16 of each reason timed)\n\
partition linux: vcpu 1 exits: cpuid 10 (avg 100 tsc), io_instruction 50 (avg 4000 tsc) (handler time: 1 exit in 16 of each reason timed)\n\
partition svc: vcpu 0 exits: vmcall 13 (avg 751165 tsc)\n";

    #[test]
    fn exits_are_summed_over_vcpus_and_sorted_by_time() {
        let e = exit_counts(LOG, PARTITION);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0], ExitCount { reason: "io_instruction".into(), count: 52800, ticks: 52750 * 8256 + 50 * 4000 });
        assert_eq!(e[1], ExitCount { reason: "cpuid".into(), count: 1400, ticks: 1390 * 102 + 1000 });
        assert_eq!(e[2].reason, "hlt");
        assert!(exit_counts(LOG, "nobody").is_empty());
    }

    #[test]
    fn boot_to_init_comes_from_the_console_stamp() {
        assert_eq!(boot_to_init_ticks(LOG), Some(1_989_000_000));
        assert_eq!(boot_to_init_ticks("[linux] Run /init as init process\n"), None);
    }

    #[test]
    fn the_chart_has_a_bar_per_reason() {
        let svg = svg_chart("t <x>", &exit_counts(LOG, PARTITION));
        assert_eq!(svg.matches("<rect x=").count(), 3);
        assert!(svg.contains("t &lt;x&gt;") && svg.ends_with("</svg>\n"));
    }
}
