//! The network-namespace lab (`scripts/lab`, DESIGN.md §7) for end-to-end
//! tests.
//!
//! [`Lab::up`] builds a fresh lab with a unique id (a router namespace, the
//! correspondent `corr` and the `mobile` host with two links each, the
//! registrar host `reg` and a `spare` host), and dropping the [`Lab`] removes
//! it again: namespaces, veths, `/etc/netns` entries, the state file, and any
//! process still running inside. Drop runs during a panic's unwinding too, so
//! a failing test leaves nothing behind (a test process that is killed does:
//! `scripts/lab down --all` clears that).
//!
//! [`Lab::up_with`] builds a delayed lab instead (`scripts/lab up --rtt`): the
//! same names and addresses, plus a `wisp-netem` relay on every host link so
//! that any two hosts are [`LabOptions::rtt`] apart, with optional loss and
//! a bottleneck rate.
//!
//! Needs root and iproute2.
//!
//! ```no_run
//! use shim_tests::lab::{Lab, MoveKind, Node};
//! let mut lab = Lab::up();
//! assert!(lab.ping(Node::Corr, lab.mobile_ip));
//! let old = lab.mobile_ip;
//! lab.move_mobile(MoveKind::BreakBeforeMake);
//! assert_ne!(lab.mobile_ip, old);
//! let out = lab.exec_cmd(Node::Mobile, ["ip", "-br", "addr"]).output().unwrap();
//! # drop(out);
//! ```
//!
//! ```no_run
//! use std::time::Duration;
//! use shim_tests::lab::{Lab, LabOptions};
//! let lab = Lab::up_with(LabOptions {
//!     rtt: Duration::from_millis(40),
//!     loss: 0.01,
//!     ..LabOptions::default()
//! });
//! # drop(lab);
//! ```

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A host of the lab: one network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// Forwards between every link.
    Router,
    /// The correspondent host; two links, one active at a time.
    Corr,
    /// The mobile host; two links ("wifi-a", "wifi-b"), one active at a time.
    Mobile,
    /// The registrar's host.
    Reg,
    /// A spare host: attacker, second mobile, target of an application move.
    Spare,
}

impl Node {
    pub const ALL: [Node; 5] = [
        Node::Router,
        Node::Corr,
        Node::Mobile,
        Node::Reg,
        Node::Spare,
    ];

    /// The name `scripts/lab` uses for the node.
    pub fn as_str(self) -> &'static str {
        match self {
            Node::Router => "router",
            Node::Corr => "corr",
            Node::Mobile => "mobile",
            Node::Reg => "reg",
            Node::Spare => "spare",
        }
    }
}

/// One of the two links of `corr` or `mobile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    A,
    B,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::A => "a",
            Link::B => "b",
        }
    }

    pub fn other(self) -> Link {
        match self {
            Link::A => Link::B,
            Link::B => Link::A,
        }
    }

    fn parse(s: &str) -> Option<Link> {
        match s {
            "a" => Some(Link::A),
            "b" => Some(Link::B),
            _ => None,
        }
    }
}

/// How a node changes links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// Remove the old addresses and default routes, then add the new ones.
    BreakBeforeMake,
    /// Remove the old addresses, stay without any for the given time (the
    /// host is offline), then add the new ones.
    BreakBeforeMakeGap(Duration),
    /// Add the new addresses with a preferred default route, keep the old
    /// ones for the given time, then remove them.
    MakeBeforeBreak(Duration),
}

/// The links of a delayed lab ([`Lab::up_with`], `scripts/lab up --rtt MS
/// --loss PCT --rate-mbit N`). Every host link gets a relay, so each value
/// holds between any two hosts (corr and mobile, mobile and reg, ...); a host
/// and the router are half the RTT apart. The default is relays that add
/// nothing (the baseline for measuring what they cost).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabOptions {
    /// Round-trip time between two hosts (each of the two host links on the
    /// way adds a quarter of it, one way, each way). Whole microseconds.
    pub rtt: Duration,
    /// Fraction of the packets lost each way between two hosts, 0.0 to
    /// below 1.0 (0.05 is 5 %).
    pub loss: f64,
    /// A bottleneck of this many Mbit/s each way on every host link.
    pub rate_mbit: Option<u32>,
}

impl LabOptions {
    /// The `scripts/lab up` arguments.
    fn args(&self) -> Vec<String> {
        assert!(
            (0.0..1.0).contains(&self.loss),
            "LabOptions::loss is a fraction in [0, 1): {}",
            self.loss
        );
        let mut v = vec![
            "--rtt".to_string(),
            format!("{:.3}", self.rtt.as_micros() as f64 / 1000.0),
        ];
        if self.loss > 0.0 {
            v.push("--loss".into());
            v.push(format!("{:.6}", self.loss * 100.0));
        }
        if let Some(r) = self.rate_mbit {
            assert!(r > 0, "LabOptions::rate_mbit must be above 0");
            v.push("--rate-mbit".into());
            v.push(r.to_string());
        }
        v
    }
}

