//! Cost on descriptors that are not wisp streams: every hooked call on an
//! ordinary descriptor should cost one fd-table check on top of libc.
//!
//! A small C program (`fdcost.c`, compiled here with `cc -O2`) runs a tight
//! loop of send/recv on an AF_UNIX socketpair, or write/read on a pipe, of
//! 1-byte messages. Three views of the same cost, per loop:
//!
//! * with and without `LD_PRELOAD=libwisp.so`, separate processes whose
//!   order flips every run, median over runs of each process's fastest
//!   block: the plain comparison, but a syscall here costs hundreds of ns
//!   and shifts between processes by more than the 5 ns target;
//! * in one preloaded process, blocks through the library alternating with
//!   blocks calling libc's own functions (dlsym on libc's handle): the
//!   pairing cancels what differs between processes;
//! * instructions per call under callgrind, with and without: user space
//!   only and exactly repeatable, so the difference is the hook's path.

use super::{Ctx, Row, Stats, Target};
use crate::e2e::libwisp;
use std::path::Path;
use std::process::{Command, Stdio};

const SOURCE: &str = include_str!("fdcost.c");
/// Bytes per call: the smallest message, so the hook is the largest share.
const SIZE: usize = 1;

/// (name in the table, the program's mode)
const LOOPS: [(&str, &str); 2] = [
    ("send+recv, AF_UNIX socketpair", "unix"),
    ("write+read, pipe", "pipe"),
];

/// No _FORTIFY_SOURCE: the loop must call read/recv themselves, not their
/// __*_chk twins.
const NO_FORTIFY: &[&str] = &["-U_FORTIFY_SOURCE"];

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let prog = match super::report::compile_c(&ctx.out, "fdcost", "fdcost", SOURCE, NO_FORTIFY) {
        Ok(p) => p,
        Err(e) => {
            return LOOPS
                .iter()
                .map(|(what, _)| {
                    Row::new("fdcost", format!("{what}, 1 B"), "ns/call")
                        .target(Target::AddedAtMost(5.0), "≤ +5 ns per call")
                        .note(format!("not built: {e}"))
                })
                .collect()
        }
    };
    let lib = libwisp();
    let runs = ctx.pick(ctx.runs.max(5) * 3, ctx.runs.max(5));
    let (calls, blocks) = (2_000, ctx.pick(100, 30));
    let mut rows = Vec::new();
    for (what, mode) in LOOPS {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        // Through the library minus libc direct, in one process; and the
        // same difference without the library (PLT vs pointer: ~0).
        let (mut paired, mut control) = (Vec::new(), Vec::new());
        for r in 0..runs {
            // Flip the order each run: neither variant always goes first.
            for preload in [r % 2 == 0, r % 2 == 1] {
                let lib = preload.then_some(lib.as_path());
                let (plt, direct) = time_loop(&prog, mode, calls, blocks, lib);
                if preload {
                    with.push(plt);
                    paired.push(plt - direct);
                } else {
                    without.push(plt);
                    control.push(plt - direct);
                }
            }
        }
        let control = Stats::of(&control).map_or(f64::NAN, |s| s.median);
        rows.push(
            Row::new("fdcost", format!("{what}, {SIZE} B"), "ns/call")
                .value(&with)
                .baseline("without library", &without)
                .target(Target::AddedAtMost(5.0), "≤ +5 ns per call")
                .note(format!(
                    "separate processes, interleaved; fastest of {blocks} blocks of {calls} calls per process, median of {runs} runs. A syscall here varies between processes by more than 5 ns: see the two rows below"
                )),
        );
        rows.push(
            Row::new(
                "fdcost",
                format!("{what}, {SIZE} B: added in one process"),
                "ns/call",
            )
            .value(&paired)
            .target(Target::AtMost(5.0), "≤ +5 ns per call")
            .note(format!(
                "through libwisp.so minus libc's own function (dlsym on libc) in alternating blocks of the same process, median of {runs} runs; the same difference without the library (PLT vs pointer call) is {control:.1} ns"
            )),
        );
        let ir = |lib: Option<&Path>| instructions_per_call(&prog, mode, lib);
        let (with_ir, without_ir) = (ir(Some(&lib)), ir(None));
        let mut row = Row::new(
            "fdcost",
            format!("{what}, {SIZE} B: instructions per call"),
            "instr",
        )
        .target(Target::None, "(the noise-free view of the above)");
        row = match (with_ir, without_ir) {
            (Ok(w), Ok(wo)) => row
                .value(&[w])
                .baseline("without library", &[wo])
                .note(format!(
                    "callgrind, user space only (the syscall itself is not counted): the library adds {:.1} instructions per call",
                    w - wo
                )),
            (w, wo) => row.note(format!(
                "callgrind failed: {}",
                w.err().or(wo.err()).unwrap_or_default()
            )),
        };
        rows.push(row);
    }
    rows
}

