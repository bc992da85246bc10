//! `patchbay-bench`: the same cases against the patchbay hub, nats-server and
//! mosquitto, side by side, plus the hub's resource figures. Prints a table
//! and writes a JSON report.

mod cases;
mod cluster;
mod journal;
mod libs;
mod resources;
mod servers;
mod venue;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use serde_json::{json, Value};

use cases::{latency, quantile, snapshot, throughput, Params, Throughput};
use servers::{available, Server};
use wire::System;

/// Benchmark the patchbay hub against nats-server and mosquitto.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Tiny counts: a smoke run that finishes in seconds.
    #[arg(long)]
    quick: bool,
    /// Times each case runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Systems to run (comma-separated: patchbay, nats, mosquitto).
    #[arg(long, default_value = "patchbay,nats,mosquitto")]
    systems: String,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench/results/latest.json")]
    json: PathBuf,
    /// Skip the hub's resource figures.
    #[arg(long)]
    no_resources: bool,
    /// Run the venue scenario instead (a campus against one hub); with
    /// `--quick`, a small campus. Its report goes to `bench/results/venue.json`.
    #[arg(long)]
    venue: bool,
    /// Run the journal scenario instead (its cost, sustained state changes and
    /// commands, queries on a large file). Its report goes to `bench/results/journal.json`.
    #[arg(long, conflicts_with = "venue")]
    journal: bool,
    /// Run the cluster scenario instead (two hubs over a 3-node NATS cluster
    /// beside one hub). Its report goes to `bench/results/cluster.json`.
    #[arg(long, conflicts_with_all = ["venue", "journal"])]
    cluster: bool,
}

/// Appends `report` as one line to the history beside `json`.
fn append_history(json: &std::path::Path, report: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = json.parent() {
        let mut history = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("history.jsonl"))?;
        writeln!(history, "{}", serde_json::to_string(report)?)?;
    }
    Ok(())
}

