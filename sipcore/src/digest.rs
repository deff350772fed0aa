//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 2617 with
//! `qop=auth`, RFC 7616 algorithms as adopted for SIP by RFC 8760).
//!
//! Everything here works on header *values* and takes the clock as an
//! argument, so the same code serves a user agent answering a registrar, a
//! registrar challenging a user agent, and tests that need a fixed time.
//!
//! The parser is our own rather than ezk's typed auth headers: those panic on
//! some non-ASCII input, and a challenge is text an unauthenticated peer
//! controls. Anything we cannot read is an error value, never a panic.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512_256};
use std::fmt;

/// How long a nonce we issued stays good. Short enough that a captured
/// request cannot be replayed for long (the server keeps no nonce-count
/// state), long enough for a user agent to answer the challenge.
pub const NONCE_LIFETIME_SECS: u64 = 300;

/// A header value is at most one SIP message long, but a value made of
/// thousands of tiny parameters would make the duplicate check quadratic;
/// real challenges carry about ten.
const MAX_PARAMS: usize = 32;

/// One response may carry a challenge per algorithm and per realm (one per
/// proxy on a forked path); more than this is not a real deployment.
const MAX_CHALLENGES: usize = 16;

/// Why a header value is not a usable Digest challenge or credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not the `auth-scheme *(param)` grammar at all; the text says where.
    Syntax(&'static str),
    /// Another scheme (Basic, Bearer, ...): not for us, skip it.
    NotDigest,
    Missing(&'static str),
    /// RFC 7235 §2.1 allows each parameter once per challenge; two readers
    /// that pick different copies is how confusion attacks start.
    Duplicate(String),
    /// An algorithm we do not implement: the client skips this challenge.
    UnknownAlgorithm(String),
    /// The challenge restricts `qop` to options we do not implement.
    NoUsableQop(String),
    BadNonceCount(String),
    /// RFC 7616 `userhash`: the username field is a hash we cannot invert.
    UserhashUnsupported,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax(why) => write!(f, "malformed auth header: {why}"),
            ParseError::NotDigest => write!(f, "not a Digest auth header"),
            ParseError::Missing(p) => write!(f, "missing {p} parameter"),
            ParseError::Duplicate(p) => write!(f, "repeated {p:?} parameter"),
            ParseError::UnknownAlgorithm(a) => write!(f, "unknown algorithm {a:?}"),
            ParseError::NoUsableQop(q) => write!(f, "no usable qop in {q:?}"),
            ParseError::BadNonceCount(n) => write!(f, "bad nonce count {n:?}"),
            ParseError::UserhashUnsupported => write!(f, "userhash is not supported"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Why [`Verifier::verify`] refused credentials. [`AuthError::StaleNonce`]
/// is the one that should be answered with a challenge carrying
/// `stale=true` (the user agent knows the password and just retries); every
/// other case gets a fresh challenge or a 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    BadFormat(ParseError),
    /// The nonce or opaque is not one this verifier issued (tampered, or
    /// issued under another secret, e.g. before a restart).
    BadNonce,
    UnknownUser,
    WrongPassword,
    /// The response was right, but the nonce is older than
    /// [`NONCE_LIFETIME_SECS`].
    StaleNonce,
    RealmMismatch,
    /// The digest covers a different URI than this request's: credentials
    /// lifted from another request.
    UriMismatch,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::BadFormat(e) => write!(f, "bad credentials: {e}"),
            AuthError::BadNonce => write!(f, "nonce was not issued by us"),
            AuthError::UnknownUser => write!(f, "unknown user"),
            AuthError::WrongPassword => write!(f, "wrong password"),
            AuthError::StaleNonce => write!(f, "stale nonce"),
            AuthError::RealmMismatch => write!(f, "realm mismatch"),
            AuthError::UriMismatch => write!(f, "digest uri does not match the request"),
        }
    }
}

impl std::error::Error for AuthError {}

/// The hash behind a challenge. `-sess` variants fold the nonces into HA1
/// (RFC 2617 §3.2.2.2) and are accepted for interoperability, never offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
    Sha512_256,
    Sha512_256Sess,
}

impl Algorithm {
    const ALL: [Algorithm; 6] = [
        Algorithm::Md5,
        Algorithm::Md5Sess,
        Algorithm::Sha256,
        Algorithm::Sha256Sess,
        Algorithm::Sha512_256,
        Algorithm::Sha512_256Sess,
    ];

    /// The token as RFC 7616 registers it. Parsing ignores case because
    /// deployed servers send `md5` and `sha-256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    pub fn parse(token: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(token))
    }

    /// Preference when a server offers several challenges. RFC 8760 has the
    /// client take the topmost one it supports "unless a local policy
    /// dictates otherwise"; our policy is the strongest, so a server that
    /// lists MD5 first does not decide for us. `-sess` adds nothing against
    /// an attacker, so it ranks with its base hash.
    pub fn strength(self) -> u8 {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => 3,
        }
    }

    pub fn is_sess(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess
        )
    }

    /// Lowercase hex of the hash of `data`, the form every Digest input and
    /// output takes.
    fn h(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data)),
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => hex(&Sha512_256::digest(data)),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Quality of protection. `auth-int` also covers the body; we can answer
/// it as a client but never offer it, since the verifier is not given bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    Auth,
    AuthInt,
}

impl Qop {
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }

    fn parse(token: &str) -> Option<Qop> {
        [Qop::Auth, Qop::AuthInt]
            .into_iter()
            .find(|q| q.as_str().eq_ignore_ascii_case(token))
    }
}

