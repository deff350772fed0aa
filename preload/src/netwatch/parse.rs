//! The rtnetlink wire format: datagrams from a NETLINK_ROUTE socket in,
//! typed [`NetEvent`]s out (and the only requests we send, dumps).
//!
//! Pure: no socket, no clock. Every length the kernel writes is checked
//! before it is trusted, because a bad length must cost us one skipped
//! message, never a panic or a loop that does not end (an `nlmsg_len` of 0
//! would otherwise never advance). Layouts and numbers are those of
//! `<linux/netlink.h>`, `<linux/rtnetlink.h>`, `<linux/if_link.h>` and
//! `<linux/if_addr.h>`, in
//! host byte order as the kernel writes them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// <linux/netlink.h>
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
/// The dump was interrupted by a change and may be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;

// <linux/rtnetlink.h>
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
const RTA_HDRLEN: usize = 4;
/// The top two bits of an attribute type are flags (NLA_F_NESTED,
/// NLA_F_NET_BYTEORDER), not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
/// A cache entry (an IPv6 exception, say), not a route anyone configured.
const RTM_F_CLONED: u32 = 0x200;
const RTMSG_LEN: usize = 12;

// <linux/if_link.h>, <linux/if.h>
const IFINFOMSG_LEN: usize = 16;
const IFF_UP: u32 = 0x1;
/// Operationally up (RFC 2863): administratively up and carrier present.
const IFF_RUNNING: u32 = 0x40;

// <linux/if_addr.h>
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFADDRMSG_LEN: usize = 8;

// <linux/socket.h>
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Something that happened to the host's addresses or routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// RTM_NEWADDR: an address appeared, or its flags changed (an IPv6
    /// address that finished duplicate address detection is announced
    /// again without [`AddrFlags::TENTATIVE`]).
    AddrAdded(IfAddr),
    /// RTM_DELADDR.
    AddrRemoved(IfAddr),
    /// RTM_NEWROUTE / RTM_DELROUTE in the main table.
    RouteChanged { removed: bool, route: Route },
    /// RTM_NEWLINK: sent for many reasons, among them a link going up or
    /// down. That one matters because nothing else may tell: a lost carrier
    /// changes no address and announces no route, and IPv4 flushes the
    /// routes of a link set down without an RTM_DELROUTE for them.
    LinkChanged(Link),
    /// RTM_DELLINK. Its addresses are announced gone separately.
    LinkRemoved { ifindex: u32 },
    /// The socket overran (ENOBUFS): events were lost, so here is the
    /// whole state as fresh dumps saw it. Never produced by [`parse`].
    Resync(Snapshot),
}

/// What dumps say the host has, to start from or to resynchronise to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub addrs: Vec<IfAddr>,
    pub links: Vec<Link>,
}

/// An interface and whether it can carry traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    /// IFF_UP and IFF_RUNNING.
    pub up: bool,
}

/// One address on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub flags: AddrFlags,
}

impl IfAddr {
    /// Does the kernel consider this the same address as `other` (so that
    /// a new message about it replaces, not adds)? IPv6 addresses are one
    /// per interface whatever the prefix; IPv4 ones may repeat with
    /// different prefixes.
    pub fn same_as(&self, other: &IfAddr) -> bool {
        self.ifindex == other.ifindex
            && self.addr == other.addr
            && (self.addr.is_ipv6() || self.prefix_len == other.prefix_len)
    }
}

/// `IFA_F_*` flags: the 32-bit `IFA_FLAGS` attribute when present, else
/// the 8-bit field of `ifaddrmsg` (which cannot hold the newer flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrFlags(pub u32);

impl AddrFlags {
    pub const OPTIMISTIC: u32 = 0x04;
    pub const DADFAILED: u32 = 0x08;
    pub const DEPRECATED: u32 = 0x20;
    pub const TENTATIVE: u32 = 0x40;

    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    /// Can a connection use it as its source now? A tentative address
    /// (duplicate address detection still running) cannot, unless it is
    /// optimistic (RFC 4429); one that failed detection never can. A
    /// deprecated address still can: it only should not be chosen for new
    /// connections, and the streams already on it keep working.
    pub fn usable(self) -> bool {
        !self.has(Self::DADFAILED) && (!self.has(Self::TENTATIVE) || self.has(Self::OPTIMISTIC))
    }
}

