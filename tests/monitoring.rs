//! The `monitoring/` folder as an operator uses it: the Prometheus configuration and rules pass promtool,
//! the rules' unit tests pass, every query of the rules and the Grafana dashboard names a metric autopaxos
//! exports (its catalogue) or a rule the rules file records, and a real Prometheus scraping
//! `autopaxos local` computes the recording rules the dashboard shows. Needs promtool and prometheus on
//! PATH (scripts/setup.sh installs them); every child process is killed when its test ends.

mod common;

use autopaxos::runtime::metrics::{MetricKind, CATALOGUE};
use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository's monitoring folder.
fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn rules_file() -> PathBuf {
    monitoring().join("rules/autopaxos.rules.yml")
}

fn dashboard_file() -> PathBuf {
    monitoring().join("grafana/dashboards/autopaxos.json")
}

/// Runs `promtool args...`, at most `limit` (then kills it and fails); returns its output.
fn promtool(args: &[&str], limit: Duration) -> Output {
    common::require_on_path("promtool");
    let child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("promtool's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("promtool {args:?} took over {limit:?}");
        }
    }
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_prometheus_configuration_passes_promtool_with_its_rules_and_a_targets_file() {
    // A copy, so that the targets glob finds a file in the format `autopaxos config
    // --prometheus-targets` writes (promtool parses file_sd files), and the rules glob finds the rules.
    let dir = common::TempDir::new("monitoring-config");
    fs::copy(monitoring().join("prometheus.yml"), dir.0.join("prometheus.yml")).unwrap();
    fs::create_dir_all(dir.0.join("rules")).unwrap();
    fs::copy(rules_file(), dir.0.join("rules/autopaxos.rules.yml")).unwrap();
    fs::create_dir_all(dir.0.join("targets")).unwrap();
    // The targets file as a user makes it: `config --prometheus-targets` from the example cluster
    // file (no secret needed to list addresses).
    fs::write(dir.0.join("cluster.toml"), autopaxos::runtime::config::EXAMPLE).unwrap();
    let targets = dir.0.join("targets/demo.json");
    let wrote = std::process::Command::new(env!("CARGO_BIN_EXE_autopaxos"))
        .args(["config", "--config"])
        .arg(dir.0.join("cluster.toml"))
        .arg("--prometheus-targets")
        .arg(&targets)
        .output()
        .unwrap();
    assert!(wrote.status.success(), "{}", said(&wrote));
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&targets).unwrap()).unwrap();
    let groups = json.as_array().unwrap();
    assert_eq!(groups.len(), 10, "one target per node of the example: {json}");
    assert_eq!(groups[0]["targets"][0], "127.0.0.1:16001", "{json}");
    assert_eq!(groups[0]["labels"]["cluster"], "demo", "{json}");
    assert_eq!(groups[0]["labels"]["role"], "proposer", "{json}");
    assert_eq!(groups[0]["labels"]["node"], "1", "{json}");
    let config = dir.0.join("prometheus.yml");
    let out = promtool(&["check", "config", config.to_str().unwrap()], Duration::from_secs(20));
    let text = said(&out);
    assert!(out.status.success(), "promtool check config failed:\n{text}");
    assert!(text.contains("1 rule files found"), "the rule_files glob finds the rules file:\n{text}");
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn the_rules_pass_promtool_check_rules() {
    let out = promtool(&["check", "rules", rules_file().to_str().unwrap()], Duration::from_secs(20));
    assert!(out.status.success(), "promtool check rules failed:\n{}", said(&out));
}

#[test]
fn the_rules_unit_tests_pass_and_every_alert_is_tested_firing_and_silent() {
    let tests = monitoring().join("rules/autopaxos.rules.test.yml");
    let out = promtool(&["test", "rules", tests.to_str().unwrap()], Duration::from_secs(30));
    assert!(out.status.success(), "promtool test rules failed:\n{}", said(&out));

    let alerts = rules(&fs::read_to_string(rules_file()).unwrap()).alerts;
    for wanted in [
        "AutopaxosNoLeader",
        "AutopaxosReplicaLagging",
        "AutopaxosNodeDown",
        "AutopaxosBadFramesRising",
        "AutopaxosHandshakesRefusedRising",
        "AutopaxosAutoscalerAtMaximum",
        "AutopaxosReplicasDisagree",
    ] {
        assert!(alerts.contains(wanted), "the rules define {wanted}");
    }
    // Each alert has a case where it fires (exp_alerts with entries) and one where it is silent
    // (exp_alerts: []).
    let text = fs::read_to_string(&tests).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for alert in &alerts {
        let cases: Vec<&str> = lines
            .windows(2)
            .filter(|w| w[0] == format!("alertname: {alert}"))
            .map(|w| w[1].split('#').next().unwrap().trim())
            .collect();
        assert!(cases.contains(&"exp_alerts: []"), "{alert} has a unit test where it stays silent");
        assert!(cases.contains(&"exp_alerts:"), "{alert} has a unit test where it fires");
    }
}