/// One Digest challenge from a `WWW-Authenticate` or `Proxy-Authenticate`
/// value. Parsing only succeeds when [`respond`] can answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The offered options we implement, in the server's order. Empty means
    /// the server predates `qop` (RFC 2069), which RFC 3261 §22.4 still
    /// requires us to answer.
    pub qop: Vec<Qop>,
    pub stale: bool,
    pub domain: Option<String>,
}

impl Challenge {
    /// Parse a value holding exactly one challenge, which must be Digest.
    pub fn parse(value: &str) -> Result<Challenge, ParseError> {
        let mut items = parse_auth_items(value)?;
        if items.len() != 1 {
            return Err(ParseError::Syntax("expected exactly one challenge"));
        }
        Challenge::from_item(items.remove(0))
    }

    fn from_item(item: AuthItem) -> Result<Challenge, ParseError> {
        let p = item.digest_params()?;
        let algorithm = match get(&p, "algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| ParseError::UnknownAlgorithm(a.into()))?,
        };
        let qop = match get(&p, "qop") {
            None => Vec::new(),
            Some(list) => {
                let known: Vec<Qop> = list
                    .split(',')
                    .filter_map(|q| Qop::parse(q.trim()))
                    .collect();
                if known.is_empty() {
                    return Err(ParseError::NoUsableQop(list.into()));
                }
                known
            }
        };
        Ok(Challenge {
            realm: require(&p, "realm")?.to_string(),
            nonce: require(&p, "nonce")?.to_string(),
            opaque: get(&p, "opaque").map(str::to_string),
            algorithm,
            qop,
            stale: get(&p, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            domain: get(&p, "domain").map(str::to_string),
        })
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest realm={}", quote(&self.realm))?;
        if let Some(d) = &self.domain {
            write!(f, ", domain={}", quote(d))?;
        }
        write!(f, ", nonce={}", quote(&self.nonce))?;
        if let Some(o) = &self.opaque {
            write!(f, ", opaque={}", quote(o))?;
        }
        write!(f, ", algorithm={}", self.algorithm)?;
        if !self.qop.is_empty() {
            let list: Vec<&str> = self.qop.iter().map(|q| q.as_str()).collect();
            write!(f, ", qop=\"{}\"", list.join(","))?;
        }
        if self.stale {
            f.write_str(", stale=true")?;
        }
        Ok(())
    }
}

/// Every challenge in one header value, in order. RFC 7235 allows several
/// challenges in one value as well as one per line; a value that does not
/// follow the grammar yields a single error since nothing after the fault
/// can be trusted to belong where it appears to.
pub fn parse_challenges(value: &str) -> Vec<Result<Challenge, ParseError>> {
    match parse_auth_items(value) {
        Ok(items) => items.into_iter().map(Challenge::from_item).collect(),
        Err(e) => vec![Err(e)],
    }
}

/// The challenge to answer among all `WWW-Authenticate` (or all
/// `Proxy-Authenticate`) values of a response: the strongest algorithm we
/// implement, the server's order breaking ties. Challenges we cannot use
/// are skipped, so a server offering an algorithm from the future does not
/// lock us out.
pub fn strongest<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    // Stays within the workspace's rust-version (1.80): no is_none_or.
    let mut best: Option<Challenge> = None;
    for c in values.into_iter().flat_map(parse_challenges).flatten() {
        let better = match &best {
            None => true,
            Some(b) => c.algorithm.strength() > b.algorithm.strength(),
        };
        if better {
            best = Some(c);
        }
    }
    best
}

/// The strongest challenge per realm, in order of first appearance. A
/// request forked through several proxies collects one challenge set per
/// realm and must answer each of them (RFC 3261 §22.3).
pub fn strongest_per_realm<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut best: Vec<Challenge> = Vec::new();
    for c in values.into_iter().flat_map(parse_challenges).flatten() {
        match best.iter_mut().find(|b| b.realm == c.realm) {
            Some(b) if c.algorithm.strength() > b.algorithm.strength() => *b = c,
            Some(_) => {}
            None => best.push(c),
        }
    }
    best
}

/// Digest credentials from an `Authorization` or `Proxy-Authorization`
/// value. Values are unescaped; `qop` and `nc` keep the client's spelling
/// because that spelling went into its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    pub nc: Option<String>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
}

impl Credentials {
    pub fn parse(value: &str) -> Result<Credentials, ParseError> {
        let mut items = parse_auth_items(value)?;
        if items.len() != 1 {
            return Err(ParseError::Syntax("expected exactly one credentials"));
        }
        let p = items.remove(0).digest_params()?;
        if get(&p, "userhash").is_some_and(|u| u.eq_ignore_ascii_case("true")) {
            return Err(ParseError::UserhashUnsupported);
        }
        let algorithm = match get(&p, "algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| ParseError::UnknownAlgorithm(a.into()))?,
        };
        let qop = get(&p, "qop").map(str::to_string);
        let (cnonce, nc) = (get(&p, "cnonce"), get(&p, "nc"));
        if qop.is_some() || algorithm.is_sess() {
            require(&p, "cnonce")?;
        }
        if qop.is_some() {
            let nc = require(&p, "nc")?;
            if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ParseError::BadNonceCount(nc.into()));
            }
        }
        Ok(Credentials {
            username: require(&p, "username")?.to_string(),
            realm: require(&p, "realm")?.to_string(),
            nonce: require(&p, "nonce")?.to_string(),
            uri: require(&p, "uri")?.to_string(),
            response: require(&p, "response")?.to_string(),
            algorithm,
            cnonce: cnonce.map(str::to_string),
            nc: nc.map(str::to_string),
            qop,
            opaque: get(&p, "opaque").map(str::to_string),
        })
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
            quote(&self.username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(&self.uri),
            quote(&self.response),
            self.algorithm,
        )?;
        if let Some(c) = &self.cnonce {
            write!(f, ", cnonce={}", quote(c))?;
        }
        if let Some(o) = &self.opaque {
            write!(f, ", opaque={}", quote(o))?;
        }
        // qop and nc are tokens in RFC 2617's grammar; some servers reject
        // them quoted. Our own values are always plain tokens.
        if let Some(q) = &self.qop {
            write!(f, ", qop={}", token_or_quote(q))?;
        }
        if let Some(n) = &self.nc {
            write!(f, ", nc={}", token_or_quote(n))?;
        }
        Ok(())
    }
}