/// A main-table route, as much of it as tells a mover something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The unspecified address of the family for a default route.
    pub dst: IpAddr,
    pub dst_len: u8,
    /// None for a directly connected route, and for a multipath route
    /// (whose next hops are nested in RTA_MULTIPATH and not read here).
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub priority: Option<u32>,
    pub prefsrc: Option<IpAddr>,
}

/// The fixed header every netlink message starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

/// What one message said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Event(NetEvent),
    /// NLMSG_DONE: the end of a dump; `errno` is nonzero if the dump failed.
    Done {
        errno: i32,
    },
    /// NLMSG_ERROR: `errno` 0 is an acknowledgement.
    Error {
        errno: i32,
    },
    /// Well formed but of no interest: another family or table, a cached
    /// route, NOOP, a message type we did not ask for.
    Ignored,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub body: Body,
}

/// Everything one datagram held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Datagram {
    pub messages: Vec<Message>,
    /// Malformed messages skipped. A header whose length cannot be trusted
    /// ends the datagram (nothing after it can be found), counting one.
    pub errors: u32,
}

/// Parse one datagram as read from the socket.
pub fn parse(buf: &[u8]) -> Datagram {
    let mut out = Datagram::default();
    let mut rest = buf;
    while !rest.is_empty() {
        let Some((header, len)) = header(rest) else {
            out.errors += 1;
            break;
        };
        if len < NLMSG_HDRLEN || len > rest.len() {
            out.errors += 1;
            break;
        }
        match body(header.ty, &rest[NLMSG_HDRLEN..len]) {
            Some(body) => out.messages.push(Message { header, body }),
            None => out.errors += 1,
        }
        rest = rest.get(align4(len)..).unwrap_or(&[]);
    }
    out
}

/// What a dump request can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dump {
    Addresses,
    Links,
}

