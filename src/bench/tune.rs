//! `autopaxos tune`: sweeps batch size × read budget for one role (or every role) with the per-role
//! benchmark, writes what it measured to `<out>/<role>.csv` and `<out>/<role>.svg`, and recommends a
//! setting. `tune all` also writes `<out>/capacities.toml`, which `plan` reads.
//!
//! The benchmark runner is a parameter of everything here rather than a direct call, so the sweep, the
//! writers and the recommendation rule are tested against a made-up throughput surface in
//! milliseconds, and the real benchmark is needed only by the command line.

use super::capacities::{Capacities, Machine, RoleCapacity};
use super::{BenchOptions, BenchReport, BENCH_ROLES};
use crate::protocol::config::MAX_BATCH_SIZE;
use crate::protocol::RoleKind;
use crate::runtime::allowed_cores;
use crate::runtime::local::thousands;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How far below the best throughput a point may be and still be recommended for its smaller batch.
pub const WITHIN_BEST: f64 = 0.05;

/// What `tune` measures: one role, or every role in [`BENCH_ROLES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One role.
    Role(RoleKind),
    /// Every role `bench` measures, in [`BENCH_ROLES`] order.
    All,
}

impl Target {
    /// The roles to sweep, in order.
    pub fn roles(self) -> Vec<RoleKind> {
        match self {
            Target::Role(kind) => vec![kind],
            Target::All => BENCH_ROLES.to_vec(),
        }
    }
}

/// Parses the `tune` role argument: a name from [`RoleKind::name`] that `bench` measures, or `all`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    if s == "all" {
        return Ok(Target::All);
    }
    match RoleKind::from_name(s) {
        Some(kind) if BENCH_ROLES.contains(&kind) => Ok(Target::Role(kind)),
        _ => {
            let names: Vec<&str> = BENCH_ROLES.iter().map(|k| k.name()).collect();
            Err(format!("unknown role '{s}': expected one of {}, or all", names.join(", ")))
        }
    }
}

/// Parses one element of a comma-separated list flag (`--batch-size`, `--read-budget`): a whole number
/// of at least 1. clap names the flag in its error around this message.
pub fn parse_positive(s: &str) -> Result<usize, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty value: give comma-separated whole numbers like 1,10,100".into());
    }
    match t.parse::<usize>() {
        Ok(0) => Err("0 is not allowed: every value must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => {
            Err(format!("'{t}' is not a whole number: give comma-separated whole numbers like 1,10,100"))
        }
    }
}

/// The settings swept: every batch size with every read budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    batch_sizes: Vec<usize>,
    read_budgets: Vec<usize>,
}

impl Grid {
    /// Checks both lists (each error names its flag), then sorts and de-duplicates them: a sweep in
    /// ascending order gives the same CSV and plot whatever order the values were typed in.
    pub fn new(mut batch_sizes: Vec<usize>, mut read_budgets: Vec<usize>) -> Result<Grid, String> {
        for (flag, values) in [("--batch-size", &mut batch_sizes), ("--read-budget", &mut read_budgets)] {
            if values.is_empty() {
                return Err(format!("{flag} needs at least one value, e.g. 1,10,100"));
            }
            if values.contains(&0) {
                return Err(format!("{flag}: 0 is not allowed: every value must be at least 1"));
            }
            values.sort_unstable();
            values.dedup();
        }
        if let Some(&big) = batch_sizes.iter().find(|&&b| b > MAX_BATCH_SIZE) {
            // Checked here, not at the first point that uses it: the protocol refuses such batches,
            // and finding out minutes into `tune all` would waste those minutes.
            return Err(format!("--batch-size: {big} is more than the protocol's maximum, {MAX_BATCH_SIZE}"));
        }
        Ok(Grid { batch_sizes, read_budgets })
    }

    /// Batch sizes, ascending.
    pub fn batch_sizes(&self) -> &[usize] {
        &self.batch_sizes
    }

    /// Read budgets, ascending.
    pub fn read_budgets(&self) -> &[usize] {
        &self.read_budgets
    }

    /// How many points one role's sweep measures.
    pub fn len(&self) -> usize {
        self.batch_sizes.len() * self.read_budgets.len()
    }

    /// Always false: [`Grid::new`] refuses empty lists. (Here because clippy asks for it beside `len`.)
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `(batch_size, read_budget)`, batch size outer, both ascending: the order of the sweep
    /// and of the CSV rows.
    pub fn points(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.batch_sizes.iter().flat_map(move |&b| self.read_budgets.iter().map(move |&r| (b, r)))
    }
}

/// Progress of a sweep: on a terminal, a bar redrawn in place under one line per finished point; into
/// a pipe or file, just those lines, since carriage returns and escape codes would litter a log.
pub struct Progress<'a> {
    out: Box<dyn Write + 'a>,
    redraw: bool,
    total: usize,
    done: usize,
    started: Instant,
}

