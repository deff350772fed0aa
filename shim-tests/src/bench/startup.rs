//! Start-up cost: a program that uses no wisp name pays only for loading the
//! library and its constructor. Measured as the wall time of spawning and
//! reaping `/bin/true` and `python3 -c pass`, with and without
//! `LD_PRELOAD=libwisp.so`, the two variants interleaved run by run so that
//! machine noise lands on both.

use super::{Ctx, Row, Target};
use crate::e2e::libwisp;
use std::process::{Command, Stdio};
use std::time::Instant;

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let lib = libwisp();
    let python = python_binary();
    let progs: [(&str, &[&str], usize); 2] = [
        ("/bin/true", &[], ctx.pick(400, 40)),
        (&python, &["-c", "pass"], ctx.pick(100, 10)),
    ];
    let mut rows = Vec::new();
    for (prog, args, n) in progs {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        // One warm-up each: page cache, dynamic loader cache.
        spawn_ms(prog, args, Some(&lib));
        spawn_ms(prog, args, None);
        for _ in 0..n {
            with.push(spawn_ms(prog, args, Some(&lib)));
            without.push(spawn_ms(prog, args, None));
        }
        let what = format!("{prog} {}", args.join(" "));
        rows.push(
            Row::new("startup", format!("start-up, `{}`", what.trim()), "ms")
                .value(&with)
                .baseline("without library", &without)
                .target(Target::AddedAtMost(0.3), "≤ +0.3 ms")
                .note("spawn to exit, interleaved runs"),
        );
    }
    rows
}

/// The interpreter itself: `python3` on PATH may be a wrapper script (pyenv's
/// shim runs a dozen processes), which would count the library's load once
/// per process of the wrapper.
fn python_binary() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Milliseconds from spawn to reaped exit; the program must succeed.
fn spawn_ms(prog: &str, args: &[&str], preload: Option<&std::path::Path>) -> f64 {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("LD_PRELOAD");
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let t = Instant::now();
    let st = cmd.status().unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(st.success(), "{prog} failed: {st}");
    ms
}
