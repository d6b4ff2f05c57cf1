//! What benchmarks read about a process they started from `/proc`: CPU time and memory, the
//! same way for every daemon they compare.

use std::time::Duration;

/// CPU time (user + system, all threads) process `pid` has used so far; zero when it cannot
/// be read (the process is gone).
pub fn cpu_time(pid: u32) -> Duration {
    // USER_HZ is 100 on Linux; utime and stime are fields 14 and 15.
    let ticks = |n| stat_field(pid, n).unwrap_or(0);
    Duration::from_millis((ticks(14) + ticks(15)) * 10)
}

/// Numeric field `n` of `/proc/PID/stat`, numbered as in proc(5) (4 the parent, 5 the
/// process group, 14 utime); `None` for fields 1–3, or when it cannot be read. The fields are
/// counted from the ")" that ends the command name, which may hold spaces and parentheses.
pub fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    // The rest starts at field 3 (state).
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
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
        // Fields by proc(5)'s numbers: 4 the parent, 5 the process group; 1-3 are not numbers
        // after the command name.
        assert_eq!(
            stat_field(me, 4),
            Some(u64::from(std::os::unix::process::parent_id()))
        );
        assert!(stat_field(me, 5).is_some_and(|g| g > 0));
        assert_eq!(stat_field(me, 2), None);
        // A process that does not exist.
        assert_eq!(cpu_time(u32::MAX), Duration::ZERO);
        assert_eq!(stat_field(u32::MAX, 4), None);
        assert_eq!(peak_rss_kib(u32::MAX), None);
    }
}