impl<'a> Progress<'a> {
    /// Progress on stderr, with the bar only if stderr is a terminal.
    pub fn stderr(total: usize) -> Progress<'static> {
        let redraw = std::io::stderr().is_terminal();
        Progress::new(Box::new(std::io::stderr()), redraw, total)
    }

    /// Progress into any writer; `redraw` draws the in-place bar (for a terminal).
    pub fn new(out: Box<dyn Write + 'a>, redraw: bool, total: usize) -> Progress<'a> {
        Progress { out, redraw, total, done: 0, started: Instant::now() }
    }

    fn eta(&self) -> String {
        if self.done == 0 {
            return "?".into();
        }
        let per_point = self.started.elapsed().as_secs_f64() / self.done as f64;
        let left = per_point * (self.total - self.done.min(self.total)) as f64;
        humantime::format_duration(Duration::from_secs(left.round() as u64)).to_string()
    }

    // Write errors are ignored throughout: progress is a courtesy, and a closed stderr must not abort
    // a long sweep whose results go to files.

    /// A point is about to be measured.
    fn start(&mut self, role: RoleKind, batch_size: usize, read_budget: usize) {
        if !self.redraw {
            return;
        }
        const WIDTH: usize = 20;
        let filled = WIDTH * self.done / self.total.max(1);
        // Kept well under 80 columns: a bar that wraps cannot be redrawn with a carriage return.
        let _ = write!(
            self.out,
            "\r\x1b[2K[{}{}] {}/{} {} batch {} read {} eta {}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.done,
            self.total,
            role.name(),
            batch_size,
            read_budget,
            self.eta()
        );
        let _ = self.out.flush();
    }

    /// A point was measured.
    fn finish_point(&mut self, report: &BenchReport) {
        self.done += 1;
        let clear = if self.redraw { "\r\x1b[2K" } else { "" };
        let _ = writeln!(
            self.out,
            "{clear}tune [{}/{}] {} batch size {}, read budget {}: {} cmds/s, p99 {} us{} (eta {})",
            self.done,
            self.total,
            report.role,
            report.batch_size,
            report.read_budget,
            thousands(report.cmds_per_sec.max(0.0) as u64),
            report.p99_us,
            if report.mock_saturated { ", mock-saturated" } else { "" },
            self.eta()
        );
        let _ = self.out.flush();
    }

    /// A line of its own (what is about to be measured, a retry), above the bar if there is one.
    fn note(&mut self, line: &str) {
        let clear = if self.redraw { "\r\x1b[2K" } else { "" };
        let _ = writeln!(self.out, "{clear}{line}");
    }

    /// A measurement failed: clear the bar so the error is printed on a clean line.
    fn abandon(&mut self) {
        if self.redraw {
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
        }
    }
}

/// How many times a failed point is measured again before the sweep gives up. One: a benchmark run
/// can fail once for reasons of its own (a mock that saw nothing in a short window), and a long
/// `tune all` should not be lost to that; a point that fails twice is a real problem.
pub const RETRIES: usize = 1;

