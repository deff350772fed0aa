//! `wisp agent`: a SIP user agent run on its own, outside any host program.
//!
//! Its place is kept here for the user-agent work (sipcore's UA under
//! `sipcore::io::Driver`, as `registrar.rs` runs the proxy); until then the
//! command says so instead of pretending.

use crate::cli::{self, Args};

pub fn main(_args: Args) -> cli::Result<()> {
    Err(cli::Failure::Runtime(
        "agent: not implemented yet".to_string(),
    ))
}
