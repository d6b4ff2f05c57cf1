//! What benchmarks read about a process they started from `/proc`: CPU time and memory, the
//! same way for every daemon they compare.

use std::time::Duration;

/// CPU time (user + system, all threads) process `pid` has used so far; zero when it cannot
/// be read (the process is gone).
pub fn cpu_time(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name (which may hold spaces and parentheses):
    // the rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Duration::from_millis((field(14) + field(15)) * 10)
}

/// Peak resident set size (VmHWM) of process `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident set size now (VmRSS) of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let before = cpu_time(me);
        // Burn some CPU: the figure is in 10 ms ticks.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_time(me) > before, "CPU time did not grow");
        let (peak, now) = (peak_rss_kib(me).unwrap(), rss_kib(me).unwrap());
        // The kernel updates VmHWM lazily: it may lag VmRSS by a few pages.
        assert!(peak > 0 && now > 0, "VmHWM {peak} KiB, VmRSS {now} KiB");
        // A process that does not exist.
        assert_eq!(cpu_time(u32::MAX), Duration::ZERO);
        assert_eq!(peak_rss_kib(u32::MAX), None);
    }
}