/// What the rules file defines: recorded names, alert names and every expression.
struct Rules {
    records: BTreeSet<String>,
    alerts: BTreeSet<String>,
    exprs: Vec<String>,
}

/// Reads the rules file line by line (the test has no YAML parser): `record:`, `alert:`, and `expr:`
/// either on one line or as a block scalar (`expr: |`) of more-indented lines.
fn rules(text: &str) -> Rules {
    let mut rules = Rules { records: BTreeSet::new(), alerts: BTreeSet::new(), exprs: Vec::new() };
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(name) = trimmed.strip_prefix("record:") {
            rules.records.insert(name.trim().to_string());
        } else if let Some(name) = trimmed.strip_prefix("alert:") {
            rules.alerts.insert(name.trim().to_string());
        } else if let Some(expr) = trimmed.strip_prefix("expr:") {
            let expr = expr.trim();
            if expr == "|" || expr == ">" || expr == "|-" || expr == ">-" {
                let indent = line.len() - line.trim_start().len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    if !next.trim().is_empty() && next.len() - next.trim_start().len() <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                rules.exprs.push(block.join("\n"));
            } else {
                rules.exprs.push(expr.to_string());
            }
        }
        i += 1;
    }
    assert_eq!(
        rules.exprs.len(),
        rules.records.len() + rules.alerts.len(),
        "one expression per rule (is an expr written in a form this reader does not know?)"
    );
    rules
}

/// The dashboard's PromQL: every `expr` of a panel target (rows' nested panels too) and every query
/// of a template variable.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let query = match &variable["query"] {
            serde_json::Value::String(q) => q.clone(),
            q => q["query"].as_str().unwrap_or_default().to_string(),
        };
        // Grafana's label_values(expr, label): the expression is what names metrics.
        match query.strip_prefix("label_values(").and_then(|rest| rest.rsplit_once(',')) {
            Some((expr, _label)) => out.push(expr.to_string()),
            None if !query.is_empty() => out.push(query),
            None => {}
        }
    }
    out
}

/// Words that are PromQL (keywords, aggregation operators that may precede `by`, literals), not metrics.
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "inf",
    "nan",
    "start",
    "end",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LIST_WORDS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression selects: identifiers outside label matchers `{...}`, range