/// A dump request for every family. The payload is the fixed header of
/// the type asked for, zeroed (AF_UNSPEC): exactly that long, because a
/// kernel reads anything after it as attributes and complains of leftovers.
pub fn dump_request(what: Dump, seq: u32) -> Vec<u8> {
    let (ty, fixed) = match what {
        Dump::Addresses => (RTM_GETADDR, IFADDRMSG_LEN),
        Dump::Links => (RTM_GETLINK, IFINFOMSG_LEN),
    };
    let len = NLMSG_HDRLEN + fixed;
    let mut m = vec![0u8; len];
    m[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&ty.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[NLMSG_HDRLEN] = AF_UNSPEC;
    m
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn header(b: &[u8]) -> Option<(Header, usize)> {
    let len = u32_at(b, 0)? as usize;
    let h = Header {
        ty: u16_at(b, 4)?,
        flags: u16_at(b, 6)?,
        seq: u32_at(b, 8)?,
        pid: u32_at(b, 12)?,
    };
    Some((h, len))
}

/// None: malformed.
fn body(ty: u16, payload: &[u8]) -> Option<Body> {
    match ty {
        NLMSG_NOOP => Some(Body::Ignored),
        // The payload is the negated errno, then the request it answers.
        NLMSG_ERROR => Some(Body::Error {
            errno: errno(i32_at(payload, 0)?),
        }),
        // Older kernels sent DONE with no payload.
        NLMSG_DONE => Some(Body::Done {
            errno: i32_at(payload, 0).map_or(0, errno),
        }),
        RTM_NEWADDR | RTM_DELADDR => Some(match addr(payload)? {
            Some(a) if ty == RTM_NEWADDR => Body::Event(NetEvent::AddrAdded(a)),
            Some(a) => Body::Event(NetEvent::AddrRemoved(a)),
            None => Body::Ignored,
        }),
        RTM_NEWLINK | RTM_DELLINK => Some(match link(payload)? {
            Some(l) if ty == RTM_NEWLINK => Body::Event(NetEvent::LinkChanged(l)),
            Some(l) => Body::Event(NetEvent::LinkRemoved { ifindex: l.ifindex }),
            None => Body::Ignored,
        }),
        RTM_NEWROUTE | RTM_DELROUTE => Some(match route(payload)? {
            Some(route) => Body::Event(NetEvent::RouteChanged {
                removed: ty == RTM_DELROUTE,
                route,
            }),
            None => Body::Ignored,
        }),
        _ => Some(Body::Ignored),
    }
}

fn errno(negated: i32) -> i32 {
    negated.checked_neg().unwrap_or(i32::MAX)
}

/// `ifinfomsg`; its attributes say nothing we use. Outer None: malformed;
/// inner None: not about a link as such (a bridge sends its ports' state as
/// AF_BRIDGE link messages to the same group).
fn link(p: &[u8]) -> Option<Option<Link>> {
    let family = *p.first()?;
    let ifindex = u32::try_from(i32_at(p, 4)?).ok()?;
    let flags = u32_at(p, 8)?;
    if p.len() < IFINFOMSG_LEN {
        return None;
    }
    if family != AF_UNSPEC {
        return Some(None);
    }
    let up = flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING;
    Some(Some(Link { ifindex, up }))
}

/// `ifaddrmsg` + attributes. Outer None: malformed; inner None: not IP.
fn addr(p: &[u8]) -> Option<Option<IfAddr>> {
    let family = *p.first()?;
    let prefix_len = *p.get(1)?;
    let mut flags = u32::from(*p.get(2)?);
    let ifindex = u32_at(p, 4)?;
    if family != AF_INET && family != AF_INET6 {
        return Some(None);
    }
    let mut address = None;
    let mut local = None;
    for_each_attr(p.get(IFADDRMSG_LEN..)?, |ty, v| {
        match ty {
            IFA_ADDRESS => address = Some(ip(family, v)?),
            IFA_LOCAL => local = Some(ip(family, v)?),
            IFA_FLAGS => flags = u32_at(v, 0)?,
            _ => {}
        }
        Some(())
    })?;
    // On a point-to-point link IFA_ADDRESS is the peer and IFA_LOCAL ours;
    // otherwise they are equal, and IPv6 usually sends IFA_ADDRESS alone.
    let addr = local.or(address)?;
    let max = if family == AF_INET { 32 } else { 128 };
    if prefix_len > max {
        return None;
    }
    Some(Some(IfAddr {
        ifindex,
        addr,
        prefix_len,
        flags: AddrFlags(flags),
    }))
}

/// `rtmsg` + attributes. Outer None: malformed; inner None: not a
/// main-table IP route.
fn route(p: &[u8]) -> Option<Option<Route>> {
    let family = *p.first()?;
    let dst_len = *p.get(1)?;
    let mut table = u32::from(*p.get(4)?);
    let flags = u32_at(p, 8)?;
    let unspecified = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return Some(None),
    };
    let (mut dst, mut gateway, mut oif, mut priority, mut prefsrc) = (None, None, None, None, None);
    for_each_attr(p.get(RTMSG_LEN..)?, |ty, v| {
        match ty {
            RTA_DST => dst = Some(ip(family, v)?),
            RTA_GATEWAY => gateway = Some(ip(family, v)?),
            RTA_PREFSRC => prefsrc = Some(ip(family, v)?),
            RTA_OIF => oif = Some(u32_at(v, 0)?),
            RTA_PRIORITY => priority = Some(u32_at(v, 0)?),
            RTA_TABLE => table = u32_at(v, 0)?,
            _ => {}
        }
        Some(())
    })?;
    if dst_len > if family == AF_INET { 32 } else { 128 } {
        return None;
    }
    if table != RT_TABLE_MAIN || flags & RTM_F_CLONED != 0 {
        return Some(None);
    }
    Some(Some(Route {
        dst: dst.unwrap_or(unspecified),
        dst_len,
        gateway,
        oif,
        priority,
        prefsrc,
    }))
}

/// Walk `rtattr`s; None if one is malformed or `f` says so. Fewer than four
/// bytes left over is padding.
fn for_each_attr(mut b: &[u8], mut f: impl FnMut(u16, &[u8]) -> Option<()>) -> Option<()> {
    while b.len() >= RTA_HDRLEN {
        let len = usize::from(u16_at(b, 0)?);
        let ty = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < RTA_HDRLEN || len > b.len() {
            return None;
        }
        f(ty, &b[RTA_HDRLEN..len])?;
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Some(())
}

/// An address attribute must be exactly as long as its family's address.
fn ip(family: u8, v: &[u8]) -> Option<IpAddr> {
    if family == AF_INET {
        Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?)))
    } else {
        Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?)))
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds datagrams the way the kernel lays them out.
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(ty: u16, flags: u16, seq: u32, fixed: &[u8]) -> Msg {
            let mut b = vec![0u8; NLMSG_HDRLEN];
            b[4..6].copy_from_slice(&ty.to_ne_bytes());
            b[6..8].copy_from_slice(&flags.to_ne_bytes());
            b[8..12].copy_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(fixed);
            Msg(b)
        }

        fn addr(ty: u16, family: u8, prefix: u8, flags: u8, ifindex: u32) -> Msg {
            let mut fixed = vec![family, prefix, flags, 0];
            fixed.extend_from_slice(&ifindex.to_ne_bytes());
            Msg::new(ty, 0, 0, &fixed)
        }

        fn route(ty: u16, family: u8, dst_len: u8, table: u8, flags: u32) -> Msg {
            let mut fixed = vec![family, dst_len, 0, 0, table, 4, 0, 1];
            fixed.extend_from_slice(&flags.to_ne_bytes());
            Msg::new(ty, 0, 0, &fixed)
        }

        fn attr(mut self, ty: u16, v: &[u8]) -> Msg {
            let len = (RTA_HDRLEN + v.len()) as u16;
            self.0.extend_from_slice(&len.to_ne_bytes());
            self.0.extend_from_slice(&ty.to_ne_bytes());
            self.0.extend_from_slice(v);
            self.0.resize(align4(self.0.len()), 0);
            self
        }

        fn done(self) -> Vec<u8> {
            let mut b = self.0;
            let len = b.len() as u32;
            b[0..4].copy_from_slice(&len.to_ne_bytes());
            // The next message starts aligned, whatever this one's length.
            b.resize(align4(b.len()), 0);
            b
        }
    }

    fn link(ty: u16, family: u8, ifindex: i32, flags: u32) -> Vec<u8> {
        let mut fixed = vec![family, 0, 1, 0];
        fixed.extend_from_slice(&ifindex.to_ne_bytes());
        fixed.extend_from_slice(&flags.to_ne_bytes());
        fixed.extend_from_slice(&u32::MAX.to_ne_bytes());
        Msg::new(ty, 0, 0, &fixed).attr(3, b"d0\0").done()
    }

    fn cat(msgs: &[Vec<u8>]) -> Vec<u8> {
        msgs.concat()
    }

    fn events(d: &Datagram) -> Vec<NetEvent> {
        d.messages
            .iter()
            .filter_map(|m| match &m.body {
                Body::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    const V6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn ipv4_address_added_prefers_local_over_peer() {
        let m = Msg::addr(RTM_NEWADDR, AF_INET, 24, 0x80, 3)
            .attr(IFA_ADDRESS, &[10, 77, 0, 2])
            .attr(IFA_LOCAL, &[10, 77, 0, 1])
            .attr(3, b"d0\0")
            .done();
        let d = parse(&m);
        assert_eq!(d.errors, 0);
        assert_eq!(
            events(&d),
            [NetEvent::AddrAdded(IfAddr {
                ifindex: 3,
                addr: "10.77.0.1".parse().unwrap(),
                prefix_len: 24,
                flags: AddrFlags(0x80),
            })]
        );
    }

    #[test]
    fn ipv6_address_removed_with_ifa_flags_overriding_the_byte() {
        let m = Msg::addr(RTM_DELADDR, AF_INET6, 64, 0, 7)
            .attr(IFA_ADDRESS, &V6)
            .attr(IFA_FLAGS, &(AddrFlags::TENTATIVE | 0x200).to_ne_bytes())
            .done();
        let d = parse(&m);
        let [NetEvent::AddrRemoved(a)] = &events(&d)[..] else {
            panic!("{d:?}")
        };
        assert_eq!(a.addr, IpAddr::V6(Ipv6Addr::from(V6)));
        assert_eq!((a.ifindex, a.prefix_len), (7, 64));
        assert!(a.flags.has(AddrFlags::TENTATIVE));
        assert!(!a.flags.usable());
    }

    #[test]
    fn usability_follows_dad() {
        assert!(AddrFlags(0).usable());
        assert!(AddrFlags(AddrFlags::DEPRECATED).usable());
        assert!(!AddrFlags(AddrFlags::TENTATIVE).usable());
        assert!(AddrFlags(AddrFlags::TENTATIVE | AddrFlags::OPTIMISTIC).usable());
        assert!(!AddrFlags(AddrFlags::DADFAILED | AddrFlags::TENTATIVE).usable());
    }

    #[test]
    fn same_address_rules_per_family() {
        let a = |addr: &str, prefix_len| IfAddr {
            ifindex: 1,
            addr: addr.parse().unwrap(),
            prefix_len,
            flags: AddrFlags(0),
        };
        assert!(a("fd77::1", 64).same_as(&a("fd77::1", 48)));
        assert!(!a("10.0.0.1", 24).same_as(&a("10.0.0.1", 16)));
        assert!(a("10.0.0.1", 24).same_as(&a("10.0.0.1", 24)));
    }

    #[test]
    fn routes_of_the_main_table_only() {
        let default = Msg::route(RTM_NEWROUTE, AF_INET, 0, 254, 0)
            .attr(RTA_GATEWAY, &[10, 77, 0, 254])
            .attr(RTA_OIF, &3u32.to_ne_bytes())
            .attr(RTA_PRIORITY, &100u32.to_ne_bytes())
            .attr(RTA_TABLE, &254u32.to_ne_bytes())
            .done();
        let local = Msg::route(RTM_NEWROUTE, AF_INET, 32, 255, 0)
            .attr(RTA_DST, &[10, 77, 0, 1])
            .done();
        let big_table = Msg::route(RTM_NEWROUTE, AF_INET, 0, 252, 0)
            .attr(RTA_TABLE, &1000u32.to_ne_bytes())
            .done();
        let cloned = Msg::route(RTM_NEWROUTE, AF_INET6, 128, 254, RTM_F_CLONED)
            .attr(RTA_DST, &V6)
            .done();
        let gone = Msg::route(RTM_DELROUTE, AF_INET6, 64, 254, 0)
            .attr(RTA_DST, &V6)
            .attr(RTA_PREFSRC, &V6)
            .done();
        let d = parse(&cat(&[default, local, big_table, cloned, gone]));
        assert_eq!(d.errors, 0);
        assert_eq!(d.messages.len(), 5);
        assert_eq!(
            events(&d),
            [
                NetEvent::RouteChanged {
                    removed: false,
                    route: Route {
                        dst: "0.0.0.0".parse().unwrap(),
                        dst_len: 0,
                        gateway: Some("10.77.0.254".parse().unwrap()),
                        oif: Some(3),
                        priority: Some(100),
                        prefsrc: None,
                    }
                },
                NetEvent::RouteChanged {
                    removed: true,
                    route: Route {
                        dst: IpAddr::V6(Ipv6Addr::from(V6)),
                        dst_len: 64,
                        gateway: None,
                        oif: None,
                        priority: None,
                        prefsrc: Some(IpAddr::V6(Ipv6Addr::from(V6))),
                    }
                },
            ]
        );
    }

    #[test]
    fn links_are_up_when_running() {
        let d = parse(&cat(&[
            link(RTM_NEWLINK, AF_UNSPEC, 3, IFF_UP | IFF_RUNNING | 0x1000),
            link(RTM_NEWLINK, AF_UNSPEC, 3, IFF_UP),
            link(RTM_NEWLINK, AF_UNSPEC, 3, IFF_RUNNING),
            link(RTM_DELLINK, AF_UNSPEC, 4, 0),
            link(RTM_NEWLINK, 7, 3, 0),
            link(RTM_NEWLINK, AF_UNSPEC, -1, 0),
            Msg::new(RTM_NEWLINK, 0, 0, &[0; 12]).done(),
        ]));
        let up = |ifindex, up| NetEvent::LinkChanged(Link { ifindex, up });
        assert_eq!(
            events(&d),
            [
                up(3, true),
                up(3, false),
                up(3, false),
                NetEvent::LinkRemoved { ifindex: 4 }
            ]
        );
        assert_eq!(d.errors, 2, "negative index, short ifinfomsg");
        assert_eq!(d.messages.len(), 5, "the AF_BRIDGE one is ignored");
    }

    #[test]
    fn multipart_dump_ends_with_done() {
        let a = Msg::addr(RTM_NEWADDR, AF_INET, 8, 0, 1)
            .attr(IFA_LOCAL, &[127, 0, 0, 1])
            .done();
        let mut a = a;
        a[6..8].copy_from_slice(&NLM_F_MULTI.to_ne_bytes());
        let done = Msg::new(NLMSG_DONE, NLM_F_MULTI, 9, &0i32.to_ne_bytes()).done();
        let bare_done = Msg::new(NLMSG_DONE, 0, 9, &[]).done();
        let d = parse(&cat(&[a, done, bare_done]));
        assert_eq!(d.errors, 0);
        assert_eq!(d.messages[0].header.flags, NLM_F_MULTI);
        assert_eq!(d.messages[1].body, Body::Done { errno: 0 });
        assert_eq!(d.messages[1].header.seq, 9);
        assert_eq!(d.messages[2].body, Body::Done { errno: 0 });
    }

    #[test]
    fn errors_carry_positive_errno() {
        let nak = Msg::new(NLMSG_ERROR, 0, 1, &(-105i32).to_ne_bytes()).done();
        let ack = Msg::new(NLMSG_ERROR, 0, 2, &[0; 20]).done();
        let odd = Msg::new(NLMSG_ERROR, 0, 3, &i32::MIN.to_ne_bytes()).done();
        let d = parse(&cat(&[nak, ack, odd]));
        let bodies: Vec<_> = d.messages.iter().map(|m| m.body.clone()).collect();
        assert_eq!(
            bodies,
            [
                Body::Error { errno: 105 },
                Body::Error { errno: 0 },
                Body::Error { errno: i32::MAX }
            ]
        );
    }

    #[test]
    fn zero_length_header_ends_the_datagram() {
        let good = Msg::addr(RTM_NEWADDR, AF_INET, 24, 0, 1)
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .done();
        let d = parse(&cat(&[good.clone(), vec![0; 16], good]));
        assert_eq!(events(&d).len(), 1);
        assert_eq!(d.errors, 1);
    }

    #[test]
    fn truncated_inputs_are_counted_not_trusted() {
        let full = Msg::addr(RTM_NEWADDR, AF_INET6, 64, 0, 1)
            .attr(IFA_ADDRESS, &V6)
            .done();
        for cut in 1..full.len() {
            let d = parse(&full[..cut]);
            assert!(d.messages.is_empty(), "cut {cut}: {d:?}");
            assert_eq!(d.errors, 1, "cut {cut}");
        }
    }

    #[test]
    fn malformed_bodies_skip_one_message() {
        let short_v4 = Msg::addr(RTM_NEWADDR, AF_INET, 24, 0, 1)
            .attr(IFA_LOCAL, &[10, 0, 0])
            .done();
        let no_address = Msg::addr(RTM_NEWADDR, AF_INET, 24, 0, 1).done();
        let big_prefix = Msg::addr(RTM_NEWADDR, AF_INET, 33, 0, 1)
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .done();
        let mut bad_attr_len = Msg::addr(RTM_NEWADDR, AF_INET, 24, 0, 1)
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .done();
        let at = NLMSG_HDRLEN + IFADDRMSG_LEN;
        bad_attr_len[at..at + 2].copy_from_slice(&2u16.to_ne_bytes());
        let short_flags = Msg::addr(RTM_DELADDR, AF_INET, 24, 0, 1)
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .attr(IFA_FLAGS, &[1, 0])
            .done();
        let short_rtmsg = Msg::new(RTM_NEWROUTE, 0, 0, &[AF_INET, 0, 0]).done();
        let good = Msg::addr(RTM_NEWADDR, AF_INET, 24, 0, 1)
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .done();
        let d = parse(&cat(&[
            short_v4,
            no_address,
            big_prefix,
            bad_attr_len,
            short_flags,
            short_rtmsg,
            good,
        ]));
        assert_eq!(d.errors, 6);
        assert_eq!(events(&d).len(), 1);
    }

    #[test]
    fn other_families_and_types_are_ignored() {
        let can = Msg::addr(RTM_NEWADDR, 29, 0, 0, 1)
            .attr(IFA_ADDRESS, &[1])
            .done();
        let neigh = Msg::new(28, 0, 0, &[0; 12]).done();
        let noop = Msg::new(NLMSG_NOOP, 0, 0, &[]).done();
        let d = parse(&cat(&[can, neigh, noop]));
        assert_eq!(d.errors, 0);
        assert!(d.messages.iter().all(|m| m.body == Body::Ignored));
    }

    #[test]
    fn unpadded_last_message_and_trailing_attr_padding() {
        let mut m = Msg::addr(RTM_NEWADDR, AF_INET, 24, 0, 1)
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .done();
        m.extend_from_slice(&[0, 0]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        let d = parse(&m);
        assert_eq!((events(&d).len(), d.errors), (1, 0));
    }

    #[test]
    fn dump_requests_are_well_formed_messages() {
        for (what, ty, len) in [
            (Dump::Addresses, RTM_GETADDR, 24),
            (Dump::Links, RTM_GETLINK, 32),
        ] {
            let r = dump_request(what, 42);
            let (h, hlen) = header(&r).unwrap();
            assert_eq!((hlen, r.len()), (len, len));
            assert_eq!(h.ty, ty);
            assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_DUMP);
            assert_eq!(h.seq, 42);
        }
    }

    /// Random corruptions of valid datagrams: no panic, no endless loop,
    /// and never more messages than the bytes could hold.
    #[test]
    fn mutation_fuzz() {
        let seeds = [
            cat(&[
                Msg::addr(RTM_NEWADDR, AF_INET, 24, 0, 3)
                    .attr(IFA_ADDRESS, &[10, 77, 0, 1])
                    .attr(IFA_LOCAL, &[10, 77, 0, 1])
                    .attr(IFA_FLAGS, &0x80u32.to_ne_bytes())
                    .done(),
                Msg::addr(RTM_DELADDR, AF_INET6, 64, 0x40, 3)
                    .attr(IFA_ADDRESS, &V6)
                    .done(),
            ]),
            cat(&[
                Msg::route(RTM_NEWROUTE, AF_INET6, 64, 254, 0)
                    .attr(RTA_DST, &V6)
                    .attr(RTA_GATEWAY, &V6)
                    .attr(RTA_OIF, &2u32.to_ne_bytes())
                    .attr(RTA_PRIORITY, &1024u32.to_ne_bytes())
                    .attr(RTA_PREFSRC, &V6)
                    .attr(RTA_TABLE, &254u32.to_ne_bytes())
                    .done(),
                Msg::new(NLMSG_DONE, NLM_F_MULTI, 1, &0i32.to_ne_bytes()).done(),
                Msg::new(NLMSG_ERROR, 0, 1, &(-1i32).to_ne_bytes()).done(),
            ]),
            cat(&[
                link(RTM_NEWLINK, AF_UNSPEC, 2, IFF_UP | IFF_RUNNING),
                link(RTM_DELLINK, AF_UNSPEC, 2, 0),
            ]),
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..50_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let r = next();
                let at = (r >> 8) as usize % b.len().max(1);
                match r % 5 {
                    0 if !b.is_empty() => b[at] = (r >> 40) as u8,
                    1 if !b.is_empty() => b[at] ^= 1 << (r >> 32 & 7),
                    2 => b.truncate(at),
                    3 => b.insert(at.min(b.len()), (r >> 48) as u8),
                    // Lengths are where parsers go wrong: aim at them.
                    _ if b.len() >= 4 => {
                        let v = [0u32, 1, 3, 4, 15, 16, 17, u32::MAX][(r >> 20) as usize % 8];
                        let at = at & !3;
                        if at + 4 <= b.len() {
                            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
                        } else {
                            b[0..4].copy_from_slice(&v.to_ne_bytes());
                        }
                    }
                    _ => {}
                }
            }
            let d = parse(&b);
            assert!(d.messages.len() <= b.len() / NLMSG_HDRLEN, "{b:?}");
        }
    }
}
