//! Writing JSON by hand: the status document is a few flat objects, and
//! the library stays free of serde. Standalone (std only): the `wisp` CLI's
//! tests include this file to check their parser against it.

use std::fmt::Write as _;

/// `s` as a JSON string, quoted and escaped (RFC 8259 §7): quote,
/// backslash and every control character; anything else as it is (the
/// document is UTF-8).
pub fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// At most `max` bytes of `s`, cut at a character boundary: names come
/// from a map file or a peer's SIP message, and the answer is bounded.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An object being written: `{"k":v,...}`; [`Obj::end`] closes it.
pub struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    pub fn new(out: &'a mut String) -> Obj<'a> {
        out.push('{');
        Obj { out, first: true }
    }

    /// The key of the next member; its value is written by the caller.
    pub fn key(&mut self, k: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        string(self.out, k);
        self.out.push(':');
        self.out
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        let out = self.key(k);
        string(out, v);
        self
    }

    pub fn opt_str(&mut self, k: &str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        let out = self.key(k);
        let _ = write!(out, "{v}");
        self
    }

    pub fn opt_u64(&mut self, k: &str, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.u64(k, v),
            None => self.null(k),
        }
    }

    /// A number with three decimals (milliseconds to the microsecond);
    /// null when absent or not finite (JSON has no NaN).
    pub fn opt_f64(&mut self, k: &str, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) if v.is_finite() => {
                let out = self.key(k);
                let _ = write!(out, "{v:.3}");
                self
            }
            _ => self.null(k),
        }
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        let out = self.key(k);
        out.push_str(if v { "true" } else { "false" });
        self
    }

    pub fn null(&mut self, k: &str) -> &mut Self {
        self.key(k).push_str("null");
        self
    }

    pub fn end(self) {
        self.out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        let mut out = String::new();
        string(&mut out, v);
        out
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(s("bob.wxyz"), r#""bob.wxyz""#);
        assert_eq!(s(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(s(r"a\b"), r#""a\\b""#);
        assert_eq!(s("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(
            s("\u{0}\u{1f}\u{7f}\u{8}\u{c}"),
            r#""\u0000\u001f\u007f\b\f""#
        );
        // Non-ASCII stays as it is: the document is UTF-8.
        assert_eq!(s("héllo ☃ \u{2028}"), "\"héllo ☃ \u{2028}\"");
    }

    #[test]
    fn objects() {
        let mut out = String::new();
        let mut o = Obj::new(&mut out);
        o.str("peer_name", "\"quoted\"")
            .opt_str("none", None)
            .u64("moves", 3)
            .opt_f64("stall_ms", Some(12.34567))
            .opt_f64("nan", Some(f64::NAN))
            .bool("mobile", true);
        o.key("fds").push_str("[3,4]");
        o.end();
        assert_eq!(
            out,
            r#"{"peer_name":"\"quoted\"","none":null,"moves":3,"stall_ms":12.346,"nan":null,"mobile":true,"fds":[3,4]}"#
        );
    }

    #[test]
    fn clip_keeps_characters_whole() {
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("aé", 2), "a");
    }
}