/// brackets `[...]`, strings and label lists (`by (...)`), that are not functions (followed by `(`),
/// not keywords, not numbers or durations, and not Grafana variables (`$cluster`).
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening byte at `i` to just past its matching close, stepping over strings.
    let skip_group = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'"' | b'\'' | b'`') => i = skip_string(b, i, q) - 1,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i, c);
        } else if c == b'{' {
            i = skip_group(i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(i, b'[', b']');
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if c == b'$' {
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = skip_group(i, b'{', b'}');
            }
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut next = i;
            while next < b.len() && b[next].is_ascii_whitespace() {
                next += 1;
            }
            let call = b.get(next) == Some(&b'(');
            if LABEL_LIST_WORDS.contains(&word) {
                if call {
                    i = skip_group(next, b'(', b')');
                }
            } else if !call && !PROMQL_WORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the string that opens at `i` with quote `q` (backslash escapes honoured).
fn skip_string(b: &[u8], mut i: usize, q: u8) -> usize {
    i += 1;
    while i < b.len() && b[i] != q {
        if b[i] == b'\\' && q != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

#[test]
fn metric_names_are_the_selectors_of_an_expression_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (le, cluster) (rate(a_seconds_bucket{role="x}",le!="1"}[$__rate_interval])))
        - on (cluster) group_right (node) b:rule:rate1m offset 5m > bool 1e3
        or count_values without () ("digest", c_total) * sum(d) by (node) unless max($cluster_total)"#;
    assert_eq!(metric_names(expr), ["a_seconds_bucket", "b:rule:rate1m", "c_total", "d"]);
    assert_eq!(metric_names("up == 0"), ["up"]);
}

#[test]
fn every_query_of_the_rules_and_the_dashboard_names_an_exported_metric_or_a_recorded_rule() {
    let mut known: BTreeSet<String> = ["up", "ALERTS", "ALERTS_FOR_STATE"].map(String::from).into();
    for metric in CATALOGUE {
        known.insert(metric.name.to_string());
        if matches!(metric.kind, MetricKind::Histogram) {
            for suffix in ["_bucket", "_sum", "_count"] {
                known.insert(format!("{}{suffix}", metric.name));
            }
        }
    }
    let rules = rules(&fs::read_to_string(rules_file()).unwrap());
    known.extend(rules.records.iter().cloned());

    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dashboard_file()).unwrap()).expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 40, "the dashboard's queries are found ({})", queries.len());

    let mut unknown = Vec::new();
    for (source, exprs) in [("rules", &rules.exprs), ("dashboard", &queries)] {
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{source}: `{expr}` selects no metric");
            for name in names.into_iter().filter(|n| !known.contains(n)) {
                unknown.push(format!("{source}: {name} in `{expr}`"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "queries name metrics that are neither in runtime::metrics::CATALOGUE nor recorded by the rules:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_dashboard_has_a_row_per_role_a_cluster_variable_and_queries_promtool_can_parse() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dashboard_file()).unwrap()).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "autopaxos");
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let variables = dashboard["templating"]["list"].as_array().expect("template variables");
    let cluster = variables.iter().find(|v| v["name"] == "cluster").expect("a cluster variable");
    assert_eq!(cluster["query"]["query"], "label_values(up, cluster)");

    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<&str> =
        panels.iter().filter(|p| p["type"] == "row").filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Batchers",
        "Proposers",
        "Proxy leaders",
        "Acceptors",
        "Replicas",
        "Unbatchers",
        "Clients and gateways",
    ] {
        assert!(rows.contains(&wanted), "a row for {wanted}: {rows:?}");
    }
    for wanted in ["Leader and elections", "Replica lag and agreement", "Network health", "Autoscaler"] {
        assert!(rows.contains(&wanted), "a row for {wanted}: {rows:?}");
    }
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("a panel id")), "panel ids are unique");
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "prometheus", "{}", panel["title"]);
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("an expr");
                assert!(
                    expr.contains(r#"cluster="$cluster""#),
                    "{}: `{expr}` keeps to the chosen cluster",
                    panel["title"]
                );
            }
        }
    }

    // promtool parses every query, as recording rules in a scratch file (Grafana's variables replaced).
    let dir = common::TempDir::new("monitoring-dashboard");
    let mut scratch = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_queries(&dashboard).iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "1m").replace("$cluster", "demo");
        scratch.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::json!(expr)
        ));
    }
    let path = dir.0.join("dashboard.rules.yml");
    fs::write(&path, scratch).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()], Duration::from_secs(20));
    assert!(out.status.success(), "promtool cannot parse a dashboard query:\n{}", said(&out));
}

