//! Two network namespaces joined by a veth pair, for tests on an impaired link (root only).
//!
//! Names are unique per run (pid + random), and [`NetnsPair`]'s drop deletes the nft tables it
//! added and both namespaces, which removes the veth pair with them; it runs on failure too
//! (unwinding). A node enters a namespace on its own thread with [`enter_netns`] before creating
//! its executor, so its sockets live there while the test stays one process.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::subnet::random_u64;

/// Tools the namespace tests need, with the package that provides them on Debian.
const TOOLS: [(&str, &str, &str); 3] = [
    ("ip", "-V", "iproute2"),
    ("tc", "-V", "iproute2"),
    ("nft", "--version", "nftables"),
];

/// Why these tests cannot run here, or Ok when they can.
pub fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespace tests need root (CAP_NET_ADMIN)".into());
    }
    for (tool, version_flag, package) in TOOLS {
        let found = Command::new(tool)
            .arg(version_flag)
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return Err(format!(
                "`{tool}` is missing: install it with `apt-get install -y {package}`"
            ));
        }
    }
    Ok(())
}

/// True when running in CI (`CI=true`), where a test must not skip silently.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Checks [`prerequisites`]: returns true when the test can run. Otherwise prints a SKIP notice
/// and returns false, or panics with the reason under CI.
pub fn can_run(test: &str) -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(reason) if in_ci() => panic!("{test}: cannot run under CI=true: {reason}"),
        Err(reason) => {
            println!("SKIP {test}: {reason} (set CI=true to make this a failure)");
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

/// Runs a command; Err carries the command line and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let line = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("`{line}` could not start: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One side of the pair.
#[derive(Clone, Debug)]
pub struct Side {
    pub netns: String,
    pub veth: String,
    pub addr: Ipv4Addr,
}

impl Side {
    /// Runs `program args` inside this side's namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["netns", "exec", self.netns.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

/// Two namespaces `a` and `b`, with `a.addr/24` and `b.addr/24` on the two ends of a veth pair.
pub struct NetnsPair {
    pub a: Side,
    pub b: Side,
    /// nft tables added through [`NetnsPair::add_loss`]: (side, table name).
    nft_tables: Vec<(Side, String)>,
    /// Namespaces created so far (all of them once `create` returns).
    created: Vec<String>,
}

impl NetnsPair {
    pub fn create() -> Result<NetnsPair, String> {
        let tag = format!("{:06x}", random_u64() & 0xff_ffff);
        let prefix = format!("icn-{}-{tag}", std::process::id());
        let side = |name: &str, last_octet: u8| Side {
            netns: format!("{prefix}-{name}"),
            // Interface names are at most 15 bytes.
            veth: format!("icn{tag}{name}"),
            addr: Ipv4Addr::new(10, 77, 0, last_octet),
        };
        let mut pair = NetnsPair {
            a: side("a", 1),
            b: side("b", 2),
            nft_tables: Vec::new(),
            created: Vec::new(),
        };
        // On error, `pair` drops here and removes whatever was created.
        pair.build()?;
        Ok(pair)
    }

    fn build(&mut self) -> Result<(), String> {
        for side in [self.a.clone(), self.b.clone()] {
            run("ip", &["netns", "add", &side.netns])?;
            self.created.push(side.netns.clone());
        }
        // Both ends are created inside their namespaces: nothing ever appears in ours.
        run(
            "ip",
            &[
                "link",
                "add",
                &self.a.veth,
                "netns",
                &self.a.netns,
                "type",
                "veth",
                "peer",
                "name",
                &self.b.veth,
                "netns",
                &self.b.netns,
            ],
        )?;
        for side in [&self.a, &self.b] {
            let cidr = format!("{}/24", side.addr);
            run(
                "ip",
                &["-n", &side.netns, "addr", "add", &cidr, "dev", &side.veth],
            )?;
            run("ip", &["-n", &side.netns, "link", "set", &side.veth, "up"])?;
            run("ip", &["-n", &side.netns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Caps what `side` sends on its veth at `rate` (tc syntax, e.g. "50mbit") with a token
    /// bucket filter.
    pub fn add_rate_cap(&self, side: &Side, rate: &str) -> Result<(), String> {
        run(
            "tc",
            &[
                "-n",
                &side.netns,
                "qdisc",
                "add",
                "dev",
                &side.veth,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "64kb",
                "latency",
                "50ms",
            ],
        )
        .map(drop)
    }

    /// Makes `side` segment its GSO batches into single packets before they leave its veth
    /// (`gso_max_segs 1`), so the other side sees, and can drop, packets one by one. The
    /// application still sends with UDP GSO; only the device refuses super-packets.
    pub fn segment_before_sending(&self, side: &Side) -> Result<(), String> {
        run(
            "ip",
            &[
                "-n",
                &side.netns,
                "link",
                "set",
                "dev",
                &side.veth,
                "gso_max_segs",
                "1",
            ],
        )
        .map(drop)
    }

    /// Drops one in `one_in` packets arriving at `side` on its veth, at random (nft `numgen
    /// random` in the prerouting hook), with a counter read by [`NetnsPair::dropped_packets`].
    ///
    /// The drop is on arrival rather than in the sender's output hook: a packet dropped in the
    /// output hook fails the sender's `sendmsg` with EPERM (a local firewall, not a lossy link),
    /// and it would drop a whole GSO batch at once.
    pub fn add_ingress_loss(&mut self, side: &Side, one_in: u32) -> Result<(), String> {
        let table = format!("icn_loss_{}", random_u64() as u16);
        side.exec("nft", &["add", "table", "inet", &table])?;
        self.nft_tables.push((side.clone(), table.clone()));
        side.exec(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                &table,
                "in",
                "{ type filter hook prerouting priority 0; policy accept; }",
            ],
        )?;
        let modulus = one_in.to_string();
        side.exec(
            "nft",
            &[
                "add", "rule", "inet", &table, "in", "iifname", &side.veth, "numgen", "random",
                "mod", &modulus, "0", "counter", "drop",
            ],
        )
        .map(drop)
    }

    /// Packets the loss rules of `side` dropped so far.
    pub fn dropped_packets(&self, side: &Side) -> Result<u64, String> {
        let mut total = 0;
        for (owner, table) in &self.nft_tables {
            if owner.netns != side.netns {
                continue;
            }
            let listing = side.exec("nft", &["list", "table", "inet", table])?;
            total += parse_counter_packets(&listing)
                .ok_or_else(|| format!("no counter in nft table {table}: {listing}"))?;
        }
        Ok(total)
    }
}

/// The packet count of the first `counter packets N bytes M` in an nft listing.
fn parse_counter_packets(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    while let Some(word) = words.next() {
        if word == "packets" {
            return words.next()?.parse().ok();
        }
    }
    None
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for (side, table) in self.nft_tables.drain(..) {
            if let Err(error) = side.exec("nft", &["delete", "table", "inet", &table]) {
                eprintln!("cleanup: {error}");
            }
        }
        // Deleting a namespace destroys the veth end inside it, and with it the pair.
        for netns in self.created.drain(..) {
            if let Err(error) = run("ip", &["netns", "del", &netns]) {
                eprintln!("cleanup: {error}");
            }
        }
    }
}

/// Moves the calling thread into network namespace `netns` (created by `ip netns add`). Sockets
/// the thread creates afterwards live there; other threads are not affected.
pub fn enter_netns(netns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: `file` is an open namespace file for the duration of the call; setns changes only
    // this thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns({path}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_packets_are_parsed() {
        let listing = "table inet t {\n chain out {\n numgen random mod 10 0 counter packets 42 bytes 6300 drop\n }\n}";
        assert_eq!(parse_counter_packets(listing), Some(42));
        assert_eq!(parse_counter_packets("table inet t {}"), None);
    }
}
