//! The `autopaxos` command line: parse, then hand off. No protocol logic lives here.

use autopaxos::sim::network::FaultLevel;
use autopaxos::sim::{run_seed, run_seeds, SimOptions};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

/// Compartmentalized MultiPaxos that scales by role.
#[derive(Parser)]
#[command(name = "autopaxos", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic simulator over many seeds (or replay one) and check safety and liveness.
    ///
    /// Each seed builds a small cluster (2 proposers, 1-2 acceptor groups of 3, proxy leaders,
    /// batchers, 2 replicas, unbatchers, 4 clients running a contended KV workload), injects the chosen
    /// faults, then heals them and requires every request to complete. Checkers: one value per slot,
    /// replicas execute in order and agree on state, exactly-once, acknowledged writes are durable,
    /// and the client history is linearizable. Exit status 1 if any seed fails.
    Sim(SimArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0, conflicts_with = "seed")]
    start: u64,
    /// Replay exactly this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: print every event of the run (deliveries, timers, faults, elections).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// How hostile the network and nodes are.
    #[arg(long, value_enum, default_value_t = FaultLevel::Heavy)]
    faults: FaultLevel,
    /// Worker threads (default: the cores this process may use).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim(args),
    }
}

fn sim(args: SimArgs) -> ExitCode {
    let opts = SimOptions::new(args.faults);
    if let Some(seed) = args.seed {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let outcome = if args.trace {
            run_seed(seed, &opts, Some(&mut lock as &mut dyn Write))
        } else {
            run_seed(seed, &opts, None)
        };
        for v in &outcome.violations {
            println!("seed {seed}: {v}");
        }
        println!(
            "seed {seed}: {} requests completed, {} slots chosen, {} elections, {} messages, {:.3}s virtual{}",
            outcome.completed,
            outcome.chosen_slots,
            outcome.elections,
            outcome.delivered,
            outcome.end_us as f64 / 1e6,
            if outcome.inconclusive { ", linearizability inconclusive" } else { "" }
        );
        println!("1 seeds, {} violations", usize::from(!outcome.violations.is_empty()));
        return if outcome.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let on_failure = |o: &autopaxos::sim::Outcome| {
        println!("seed {}: {}", o.seed, o.violations.join("; "));
    };
    let summary = run_seeds(args.start, args.seeds, &opts, threads, &on_failure);
    eprintln!(
        "{:?} faults, seeds {}..{}: {} requests completed, {} elections, {} inconclusive linearizability checks, {:.1}s wall",
        args.faults,
        args.start,
        args.start + args.seeds,
        summary.completed,
        summary.elections,
        summary.inconclusive,
        started.elapsed().as_secs_f64()
    );
    println!("{} seeds, {} violations", summary.seeds, summary.failures.len());
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
