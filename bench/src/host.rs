//! What a run was measured on, process CPU and memory counters, and core pinning.

use std::time::Duration;

use serde::Serialize;

/// The `host` object of the report.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    /// Soft RLIMIT_MEMLOCK; left out when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memlock_bytes: Option<u64>,
}

impl HostInfo {
    pub fn detect() -> HostInfo {
        HostInfo {
            cpu: cpu_model().unwrap_or_else(|| "unknown".to_string()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: kernel_release().unwrap_or_else(|| "unknown".to_string()),
            memlock_bytes: memlock_bytes(),
        }
    }
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_model(&cpuinfo)
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "model name")
        .map(|(_, value)| value.trim().to_string())
}

fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain old data; uname fills it and returns 0 on success.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

fn memlock_bytes() -> Option<u64> {
    // SAFETY: rlimit is plain old data; getrlimit fills it and returns 0 on success.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

fn rusage_self() -> libc::rusage {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF cannot fail with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) failed");
    usage
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// User + system CPU time of the whole process (every thread: both ends of a pair count).
pub fn process_cpu_time() -> Duration {
    let usage = rusage_self();
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// CPU time the whole machine spent busy (user, nice, system, irq, softirq, steal over all
/// cores, from /proc/stat), or `None` where /proc/stat is unreadable. The difference between its
/// growth and [`process_cpu_time`]'s over a run is what other processes took meanwhile: on a
/// shared machine that is the figure that says whether a run was disturbed.
pub fn machine_busy_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_busy_ticks(&stat)
        .map(|ticks| Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64))
}

fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy = [0usize, 1, 2, 5, 6, 7];
    (fields.len() >= 8).then(|| busy.iter().map(|&i| fields[i]).sum())
}

/// Peak resident set size of the process so far (Linux reports ru_maxrss in KiB). It never goes
/// down, so a run's figure is the peak of the process up to the end of that run.
pub fn peak_rss_bytes() -> u64 {
    rusage_self().ru_maxrss as u64 * 1024
}

/// Which cores the two ends run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub server_core: Option<usize>,
    pub client_core: Option<usize>,
}

impl Placement {
    /// Server on core 0 and client on core 1 when the process may use both; unpinned otherwise.
    pub fn detect() -> Placement {
        let ids: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|c| c.id)
            .collect();
        if ids.contains(&0) && ids.contains(&1) {
            Placement {
                server_core: Some(0),
                client_core: Some(1),
            }
        } else {
            Placement {
                server_core: None,
                client_core: None,
            }
        }
    }
}

/// Pins the calling thread; a `None` core leaves it where the scheduler puts it.
pub fn pin_current_thread(core: Option<usize>) {
    if let Some(id) = core {
        // A refused pin only costs precision, not correctness; the report says where we asked.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_parsed_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n";
        assert_eq!(parse_cpu_model(text).as_deref(), Some("AMD EPYC 9R14"));
        assert_eq!(parse_cpu_model("processor: 0\n"), None);
    }

    #[test]
    fn busy_ticks_skip_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(parse_busy_ticks("cpu  1 2\n"), None);
        assert!(machine_busy_cpu_time().is_some());
    }

    #[test]
    fn host_counters_are_plausible() {
        let host = HostInfo::detect();
        assert!(host.cores >= 1);
        assert!(!host.kernel.is_empty());
        let before = process_cpu_time();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(process_cpu_time() >= before);
        assert!(peak_rss_bytes() > 1 << 20);
    }
}
