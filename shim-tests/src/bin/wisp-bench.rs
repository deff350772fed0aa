//! `wisp-bench [--quick] [--runs N] [--out DIR] [SECTION...]`: run the
//! benchmark suite (all sections by default), print the table as Markdown and
//! leave `table.md`, `rows.jsonl` and the sections' raw data in DIR
//! (default `target/bench`). `scripts/bench` is the way to call it.

use shim_tests::bench::{report, Ctx, SECTIONS};
use std::path::PathBuf;

fn usage() -> ! {
    eprintln!("usage: wisp-bench [--quick] [--runs N] [--out DIR] [SECTION...]\nsections:");
    for s in SECTIONS {
        eprintln!("  {:<12} {}", s.name, s.about);
    }
    std::process::exit(2)
}

fn main() {
    let mut ctx = Ctx {
        runs: 5,
        quick: false,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench")),
    };
    let mut runs = None;
    let mut picked = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => ctx.quick = true,
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).or_else(|| usage()),
            "--out" => ctx.out = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            s => match SECTIONS.iter().find(|x| x.name == s) {
                Some(sec) => picked.push(sec),
                None => {
                    eprintln!("wisp-bench: no section {s:?}");
                    usage()
                }
            },
        }
    }
    ctx.runs = runs.unwrap_or(if ctx.quick { 3 } else { 5 });
    if picked.is_empty() {
        picked = SECTIONS.iter().collect();
    }
    std::fs::create_dir_all(&ctx.out).expect("create the output directory");
    let mut rows = Vec::new();
    for sec in picked {
        eprintln!("wisp-bench: {} ...", sec.name);
        let t = std::time::Instant::now();
        let got = (sec.run)(&ctx);
        eprintln!(
            "wisp-bench: {} done in {:.0} s",
            sec.name,
            t.elapsed().as_secs_f64()
        );
        // Print as we go: a long suite shows its figures before it ends.
        eprint!("{}", report::markdown(&got));
        rows.extend(got);
    }
    let table = report::markdown(&rows);
    std::fs::write(ctx.out.join("table.md"), &table).expect("write table.md");
    std::fs::write(ctx.out.join("rows.jsonl"), report::json_lines(&rows))
        .expect("write rows.jsonl");
    println!("\n{table}");
    eprintln!(
        "wisp-bench: table in {}",
        ctx.out.join("table.md").display()
    );
}
