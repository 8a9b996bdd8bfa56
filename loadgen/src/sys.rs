//! What loadgen measures outside its own sockets: its CPU time (getrusage), a target process's CPU
//! time and RSS (/proc/PID/stat, /proc/PID/status) and the kernel's TCP socket memory
//! (/proc/net/sockstat). Parsers are separate from the file reads so they can be tested.

use std::fs;
use std::io;

/// CPU seconds (user + system) this process has used.
pub fn self_cpu_s() -> f64 {
    // SAFETY: rusage is plain old data, so all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage owned by this frame; getrusage only writes it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in clock ticks from the text of /proc/PID/stat. The command name (field 2) is
/// in parentheses and may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds (user + system) process `pid` has used.
pub fn proc_cpu_s(pid: u32) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })?;
    Ok(ticks as f64 / clk_tck())
}

/// VmRSS in KiB from the text of /proc/PID/status.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size of process `pid`, KiB.
pub fn proc_rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss_kib(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status: no VmRSS"),
        )
    })
}

/// The "mem" value (pages) of the TCP line of /proc/net/sockstat.
pub fn parse_sockstat_tcp_mem(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Pages of memory the kernel's TCP sockets use now (system-wide).
pub fn sockstat_mem_pages() -> Option<u64> {
    parse_sockstat_tcp_mem(&fs::read_to_string("/proc/net/sockstat").ok()?)
}

/// Size of the ephemeral port range (net.ipv4.ip_local_port_range).
pub fn ephemeral_ports() -> Option<u64> {
    let t = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = t.split_whitespace().map(|v| v.parse::<u64>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(hi.saturating_sub(lo) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_command_name() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 \
                    12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(proc_cpu_s(pid).unwrap() >= 0.0);
        assert!(proc_rss_kib(pid).unwrap() > 0);
        assert!(self_cpu_s() > 0.0);
    }

    #[test]
    fn vmrss_and_sockstat() {
        assert_eq!(
            parse_vmrss_kib("Name:\tx\nVmPeak:\t 10 kB\nVmRSS:\t    5120 kB\n"),
            Some(5120)
        );
        let s =
            "sockets: used 300\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 7\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_sockstat_tcp_mem(s), Some(7));
        assert!(sockstat_mem_pages().is_some());
    }
}
