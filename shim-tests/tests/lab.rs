//! The lab itself: reachability across the router, moves, teardown.
//! Needs root (network namespaces).

use std::net::IpAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use shim_tests::lab::{Lab, Link, MoveKind, Node};

fn addrs_of(lab: &Lab, node: Node) -> String {
    let out = lab
        .exec_cmd(node, ["ip", "-o", "address", "show"])
        .output()
        .expect("run ip in the lab");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn has_addr(lab: &Lab, node: Node, addr: impl Into<IpAddr>) -> bool {
    let addr = addr.into().to_string();
    addrs_of(lab, node)
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(addr.as_str()))
}

#[test]
fn ping_across_move_and_ping_again() {
    let mut lab = Lab::up();
    assert_eq!(lab.mobile_link, Link::A);
    assert_eq!(lab.mobile_ip, lab.mobile_ip_a);
    assert!(lab.ping(Node::Corr, lab.mobile_ip), "{}", lab.status());
    assert!(lab.ping(Node::Corr, lab.mobile_ip6), "{}", lab.status());
    assert!(lab.ping(Node::Mobile, lab.corr_ip), "{}", lab.status());
    assert!(lab.ping(Node::Mobile, lab.reg_ip), "{}", lab.status());
    assert!(lab.ping(Node::Spare, lab.corr_ip6), "{}", lab.status());
    assert!(!has_addr(&lab, Node::Mobile, lab.mobile_ip_b));

    // Break-before-make, a -> b.
    let old = lab.mobile_ip;
    let new = lab.move_mobile(MoveKind::BreakBeforeMake);
    assert_eq!(new, lab.mobile_ip_b);
    assert_eq!(lab.mobile_link, Link::B);
    assert_eq!(lab.mobile_ip6, lab.mobile_ip6_b);
    assert!(lab.ping(Node::Corr, lab.mobile_ip), "{}", lab.status());
    assert!(lab.ping(Node::Corr, lab.mobile_ip6), "{}", lab.status());
    assert!(!has_addr(&lab, Node::Mobile, old));
    assert!(!has_addr(&lab, Node::Mobile, lab.mobile_ip6_a));
    assert!(!lab.ping_tries(Node::Corr, old, 1));

    // Make-before-break, b -> a.
    let old = lab.mobile_ip;
    let new = lab.move_mobile(MoveKind::MakeBeforeBreak(Duration::from_millis(200)));
    assert_eq!(new, lab.mobile_ip_a);
    assert!(lab.ping(Node::Corr, new), "{}", lab.status());
    assert!(lab.ping(Node::Corr, lab.mobile_ip6), "{}", lab.status());
    assert!(!has_addr(&lab, Node::Mobile, old));

    // Offline for a moment, then on link b.
    let new = lab.move_mobile(MoveKind::BreakBeforeMakeGap(Duration::from_millis(100)));
    assert_eq!(new, lab.mobile_ip_b);
    assert!(lab.ping(Node::Corr, new), "{}", lab.status());

    // The correspondent moves too.
    let old = lab.corr_ip;
    let new = lab.move_corr();
    assert_eq!(new, lab.corr_ip_b);
    assert_eq!(lab.corr_link, Link::B);
    assert!(lab.ping(Node::Mobile, new), "{}", lab.status());
    assert!(lab.ping(Node::Mobile, lab.corr_ip6), "{}", lab.status());
    assert!(!has_addr(&lab, Node::Corr, old));
}

#[test]
fn make_before_break_keeps_both_addresses_during_the_overlap() {
    let mut lab = Lab::up();
    let mut child = lab
        .move_cmd(
            Node::Mobile,
            Some(Link::B),
            MoveKind::MakeBeforeBreak(Duration::from_secs(1)),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut both = false;
    for _ in 0..100 {
        if has_addr(&lab, Node::Mobile, lab.mobile_ip_b) {
            both = has_addr(&lab, Node::Mobile, lab.mobile_ip_a);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(both, "{}", lab.status());
    assert!(lab.ping(Node::Corr, lab.mobile_ip_b), "{}", lab.status());
    assert!(child.wait().unwrap().success());
    lab.refresh();
    assert_eq!(lab.mobile_link, Link::B);
    assert_eq!(lab.mobile_ip, lab.mobile_ip_b);
    assert!(!has_addr(&lab, Node::Mobile, lab.mobile_ip_a));
}

#[test]
fn exec_runs_in_the_node_and_names_fail_at_once() {
    let lab = Lab::up();
    assert!(addrs_of(&lab, Node::Reg).contains(&lab.reg_ip.to_string()));
    assert!(addrs_of(&lab, Node::Spare).contains(&lab.spare_ip.to_string()));
    assert!(addrs_of(&lab, Node::Router).contains(lab.var("ROUTER_MOBILE_A_IP").unwrap()));
    let resolv = lab
        .exec_cmd(Node::Mobile, ["cat", "/etc/resolv.conf"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&resolv.stdout).contains("nameserver 127.0.0.1"));
    // An unknown name fails without waiting on an unreachable DNS server
    // (timeout's 124 would mean it hung).
    let status = lab
        .exec_cmd(
            Node::Mobile,
            ["timeout", "5", "getent", "hosts", "no-such-host.invalid"],
        )
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "getent: {status}");
}

#[test]
fn drop_takes_the_lab_down_even_on_panic() {
    static SEEN: Mutex<Option<(String, Child)>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::up();
        // A process left running in the lab is ended by the teardown.
        let child = lab.exec_cmd(Node::Spare, ["sleep", "600"]).spawn().unwrap();
        *SEEN.lock().unwrap() = Some((lab.ns_mobile.clone(), child));
        panic!("test panic inside a lab");
    });
    assert!(result.is_err());
    let (ns, mut child) = SEEN.lock().unwrap().take().unwrap();
    assert!(!Path::new("/run/netns").join(&ns).exists(), "{ns} is left");
    assert!(
        !Path::new("/etc/netns").join(&ns).exists(),
        "/etc/netns/{ns} is left"
    );
    let status = child.try_wait().unwrap();
    assert!(status.is_some(), "the sleep left in the lab still runs");
}
