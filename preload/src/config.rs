//! Settings, all from the environment (read once, when a wisp name is
//! first used). Every variable has a default and a wrong value is reported
//! by name, then the default is used: a typo must not break the program.

use crate::log::Level;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    /// `WISP_HOSTS`, else `~/.config/wisp/hosts`, else `/etc/wisp/hosts`.
    pub hosts: PathBuf,
    /// `WISP_PROXY=IP:PORT`: outbound proxy and registrar. No default: without
    /// it a name can only be reached if its URI host is an address.
    pub proxy: Option<SocketAddr>,
    /// `WISP_TRANSPORT=udp|tcp` towards the proxy (default udp).
    pub tcp: bool,
    /// `WISP_NAME=sip:...`: who this process is; listeners register it.
    pub name: Option<String>,
    /// `WISP_LOG=error|warn|info|debug|trace` (default warn).
    pub level: Level,
    /// `WISP_LOG_FILE=path` (default stderr).
    pub log_file: Option<PathBuf>,
    /// `WISP_CONNECT_TIMEOUT=seconds` (default 10): how long connect() waits
    /// for the SIP set-up before ETIMEDOUT.
    pub connect_timeout: Duration,
    /// `WISP_MOVE_TIMEOUT=seconds` (default 300): how long a stream waits for
    /// a move to complete before the program sees an error.
    pub move_timeout: Duration,
    /// `WISP_SIP_PORT` (default 0 = any): the local SIP port of this process.
    pub sip_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hosts: PathBuf::from("/etc/wisp/hosts"),
            proxy: None,
            tcp: false,
            name: None,
            level: Level::Warn,
            log_file: None,
            connect_timeout: Duration::from_secs(10),
            move_timeout: Duration::from_secs(300),
            sip_port: 0,
        }
    }
}

impl Config {
    /// Build from a variable lookup; returns the config and one message per
    /// bad variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> (Config, Vec<String>) {
        let mut c = Config::default();
        let mut errors = Vec::new();
        let mut bad = |var: &str, value: &str, want: &str| {
            errors.push(format!("{var}={value:?} is not {want}; using the default"))
        };
        c.hosts = match get("WISP_HOSTS").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => match get("HOME").map(|h| PathBuf::from(h).join(".config/wisp/hosts")) {
                Some(p) if p.exists() => p,
                _ => PathBuf::from("/etc/wisp/hosts"),
            },
        };
        if let Some(v) = get("WISP_PROXY").filter(|v| !v.is_empty()) {
            match v.parse::<SocketAddr>() {
                Ok(a) => c.proxy = Some(a),
                Err(_) => bad("WISP_PROXY", &v, "IP:PORT (e.g. 10.0.4.1:5060 or [fd00::1]:5060)"),
            }
        }
        if let Some(v) = get("WISP_TRANSPORT").filter(|v| !v.is_empty()) {
            match v.to_ascii_lowercase().as_str() {
                "udp" => c.tcp = false,
                "tcp" => c.tcp = true,
                _ => bad("WISP_TRANSPORT", &v, "udp or tcp"),
            }
        }
        if let Some(v) = get("WISP_NAME").filter(|v| !v.is_empty()) {
            if sipcore::msg::parse_whole::<sipcore::msg::SipUri>(&v).is_some() && v.contains('@') {
                c.name = Some(v);
            } else {
                bad("WISP_NAME", &v, "a SIP URI like sip:bob@wxyz.com");
            }
        }
        if let Some(v) = get("WISP_LOG").filter(|v| !v.is_empty()) {
            match Level::parse(&v) {
                Some(l) => c.level = l,
                None => bad("WISP_LOG", &v, "error, warn, info, debug or trace"),
            }
        }
        c.log_file = get("WISP_LOG_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
        for (var, slot) in [
            ("WISP_CONNECT_TIMEOUT", &mut c.connect_timeout),
            ("WISP_MOVE_TIMEOUT", &mut c.move_timeout),
        ] {
            if let Some(v) = get(var).filter(|v| !v.is_empty()) {
                match v.parse::<f64>() {
                    Ok(s) if s > 0.0 && s < 1e7 => *slot = Duration::from_secs_f64(s),
                    _ => bad(var, &v, "a positive number of seconds"),
                }
            }
        }
        if let Some(v) = get("WISP_SIP_PORT").filter(|v| !v.is_empty()) {
            match v.parse::<u16>() {
                Ok(p) => c.sip_port = p,
                Err(_) => bad("WISP_SIP_PORT", &v, "a port number"),
            }
        }
        (c, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_and_good_values() {
        let (c, e) = Config::from_vars(vars(&[]));
        assert!(e.is_empty());
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.hosts, PathBuf::from("/etc/wisp/hosts"));
        let (c, e) = Config::from_vars(vars(&[
            ("WISP_PROXY", "[fd00::1]:5060"),
            ("WISP_NAME", "sip:bob@wxyz.com"),
            ("WISP_LOG", "debug"),
            ("WISP_CONNECT_TIMEOUT", "0.5"),
            ("WISP_HOSTS", "/tmp/h"),
        ]));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.proxy, Some("[fd00::1]:5060".parse().unwrap()));
        assert_eq!(c.level, Level::Debug);
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.hosts, PathBuf::from("/tmp/h"));
    }

    #[test]
    fn bad_values_are_named() {
        let (c, e) = Config::from_vars(vars(&[
            ("WISP_PROXY", "nowhere"),
            ("WISP_LOG", "loud"),
            ("WISP_NAME", "bob"),
            ("WISP_CONNECT_TIMEOUT", "-1"),
        ]));
        assert_eq!(e.len(), 4);
        assert!(e[0].starts_with("WISP_PROXY="));
        assert!(c.proxy.is_none());
        assert_eq!(c.level, Level::Warn);
    }
}