fn probe(prog: &Path, lib: Option<&Path>) -> Command {
    let mut cmd = Command::new(prog);
    cmd.env_remove("LD_PRELOAD").stdin(Stdio::null());
    if let Some(lib) = lib {
        cmd.env("LD_PRELOAD", lib);
    }
    cmd
}

/// One run of the timed loop: ns per call of the fastest block through the
/// PLT (the library, when preloaded) and calling libc directly.
fn time_loop(
    prog: &Path,
    mode: &str,
    calls: usize,
    blocks: usize,
    lib: Option<&Path>,
) -> (f64, f64) {
    let out = probe(prog, lib)
        .args([
            mode,
            &SIZE.to_string(),
            &calls.to_string(),
            &blocks.to_string(),
        ])
        .output()
        .expect("run fdcost");
    assert!(
        out.status.success(),
        "fdcost {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    two_numbers(&String::from_utf8_lossy(&out.stdout)).unwrap_or((f64::NAN, f64::NAN))
}

/// "PLT DIRECT" as printed by the probe.
pub fn two_numbers(s: &str) -> Option<(f64, f64)> {
    let mut it = s.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some((it.next()??, it.next()??))
}

/// Instructions per call of the measured loop under callgrind (one block:
/// the count does not vary).
fn instructions_per_call(prog: &Path, mode: &str, lib: Option<&Path>) -> Result<f64, String> {
    const CALLS: usize = 20_000;
    let cg_out = std::env::temp_dir().join(format!("wisp-fdcost-{}.cg", std::process::id()));
    let mut cmd = Command::new("valgrind");
    cmd.env_remove("LD_PRELOAD").stdin(Stdio::null());
    if let Some(lib) = lib {
        // valgrind adds its own preloads to the client's LD_PRELOAD.
        cmd.env("LD_PRELOAD", lib);
    }
    let out = cmd
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            &format!("--toggle-collect=measured_{mode}"),
        ])
        .arg(format!("--callgrind-out-file={}", cg_out.display()))
        .arg(prog)
        .args([mode, &SIZE.to_string(), &CALLS.to_string(), "1"])
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    let _ = std::fs::remove_file(&cg_out);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("valgrind exited {}: {err}", out.status));
    }
    let ir = collected(&err).ok_or_else(|| format!("no 'Collected' line in: {err}"))?;
    Ok(ir as f64 / CALLS as f64)
}

/// The instruction count of callgrind's summary line `==PID== Collected : N`.
pub fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let rest = l.split("Collected :").nth(1)?;
        rest.trim().replace(',', "").parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::{collected, two_numbers};

    #[test]
    fn probe_output_is_parsed() {
        assert_eq!(two_numbers("812.5 806.25\n"), Some((812.5, 806.25)));
        assert_eq!(two_numbers("812.5\n"), None);
        assert_eq!(two_numbers("x 1"), None);
    }

    #[test]
    fn callgrind_summary_is_parsed() {
        let err = "==123== Events    : Ir\n==123== Collected : 1928813\n==123==\n==123== I   refs:      1,928,813\n";
        assert_eq!(collected(err), Some(1_928_813));
        assert_eq!(collected("==1== Collected : 1,234\n"), Some(1234));
        assert_eq!(collected("nothing here"), None);
    }
}