/// Measures every point of `grid` for `base.role`, in [`Grid::points`] order, each with `base`'s
/// other settings. `run` is the benchmark (`crate::bench::run_bench` from the command line, a fake in
/// tests). A failed point is measured again up to [`RETRIES`] times; a point that still fails stops
/// the sweep with an error naming it.
pub fn sweep(
    base: &BenchOptions,
    grid: &Grid,
    mut run: impl FnMut(&BenchOptions) -> Result<BenchReport, String>,
    progress: &mut Progress,
) -> Result<Vec<BenchReport>, String> {
    let mut reports = Vec::with_capacity(grid.len());
    for (batch_size, read_budget) in grid.points() {
        let opts = BenchOptions { batch_size, read_budget, ..base.clone() };
        let point = format!("{} at batch size {batch_size}, read budget {read_budget}", base.role.name());
        let mut tries = 0;
        let report = loop {
            progress.start(base.role, batch_size, read_budget);
            match run(&opts) {
                Ok(report) => break report,
                Err(e) if tries < RETRIES => {
                    tries += 1;
                    progress.note(&format!("{point}: {e}; measuring it again"));
                }
                Err(e) => {
                    progress.abandon();
                    return Err(format!("{point}: {e}"));
                }
            }
        };
        progress.finish_point(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// The setting `tune` recommends for one role, and the best point it was held against.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The recommended point.
    pub chosen: BenchReport,
    /// The point with the highest throughput.
    pub best: BenchReport,
}

impl Recommendation {
    /// The line `tune` prints, with the rule spelled out so the choice can be checked by eye.
    pub fn summary(&self) -> String {
        let c = &self.chosen;
        let b = &self.best;
        let of_best = if b.cmds_per_sec > 0.0 { 100.0 * c.cmds_per_sec / b.cmds_per_sec } else { 100.0 };
        let against = if c == b {
            "the best measured".to_string()
        } else {
            format!(
                "{of_best:.1}% of the best, {} cmds/s at batch size {}, read budget {}",
                thousands(b.cmds_per_sec.max(0.0) as u64),
                b.batch_size,
                b.read_budget
            )
        };
        format!(
            "{}: recommended batch size {}, read budget {}: {} cmds/s, p99 {} us ({against}){}. Rule: \
             the smallest batch size within {:.0}% of the best throughput (smaller batches wait less to \
             fill), ties to the lower p99.",
            c.role,
            c.batch_size,
            c.read_budget,
            thousands(c.cmds_per_sec.max(0.0) as u64),
            c.p99_us,
            if c.mock_saturated { "; a mock was the bottleneck there, so this is a lower bound" } else { "" },
            WITHIN_BEST * 100.0,
        )
    }
}

/// Recommends a setting from one role's sweep.
///
/// The rule: find the highest `cmds_per_sec`; of the points within [`WITHIN_BEST`] (5%) of it, take
/// those with the smallest batch size, because a smaller batch fills sooner and so adds less latency
/// for a throughput cost too small to matter; of those, the lowest `p99_us`; then the higher
/// throughput, then the smaller read budget, so the choice never depends on the order of `reports`.
/// Points whose throughput is not a finite number are ignored; `None` if no point is left.
pub fn recommend(reports: &[BenchReport]) -> Option<Recommendation> {
    let valid: Vec<&BenchReport> = reports.iter().filter(|r| r.cmds_per_sec.is_finite()).collect();
    let best = *valid.iter().max_by(|a, b| {
        a.cmds_per_sec
            .total_cmp(&b.cmds_per_sec)
            // Among equal throughputs the "best" is the one that would be chosen anyway.
            .then_with(|| b.batch_size.cmp(&a.batch_size))
            .then_with(|| b.p99_us.cmp(&a.p99_us))
            .then_with(|| b.read_budget.cmp(&a.read_budget))
    })?;
    let floor = best.cmds_per_sec * (1.0 - WITHIN_BEST);
    let chosen = valid.iter().filter(|r| r.cmds_per_sec >= floor).min_by(|a, b| {
        a.batch_size
            .cmp(&b.batch_size)
            .then_with(|| a.p99_us.cmp(&b.p99_us))
            .then_with(|| b.cmds_per_sec.total_cmp(&a.cmds_per_sec))
            .then_with(|| a.read_budget.cmp(&b.read_budget))
    })?;
    Some(Recommendation { chosen: (*chosen).clone(), best: best.clone() })
}

/// The CSV columns: every [`BenchReport`] field, in declaration order.
pub const CSV_COLUMNS: [&str; 14] = [
    "role",
    "msgs_per_sec",
    "cmds_per_sec",
    "bytes_per_sec",
    "p50_us",
    "p99_us",
    "wire_ceiling_msgs_per_sec",
    "ratio_to_ceiling",
    "batch_size",
    "read_budget",
    "mock_saturated",
    "role_busy",
    "mock_busy",
    "duration_s",
];

/// One role's sweep as CSV: a header of [`CSV_COLUMNS`], then one row per report in the given order.
pub fn csv(reports: &[BenchReport]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for report in reports {
        // Through serde so the values print exactly as `bench --json` prints them; a field added to
        // BenchReport but not to CSV_COLUMNS fails this module's tests rather than going missing.
        let value = serde_json::to_value(report).expect("a BenchReport serializes");
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|&col| match &value[col] {
                serde_json::Value::String(s) if s.contains([',', '"', '\n']) => {
                    format!("\"{}\"", s.replace('"', "\"\""))
                }
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Tableau's ten colours: distinct on white and for most colour-blind readers, unlike the pale
/// entries of plotters' own palettes.
const COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// One role's sweep as an SVG: throughput against batch size (log scale), one line per read budget,
/// the recommended point ringed, titled with the role and the machine.
pub fn svg(
    role: &str,
    machine: &Machine,
    reports: &[BenchReport],
    recommended: Option<&BenchReport>,
) -> Result<String, String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("drawing the {role} plot: {e}");

    let mut lines: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.cmds_per_sec.is_finite()) {
        lines.entry(r.read_budget).or_default().push((r.batch_size as f64, r.cmds_per_sec));
    }
    for points in lines.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let xs = || lines.values().flatten().map(|p| p.0);
    let x_min = xs().fold(f64::INFINITY, f64::min);
    let x_max = xs().fold(f64::NEG_INFINITY, f64::max);
    // Padding on a log axis keeps the end points off the frame, and keeps a one-batch-size sweep from
    // being an empty range.
    let (x_min, x_max) = if x_min.is_finite() { (x_min / 1.5, x_max * 1.5) } else { (1.0, 10.0) };
    let mut ticks: Vec<f64> = xs().collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let y_max = lines.values().flatten().map(|p| p.1).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };

    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let title = format!("{role}: throughput by batch size ({} cores, {})", machine.cores, machine.cpu);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(96)
            // Ticks at the batch sizes swept rather than plotters' decades, so every point has its label.
            .build_cartesian_2d((x_min..x_max).log_scale().with_key_points(ticks), 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            // The fine mesh between labels is a grey haze at this size; the labelled lines are enough.
            .light_line_style(TRANSPARENT)
            .x_desc("batch size (commands per batch, log scale)")
            .y_desc("throughput (cmds/s)")
            .x_label_formatter(&|x| format!("{}", x.round() as u64))
            .y_label_formatter(&|y| thousands(y.max(0.0).round() as u64))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (budget, points)) in lines.iter().enumerate() {
            let (r, g, b) = COLORS[i % COLORS.len()];
            let color = RGBColor(r, g, b);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(format!("read budget {budget}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        if let Some(rec) = recommended {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (rec.batch_size as f64, rec.cmds_per_sec),
                    9,
                    BLACK.stroke_width(2),
                )))
                .map_err(|e| err(&e))?
                .label(format!("recommended: batch {}, read {}", rec.batch_size, rec.read_budget))
                .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.stroke_width(2)));
        }
        let to_unit = |&(x, y): &(f64, f64)| ((x / x_min).ln() / (x_max / x_min).ln(), y / y_max);
        let unit_lines: Vec<Vec<(f64, f64)>> =
            lines.values().map(|l| l.iter().map(to_unit).collect()).collect();
        let entries = lines.len() + usize::from(recommended.is_some());
        let corner = match emptiest_corner(&unit_lines, entries) {
            Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
            Corner::UpperRight => SeriesLabelPosition::UpperRight,
            Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
            Corner::LowerRight => SeriesLabelPosition::LowerRight,
        };
        chart
            .configure_series_labels()
            .position(corner)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(text)
}