/// Writes a scenario's report to `bench/results/<name>.json` (or `--json`) and its history.
fn write_report(args: &Args, name: &str, report: &Value) -> anyhow::Result<()> {
    let path = if args.json == std::path::Path::new("bench/results/latest.json") {
        PathBuf::from(format!("bench/results/{name}.json"))
    } else {
        args.json.clone()
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")?;
    if !args.quick {
        append_history(&path, report)?;
    }
    eprintln!("report written to {}", path.display());
    Ok(())
}

async fn run_journal(args: &Args) -> anyhow::Result<()> {
    let p = if args.quick {
        journal::JournalParams::quick()
    } else {
        journal::JournalParams::full()
    };
    eprintln!("journal: {p:?}");
    let results = journal::run(p, if args.quick { 1 } else { args.repeat }).await?;
    let checks = journal::targets(&results, &p);
    println!("{}", serde_json::to_string_pretty(&results)?);
    println!("targets:");
    for (label, ok) in &checks {
        println!("  [{}] {label}", if *ok { "pass" } else { "FAIL" });
    }
    let report = json!({
        "scenario": "journal",
        "time_unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        "machine": machine(),
        "results": results,
        "targets": checks.iter().map(|(l, ok)| json!({"target": l, "passed": ok})).collect::<Vec<_>>(),
    });
    write_report(args, "journal", &report)
}

async fn run_cluster(args: &Args) -> anyhow::Result<()> {
    let p = if args.quick {
        cluster::ClusterParams::quick()
    } else {
        cluster::ClusterParams::full()
    };
    eprintln!("cluster: {p:?}");
    let results = cluster::run(p).await?;
    let (one, two) = (&results["single_hub"], &results["two_hubs_over_nats"]);
    println!("{:<28} {:>12} {:>16}", "case", "one hub", "two hubs (NATS)");
    for (label, key) in [
        ("state change p50 us", "state_latency_p50_us"),
        ("state change p99 us", "state_latency_p99_us"),
        ("PATCH round trip p50 us", "patch_rtt_p50_us"),
        ("PATCH round trip p99 us", "patch_rtt_p99_us"),
        ("1->1 msgs/s", "one_to_one_msgs_per_s"),
        ("1->1 lost", "one_to_one_lost"),
    ] {
        println!("{label:<28} {:>12} {:>16}", fmt(one, key), fmt(two, key));
    }
    let report = json!({
        "scenario": "cluster",
        "time_unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        "machine": machine(),
        "params": {"samples": p.samples, "patches": p.patches, "messages": p.messages},
        "results": results,
    });
    write_report(args, "cluster", &report)
}

async fn run_venue(args: &Args) -> anyhow::Result<()> {
    let p = if args.quick {
        venue::VenueParams::small()
    } else {
        venue::VenueParams::campus()
    };
    eprintln!("venue: {p:?}");
    let results = venue::run(p).await?;
    let checks = venue::targets(&results, &p);
    for (k, v) in results.as_object().into_iter().flatten() {
        if k != "hub_rss_series_mib" {
            println!("{k:<32} {v}");
        }
    }
    println!("targets:");
    for (label, ok) in &checks {
        println!("  [{}] {label}", if *ok { "pass" } else { "FAIL" });
    }
    let report = json!({
        "scenario": "venue",
        "time_unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        "machine": machine(),
        "results": results,
        "targets": checks.iter().map(|(l, ok)| json!({"target": l, "passed": ok})).collect::<Vec<_>>(),
    });
    write_report(args, "venue", &report)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn run_system(sys: System, p: Params, repeat: usize) -> anyhow::Result<Value> {
    let mut one: Vec<Throughput> = Vec::new();
    let mut fan: Vec<Throughput> = Vec::new();
    let mut lat: Vec<(f64, f64, f64)> = Vec::new();
    let mut snap: Vec<f64> = Vec::new();
    let with_lib = sys != System::Mqtt;
    let mut lib_one: Vec<Throughput> = Vec::new();
    let mut lib_fan: Vec<Throughput> = Vec::new();
    let mut lib_lat: Vec<(f64, f64, f64)> = Vec::new();
    for _ in 0..repeat {
        // A fresh server per repetition: no state carried between runs.
        let server = Server::start(sys).await?;
        one.push(throughput(&server, 1, p).await?);
        fan.push(throughput(&server, p.fanout, p).await?);
        let l = latency(&server, p).await?;
        lat.push((quantile(&l, 0.5), quantile(&l, 0.99), quantile(&l, 0.999)));
        if let Some(ms) = snapshot(&server, p).await? {
            snap.push(ms);
        }
        server.stop().await;
        if with_lib {
            // A fresh server for the library cases too.
            let server = Server::start(sys).await?;
            lib_one.push(libs::throughput(&server, 1, p).await?);
            lib_fan.push(libs::throughput(&server, p.fanout, p).await?);
            let l = libs::latency(&server, p).await?;
            lib_lat.push((quantile(&l, 0.5), quantile(&l, 0.99), quantile(&l, 0.999)));
            server.stop().await;
        }
    }
    let lib = |v: &[Throughput], f: &dyn Fn(&Throughput) -> f64| {
        if v.is_empty() {
            Value::Null
        } else {
            json!(median(v.iter().map(f).collect()))
        }
    };
    let lib_q = |i: usize| {
        if lib_lat.is_empty() {
            Value::Null
        } else {
            json!(median(lib_lat.iter().map(|l| [l.0, l.1, l.2][i]).collect()))
        }
    };
    let m = |f: &dyn Fn(&Throughput) -> f64, v: &[Throughput]| median(v.iter().map(f).collect());
    Ok(json!({
        "one_to_one_msgs_per_s": m(&|t| t.msgs_per_s, &one),
        "one_to_one_lost": one.iter().map(|t| t.lost).sum::<u64>(),
        "fanout_deliveries_per_s": m(&|t| t.deliveries_per_s, &fan),
        "fanout_lost": fan.iter().map(|t| t.lost).sum::<u64>(),
        "cpu_ns_per_delivery": m(&|t| t.cpu_ns_per_delivery, &fan),
        "one_to_one_cpu_ns_per_msg": m(&|t| t.cpu_ns_per_delivery, &one),
        "reqrep_p50_us": median(lat.iter().map(|l| l.0).collect()),
        "reqrep_p99_us": median(lat.iter().map(|l| l.1).collect()),
        "reqrep_p999_us": median(lat.iter().map(|l| l.2).collect()),
        "snapshot_ms": if snap.is_empty() { Value::Null } else { json!(median(snap)) },
        "lib_one_to_one_msgs_per_s": lib(&lib_one, &|t| t.msgs_per_s),
        "lib_one_to_one_lost": lib_one.iter().map(|t| t.lost).sum::<u64>(),
        "lib_fanout_deliveries_per_s": lib(&lib_fan, &|t| t.deliveries_per_s),
        "lib_fanout_lost": lib_fan.iter().map(|t| t.lost).sum::<u64>(),
        "lib_reqrep_p50_us": lib_q(0),
        "lib_reqrep_p99_us": lib_q(1),
        "lib_reqrep_p999_us": lib_q(2),
    }))
}

fn fmt(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_f64) {
        None => "n/a".into(),
        Some(x) if x >= 1e6 => format!("{:.2}M", x / 1e6),
        Some(x) if x >= 1e3 && key.ends_with("per_s") => format!("{:.0}k", x / 1e3),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn ratio(a: &Value, b: &Value, key: &str, higher_is_better: bool) -> String {
    match (
        a.get(key).and_then(Value::as_f64),
        b.get(key).and_then(Value::as_f64),
    ) {
        (Some(x), Some(y)) if x > 0.0 && y > 0.0 => {
            let r = if higher_is_better { x / y } else { y / x };
            format!("{r:.2}x")
        }
        _ => "-".into(),
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    json!({"cpu": model, "cores": cores, "os": std::env::consts::OS})
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.venue {
        return run_venue(&args).await;
    }
    if args.journal {
        return run_journal(&args).await;
    }
    if args.cluster {
        return run_cluster(&args).await;
    }
    let p = if args.quick {
        Params {
            messages: 20_000,
            fanout: 10,
            requests: 300,
            retained: 100,
            batch: 64,
        }
    } else {
        Params {
            messages: 1_000_000,
            fanout: 10,
            requests: 20_000,
            retained: 1_000,
            batch: 64,
        }
    };
    let repeat = if args.quick { 1 } else { args.repeat.max(1) };
    let mut results = BTreeMap::new();
    let mut skipped = Vec::new();
    for name in args
        .systems
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let sys = match name {
            "patchbay" => System::Patchbay,
            "nats" => System::Nats,
            "mosquitto" => System::Mqtt,
            other => anyhow::bail!("unknown system `{other}`: use patchbay, nats, mosquitto"),
        };
        if !available(sys) {
            eprintln!("{name}: not installed, skipped (bench/install installs it)");
            skipped.push(name.to_owned());
            continue;
        }
        eprintln!("{name}: running ({repeat}x)...");
        results.insert(name.to_owned(), run_system(sys, p, repeat).await?);
    }
    let none = Value::Null;
    let hub = results.get("patchbay").unwrap_or(&none);
    let nats = results.get("nats").unwrap_or(&none);
    let mosq = results.get("mosquitto").unwrap_or(&none);
    let rows: [(&str, &str, bool); 17] = [
        ("1->1 msgs/s", "one_to_one_msgs_per_s", true),
        ("1->1 lost", "one_to_one_lost", false),
        ("1->10 deliveries/s", "fanout_deliveries_per_s", true),
        ("1->10 lost", "fanout_lost", false),
        ("req/rep p50 us", "reqrep_p50_us", false),
        ("req/rep p99 us", "reqrep_p99_us", false),
        ("req/rep p99.9 us", "reqrep_p999_us", false),
        ("retained snapshot ms", "snapshot_ms", false),
        ("server CPU ns/delivery", "cpu_ns_per_delivery", false),
        ("server CPU ns/msg 1->1", "one_to_one_cpu_ns_per_msg", false),
        ("lib 1->1 msgs/s", "lib_one_to_one_msgs_per_s", true),
        ("lib 1->1 lost", "lib_one_to_one_lost", false),
        (
            "lib 1->10 deliveries/s",
            "lib_fanout_deliveries_per_s",
            true,
        ),
        ("lib 1->10 lost", "lib_fanout_lost", false),
        ("lib req/rep p50 us", "lib_reqrep_p50_us", false),
        ("lib req/rep p99 us", "lib_reqrep_p99_us", false),
        ("lib req/rep p99.9 us", "lib_reqrep_p999_us", false),
    ];
    println!(
        "{} msgs of 100 B, {} subscribers in fan-out, {} requests, {} retained tags, median of {repeat}",
        p.messages, p.fanout, p.requests, p.retained
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "case", "patchbay", "nats", "mosquitto", "hub/nats", "hub/mosq"
    );
    for (label, key, higher) in rows {
        let is_loss = key.ends_with("lost");
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
            label,
            fmt(hub, key),
            fmt(nats, key),
            fmt(mosq, key),
            if is_loss {
                "-".into()
            } else {
                ratio(hub, nats, key, higher)
            },
            if is_loss {
                "-".into()
            } else {
                ratio(hub, mosq, key, higher)
            },
        );
    }
    println!("(ratios above 1.00x mean the hub is better: faster, or lower latency/CPU)");
    println!(
        "(lib rows: each system through its own client library, patchbay-client and async-nats; {} msgs per throughput run)",
        libs::messages(p)
    );
    let resources = if args.no_resources {
        Value::Null
    } else {
        eprintln!("patchbay: resource figures...");
        resources::measure(args.quick).await?
    };
    if let Value::Object(r) = &resources {
        for (k, v) in r {
            println!("{k:<40} {v}");
        }
    }
    let report = json!({
        "time_unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        "machine": machine(),
        "params": {"messages": p.messages, "fanout": p.fanout, "requests": p.requests, "retained": p.retained,
                   "batch": p.batch, "repeat": repeat, "payload_bytes": 100},
        "results": results,
        "skipped": skipped,
        "resources": resources,
    });
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")?;
    if !args.quick {
        append_history(&args.json, &report)?;
    }
    eprintln!("report written to {}", args.json.display());
    Ok(())
}
