//! The machine and its processes, from `/proc`: CPU model, cores, memory, load average,
//! the git commit, per-process CPU time (utime + stime) and resident memory, and which
//! CPUs a process may run on (pinning with `taskset`).

use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// What the report says about the machine.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MachineInfo {
    /// `nproc`.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal in MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the bench started.
    pub loadavg_start: f64,
    /// 1-minute load average when it ended.
    pub loadavg_end: f64,
    /// `git rev-parse HEAD` of the repository.
    pub git_commit: String,
    /// Whether the work tree had uncommitted changes.
    pub git_dirty: bool,
    /// Envoy's version line.
    pub envoy_version: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    read("/proc/loadavg")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Everything about the machine and the repository `repo`.
pub fn machine_info(repo: &Path) -> MachineInfo {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let memory_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    let envoy_version = std::env::var("KVGATE_ENVOY")
        .ok()
        .and_then(|cmd| {
            let mut parts = cmd.split_whitespace();
            let bin = parts.next()?;
            let out = Command::new(bin)
                .args(parts)
                .arg("--version")
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_default();
    MachineInfo {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        memory_mib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        loadavg_start: loadavg(),
        loadavg_end: 0.0,
        git_commit: git(repo, &["rev-parse", "HEAD"]).unwrap_or_default(),
        git_dirty: git(repo, &["status", "--porcelain"]).is_some_and(|s| !s.is_empty()),
        envoy_version,
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The process actually doing the work of launcher process `pid`: itself, or — when it
/// is a wrapper such as `func-e run` — its descendant whose name is `name`.
pub fn find_process(pid: u32, name: &str) -> u32 {
    if comm(pid).as_deref() == Some(name) {
        return pid;
    }
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for child in children(p) {
            if comm(child).as_deref() == Some(name) {
                return child;
            }
            frontier.push(child);
        }
    }
    pid
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Resident memory of `pid`: (VmRSS, VmHWM) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The CPUs this process may run on (`Cpus_allowed_list` in `/proc/self/status`).
pub fn allowed_cpus() -> Vec<u32> {
    read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| parse_cpu_list(l.trim()))
        .unwrap_or_default()
}

/// `0-2,5` → `[0, 1, 2, 5]` (the kernel's CPU list format).
pub fn parse_cpu_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

/// `[0, 1, 3]` → `0,1,3` (what `taskset -c` takes).
pub fn cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Pins every thread of process `pid` to `cpus` (`taskset -a -p -c`); whether it worked.
/// Threads it starts later inherit the affinity of the thread that starts them.
pub fn pin(pid: u32, cpus: &[u32]) -> bool {
    !cpus.is_empty()
        && Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu_list(cpus), &pid.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The CPUs process `pid` may run on now.
pub fn cpus_of(pid: u32) -> Vec<u32> {
    read(&format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| parse_cpu_list(l.trim()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me, clock_ticks()).unwrap() >= 0.0);
        let (rss, hwm) = rss_kib(me).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert_eq!(find_process(me, "no-such-name"), me);
        assert!(machine_info(Path::new(".")).nproc >= 1);
        assert!(!allowed_cpus().is_empty());
        assert_eq!(cpus_of(me), allowed_cpus());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5"), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("3"), vec![3]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
        assert_eq!(cpu_list(&[0, 1, 3]), "0,1,3");
    }
}