/// A corner of the plot, for the legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corner {
    UpperLeft,
    LowerRight,
    UpperRight,
    LowerLeft,
}

/// The corner where a legend of `entries` lines covers the least of `lines` (each a polyline in unit
/// coordinates: 0..1 left to right and bottom to top). Where the data goes depends on the role and the
/// machine (throughput can rise with batch size, or peak and fall), so no one corner is always free.
fn emptiest_corner(lines: &[Vec<(f64, f64)>], entries: usize) -> Corner {
    // The legend's size as a fraction of the 960×600 plot area: about 240 px wide, 20 px a line.
    let w = 0.3;
    let h = (0.04 * (entries + 1) as f64).min(0.5);
    let corners = [Corner::UpperLeft, Corner::LowerRight, Corner::UpperRight, Corner::LowerLeft];
    let covered = |corner: Corner, (x, y): (f64, f64)| {
        let in_x = if matches!(corner, Corner::UpperLeft | Corner::LowerLeft) { x < w } else { x > 1.0 - w };
        let in_y = if matches!(corner, Corner::UpperLeft | Corner::UpperRight) { y > 1.0 - h } else { y < h };
        in_x && in_y
    };
    // Sampling along each segment, not just at the points: a line crossing a corner is hidden too.
    const STEPS: usize = 32;
    let samples: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|line| {
            let single = line.first().copied().filter(|_| line.len() == 1);
            line.windows(2)
                .flat_map(|seg| {
                    let ((x0, y0), (x1, y1)) = (seg[0], seg[1]);
                    (0..=STEPS).map(move |i| {
                        let t = i as f64 / STEPS as f64;
                        (x0 + t * (x1 - x0), y0 + t * (y1 - y0))
                    })
                })
                .chain(single)
        })
        .collect();
    // `min_by_key` keeps the first of equals, so ties go in the order of `corners`.
    corners
        .into_iter()
        .min_by_key(|&c| samples.iter().filter(|&&p| covered(c, p)).count())
        .expect("four corners")
}

/// The machine this process runs on: cores it may use (what `nproc` prints), CPU model, kernel
/// release, and today's date in UTC.
pub fn this_machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .or_else(|| {
            let out = std::process::Command::new("uname").arg("-r").output().ok()?;
            String::from_utf8(out.stdout).ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".into()),
        kernel,
        measured: utc_date(SystemTime::now()),
    }
}

/// The CPU model in /proc/cpuinfo's text: x86's `model name`, else the `Hardware` or `Processor`
/// line some ARM kernels print instead.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Hardware", "Processor"].iter().find_map(|&key| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    })
}

/// An RFC 3339 full date (`2026-11-21`) in UTC; `Machine::measured` is a date, not an instant.
fn utc_date(t: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(t).to_string();
    stamp.split('T').next().unwrap_or(&stamp).to_string()
}

/// `capacities.toml` from each role's recommended point. The role under test ran on one core (see
/// [`TuneOptions::bench_options`]), so what it measured is already per core.
pub fn capacities(machine: Machine, recommended: &[(RoleKind, Recommendation)]) -> Capacities {
    let roles = recommended
        .iter()
        .map(|(kind, rec)| {
            let c = &rec.chosen;
            let capacity = RoleCapacity {
                cmds_per_sec_per_core: c.cmds_per_sec,
                msgs_per_sec_per_core: c.msgs_per_sec,
                batch_size: c.batch_size,
                read_budget: c.read_budget,
            };
            (kind.name().to_string(), capacity)
        })
        .collect();
    Capacities { machine, roles }
}

/// Everything one `tune` invocation needs.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// The role(s) to sweep.
    pub target: Target,
    /// The settings to sweep.
    pub grid: Grid,
    /// How long each point measures.
    pub duration: Duration,
    /// Bytes per command value.
    pub value_size: usize,
    /// The folder for the CSV, SVG and TOML files (created if missing).
    pub out: PathBuf,
}

impl TuneOptions {
    /// Points measured in all: the grid once per role.
    pub fn points(&self) -> usize {
        self.target.roles().len() * self.grid.len()
    }