/// The credentials header value answering `challenge`. `qop=auth` is
/// preferred when offered; `auth-int` (which hashes `body`) only when it is
/// the sole option; no qop at all for an RFC 2069 server. `cnonce` should be
/// fresh random text (see [`new_cnonce`]); `nc` counts requests made with
/// this nonce, starting at 1.
///
/// Username and URI come from our own configuration; control characters in
/// them cannot be carried in a quoted string and are dropped from the header
/// (authentication then fails) rather than allowed to split the header.
#[allow(clippy::too_many_arguments)] // the RFC's inputs, one to one
pub fn respond(
    challenge: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    cnonce: &str,
    nc: u32,
) -> String {
    let qop = if challenge.qop.contains(&Qop::Auth) {
        Some(Qop::Auth)
    } else {
        challenge.qop.first().copied()
    };
    let uses_cnonce = qop.is_some() || challenge.algorithm.is_sess();
    let nc = format!("{nc:08x}");
    let response = compute(&Inputs {
        algorithm: challenge.algorithm,
        username,
        realm: &challenge.realm,
        password,
        nonce: &challenge.nonce,
        cnonce,
        nc: &nc,
        qop: qop.map(Qop::as_str),
        method,
        uri,
        body,
    });
    Credentials {
        username: username.to_string(),
        realm: challenge.realm.clone(),
        nonce: challenge.nonce.clone(),
        uri: uri.to_string(),
        response,
        algorithm: challenge.algorithm,
        cnonce: uses_cnonce.then(|| cnonce.to_string()),
        nc: qop.map(|_| nc),
        qop: qop.map(|q| q.as_str().to_string()),
        opaque: challenge.opaque.clone(),
    }
    .to_string()
}

/// A fresh client nonce: 128 random bits, enough that a hostile server
/// cannot precompute answers for it.
pub fn new_cnonce() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)?;
    Ok(hex(&b))
}

/// The stateless server side: it issues nonces that carry their own issue
/// time and a MAC over it, so verifying needs no table of outstanding
/// nonces and survives any number of clients. The price is that `nc` cannot
/// be tracked, so a captured request can be replayed until its nonce goes
/// stale; [`NONCE_LIFETIME_SECS`] bounds that window.
#[derive(Clone)]
pub struct Verifier {
    secret: [u8; 32],
    realm: String,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// Hex digits of the issue time at the front of our nonces.
const NONCE_TS_LEN: usize = 16;
/// Hex digits of the MAC behind it (128 bits of HMAC-SHA-256).
const NONCE_MAC_LEN: usize = 32;

impl Verifier {
    /// Control characters are dropped from the realm: they could not be
    /// sent in a challenge, and a realm that differs between what we send
    /// and what we compare against would fail every login.
    pub fn new(secret: [u8; 32], realm: &str) -> Verifier {
        let realm = realm
            .chars()
            .filter(|c| !c.is_ascii_control() || *c == '\t')
            .collect();
        Verifier { secret, realm }
    }

