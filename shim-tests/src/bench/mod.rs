//! The benchmark suite behind `scripts/bench` (issue 5, DESIGN.md §8).
//!
//! Every figure is measured side by side with its baseline in the same run
//! (runs alternate, so a noisy neighbour hurts both alike), summarised as a
//! median with its spread, and checked against the target the project set
//! for it. Sections are independent modules with one entry point each,
//! `run(&Ctx) -> Vec<Row>`, so they can be run alone while working on one
//! figure (`wisp-bench startup`).

pub mod fdcost;
pub mod flow;
pub mod memory;
pub mod moves;
pub mod plot;
pub mod register;
pub mod report;
pub mod setup;
pub mod stall;
pub mod startup;
pub mod storm;
pub mod throughput;

pub use report::{Ctx, Row, Stats, Target};

/// A section of the suite: its name on the command line and its entry point.
pub struct Section {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Ctx) -> Vec<Row>,
}

/// Every section, in the order the table shows them.
pub const SECTIONS: &[Section] = &[
    Section {
        name: "startup",
        about: "start-up cost of the preloaded library when no wisp name is used",
        run: startup::run,
    },
    Section {
        name: "fdcost",
        about: "added cost per call on descriptors that are not wisp streams",
        run: fdcost::run,
    },
    Section {
        name: "memory",
        about: "resident memory per wisp stream, idle and sending",
        run: memory::run,
    },
    Section {
        name: "setup",
        about: "connection set-up by name (wisp registrar, Kamailio) against plain TCP",
        run: setup::run,
    },
    Section {
        name: "register",
        about: "registrar REGISTER/s on one core, wisp registrar against Kamailio",
        run: register::run,
    },
    Section {
        name: "stall",
        about: "handover stall across moves: wisp vs MPTCP vs plain TCP, per RTT",
        run: stall::run,
    },
    Section {
        name: "storm",
        about: "exactness and stalls of one stream across 1000 moves",
        run: storm::run,
    },
    Section {
        name: "throughput",
        about: "bulk TCP with and without the library (iperf3), per RTT",
        run: throughput::run,
    },
    Section {
        name: "plot",
        about: "a picture (move.svg) of bytes received across one move: wisp, MPTCP, TCP",
        run: plot::run,
    },
];
