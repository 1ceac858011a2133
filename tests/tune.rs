//! `autopaxos tune` refusing bad input, as a user sees it. Nothing here runs a benchmark: every case
//! is refused before the first point, so the tests take milliseconds. The sweep itself is tested
//! with a fake benchmark in `src/bench/tune.rs`.

use std::process::{Command, Output};

fn tune(args: &[&str]) -> Output {
    let out = std::env::temp_dir().join(format!("autopaxos-tune-cli-{}", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_autopaxos"))
        .arg("tune")
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_arguments_are_refused_by_the_parser_naming_the_flag() {
    let cases: [(&[&str], &str); 7] = [
        (&["leader"], "unknown role 'leader': expected one of batcher, proposer, proxy-leader"),
        (&["client"], "unknown role 'client'"),
        (&["acceptor", "--batch-size", ""], "'--batch-size <LIST>': empty value"),
        (&["acceptor", "--batch-size", "1,,10"], "'--batch-size <LIST>': empty value"),
        (&["acceptor", "--batch-size", "0,10"], "'--batch-size <LIST>': 0 is not allowed"),
        (&["acceptor", "--read-budget", "ten"], "'--read-budget <LIST>': 'ten' is not a whole number"),
        (&["acceptor", "--duration", "soon"], "'--duration <DURATION>'"),
    ];
    for (args, expected) in cases {
        let out = tune(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn settings_the_protocol_cannot_run_are_refused_before_measuring() {
    for (args, expected) in [
        (
            &["all", "--batch-size", "10,20000"][..],
            "error: --batch-size: 20000 is more than the protocol's maximum",
        ),
        (&["replica", "--duration", "0s"], "error: --duration must be more than 0"),
    ] {
        let out = tune(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("tune [1/"), "nothing was measured: {}", stderr(&out));
    }
}

#[test]
fn help_lists_the_flags_and_their_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_autopaxos")).args(["tune", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "Usage: autopaxos tune [OPTIONS] <ROLE>",
        "[default: 1,10,40,100,400]",
        "[default: 1,10,100,1000]",
        "[default: 2s]",
        "[default: tuning]",
        "within 5% of the best throughput",
    ] {
        assert!(help.contains(text), "{text} missing from:\n{help}");
    }
}