    /// A verifier with a random secret: nonces issued before a restart then
    /// fail as [`AuthError::BadNonce`] and clients are simply re-challenged.
    pub fn random(realm: &str) -> Result<Verifier, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)?;
        Ok(Verifier::new(secret, realm))
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// `WWW-Authenticate` (or `Proxy-Authenticate`) values, one header line
    /// each: SHA-256 first, MD5 second for user agents that predate RFC 8760
    /// (which asks for the preferred algorithm first). `stale` after
    /// [`AuthError::StaleNonce`] lets the user agent retry without asking
    /// its user again.
    pub fn challenges(&self, now_secs: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_secs);
        let opaque = self.opaque();
        [Algorithm::Sha256, Algorithm::Md5]
            .into_iter()
            .map(|algorithm| {
                Challenge {
                    realm: self.realm.clone(),
                    nonce: nonce.clone(),
                    opaque: Some(opaque.clone()),
                    algorithm,
                    qop: vec![Qop::Auth],
                    stale,
                    domain: None,
                }
                .to_string()
            })
            .collect()
    }

    /// Check an `Authorization` (or `Proxy-Authorization`) value against
    /// the request it came with. `request_uri` is the Request-URI as the
    /// caller prints it; `password_lookup` maps a username to its password.
    /// Returns the authenticated username.
    ///
    /// Staleness is judged last, after the response proved the password:
    /// RFC 7616 §3.3 reserves `stale=true` for requests that were right
    /// apart from the nonce's age.
    pub fn verify(
        &self,
        credentials: &str,
        method: &str,
        request_uri: &str,
        password_lookup: impl Fn(&str) -> Option<String>,
        now_secs: u64,
    ) -> Result<String, AuthError> {
        let c = Credentials::parse(credentials).map_err(AuthError::BadFormat)?;
        if c.realm != self.realm {
            return Err(AuthError::RealmMismatch);
        }
        if !same_uri(&c.uri, request_uri) {
            return Err(AuthError::UriMismatch);
        }
        // auth-int needs the body, which we are not given and never offer.
        if let Some(q) = &c.qop {
            if Qop::parse(q) != Some(Qop::Auth) {
                return Err(AuthError::BadFormat(ParseError::NoUsableQop(q.clone())));
            }
        }
        if c.opaque
            .as_ref()
            .is_some_and(|o| !ct_eq(o.as_bytes(), self.opaque().as_bytes()))
        {
            return Err(AuthError::BadNonce);
        }
        let issued = self.check_nonce(&c.nonce).ok_or(AuthError::BadNonce)?;
        let password = password_lookup(&c.username).ok_or(AuthError::UnknownUser)?;
        let expected = compute(&Inputs {
            algorithm: c.algorithm,
            username: &c.username,
            realm: &c.realm,
            password: &password,
            nonce: &c.nonce,
            cnonce: c.cnonce.as_deref().unwrap_or(""),
            nc: c.nc.as_deref().unwrap_or(""),
            qop: c.qop.as_deref(),
            method,
            uri: &c.uri,
            body: b"",
        });
        // RFC 7616 asks for lowercase hex; a few clients send uppercase.
        if !ct_eq(
            c.response.to_ascii_lowercase().as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(AuthError::WrongPassword);
        }
        if now_secs.abs_diff(issued) > NONCE_LIFETIME_SECS {
            return Err(AuthError::StaleNonce);
        }
        Ok(c.username)
    }

    /// Issue time in hex, then a MAC binding it to our secret and realm:
    /// the RFC 2617 §3.2.1 suggestion with a keyed MAC in place of a plain
    /// hash over a private key.
    fn nonce(&self, now_secs: u64) -> String {
        format!("{now_secs:016x}{}", self.nonce_mac(now_secs))
    }

    fn nonce_mac(&self, ts: u64) -> String {
        let mac = hmac_sha256(
            &self.secret,
            &[
                b"wisp digest nonce\0",
                &ts.to_be_bytes(),
                self.realm.as_bytes(),
            ],
        );
        hex(&mac[..NONCE_MAC_LEN / 2])
    }

    /// The issue time of a nonce we made, or None for anything else.
    fn check_nonce(&self, nonce: &str) -> Option<u64> {
        if nonce.len() != NONCE_TS_LEN + NONCE_MAC_LEN
            || !nonce.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let (ts, mac) = nonce.split_at(NONCE_TS_LEN);
        let ts = u64::from_str_radix(ts, 16).ok()?;
        ct_eq(mac.as_bytes(), self.nonce_mac(ts).as_bytes()).then_some(ts)
    }

    /// Constant per realm and secret: the nonce already carries all the
    /// state, but RFC 2617 clients expect an opaque to echo, and checking
    /// the echo costs nothing.
    fn opaque(&self) -> String {
        let mac = hmac_sha256(
            &self.secret,
            &[b"wisp digest opaque\0", self.realm.as_bytes()],
        );
        hex(&mac[..8])
    }
}

/// Whether the digest's `uri` names the request's URI. Exact text first;
/// then both run through ezk's URI printer, since the caller can only give
/// us the Request-URI as ezk prints it, not as the client wrote it.
fn same_uri(digest_uri: &str, request_uri: &str) -> bool {
    let (a, b) = (digest_uri.trim(), request_uri.trim());
    if a == b {
        return true;
    }
    use crate::msg::{parse_whole, SipUri};
    use ezk_sip_types::print::AppendCtx;
    match (parse_whole::<SipUri>(a), parse_whole::<SipUri>(b)) {
        (Some(x), Some(y)) => {
            x.default_print_ctx().to_string() == y.default_print_ctx().to_string()
        }
        _ => false,
    }
}

/// Everything the response hash depends on (RFC 2617 §3.2.2).
struct Inputs<'a> {
    algorithm: Algorithm,
    username: &'a str,
    realm: &'a str,
    password: &'a str,
    nonce: &'a str,
    cnonce: &'a str,
    nc: &'a str,
    qop: Option<&'a str>,
    method: &'a str,
    uri: &'a str,
    body: &'a [u8],
}

fn compute(i: &Inputs) -> String {
    let alg = i.algorithm;
    let mut ha1 = alg.h(format!("{}:{}:{}", i.username, i.realm, i.password).as_bytes());
    if alg.is_sess() {
        ha1 = alg.h(format!("{ha1}:{}:{}", i.nonce, i.cnonce).as_bytes());
    }
    let ha2 = match i.qop.and_then(Qop::parse) {
        Some(Qop::AuthInt) => alg.h(format!("{}:{}:{}", i.method, i.uri, alg.h(i.body)).as_bytes()),
        _ => alg.h(format!("{}:{}", i.method, i.uri).as_bytes()),
    };
    match i.qop {
        Some(qop) => {
            alg.h(format!("{ha1}:{}:{}:{}:{qop}:{ha2}", i.nonce, i.nc, i.cnonce).as_bytes())
        }
        None => alg.h(format!("{ha1}:{}:{ha2}", i.nonce).as_bytes()),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Equality whose time depends only on the lengths, so a forger cannot
/// learn a valid response or MAC one byte at a time.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// HMAC-SHA-256 (RFC 2104) over the concatenation of `parts`; a few lines
/// here spare a dependency.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > k.len() {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// A quoted-string (RFC 3261 §25.1). CR, LF and the other controls have
/// no representation there even escaped, and letting them through would
/// split the header, so they are dropped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn token_or_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(is_tchar) {
        s.to_string()
    } else {
        quote(s)
    }
}