/// A running lab. Addresses are those of `scripts/lab up`'s KEY=VALUE lines;
/// the "current" ones (`corr_ip`, `mobile_ip`, ...) follow the moves made
/// through this value (after a move spawned with [`Lab::move_cmd`], call
/// [`Lab::refresh`]).
#[derive(Debug)]
pub struct Lab {
    /// The lab id: its namespaces are `wisp-<id>-<node>`.
    pub id: String,
    pub ns_router: String,
    pub ns_corr: String,
    pub ns_mobile: String,
    pub ns_reg: String,
    pub ns_spare: String,

    /// The correspondent's current link and addresses.
    pub corr_link: Link,
    pub corr_ip: Ipv4Addr,
    pub corr_ip6: Ipv6Addr,
    pub corr_ip_a: Ipv4Addr,
    pub corr_ip_b: Ipv4Addr,
    pub corr_ip6_a: Ipv6Addr,
    pub corr_ip6_b: Ipv6Addr,

    /// The mobile host's current link and addresses.
    pub mobile_link: Link,
    pub mobile_ip: Ipv4Addr,
    pub mobile_ip6: Ipv6Addr,
    pub mobile_ip_a: Ipv4Addr,
    pub mobile_ip_b: Ipv4Addr,
    pub mobile_ip6_a: Ipv6Addr,
    pub mobile_ip6_b: Ipv6Addr,

    pub reg_ip: Ipv4Addr,
    pub reg_ip6: Ipv6Addr,
    pub spare_ip: Ipv4Addr,
    pub spare_ip6: Ipv6Addr,

    /// Every KEY=VALUE line (ROUTER_*_IP, *_IF, LAB_W, ...).
    pub vars: BTreeMap<String, String>,

    /// The relays' settings, for a lab from [`Lab::up_with`].
    pub options: Option<LabOptions>,

    /// Whether dropping this value takes the lab down.
    owner: bool,
}

/// The path of `scripts/lab` in this source tree.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shim-tests lives inside the workspace")
        .join("scripts")
        .join("lab")
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Exit status of `scripts/lab up --id ID` when the id is taken.
const EXIT_ID_TAKEN: i32 = 3;

impl Lab {
    /// Brings up a new lab; panics (with the script's error) if it can't.
    pub fn up() -> Lab {
        Lab::try_up().unwrap_or_else(|e| panic!("scripts/lab up: {e}"))
    }

    /// Brings up a new lab with a unique id: `r<pid in hex>n<counter>`, so
    /// labs left by a killed test process can be traced to it.
    pub fn try_up() -> Result<Lab, String> {
        Lab::try_up_opts(None)
    }

    /// Brings up a delayed lab (relays on every host link, see
    /// [`LabOptions`]); panics if it can't. The relay binary is
    /// [`crate::netem_bin`].
    pub fn up_with(options: LabOptions) -> Lab {
        Lab::try_up_opts(Some(options)).unwrap_or_else(|e| panic!("scripts/lab up: {e}"))
    }

    /// [`Lab::up_with`], with the script's error as a value.
    pub fn try_up_with(options: LabOptions) -> Result<Lab, String> {
        Lab::try_up_opts(Some(options))
    }

