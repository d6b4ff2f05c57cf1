//! Network namespaces owned by a test: created with a unique name, removed (with every process
//! still inside) when dropped — also when the test panics.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::cmd::{self, Process};
use crate::{sys, Error};

/// The prefix of every namespace the lab creates; the test runner checks none is left.
pub const PREFIX: &str = "reeft-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (in this or a parallel process) uses: `reeft-<pid>-<n>-<tag>`.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{:x}-{n}-{tag}", std::process::id())
}

/// A network namespace created by the test; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name ending in `tag`, with `lo` up.
    pub fn new(tag: &str) -> Result<Netns, Error> {
        Netns::create(&unique_name(tag))
    }

    /// Creates a namespace with exactly this name, with `lo` up.
    pub fn create(name: &str) -> Result<Netns, Error> {
        cmd::run("ip", ["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes charge of an existing namespace (it is deleted when the guard drops).
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
        }
    }

    /// Gives up the guard: the namespace outlives this value (for a lab that stays up between
    /// commands); returns its name.
    pub fn persist(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a CNI runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args…` inside the namespace to completion; returns stdout.
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        cmd::output(c)
    }

    /// Runs `ip -n <ns> args…`.
    pub fn ip<I, S>(&self, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        cmd::output(c)
    }

    /// Sets a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        self.run("sysctl", ["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Starts a long-running process inside the namespace; its output goes to `log`
    /// (or is discarded). The process is killed when the returned guard drops.
    pub fn spawn(
        &self,
        name: &str,
        program: &str,
        args: &[&str],
        log: Option<&std::path::Path>,
    ) -> Result<Process, Error> {
        let mut c = self.command(program);
        c.args(args);
        match log {
            Some(p) => {
                let f = File::create(p).map_err(|e| Error::io(p, e))?;
                let f2 = f.try_clone().map_err(|e| Error::io(p, e))?;
                c.stdout(f).stderr(f2);
            }
            None => {
                c.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        Process::spawn(name, c)
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace, and returns its result.
    /// Sockets created inside `f` stay in this namespace for their whole life.
    pub fn in_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let path = self.path();
        let handle = std::thread::spawn(move || -> std::io::Result<T> {
            let file = File::open(&path)?;
            sys::enter_netns(&file)?;
            f()
        });
        handle
            .join()
            .map_err(|_| Error::Other(format!("thread in namespace {} panicked", self.name)))?
            .map_err(|e| Error::Other(format!("in namespace {}: {e}", self.name)))
    }

    /// Pings `dst` from this namespace (`count` echo requests, `timeout` seconds each);
    /// returns the average round-trip time in milliseconds.
    pub fn ping(&self, dst: IpAddr, count: u32) -> Result<f64, Error> {
        let c = count.to_string();
        let out = self.run(
            "ping",
            ["-c", &c, "-i", "0.2", "-W", "2", "-q", &dst.to_string()],
        )?;
        parse_ping_avg(&out).ok_or_else(|| Error::Parse {
            what: "ping summary".into(),
            text: out.clone(),
        })
    }

    /// Opens a TCP listener inside this namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        self.in_ns(move || TcpListener::bind(addr))
    }

    /// Connects to `addr` from inside this namespace, sends `payload` and reads the echo of
    /// a peer that answers with the same bytes (see [`echo_once`]).
    pub fn tcp_exchange(&self, addr: SocketAddr, payload: &'static [u8]) -> Result<Vec<u8>, Error> {
        self.in_ns(move || {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(payload)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut back = Vec::new();
            s.read_to_end(&mut back)?;
            Ok(back)
        })
    }

    /// The kernel's IPv4 and IPv6 routes of the main table, as `ip -j route` shows them.
    pub fn routes(&self) -> Result<Vec<KernelRoute>, Error> {
        let mut all = Vec::new();
        for fam in ["-4", "-6"] {
            let out = self.ip(["-j", fam, "route", "show", "table", "main"])?;
            let mut r: Vec<KernelRoute> =
                serde_json::from_str(out.trim()).map_err(|e| Error::Parse {
                    what: format!("ip -j route: {e}"),
                    text: out,
                })?;
            all.append(&mut r);
        }
        Ok(all)
    }

    /// Process ids still running inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        cmd::run("ip", ["netns", "pids", &self.name])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still running inside would keep the namespace alive after `ip netns del`.
        for pid in self.pids() {
            let _ = cmd::run("kill", ["-9".to_string(), pid.to_string()]);
        }
        if let Err(e) = cmd::run("ip", ["netns", "del", &self.name]) {
            eprintln!("lab: could not delete namespace {}: {e}", self.name);
        }
    }
}

/// Accepts one connection on `l` (in a background thread) and echoes what it reads.
pub fn echo_once(l: TcpListener) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        s.write_all(&buf)?;
        Ok(())
    })
}

/// One route from `ip -j route`; only the fields tests look at.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub nexthops: Vec<KernelNextHop>,
}

/// One next hop of a multipath route from `ip -j route`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct KernelNextHop {
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub flags: Vec<String>,
}

fn parse_ping_avg(out: &str) -> Option<f64> {
    // iputils: "rtt min/avg/max/mdev = 0.041/0.052/0.063/0.011 ms";
    // busybox: "round-trip min/avg/max = 0.041/0.052/0.063 ms".
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    let nums = line.split('=').nth(1)?.trim();
    nums.split('/').nth(1)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_ping_avg;

    #[test]
    fn ping_summary_of_iputils_and_busybox() {
        let iputils = "3 packets transmitted, 3 received, 0% packet loss, time 402ms\n\
                       rtt min/avg/max/mdev = 0.041/0.052/0.063/0.011 ms\n";
        assert_eq!(parse_ping_avg(iputils), Some(0.052));
        let busybox = "3 packets transmitted, 3 packets received, 0% packet loss\n\
                       round-trip min/avg/max = 0.123/0.456/0.789 ms\n";
        assert_eq!(parse_ping_avg(busybox), Some(0.456));
        assert_eq!(parse_ping_avg("100% packet loss"), None);
    }
}