/// RFC 7230 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters of an unquoted parameter value. Wider than tchar: deployed
/// clients send `uri=sip:bob@example.com` unquoted, and reading it costs no
/// ambiguity as long as commas, quotes and spaces still end the value.
fn is_bare_value_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b',' && b != b'"'
}

/// Characters of an RFC 7235 token68 (`Basic dXNlcg==`), which we only read
/// to skip past other schemes' challenges.
fn is_token68_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// One `scheme params` element of an auth header value, parameter names
/// lowercased.
struct AuthItem {
    scheme: String,
    params: Vec<(String, String)>,
    token68: bool,
}

type Params = Vec<(String, String)>;

impl AuthItem {
    fn digest_params(self) -> Result<Params, ParseError> {
        if !self.scheme.eq_ignore_ascii_case("Digest") {
            return Err(ParseError::NotDigest);
        }
        if self.token68 {
            return Err(ParseError::Syntax("Digest with a token68"));
        }
        Ok(self.params)
    }
}

fn get<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn require<'a>(params: &'a Params, name: &'static str) -> Result<&'a str, ParseError> {
    get(params, name).ok_or(ParseError::Missing(name))
}

/// RFC 7235 §2.1 and §4.1: `1#challenge`, each `auth-scheme [ 1*SP ( token68 /
/// #auth-param ) ]`. A list element that starts `token =` continues the
/// current challenge; any other token starts a new one.
fn parse_auth_items(value: &str) -> Result<Vec<AuthItem>, ParseError> {
    let mut cur = Cursor { s: value, i: 0 };
    let mut items: Vec<AuthItem> = Vec::new();
    loop {
        cur.skip_list_separators();
        if cur.at_end() {
            break;
        }
        let name = cur.token().ok_or(ParseError::Syntax("expected a token"))?;
        cur.skip_ws();
        if cur.peek() == Some(b'=') {
            let item = items
                .last_mut()
                .ok_or(ParseError::Syntax("parameter before any scheme"))?;
            cur.i += 1;
            read_param(&mut cur, name, item)?;
        } else {
            if items.len() == MAX_CHALLENGES {
                return Err(ParseError::Syntax("too many challenges"));
            }
            let mut item = AuthItem {
                scheme: name.to_string(),
                params: Vec::new(),
                token68: false,
            };
            if !cur.at_element_end() {
                if cur.token68() {
                    item.token68 = true;
                } else {
                    let first = cur
                        .token()
                        .ok_or(ParseError::Syntax("expected a parameter"))?;
                    cur.skip_ws();
                    if cur.peek() != Some(b'=') {
                        return Err(ParseError::Syntax("expected '='"));
                    }
                    cur.i += 1;
                    read_param(&mut cur, first, &mut item)?;
                }
            }
            items.push(item);
        }
        if !cur.at_element_end() {
            return Err(ParseError::Syntax("junk after a parameter"));
        }
    }
    if items.is_empty() {
        return Err(ParseError::Syntax("empty value"));
    }
    Ok(items)
}

/// The value after `name =`, appended to `item`.
fn read_param(cur: &mut Cursor, name: &str, item: &mut AuthItem) -> Result<(), ParseError> {
    if item.token68 {
        return Err(ParseError::Syntax("parameter after token68"));
    }
    cur.skip_ws();
    let value = if cur.peek() == Some(b'"') {
        cur.quoted()?
    } else {
        cur.bare_value()
            .ok_or(ParseError::Syntax("expected a parameter value"))?
            .to_string()
    };
    cur.skip_ws();
    let name = name.to_ascii_lowercase();
    if item.params.iter().any(|(k, _)| *k == name) {
        return Err(ParseError::Duplicate(name));
    }
    if item.params.len() == MAX_PARAMS {
        return Err(ParseError::Syntax("too many parameters"));
    }
    item.params.push((name, value));
    Ok(())
}

