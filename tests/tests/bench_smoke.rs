//! A tiny run of the benchmark, so it cannot rot. No timing is asserted:
//! only that every case ran, nothing was lost, and the report is complete.

use patchbay_tests::bin;
use tokio::process::Command;

#[tokio::test]
async fn benchmark_smoke_run() {
    let json =
        std::env::temp_dir().join(format!("patchbay-bench-smoke-{}.json", std::process::id()));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        Command::new(bin("patchbay-bench"))
            .args(["--quick", "--systems", "patchbay", "--json"])
            .arg(&json)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("benchmark smoke run hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1->10 deliveries/s"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let hub = &report["results"]["patchbay"];
    for key in [
        "one_to_one_msgs_per_s",
        "fanout_deliveries_per_s",
        "reqrep_p50_us",
        "reqrep_p99_us",
        "reqrep_p999_us",
        "snapshot_ms",
        "cpu_ns_per_delivery",
        "lib_one_to_one_msgs_per_s",
        "lib_fanout_deliveries_per_s",
        "lib_reqrep_p99_us",
    ] {
        assert!(
            hub[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} missing in {hub}"
        );
    }
    assert_eq!(hub["one_to_one_lost"], 0);
    assert_eq!(hub["fanout_lost"], 0);
    assert_eq!(hub["lib_one_to_one_lost"], 0);
    assert_eq!(hub["lib_fanout_lost"], 0);
    assert!(report["resources"]["rss_per_idle_connection_kib"]
        .as_f64()
        .is_some());
    let _ = std::fs::remove_file(json);
}

#[tokio::test]
async fn venue_smoke_run() {
    let json =
        std::env::temp_dir().join(format!("patchbay-venue-smoke-{}.json", std::process::id()));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        Command::new(bin("patchbay-bench"))
            .args(["--venue", "--quick", "--json"])
            .arg(&json)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("venue smoke run hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &report["results"];
    // Every client of the small campus was served; no timing is asserted.
    assert_eq!(r["controllers_served"], r["params"]["controllers"], "{r}");
    assert_eq!(r["consoles_served"], r["params"]["consoles"], "{r}");
    for key in ["latency_steady", "latency_burst", "patch_overhead_steady"] {
        assert!(
            r[key]["samples"].as_u64().is_some_and(|n| n > 0),
            "{key} has no samples: {r}"
        );
    }
    assert_eq!(r["patch_failed"], 0, "{r}");
    let _ = std::fs::remove_file(json);
}

#[tokio::test]
async fn journal_smoke_run() {
    let json = std::env::temp_dir().join(format!(
        "patchbay-bench-journal-smoke-{}.json",
        std::process::id()
    ));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        Command::new(bin("patchbay-bench"))
            .args(["--journal", "--quick", "--json"])
            .arg(&json)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("journal benchmark smoke run hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &report["results"];
    // Nothing lost, every case ran; no timing is asserted.
    assert_eq!(r["state_changes"]["lost"], 0, "{r}");
    assert_eq!(r["state_changes"]["dropped"], 0, "{r}");
    assert_eq!(r["commands"]["lost"], 0, "{r}");
    assert_eq!(r["commands"]["rows"], r["commands"]["sent"], "{r}");
    assert_eq!(
        r["commands"]["confirmed_rows"], r["commands"]["sent"],
        "{r}"
    );
    assert!(r["overhead"]["one_to_one_on"]
        .as_f64()
        .is_some_and(|v| v > 0.0));
    assert!(r["query"]["p50_ms"].as_f64().is_some_and(|v| v > 0.0));
    let _ = std::fs::remove_file(json);
}

#[tokio::test]
async fn cluster_smoke_run() {
    let json = std::env::temp_dir().join(format!(
        "patchbay-bench-cluster-smoke-{}.json",
        std::process::id()
    ));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        Command::new(bin("patchbay-bench"))
            .args(["--cluster", "--quick", "--json"])
            .arg(&json)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("cluster benchmark smoke run hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Both setups ran every case and lost nothing; no timing is asserted.
    for setup in ["single_hub", "two_hubs_over_nats"] {
        let r = &report["results"][setup];
        for key in [
            "state_latency_p99_us",
            "patch_rtt_p99_us",
            "one_to_one_msgs_per_s",
        ] {
            assert!(
                r[key].as_f64().is_some_and(|v| v > 0.0),
                "{setup}: {key} missing in {r}"
            );
        }
        assert_eq!(r["one_to_one_lost"], 0, "{setup}: {r}");
    }
    let _ = std::fs::remove_file(json);
}