    /// What the sweep will do, in one line.
    pub fn header(&self) -> String {
        let base = self.bench_options(BENCH_ROLES[0]);
        format!(
            "autopaxos tune: {} points of {:?} each (plus warm-up), role on core {:?}, mocks on cores {:?}; \
             batch sizes {:?}, read budgets {:?}; writing to {}",
            self.points(),
            self.duration,
            base.cores_under_test,
            base.mock_cores,
            self.grid.batch_sizes,
            self.grid.read_budgets,
            self.out.display()
        )
    }

    /// The benchmark settings for `role`, before the grid sets batch size and read budget. The role
    /// gets exactly one core, because capacities.toml records per-core figures and `plan` divides by
    /// them; the mocks get the other cores, or share that one on a one-core machine.
    pub fn bench_options(&self, role: RoleKind) -> BenchOptions {
        let cores = allowed_cores();
        let under_test = vec![cores[0]];
        let mocks = if cores.len() > 1 { cores[1..].to_vec() } else { under_test.clone() };
        BenchOptions {
            role,
            duration: self.duration,
            batch_size: self.grid.batch_sizes[0],
            read_budget: self.grid.read_budgets[0],
            value_size: self.value_size,
            cores_under_test: under_test,
            mock_cores: mocks,
            state_machine: crate::protocol::state_machine::StateMachineKind::Kv,
            in_memory: false,
            authenticate_frames: false,
        }
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Runs `tune`: sweeps each role of `opts.target` with `bench`, writes `<out>/<role>.csv` and
/// `<out>/<role>.svg` as soon as that role is done (so a later failure keeps them), prints each
/// recommendation to `stdout`, and for [`Target::All`] writes `<out>/capacities.toml`. Returns the
/// recommendations in sweep order.
pub fn run(
    opts: &TuneOptions,
    mut bench: impl FnMut(&BenchOptions) -> Result<BenchReport, String>,
    progress: &mut Progress,
    stdout: &mut dyn Write,
) -> Result<Vec<(RoleKind, Recommendation)>, String> {
    if opts.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("--out {}: {e}", opts.out.display()))?;
    progress.note(&opts.header());
    let machine = this_machine();
    let mut recommended = Vec::new();
    for role in opts.target.roles() {
        let reports = sweep(&opts.bench_options(role), &opts.grid, &mut bench, progress)?;
        let rec = recommend(&reports)
            .ok_or_else(|| format!("{}: no point measured a throughput to recommend from", role.name()))?;
        let csv_path = opts.out.join(format!("{}.csv", role.name()));
        let svg_path = opts.out.join(format!("{}.svg", role.name()));
        write_file(&csv_path, &csv(&reports))?;
        write_file(&svg_path, &svg(role.name(), &machine, &reports, Some(&rec.chosen))?)?;
        let print = writeln!(stdout, "{}", rec.summary())
            .and_then(|()| writeln!(stdout, "wrote {} and {}", csv_path.display(), svg_path.display()));
        print.map_err(|e| format!("writing to stdout: {e}"))?;
        recommended.push((role, rec));
    }
    if opts.target == Target::All {
        let caps = capacities(machine, &recommended);
        let body = toml::to_string_pretty(&caps).map_err(|e| format!("encoding capacities.toml: {e}"))?;
        let path = opts.out.join("capacities.toml");
        let header = "# Each role's measured maximum on one core at its recommended setting.\n\
                      # Written by `autopaxos tune all`; read by `autopaxos plan`.\n\n";
        write_file(&path, &format!("{header}{body}"))?;
        writeln!(stdout, "wrote {}", path.display()).map_err(|e| format!("writing to stdout: {e}"))?;
    }
    Ok(recommended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn report(batch_size: usize, read_budget: usize, cmds_per_sec: f64, p99_us: u64) -> BenchReport {
        BenchReport {
            role: "acceptor".into(),
            msgs_per_sec: cmds_per_sec / batch_size as f64,
            cmds_per_sec,
            bytes_per_sec: cmds_per_sec * 16.0,
            p50_us: p99_us / 2,
            p99_us,
            wire_ceiling_msgs_per_sec: 1e6,
            ratio_to_ceiling: cmds_per_sec / batch_size as f64 / 1e6,
            batch_size,
            read_budget,
            mock_saturated: false,
            role_busy: 0.9,
            mock_busy: 0.5,
            duration_s: 0.01,
        }
    }

    /// A made-up surface: throughput saturates with batch size and peaks at read budget 100.
    fn fake(opts: &BenchOptions) -> Result<BenchReport, String> {
        let b = opts.batch_size as f64;
        let r = opts.read_budget as f64;
        let cmds = 2e6 * b / (b + 20.0) * (1.0 - 0.1 * (r.log10() - 2.0).abs());
        let mut rep = report(opts.batch_size, opts.read_budget, cmds, 100 + opts.batch_size as u64 * 10);
        rep.role = opts.role.name().into();
        Ok(rep)
    }

    fn grid() -> Grid {
        Grid::new(vec![400, 1, 10, 40, 100, 10], vec![1000, 1, 10, 100]).unwrap()
    }

    fn options(target: Target, out: PathBuf) -> TuneOptions {
        TuneOptions { target, grid: grid(), duration: Duration::from_millis(10), value_size: 16, out }
    }

    /// A fresh folder per test under the system temp dir; tests run in parallel.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("autopaxos-tune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_grid_is_swept_completely_in_ascending_order_with_the_base_settings() {
        let g = grid();
        let base =
            options(Target::Role(RoleKind::Acceptor), PathBuf::new()).bench_options(RoleKind::Acceptor);
        let seen = RefCell::new(Vec::new());
        let mut log = Vec::new();
        let reports = {
            let mut progress = Progress::new(Box::new(&mut log), false, g.len());
            sweep(
                &base,
                &g,
                |o| {
                    assert_eq!((o.role, o.duration, o.value_size), (RoleKind::Acceptor, base.duration, 16));
                    assert_eq!(o.cores_under_test.len(), 1, "capacities are per core");
                    seen.borrow_mut().push((o.batch_size, o.read_budget));
                    fake(o)
                },
                &mut progress,
            )
            .unwrap()
        };
        let mut expected = Vec::new();
        for b in [1, 10, 40, 100, 400] {
            for r in [1, 10, 100, 1000] {
                expected.push((b, r));
            }
        }
        assert_eq!(seen.into_inner(), expected, "every point once, batch size outer, both ascending");
        assert_eq!(reports.len(), 20);
        let log = String::from_utf8(log).unwrap();
        assert_eq!(log.lines().count(), 20, "one plain line per point when not a terminal: {log}");
        assert!(!log.contains('\r') && !log.contains('\x1b'), "no bar in a pipe: {log}");
        assert!(log
            .lines()
            .last()
            .unwrap()
            .starts_with("tune [20/20] acceptor batch size 400, read budget 1000"));
    }

    #[test]
    fn on_a_terminal_the_bar_is_redrawn_in_place() {
        let g = Grid::new(vec![1, 10], vec![5]).unwrap();
        let base = options(Target::Role(RoleKind::Batcher), PathBuf::new()).bench_options(RoleKind::Batcher);
        let mut log = Vec::new();
        sweep(&base, &g, fake, &mut Progress::new(Box::new(&mut log), true, g.len())).unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("\r\x1b[2K[----------"), "{log:?}");
        assert!(log.contains("[##########----------] 1/2 batcher batch 10 read 5"), "{log:?}");
    }