/// A position in a header value. It only ever stops on ASCII bytes or the
/// end, so slicing at it cannot split a UTF-8 sequence.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn at_element_end(&self) -> bool {
        matches!(self.peek(), None | Some(b','))
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// Whitespace and the empty list elements RFC 7230 §7 tells us to
    /// tolerate (`a, , b`).
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> Option<&'a str> {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        (self.i > start).then(|| &self.s[start..self.i])
    }

    fn token(&mut self) -> Option<&'a str> {
        self.take_while(is_tchar)
    }

    fn bare_value(&mut self) -> Option<&'a str> {
        self.take_while(is_bare_value_byte)
    }

    /// Consume a token68 if the element holds exactly one, else leave the
    /// cursor alone (it is then `name=value`, which shares its first
    /// characters with a token68).
    fn token68(&mut self) -> bool {
        let start = self.i;
        if self.take_while(is_token68_byte).is_some() {
            self.take_while(|b| b == b'=');
            self.skip_ws();
            if self.at_element_end() {
                return true;
            }
        }
        self.i = start;
        false
    }

    /// A quoted-string starting at the opening quote, unescaped. Controls
    /// other than HTAB are refused (RFC 3261 §25.1 qdtext and quoted-pair).
    fn quoted(&mut self) -> Result<String, ParseError> {
        let mut out = String::new();
        let mut chars = self.s[self.i + 1..].char_indices();
        while let Some((off, c)) = chars.next() {
            match c {
                '"' => {
                    self.i += 1 + off + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e)) if !e.is_ascii_control() || e == '\t' => out.push(e),
                    _ => return Err(ParseError::Syntax("bad escape in quoted string")),
                },
                c if c.is_ascii_control() && c != '\t' => {
                    return Err(ParseError::Syntax("control character in quoted string"))
                }
                c => out.push(c),
            }
        }
        Err(ParseError::Syntax("unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1 inputs.
    const REALM: &str = "http-auth@example.org";
    const NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    const OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";

    fn rfc7616_challenge(alg: &str) -> String {
        format!(
            "Digest realm=\"{REALM}\", qop=\"auth, auth-int\", algorithm={alg}, \
             nonce=\"{NONCE}\", opaque=\"{OPAQUE}\""
        )
    }

    fn response_of(header: &str) -> String {
        Credentials::parse(header).unwrap().response
    }

    #[test]
    fn rfc7616_sha256_and_md5_vectors() {
        for (alg, expected) in [
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ] {
            let c = Challenge::parse(&rfc7616_challenge(alg)).unwrap();
            assert_eq!(c.qop, vec![Qop::Auth, Qop::AuthInt]);
            let h = respond(
                &c,
                "Mufasa",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                b"",
                CNONCE,
                1,
            );
            assert_eq!(response_of(&h), expected, "{alg}");
            let creds = Credentials::parse(&h).unwrap();
            assert_eq!(creds.qop.as_deref(), Some("auth"));
            assert_eq!(creds.nc.as_deref(), Some("00000001"));
            assert_eq!(creds.opaque.as_deref(), Some(OPAQUE));
        }
    }

    #[test]
    fn rfc2617_vector() {
        let c = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::Md5, "absent algorithm means MD5");
        let h = respond(
            &c,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            b"",
            "0a4f113b",
            1,
        );
        assert_eq!(response_of(&h), "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn primitives_match_published_vectors() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // FIPS 180-4 example for SHA-512/256 ("abc"). RFC 7616's own
        // SHA-512-256 example (§3.9.2) needs userhash, which we lack.
        assert_eq!(
            Algorithm::Sha512_256.h(b"abc"),
            "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
        );
    }

    fn lookup(user: &str) -> Option<String> {
        (user == "alice").then(|| "s3cr\"et".to_string())
    }

    const NOW: u64 = 1_700_000_000;
    const URI: &str = "sip:example.com";

    fn verifier() -> Verifier {
        Verifier::new([7; 32], "example.com")
    }

    #[test]
    fn round_trip_every_algorithm() {
        let v = verifier();
        let offered = v.challenges(NOW, false);
        assert_eq!(offered.len(), 2);
        assert!(offered[0].contains("algorithm=SHA-256") && offered[1].contains("algorithm=MD5"));
        let nonce = Challenge::parse(&offered[0]).unwrap().nonce;
        for alg in Algorithm::ALL {
            let c = Challenge {
                algorithm: alg,
                ..Challenge::parse(&offered[0]).unwrap()
            };
            assert_eq!(c.nonce, nonce);
            let h = respond(&c, "alice", "s3cr\"et", "REGISTER", URI, b"", "abc", 1);
            assert_eq!(
                v.verify(&h, "REGISTER", URI, lookup, NOW + 10).as_deref(),
                Ok("alice"),
                "{alg}: {h}"
            );
            // The same credentials on another method do not verify.
            assert_eq!(
                v.verify(&h, "INVITE", URI, lookup, NOW + 10),
                Err(AuthError::WrongPassword)
            );
        }
        // An RFC 2069 style answer (no qop) is still accepted.
        let c = Challenge {
            qop: vec![],
            ..Challenge::parse(&offered[1]).unwrap()
        };
        let h = respond(&c, "alice", "s3cr\"et", "REGISTER", URI, b"", "abc", 1);
        assert!(!h.contains("qop") && !h.contains("cnonce"));
        assert_eq!(
            v.verify(&h, "REGISTER", URI, lookup, NOW).as_deref(),
            Ok("alice")
        );
    }

    fn answer(v: &Verifier, now: u64, user: &str, password: &str, uri: &str) -> String {
        let c = strongest(v.challenges(now, false).iter().map(String::as_str)).unwrap();
        respond(&c, user, password, "REGISTER", uri, b"", "0a4f113b", 1)
    }

    #[test]
    fn verify_failures() {
        let v = verifier();
        let good = answer(&v, NOW, "alice", "s3cr\"et", URI);
        let check = |h: &str, now| v.verify(h, "REGISTER", URI, lookup, now);
        assert_eq!(
            check(&good, NOW + NONCE_LIFETIME_SECS).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            check(&good, NOW + NONCE_LIFETIME_SECS + 1),
            Err(AuthError::StaleNonce)
        );
        // Stale is only reported to someone who knows the password.
        let wrong = answer(&v, NOW, "alice", "guess", URI);
        assert_eq!(check(&wrong, NOW), Err(AuthError::WrongPassword));
        assert_eq!(check(&wrong, NOW + 10_000), Err(AuthError::WrongPassword));
        assert_eq!(
            check(&answer(&v, NOW, "bob", "x", URI), NOW),
            Err(AuthError::UnknownUser)
        );
        assert_eq!(
            check(
                &answer(&v, NOW, "alice", "s3cr\"et", "sip:other.example.com"),
                NOW
            ),
            Err(AuthError::UriMismatch)
        );
        let other_realm = Verifier::new([7; 32], "elsewhere");
        assert_eq!(
            check(&answer(&other_realm, NOW, "alice", "s3cr\"et", URI), NOW),
            Err(AuthError::RealmMismatch)
        );
        let other_secret = Verifier::new([8; 32], "example.com");
        assert_eq!(
            check(&answer(&other_secret, NOW, "alice", "s3cr\"et", URI), NOW),
            Err(AuthError::BadNonce)
        );
        assert!(matches!(
            check("Digest username=\"alice\"", NOW),
            Err(AuthError::BadFormat(_))
        ));
        assert!(matches!(
            check("Basic YWxhZGRpbjpvcGVuc2VzYW1l", NOW),
            Err(AuthError::BadFormat(_))
        ));
    }

    #[test]
    fn tampered_nonce_is_rejected() {
        let v = verifier();
        let c = strongest(v.challenges(NOW, false).iter().map(String::as_str)).unwrap();
        // Move the timestamp forward to dodge staleness, and answer
        // correctly for the forged nonce: only the MAC can catch it.
        let mut forged = c.clone();
        let later = format!("{:016x}", NOW + 100_000);
        forged.nonce = format!("{later}{}", &c.nonce[16..]);
        let h = respond(&forged, "alice", "s3cr\"et", "REGISTER", URI, b"", "x", 1);
        assert_eq!(
            v.verify(&h, "REGISTER", URI, lookup, NOW + 100_000),
            Err(AuthError::BadNonce)
        );
        // Flip one MAC digit.
        let mut flipped = c.clone();
        let last = if c.nonce.ends_with('0') { "1" } else { "0" };
        flipped.nonce = format!("{}{last}", &c.nonce[..c.nonce.len() - 1]);
        let h = respond(&flipped, "alice", "s3cr\"et", "REGISTER", URI, b"", "x", 1);
        assert_eq!(
            v.verify(&h, "REGISTER", URI, lookup, NOW),
            Err(AuthError::BadNonce)
        );
        // Tampered opaque.
        let mut opaque = c;
        opaque.opaque = Some("deadbeef".into());
        let h = respond(&opaque, "alice", "s3cr\"et", "REGISTER", URI, b"", "x", 1);
        assert_eq!(
            v.verify(&h, "REGISTER", URI, lookup, NOW),
            Err(AuthError::BadNonce)
        );
    }

    #[test]
    fn stale_challenge_is_marked() {
        let v = verifier();
        for value in v.challenges(NOW, true) {
            assert!(Challenge::parse(&value).unwrap().stale);
        }
        assert!(
            !Challenge::parse(&v.challenges(NOW, false)[0])
                .unwrap()
                .stale
        );
    }

    #[test]
    fn strongest_challenge_wins() {
        let md5 = rfc7616_challenge("MD5");
        let sha = rfc7616_challenge("SHA-256");
        let sha512 = rfc7616_challenge("sha-512-256");
        let future = rfc7616_challenge("SHA-3-1024");
        let basic = "Basic realm=\"x\"";
        let pick = |v: &[&str]| strongest(v.iter().copied()).map(|c| c.algorithm);
        assert_eq!(pick(&[&md5, &sha]), Some(Algorithm::Sha256));
        assert_eq!(pick(&[&sha, &md5]), Some(Algorithm::Sha256));
        assert_eq!(
            pick(&[basic, &md5, &future, &sha512, &sha]),
            Some(Algorithm::Sha512_256)
        );
        assert_eq!(pick(&[basic, &future]), None);
        // Several challenges in one value, mixed with another scheme.
        let one_line = format!("Basic realm=\"b\", {md5}, Negotiate abc==, {sha}");
        let all = parse_challenges(&one_line);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], Err(ParseError::NotDigest));
        assert_eq!(all[2], Err(ParseError::NotDigest));
        assert_eq!(pick(&[&one_line]), Some(Algorithm::Sha256));
        // Per realm: a forked request challenged by two proxies.
        let other = rfc7616_challenge("MD5").replace(REALM, "proxy2");
        let per = strongest_per_realm([md5.as_str(), other.as_str(), sha.as_str()]);
        assert_eq!(per.len(), 2);
        assert_eq!(
            (per[0].realm.as_str(), per[0].algorithm),
            (REALM, Algorithm::Sha256)
        );
        assert_eq!(
            (per[1].realm.as_str(), per[1].algorithm),
            ("proxy2", Algorithm::Md5)
        );
    }

    #[test]
    fn unknown_and_non_ascii_algorithms_are_errors() {
        let quoted = rfc7616_challenge("\"SHA-256\u{e4}\"");
        assert!(matches!(
            Challenge::parse(&quoted),
            Err(ParseError::UnknownAlgorithm(_))
        ));
        let bare = rfc7616_challenge("SH\u{c4}-256");
        assert!(Challenge::parse(&bare).is_err());
        let bare = rfc7616_challenge("\u{1F600}");
        assert!(Challenge::parse(&bare).is_err());
        let creds = "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", algorithm=MD\u{f6}";
        assert!(Credentials::parse(creds).is_err());
        let v = verifier();
        assert!(matches!(
            v.verify(creds, "REGISTER", URI, lookup, NOW),
            Err(AuthError::BadFormat(_))
        ));
    }

    #[test]
    fn parser_edges() {
        // Case-insensitive names, odd whitespace, escapes, unquoted values.
        let c = Challenge::parse(
            "digest  REALM = \"a \\\"b\\\\ c\" ,, NONCE=abc/+=, Algorithm=md5, QOP=\"AUTH\", Stale=TRUE",
        )
        .unwrap();
        assert_eq!(c.realm, "a \"b\\ c");
        assert_eq!(c.nonce, "abc/+=");
        assert_eq!(c.qop, vec![Qop::Auth]);
        assert!(c.stale);
        // Our printed form reads back identically.
        assert_eq!(Challenge::parse(&c.to_string()).unwrap(), c);

        let bad = [
            "",
            "   ",
            "Digest realm=\"x",
            "Digest realm=\"x\", realm=\"y\", nonce=\"n\"",
            "Digest nonce=\"n\"",
            "Digest realm=\"x\", nonce=\"n\", qop=\"auth-conf\"",
            "realm=\"x\", nonce=\"n\"",
            "Digest realm=\"x\r\ny\", nonce=\"n\"",
            "Digest realm=\"x\" junk, nonce=\"n\"",
            "Digest realm=",
            "Digest =x",
        ];
        for b in bad {
            assert!(Challenge::parse(b).is_err(), "{b:?}");
        }
        assert_eq!(
            Challenge::parse("Digest realm=x, REALM=y, nonce=n"),
            Err(ParseError::Duplicate("realm".into()))
        );
        let many = format!("Digest realm=x, nonce=n{}", ", a=b".repeat(100));
        assert!(Challenge::parse(&many).is_err());

        // Credentials with qop need cnonce and an 8-digit nc.
        let base =
            "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"00\"";
        assert!(Credentials::parse(base).is_ok());
        assert_eq!(
            Credentials::parse(&format!("{base}, qop=auth, nc=00000001")),
            Err(ParseError::Missing("cnonce"))
        );
        assert!(matches!(
            Credentials::parse(&format!("{base}, qop=auth, nc=1, cnonce=\"c\"")),
            Err(ParseError::BadNonceCount(_))
        ));
        assert_eq!(
            Credentials::parse(&format!("{base}, userhash=true")),
            Err(ParseError::UserhashUnsupported)
        );
    }

    #[test]
    fn header_injection_is_impossible() {
        let c = Challenge::parse(&rfc7616_challenge("MD5")).unwrap();
        let h = respond(&c, "eve\r\nVia: x", "p", "GET", "sip:a\nb", b"", "c", 1);
        assert!(!h.contains(['\r', '\n']));
        assert!(Credentials::parse(&h).is_ok());
    }

    #[test]
    fn uri_comparison_normalizes_through_the_uri_printer() {
        assert!(same_uri("sip:example.com", " sip:example.com "));
        assert!(!same_uri("sip:example.com", "sip:example.org"));
        assert!(!same_uri("sip:example.com", "garbage"));
        // What the caller prints for the Request-URI is ezk's spelling.
        assert!(same_uri(
            "SIP:alice@[2001:DB8::1]",
            "sip:alice@[2001:db8::1]"
        ));
        assert!(same_uri("sip:%61lice@example.com", "sip:alice@example.com"));
    }

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn mutated_values_never_panic() {
        let v = verifier();
        let mut seeds = v.challenges(NOW, false);
        seeds.push(answer(&v, NOW, "alice", "s3cr\"et", URI));
        seeds.push(rfc7616_challenge("SHA-512-256-sess"));
        seeds.push(format!(
            "Basic realm=\"b\", {}, Negotiate abc==",
            rfc7616_challenge("MD5")
        ));
        let alphabet: &[&str] = &[
            "\"",
            "\\",
            ",",
            "=",
            " ",
            "\t",
            "\r",
            "\n",
            "\0",
            "a",
            "Z",
            "0",
            "-",
            "\u{e4}",
            "\u{1F600}",
            "\u{7f}",
            "Digest ",
            "qop=",
            "algorithm=",
            "auth-int",
            "-sess",
            "==",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Counted so the loop cannot silently degrade into only feeding
        // the parser garbage it rejects at the first byte.
        let (mut parsed, mut verified) = (0, 0);
        for _ in 0..20_000 {
            let mut s = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let mut chars: Vec<char> = s.chars().collect();
                let at = rng.below(chars.len() + 1);
                match rng.below(5) {
                    0 if at < chars.len() => {
                        chars.remove(at);
                    }
                    1 => {
                        let ins = alphabet[rng.below(alphabet.len())];
                        chars.splice(at..at, ins.chars());
                    }
                    2 => chars.truncate(at),
                    3 if at < chars.len() => {
                        let end = (at + rng.below(12)).min(chars.len());
                        let dup: Vec<char> = chars[at..end].to_vec();
                        chars.splice(at..at, dup);
                    }
                    _ if at < chars.len() => {
                        chars[at] = char::from_u32(rng.below(0x300) as u32).unwrap_or('?');
                    }
                    _ => {}
                }
                s = chars.into_iter().collect();
            }
            for c in parse_challenges(&s).into_iter().flatten() {
                parsed += 1;
                let h = respond(&c, "alice", "pw", "REGISTER", URI, b"body", "cn", 2);
                // Whatever we accepted, our answer must be readable.
                assert!(Credentials::parse(&h).is_ok(), "{s:?} -> {h:?}");
                let _ = c.to_string();
            }
            let _ = Credentials::parse(&s);
            verified += usize::from(v.verify(&s, "REGISTER", URI, lookup, NOW).is_ok());
            let _ = strongest([s.as_str()]);
        }
        assert!(parsed > 2_000 && verified > 0, "{parsed} {verified}");
    }
}
