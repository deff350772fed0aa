//! Command-line words, parsed by hand.
//!
//! Why no crate: every subcommand's grammar is `--flag VALUE`, `--flag=VALUE`
//! and repeatable flags, which is this page of code. A parser crate would
//! add a dependency (and, with derive-based ones, a proc-macro build) to a
//! package whose other half is an LD_PRELOAD library we want lean, and its
//! error texts and exit codes would need bending to ours anyway: unknown or
//! bad flags must name the flag and exit 2.

use std::ffi::OsString;
use std::fmt::Display;
use std::str::FromStr;

/// Why a command did not succeed; decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The command line was wrong: exit 2, like other Unix tools.
    Usage(String),
    /// The command ran and failed (a port in use, an unreadable file): exit 1.
    Runtime(String),
}

pub type Result<T> = std::result::Result<T, Failure>;

pub fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(msg.into())
}

/// One word of the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Arg {
    /// `-h`, `--listen` (a `=value` part is held back for [`Args::value`]).
    Flag(String),
    Positional(String),
}

pub struct Args {
    items: std::vec::IntoIter<String>,
    /// The `VALUE` of a `--flag=VALUE` just returned.
    inline: Option<String>,
    /// The flag [`Args::next`] returned last, for error messages.
    last_flag: String,
}

impl Args {
    pub fn new(args: Vec<OsString>) -> Result<Args> {
        let items = args
            .into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|a| usage(format!("argument {a:?} is not valid UTF-8")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Args {
            items: items.into_iter(),
            inline: None,
            last_flag: String::new(),
        })
    }

    /// The next word. A `=value` left unread from the previous flag is an
    /// error: that flag takes no value.
    #[allow(clippy::should_implement_trait)] // fallible, so not an Iterator
    pub fn next(&mut self) -> Result<Option<Arg>> {
        if self.inline.is_some() {
            return Err(usage(format!("{} takes no value", self.last_flag)));
        }
        let Some(word) = self.items.next() else {
            return Ok(None);
        };
        if word.starts_with('-') && word.len() > 1 {
            let flag = match word.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    self.inline = Some(value.to_string());
                    flag.to_string()
                }
                _ => word,
            };
            self.last_flag = flag.clone();
            Ok(Some(Arg::Flag(flag)))
        } else {
            Ok(Some(Arg::Positional(word)))
        }
    }

    /// The value of the flag just returned: its `=value`, or the next word.
    pub fn value(&mut self) -> Result<String> {
        self.inline
            .take()
            .or_else(|| self.items.next())
            .ok_or_else(|| usage(format!("{} needs a value", self.last_flag)))
    }

    /// The `=value` of the flag just returned, if it has one: for a flag
    /// whose value is optional (`--watch` or `--watch=5`).
    pub fn inline_value(&mut self) -> Option<String> {
        self.inline.take()
    }

    /// Every word not read yet, as it stands (the command after `--`).
    pub fn rest(&mut self) -> Vec<String> {
        self.items.by_ref().collect()
    }

    /// The value of the flag just returned, parsed.
    pub fn parse<T>(&mut self) -> Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let value = self.value()?;
        value.parse().map_err(|e| {
            usage(format!(
                "invalid value {value:?} for {}: {e}",
                self.last_flag
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::new(words.iter().map(OsString::from).collect()).unwrap()
    }

    #[test]
    fn flags_values_and_errors() {
        let mut a = args(&["--listen=1.2.3.4:5", "--t1-ms", "x", "pos", "--help=1"]);
        assert_eq!(a.next().unwrap(), Some(Arg::Flag("--listen".into())));
        assert_eq!(a.value().unwrap(), "1.2.3.4:5");
        assert_eq!(a.next().unwrap(), Some(Arg::Flag("--t1-ms".into())));
        let Err(Failure::Usage(e)) = a.parse::<u64>() else {
            panic!()
        };
        assert!(e.contains("--t1-ms") && e.contains("\"x\""), "{e}");
        assert_eq!(a.next().unwrap(), Some(Arg::Positional("pos".into())));
        assert_eq!(a.next().unwrap(), Some(Arg::Flag("--help".into())));
        let Err(Failure::Usage(e)) = a.next() else {
            panic!()
        };
        assert_eq!(e, "--help takes no value");
        let mut a = args(&["--domain"]);
        a.next().unwrap();
        let Err(Failure::Usage(e)) = a.value() else {
            panic!()
        };
        assert_eq!(e, "--domain needs a value");
    }
}