#[test]
fn the_grafana_provisioning_names_the_datasource_the_dashboard_uses() {
    let datasource =
        fs::read_to_string(monitoring().join("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    assert!(
        datasource.contains("uid: prometheus") && datasource.contains("type: prometheus"),
        "{datasource}"
    );
    let provider =
        fs::read_to_string(monitoring().join("grafana/provisioning/dashboards/autopaxos.yml")).unwrap();
    assert!(
        provider.contains("type: file") && provider.contains("path: /var/lib/grafana/dashboards"),
        "{provider}"
    );
}

/// One series of an instant vector: its labels and value.
type Series = (serde_json::Value, f64);

/// What the end-to-end test waits for: a name, a query, and what its answer must be.
type Check = (&'static str, String, fn(&[Series]) -> bool);

/// The instant vector a query returns.
fn query(prometheus: &common::Prometheus, promql: &str) -> Result<Vec<Series>, String> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let answer = prometheus.api(&format!("/api/v1/query?query={encoded}"))?;
    if answer["status"] != "success" {
        return Err(answer.to_string());
    }
    let result = answer["data"]["result"].as_array().ok_or_else(|| answer.to_string())?;
    Ok(result
        .iter()
        .map(|s| {
            let value = s["value"][1].as_str().unwrap_or("NaN");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            (s["metric"].clone(), value)
        })
        .collect())
}

/// The repository's prometheus.yml for a test: 1s intervals, no EC2 job, the repository's rules file
/// and `targets` (a directory) by absolute path.
fn test_config(targets: &Path) -> String {
    let original = fs::read_to_string(monitoring().join("prometheus.yml")).unwrap();
    let (head, rest) = original.split_once("  - job_name: autopaxos-ec2").expect("the EC2 job");
    let (_ec2, file_job) = rest.split_once("  - job_name: autopaxos-file").expect("the file job");
    let config = format!("{head}  - job_name: autopaxos-file{file_job}");
    let mut edited = config.clone();
    for (from, to) in [
        ("scrape_interval: 5s", "scrape_interval: 1s".to_string()),
        ("evaluation_interval: 5s", "evaluation_interval: 1s".to_string()),
        ("- rules/*.rules.yml", format!("- {}", rules_file().display())),
        ("- targets/*.json", format!("- {}/*.json", targets.display())),
    ] {
        assert!(edited.contains(from), "prometheus.yml has `{from}`");
        edited = edited.replace(from, &to);
    }
    assert!(!edited.contains("ec2_sd_configs"), "{edited}");
    edited
}

#[test]
fn prometheus_scraping_autopaxos_local_records_throughput_the_leader_and_client_latency() {
    let started = Instant::now();
    let dir = common::TempDir::new("monitoring-e2e"); // declared first: removed after the processes die
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_ports(1)[0]));

    let args: Vec<String> =
        ["local", "--duration", "25s", "--clients", "64", "--metrics-addr", &metrics.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut local = common::Proc::spawn(&dir.0, "local", &args);

    let targets = dir.0.join("targets");
    fs::create_dir_all(&targets).unwrap();
    fs::write(
        targets.join("local.json"),
        serde_json::json!([{"targets": [metrics.to_string()], "labels": {"cluster": "local"}}]).to_string(),
    )
    .unwrap();
    let mut prometheus =
        common::Prometheus::start(&dir.0, &test_config(&targets), &[], Duration::from_secs(20));

    let deadline = started + Duration::from_secs(55);
    let failed = |why: &str, prometheus: &mut common::Prometheus, local: &common::Proc| -> ! {
        let local = common::tail(&local.stderr, 30);
        prometheus.fail(&format!("{why} after {:?}\n--- local stderr ---\n{local}", started.elapsed()))
    };

    let checks: [Check; 5] = [
        ("the target is up", r#"up{cluster="local",job="autopaxos-file"}"#.into(), |r| {
            r.len() == 1 && r[0].1 == 1.0
        }),
        (
            "replicas receive commands",
            r#"cluster_role:autopaxos_commands_in:rate1m{cluster="local",role="replica"}"#.into(),
            |r| r.len() == 1 && r[0].1 > 0.0,
        ),
        ("one leader", r#"cluster:autopaxos_leaders:count{cluster="local"}"#.into(), |r| {
            r.len() == 1 && r[0].1 == 1.0
        }),
        (
            "a finite client p99",
            r#"cluster_role:autopaxos_command_latency_seconds:p99{cluster="local",role="client"}"#.into(),
            |r| r.len() == 1 && r[0].1.is_finite() && r[0].1 > 0.0,
        ),
        ("no AutopaxosNoLeader alert", r#"ALERTS{alertname="AutopaxosNoLeader"}"#.into(), |r| r.is_empty()),
    ];
    let last = loop {
        let results = checks
            .iter()
            .map(|(what, promql, ok)| match query(&prometheus, promql) {
                Ok(result) => (*what, ok(&result), format!("{promql} = {result:?}")),
                Err(e) => (*what, false, format!("{promql}: {e}")),
            })
            .collect::<Vec<_>>();
        if results.iter().all(|(_, ok, _)| *ok) {
            break results;
        }
        if Instant::now() > deadline || !local.is_running() {
            let report: Vec<String> = results
                .iter()
                .map(|(what, ok, said)| format!("{} {what}: {said}", if *ok { "ok " } else { "NOT" }))
                .collect();
            failed(&format!("the rules did not all hold:\n{}", report.join("\n")), &mut prometheus, &local);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for (what, _, said) in &last {
        eprintln!("{what}: {said}");
    }
    eprintln!("all held after {:?}", started.elapsed());
    if let Ok(alerts) = query(&prometheus, "ALERTS") {
        eprintln!("alerts now: {alerts:?}");
    }
}