    #[test]
    fn a_point_that_fails_twice_stops_the_sweep_and_names_the_point() {
        let g = grid();
        let base = options(Target::Role(RoleKind::Replica), PathBuf::new()).bench_options(RoleKind::Replica);
        let mut calls = 0;
        let mut log = Vec::new();
        let err = sweep(
            &base,
            &g,
            |o| {
                calls += 1;
                if o.batch_size == 40 {
                    Err("mock died".into())
                } else {
                    fake(o)
                }
            },
            &mut Progress::new(Box::new(&mut log), false, g.len()),
        )
        .unwrap_err();
        assert_eq!(err, "replica at batch size 40, read budget 1: mock died");
        assert_eq!(calls, 8 + 1 + RETRIES, "8 points measured, then the failing one and its retry");
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.contains("replica at batch size 40, read budget 1: mock died; measuring it again"),
            "{log}"
        );
    }

    #[test]
    fn a_point_that_fails_once_is_measured_again_and_the_sweep_goes_on() {
        let g = grid();
        let base = options(Target::Role(RoleKind::Replica), PathBuf::new()).bench_options(RoleKind::Replica);
        let mut failed = false;
        let reports = sweep(
            &base,
            &g,
            |o| {
                if o.batch_size == 40 && o.read_budget == 10 && !failed {
                    failed = true;
                    return Err("nothing came through".into());
                }
                fake(o)
            },
            &mut Progress::new(Box::new(std::io::sink()), false, g.len()),
        )
        .unwrap();
        assert!(failed);
        assert_eq!(reports.len(), g.len(), "every point, the retried one once");
        assert_eq!(reports.iter().filter(|r| (r.batch_size, r.read_budget) == (40, 10)).count(), 1);
    }

    #[test]
    fn bad_input_gets_an_error_naming_the_flag_or_the_choices() {
        assert_eq!(parse_target("all"), Ok(Target::All));
        assert_eq!(parse_target("proxy-leader"), Ok(Target::Role(RoleKind::ProxyLeader)));
        for bad in ["leader", "client", "", "Acceptor"] {
            let e = parse_target(bad).unwrap_err();
            assert!(
                e.contains("batcher, proposer, proxy-leader, acceptor, replica, unbatcher, or all"),
                "{e}"
            );
        }
        assert_eq!(parse_positive(" 40 "), Ok(40));
        assert!(parse_positive("0").unwrap_err().contains("at least 1"));
        assert!(parse_positive("").unwrap_err().contains("empty"));
        assert!(parse_positive("ten").unwrap_err().contains("'ten' is not a whole number"));
        assert!(parse_positive("-1").is_err());
        assert!(Grid::new(vec![], vec![1]).unwrap_err().starts_with("--batch-size"));
        assert!(Grid::new(vec![1], vec![]).unwrap_err().starts_with("--read-budget"));
        assert!(Grid::new(vec![1], vec![0, 3]).unwrap_err().starts_with("--read-budget"));
        assert!(Grid::new(vec![0], vec![1]).unwrap_err().starts_with("--batch-size"));
        assert!(Grid::new(vec![10_001], vec![1]).unwrap_err().starts_with("--batch-size"));
        let opts = TuneOptions { duration: Duration::ZERO, ..options(Target::All, temp_dir("zero")) };
        let e =
            run(&opts, fake, &mut Progress::new(Box::new(std::io::sink()), false, 1), &mut std::io::sink());
        assert_eq!(e.unwrap_err(), "--duration must be more than 0");
    }

    #[test]
    fn the_csv_has_a_header_of_every_field_and_one_row_per_point() {
        let reports: Vec<BenchReport> =
            grid().points().map(|(b, r)| report(b, r, 1000.0 * b as f64, 7)).collect();
        let text = csv(&reports);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 20);
        let header: Vec<&str> = lines[0].split(',').collect();
        let fields: Vec<String> = match serde_json::to_value(&reports[0]).unwrap() {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            _ => unreachable!(),
        };
        let mut sorted_header = header.clone();
        sorted_header.sort_unstable();
        assert_eq!(sorted_header, fields, "every BenchReport field is a column, and only those");
        let row: Vec<&str> = lines[3].split(',').collect();
        assert_eq!(row.len(), header.len());
        let cell = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!((cell("role"), cell("batch_size"), cell("read_budget")), ("acceptor", "1", "100"));
        assert_eq!(cell("cmds_per_sec").parse::<f64>().unwrap(), 1000.0);
        assert_eq!(cell("mock_saturated"), "false");
        assert_eq!(cell("p99_us"), "7");
    }

    #[test]
    fn the_svg_has_a_line_and_a_legend_entry_per_read_budget() {
        let g = grid();
        let reports: Vec<BenchReport> = g
            .points()
            .map(|(b, r)| {
                fake(&BenchOptions {
                    batch_size: b,
                    read_budget: r,
                    ..options(Target::All, PathBuf::new()).bench_options(RoleKind::Acceptor)
                })
                .unwrap()
            })
            .collect();
        let machine = Machine {
            cores: 2,
            cpu: "Test CPU <&>".into(),
            kernel: "6.1".into(),
            measured: "2026-01-01".into(),
        };
        let rec = recommend(&reports).unwrap();
        let text = svg("acceptor", &machine, &reports, Some(&rec.chosen)).unwrap();
        assert!(text.contains("<svg"), "{text}");
        // Each read budget is one polyline for its data and one for its legend swatch.
        assert!(text.matches("<polyline").count() >= 2 * g.read_budgets().len(), "{text}");
        for r in g.read_budgets() {
            assert!(text.contains(&format!("read budget {r}")), "legend for {r}");
        }
        assert!(
            text.contains("acceptor: throughput by batch size (2 cores, Test CPU &lt;&amp;&gt;)"),
            "title"
        );
        assert!(
            text.contains("batch size (commands per batch, log scale)")
                && text.contains("throughput (cmds/s)")
        );
        assert!(text.contains("recommended: batch"));
        // A single point is still drawable: the padded log range is never empty.
        assert!(svg("batcher", &machine, &reports[..1], None).unwrap().contains("<svg"));
        assert!(svg("batcher", &machine, &[], None).unwrap().contains("<svg"));
    }

    #[test]
    fn the_recommendation_is_the_smallest_batch_within_five_percent_of_the_best() {
        let reports = vec![
            report(1, 10, 100_000.0, 50),
            report(10, 10, 900_000.0, 80),
            report(40, 10, 949_000.0, 90),  // 94.9% of the best: just outside
            report(40, 100, 950_000.0, 95), // exactly 95%: inside
            report(100, 10, 990_000.0, 100),
            report(400, 10, 1_000_000.0, 400), // the best
        ];
        let rec = recommend(&reports).unwrap();
        assert_eq!((rec.chosen.batch_size, rec.chosen.read_budget), (40, 100));
        assert_eq!((rec.best.batch_size, rec.best.read_budget), (400, 10));
        let line = rec.summary();
        let expected = concat!(
            "acceptor: recommended batch size 40, read budget 100: 950,000 cmds/s, p99 95 us ",
            "(95.0% of the best, 1,000,000 cmds/s at batch size 400, read budget 10). Rule: "
        );
        assert!(line.starts_with(expected), "{line}");
        assert!(line.contains("smallest batch size within 5% of the best throughput"), "{line}");
    }

    #[test]
    fn at_the_same_batch_size_the_lower_p99_wins_whatever_the_order() {
        let mut reports = vec![
            report(10, 1, 990_000.0, 300),
            report(10, 100, 960_000.0, 120), // lower throughput, but lower p99: chosen
            report(10, 1000, 1_000_000.0, 500),
            report(100, 10, 1_000_000.0, 900),
        ];
        assert_eq!(recommend(&reports).unwrap().chosen.read_budget, 100);
        reports.reverse();
        assert_eq!(recommend(&reports).unwrap().chosen.read_budget, 100);
        // Equal p99 too: the higher throughput, then the smaller read budget.
        let tied = vec![
            report(10, 100, 990_000.0, 120),
            report(10, 10, 990_000.0, 120),
            report(10, 1, 980_000.0, 120),
        ];
        assert_eq!(recommend(&tied).unwrap().chosen.read_budget, 10);
        // Only the best itself qualifies: it is chosen.
        let lone = vec![report(1, 1, 10.0, 1), report(400, 1, 1000.0, 900)];
        let rec = recommend(&lone).unwrap();
        assert_eq!(rec.chosen.batch_size, 400);
        assert!(
            rec.summary().contains("1,000 cmds/s, p99 900 us (the best measured). Rule:"),
            "{}",
            rec.summary()
        );
        assert_eq!(recommend(&[]), None);
        assert_eq!(recommend(&[report(1, 1, f64::NAN, 1)]), None);
    }

    #[test]
    fn tune_all_writes_every_file_and_capacities_round_trip_through_toml() {
        let dir = temp_dir("all");
        let opts = options(Target::All, dir.clone());
        let mut stdout = Vec::new();
        let recs = run(
            &opts,
            fake,
            &mut Progress::new(Box::new(std::io::sink()), false, opts.points()),
            &mut stdout,
        )
        .unwrap();
        assert_eq!(recs.iter().map(|(k, _)| *k).collect::<Vec<_>>(), BENCH_ROLES.to_vec());
        for role in BENCH_ROLES {
            let csv = std::fs::read_to_string(dir.join(format!("{}.csv", role.name()))).unwrap();
            assert_eq!(csv.lines().count(), 21);
            assert!(std::fs::read_to_string(dir.join(format!("{}.svg", role.name())))
                .unwrap()
                .contains("<svg"));
        }
        let stdout = String::from_utf8(stdout).unwrap();
        assert_eq!(stdout.matches(": recommended batch size").count(), 6, "{stdout}");
        let text = std::fs::read_to_string(dir.join("capacities.toml")).unwrap();
        let caps: Capacities = toml::from_str(&text).unwrap();
        assert_eq!(caps, capacities(caps.machine.clone(), &recs), "{text}");
        assert_eq!(caps.roles.len(), 6);
        // On the fake surface read budget 100 is best, and no smaller batch comes within 5% of 400's.
        let acceptor = &caps.roles["acceptor"];
        assert_eq!((acceptor.batch_size, acceptor.read_budget), (400, 100));
        assert!(caps.machine.cores >= 1 && !caps.machine.kernel.is_empty());
        assert_eq!(caps.machine.measured.len(), "2026-01-01".len(), "{}", caps.machine.measured);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tune_one_role_writes_its_files_but_no_capacities() {
        let dir = temp_dir("one");
        let opts = options(Target::Role(RoleKind::Proposer), dir.clone());
        let recs =
            run(&opts, fake, &mut Progress::new(Box::new(std::io::sink()), false, 20), &mut std::io::sink())
                .unwrap();
        assert_eq!(recs.len(), 1);
        assert!(dir.join("proposer.csv").exists() && dir.join("proposer.svg").exists());
        assert!(!dir.join("capacities.toml").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_legend_goes_to_the_corner_the_lines_leave_empty() {
        let rising = vec![vec![(0.0, 0.1), (0.5, 0.7), (1.0, 0.9)], vec![(0.0, 0.05), (1.0, 0.8)]];
        assert_eq!(emptiest_corner(&rising, 3), Corner::UpperLeft);
        // High at the left, falling steeply at the right: the upper right is the free corner.
        let falling =
            vec![vec![(0.0, 0.9), (0.5, 0.9), (1.0, 0.05)], vec![(0.0, 0.5), (0.6, 0.8), (1.0, 0.02)]];
        assert_eq!(emptiest_corner(&falling, 3), Corner::UpperRight);
        // Flat at the top, and another line low at the right: only the lower left is free.
        let low_right = vec![vec![(0.0, 0.95), (1.0, 0.95)], vec![(0.8, 0.05), (1.0, 0.02)]];
        assert_eq!(emptiest_corner(&low_right, 3), Corner::LowerLeft);
        // Like the acceptor's real sweep: low at both ends, a peak in the middle near the top.
        let peak = vec![vec![(0.0, 0.02), (0.5, 0.6), (0.8, 0.9), (1.0, 0.07)]];
        assert_eq!(emptiest_corner(&peak, 2), Corner::UpperLeft);
        let top_left_taken = vec![vec![(0.0, 0.95), (0.4, 0.97), (1.0, 0.96)]];
        assert_eq!(emptiest_corner(&top_left_taken, 2), Corner::LowerRight);
        assert_eq!(emptiest_corner(&[], 1), Corner::UpperLeft);
    }

    #[test]
    fn the_machine_is_read_from_proc() {
        let info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: fpu\n";
        assert_eq!(cpu_model(info).as_deref(), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(cpu_model("Hardware\t: BCM2835\n").as_deref(), Some("BCM2835"));
        assert_eq!(cpu_model(""), None);
        assert_eq!(utc_date(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 365)), "1971-01-01");
    }
}
