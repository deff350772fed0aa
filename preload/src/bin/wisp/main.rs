//! The `wisp` command: one binary, one module per subcommand.
//!
//! - `registrar`: the domain's registrar and proxy ([`registrar`]).
//! - `agent`: a user agent outside any host program ([`agent`]; to come).
//! - `run`: a program under libwisp.so ([`run`]).
//! - `status`: the wisp processes of this user and their streams ([`status`]).
//!
//! A new subcommand is a module with a `main(Args) -> cli::Result<()>` and
//! a line in [`COMMANDS`] and in [`HELP`].

mod agent;
mod cli;
mod json;
mod registrar;
mod run;
mod signals;
mod status;
mod users;

/// The library's JSON writer and socket placement, shared by path: the
/// library is a cdylib, which a binary cannot link.
#[path = "../../status/json.rs"]
#[allow(dead_code)]
mod json_out;
#[path = "../../status/place.rs"]
#[allow(dead_code)]
mod place;

use cli::{Arg, Args, Failure};
use std::process::ExitCode;

const HELP: &str = "\
wisp: SIP-based transparent host mobility for unmodified Linux programs

Usage: wisp <COMMAND> [FLAGS]

Commands:
  registrar   Run a registrar and proxy for one or more SIP domains
  agent       Run a SIP user agent (register, call, answer)
  run         Run a program with libwisp.so preloaded
  status      List this user's wisp processes and their streams

Flags:
  -h, --help     Print this help
  -V, --version  Print the version

'wisp <COMMAND> --help' documents a command's flags.
";

type Command = fn(Args) -> cli::Result<()>;

const COMMANDS: &[(&str, Command)] = &[
    ("registrar", registrar::main),
    ("agent", agent::main),
    ("run", run::main),
    ("status", status::main),
];

fn run() -> cli::Result<()> {
    let mut args = Args::new(std::env::args_os().skip(1).collect())?;
    match args.next()? {
        None => Err(cli::usage("a command is needed (see 'wisp --help')")),
        Some(Arg::Flag(f)) if f == "-h" || f == "--help" => {
            print!("{HELP}");
            Ok(())
        }
        Some(Arg::Flag(f)) if f == "-V" || f == "--version" => {
            println!("wisp {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some(Arg::Flag(f)) => Err(cli::usage(format!(
            "unknown flag '{f}' (see 'wisp --help')"
        ))),
        Some(Arg::Positional(name)) => match COMMANDS.iter().find(|(n, _)| *n == name) {
            Some((_, command)) => command(args),
            None => Err(cli::usage(format!(
                "unknown command '{name}' (see 'wisp --help')"
            ))),
        },
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("wisp: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("wisp: {msg}");
            ExitCode::FAILURE
        }
    }
}