    fn try_up_opts(options: Option<LabOptions>) -> Result<Lab, String> {
        let extra = options.as_ref().map(LabOptions::args).unwrap_or_default();
        for _ in 0..20 {
            let id = format!(
                "r{:x}n{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let mut cmd = Command::new(script());
            cmd.args(["up", "--id", &id]).args(&extra);
            if options.is_some() && std::env::var_os("WISP_NETEM").is_none() {
                cmd.env("WISP_NETEM", crate::netem_bin());
            }
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
            if out.status.code() == Some(EXIT_ID_TAKEN) {
                continue;
            }
            if !out.status.success() {
                return Err(format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            // From here on a Lab exists, so an error below still tears it down.
            let vars = parse_vars(&String::from_utf8_lossy(&out.stdout));
            return Lab::from_vars(id.clone(), vars, options).inspect_err(|_| down(&id));
        }
        Err("no free lab id".into())
    }

    fn from_vars(
        id: String,
        vars: BTreeMap<String, String>,
        options: Option<LabOptions>,
    ) -> Result<Lab, String> {
        fn get<T: FromStr>(vars: &BTreeMap<String, String>, key: &str) -> Result<T, String> {
            let v = vars
                .get(key)
                .ok_or_else(|| format!("scripts/lab printed no {key}"))?;
            v.parse()
                .map_err(|_| format!("scripts/lab printed a bad {key}: {v:?}"))
        }
        fn link(vars: &BTreeMap<String, String>, key: &str) -> Result<Link, String> {
            vars.get(key)
                .and_then(|v| Link::parse(v))
                .ok_or_else(|| format!("scripts/lab printed no valid {key}"))
        }
        let v = &vars;
        if v.get("LAB").map(String::as_str) != Some(id.as_str()) {
            return Err(format!(
                "scripts/lab printed LAB={:?}, expected {id}",
                v.get("LAB")
            ));
        }
        Ok(Lab {
            ns_router: get(v, "NS_ROUTER")?,
            ns_corr: get(v, "NS_CORR")?,
            ns_mobile: get(v, "NS_MOBILE")?,
            ns_reg: get(v, "NS_REG")?,
            ns_spare: get(v, "NS_SPARE")?,
            corr_link: link(v, "CORR_LINK")?,
            corr_ip: get(v, "CORR_IP")?,
            corr_ip6: get(v, "CORR_IP6")?,
            corr_ip_a: get(v, "CORR_IP_A")?,
            corr_ip_b: get(v, "CORR_IP_B")?,
            corr_ip6_a: get(v, "CORR_IP6_A")?,
            corr_ip6_b: get(v, "CORR_IP6_B")?,
            mobile_link: link(v, "MOBILE_LINK")?,
            mobile_ip: get(v, "MOBILE_IP")?,
            mobile_ip6: get(v, "MOBILE_IP6")?,
            mobile_ip_a: get(v, "MOBILE_IP_A")?,
            mobile_ip_b: get(v, "MOBILE_IP_B")?,
            mobile_ip6_a: get(v, "MOBILE_IP6_A")?,
            mobile_ip6_b: get(v, "MOBILE_IP6_B")?,
            reg_ip: get(v, "REG_IP")?,
            reg_ip6: get(v, "REG_IP6")?,
            spare_ip: get(v, "SPARE_IP")?,
            spare_ip6: get(v, "SPARE_IP6")?,
            id,
            vars,
            options,
            owner: true,
        })
    }

    /// The value of one KEY=VALUE line, e.g. `var("ROUTER_MOBILE_A_IP")`.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The namespace of a node.
    pub fn ns(&self, node: Node) -> &str {
        match node {
            Node::Router => &self.ns_router,
            Node::Corr => &self.ns_corr,
            Node::Mobile => &self.ns_mobile,
            Node::Reg => &self.ns_reg,
            Node::Spare => &self.ns_spare,
        }
    }

    /// A command that runs `args` (program first) in the node's namespace,
    /// ready to configure (env, stdio) and spawn. The spawned process is the
    /// program itself (the script and `ip netns exec` exec into it), so
    /// killing the child kills the program.
    pub fn exec_cmd<I, S>(&self, node: Node, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(script());
        cmd.args(["exec", "--id", &self.id, node.as_str()])
            .args(args);
        cmd
    }

    /// Runs `f` on a new thread that has joined the node's network namespace
    /// (`setns`, which only moves that thread) and returns what it returns;
    /// a panic in `f` is resumed here. Sockets made inside stay in that
    /// namespace wherever they are used afterwards, so a test can make its
    /// connections in-process, without a helper program.
    pub fn in_node<T, F>(&self, node: Node, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        use std::os::fd::AsRawFd;
        let path = Path::new("/run/netns").join(self.ns(node));
        let ns =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let thread = std::thread::spawn(move || {
            // SAFETY: setns(2) on an open namespace file, for this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            drop(ns);
            f()
        });
        thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Whether `addr` answers from `node` (up to 3 tries of 1 s).
    pub fn ping(&self, node: Node, addr: impl Into<IpAddr>) -> bool {
        self.ping_tries(node, addr, 3)
    }

    /// Whether `addr` answers from `node` within `tries` tries of 1 s each.
    /// ICMP echo where `ping` is installed, else a TCP SYN that a RST or an
    /// accept must answer.
    pub fn ping_tries(&self, node: Node, addr: impl Into<IpAddr>, tries: u32) -> bool {
        let addr = addr.into().to_string();
        let tries = tries.max(1).to_string();
        self.script_cmd(["ping", "--tries", &tries, node.as_str(), &addr])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Moves the mobile host to its other link; returns its new IPv4 address
    /// (the fields are updated too).
    pub fn move_mobile(&mut self, kind: MoveKind) -> Ipv4Addr {
        self.move_node(Node::Mobile, None, kind);
        self.mobile_ip
    }

    /// Moves the correspondent to its other link, break-before-make; returns
    /// its new IPv4 address.
    pub fn move_corr(&mut self) -> Ipv4Addr {
        self.move_node(Node::Corr, None, MoveKind::BreakBeforeMake);
        self.corr_ip
    }

    /// Moves `node` (Mobile or Corr) to link `to` (default: the other one).
    /// Blocks for the whole move (a make-before-break overlap included); to
    /// act during it, spawn [`Lab::move_cmd`] instead.
    pub fn move_node(&mut self, node: Node, to: Option<Link>, kind: MoveKind) {
        let out = self
            .move_cmd(node, to, kind)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
        assert!(
            out.status.success(),
            "scripts/lab move --node {} failed: {}",
            node.as_str(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.merge(&String::from_utf8_lossy(&out.stdout));
    }

    /// The `scripts/lab move` command for `node`, to spawn; its stdout gets
    /// the new `MOBILE_IP=`/`CORR_IP=`... lines as soon as the new addresses
    /// are up. Call [`Lab::refresh`] once it has run.
    pub fn move_cmd(&self, node: Node, to: Option<Link>, kind: MoveKind) -> Command {
        assert!(
            matches!(node, Node::Mobile | Node::Corr),
            "only mobile and corr have two links"
        );
        let mut cmd = self.script_cmd(["move", "--node", node.as_str()]);
        if let Some(to) = to {
            cmd.args(["--to", to.as_str()]);
        }
        match kind {
            MoveKind::BreakBeforeMake => {}
            MoveKind::BreakBeforeMakeGap(d) => {
                cmd.args(["--gap", &secs(d)]);
            }
            MoveKind::MakeBeforeBreak(d) => {
                cmd.args(["--make-before-break", &secs(d)]);
            }
        }
        cmd
    }

    /// Re-reads the lab's state (after moves made outside this value).
    pub fn refresh(&mut self) {
        let out = self
            .script_cmd(["env"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
        assert!(
            out.status.success(),
            "scripts/lab env failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.merge(&String::from_utf8_lossy(&out.stdout));
    }

    /// `scripts/lab status`: addresses and routes of every node, for test
    /// failure messages.
    pub fn status(&self) -> String {
        match self.script_cmd(["status"]).output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(scripts/lab status: {e})"),
        }
    }

    /// What the relays of a delayed lab logged so far (their start lines;
    /// each adds its counters when it ends), or `None` for a plain lab.
    pub fn relay_log(&self) -> Option<String> {
        let dir = std::env::var_os("WISP_LAB_STATE_DIR").unwrap_or_else(|| "/run/wisp-lab".into());
        std::fs::read_to_string(Path::new(&dir).join(format!("{}.netem.log", self.id))).ok()
    }

    fn merge(&mut self, text: &str) {
        let mut vars = self.vars.clone();
        vars.extend(parse_vars(text));
        let new = Lab::from_vars(self.id.clone(), vars, self.options.clone())
            .unwrap_or_else(|e| panic!("lab {}: {e}", self.id));
        // The assignment drops the old value: only `new` may tear the lab down.
        self.owner = false;
        *self = new;
    }

    fn script_cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args.into_iter();
        let mut cmd = Command::new(script());
        cmd.args(args.next()).args(["--id", &self.id]).args(args);
        cmd
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owner {
            down(&self.id);
        }
    }
}

fn down(id: &str) {
    let status = Command::new(script())
        .args(["down", "--id", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("warning: scripts/lab down --id {id}: {status:?}");
    }
}

fn secs(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// The `KEY=VALUE` lines of `text`; other lines are ignored.
pub fn parse_vars(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value_lines() {
        let v = parse_vars("LAB=x1\nnoise\nMOBILE_IP=10.1.2.2\nlower=no\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v["LAB"], "x1");
        assert_eq!(v["MOBILE_IP"], "10.1.2.2");
    }

    #[test]
    fn seconds_for_the_script() {
        assert_eq!(secs(Duration::from_millis(1500)), "1.500");
        assert_eq!(secs(Duration::from_secs(2)), "2.000");
    }

    #[test]
    fn options_for_the_script() {
        let o = LabOptions {
            rtt: Duration::from_micros(40_500),
            loss: 0.05,
            rate_mbit: Some(100),
        };
        assert_eq!(
            o.args(),
            [
                "--rtt",
                "40.500",
                "--loss",
                "5.000000",
                "--rate-mbit",
                "100"
            ]
        );
        assert_eq!(LabOptions::default().args(), ["--rtt", "0.000"]);
    }

    #[test]
    fn script_is_found() {
        assert!(script().is_file(), "{}", script().display());
    }
}
