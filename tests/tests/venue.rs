//! Rooms and groups against the demo's simulated devices: one command for
//! many, with one device failing and one without the setting; groups defined
//! through the API; the CLI's `set --group` and `set --room`.

use std::time::Duration;

use patchbay_client::{Body, ClientBuilder, RequestOptions};
use patchbay_tests::{cli, Proc, WAIT};
use serde_json::{json, Value};

async fn demo() -> (Proc, String, String) {
    let mut demo = Proc::start(
        "patchbay-agent",
        &[
            "demo",
            "--hub-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let console = demo.next_line_last_word().await;
    let hub = demo.next_line_last_word().await;
    (demo, console.trim_end_matches('/').to_owned(), hub)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT * 3)
        .build()
        .unwrap()
}

async fn get(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The demo's devices: three projectors, the LG display, and the library's display and matrix.
const DEMO_DEVICES: usize = 6;

/// Waits until every demo device is described and online.
async fn all_online(http: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = get(&format!("{http}/api/devices")).await;
        // Online and described (by the device itself, not only the configuration), every one.
        let ready = list.as_array().is_some_and(|d| {
            d.len() == DEMO_DEVICES
                && d.iter().all(|d| {
                    d["online"] == true && d["manufacturer"].as_str().is_some_and(|m| !m.is_empty())
                })
        });
        if ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo devices not online: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn unplug_proj_3(hub: &str, http: &str) {
    let c = ClientBuilder::new(hub)
        .name("test")
        .connect()
        .await
        .unwrap();
    let opts = RequestOptions {
        timeout: Some(WAIT),
        cid: None,
        on_behalf: None,
    };
    c.request_with("sim/proj-3/control", &Body::from(json!("unplug")), opts)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(&format!("{http}/api/devices/proj-3")).await["online"]["online"] != false {
        assert!(
            tokio::time::Instant::now() < deadline,
            "proj-3 never went offline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_group_command_reports_each_member_and_the_whole() {
    let (_demo, http, hub) = demo().await;
    all_online(&http).await;

    let rooms = get(&format!("{http}/api/rooms")).await;
    let names: Vec<&str> = rooms
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Auditorium",
            "Boardroom",
            "Classroom 2",
            "Control Room",
            "Lobby"
        ]
    );
    let groups = get(&format!("{http}/api/groups")).await;
    let projectors = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "projectors")
        .unwrap();
    assert_eq!(projectors["origin"], "config");
    assert_eq!(projectors["members"], json!(["proj-1", "proj-2", "proj-3"]));

    unplug_proj_3(&hub, &http).await;
    let res = client()
        .patch(format!("{http}/api/groups/all"))
        .header("x-correlation-id", "all-on")
        .json(&json!({"power": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["status"], "some", "{out}");
    // proj-1, proj-2, display-1 and wall-1; proj-3 is unplugged; matrix-1 has no power.
    assert_eq!(out["confirmed"], 4, "{out}");
    assert_eq!(out["failed"], 1, "{out}");
    assert_eq!(out["skipped"], 1, "{out}");
    let members = out["members"].as_array().unwrap();
    let p3 = members.iter().find(|m| m["id"] == "proj-3").unwrap();
    assert_eq!(p3["outcome"], "failed");
    assert_eq!(p3["error"]["code"], "offline");
    assert!(
        p3["error"]["message"]
            .as_str()
            .unwrap()
            .contains("serial port"),
        "the device's reason: {p3}"
    );
    let p1 = members.iter().find(|m| m["id"] == "proj-1").unwrap();
    assert_eq!(p1["outcome"], "confirmed");
    assert!(
        ["on", "warming"].contains(&p1["state"]["power"].as_str().unwrap()),
        "{p1}"
    );
    assert_eq!(p1["cid"], "all-on/proj-1");

    // A member without the setting is skipped, not failed.
    let res = client()
        .patch(format!("{http}/api/rooms/Lobby"))
        .json(&json!({"video_mute": true}))
        .send()
        .await
        .unwrap();
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["skipped"], 1, "{out}");
    assert_eq!(out["failed"], 0, "{out}");
    assert_eq!(out["members"][0]["outcome"], "skipped");
    assert_eq!(out["members"][0]["skipped"], json!(["video_mute"]));

    // Each member's command is in the journal under the group's cid.
    let c = get(&format!("{http}/api/commands/all-on%2Fproj-1")).await;
    assert_eq!(c["status"], "confirmed", "{c}");
    let audit = get(&format!("{http}/api/audit?kind=group_run")).await;
    let run = &audit["items"][1];
    assert_eq!(run["subject"], "group all", "{audit}");
    assert!(
        run["detail"]
            .as_str()
            .unwrap()
            .contains("4 confirmed, 1 failed, 1 skipped"),
        "{run}"
    );

    // Unknown names and bad bodies.
    let res = client()
        .patch(format!("{http}/api/groups/nope"))
        .json(&json!({"power": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client()
        .patch(format!("{http}/api/rooms/Attic"))
        .json(&json!({"power": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client()
        .patch(format!("{http}/api/groups/all"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn groups_defined_through_the_api_select_and_survive_checks() {
    let (_demo, http, _hub) = demo().await;
    all_online(&http).await;
    let put = |name: &str, body: Value| {
        let url = format!("{http}/api/groups/{name}");
        async move { client().put(url).json(&body).send().await.unwrap() }
    };
    let res = put("front", json!({"ids": ["proj-1", "display-1"]})).await;
    assert_eq!(res.status(), 200);
    let g: Value = res.json().await.unwrap();
    assert_eq!(g["members"], json!(["display-1", "proj-1"]));
    assert_eq!(g["origin"], "api");
    let res = put(
        "pjlink",
        json!({"driver": "pjlink", "location": "Boardroom"}),
    )
    .await;
    let g: Value = res.json().await.unwrap();
    assert_eq!(g["members"], json!(["proj-2"]));

    // Refused, with what is wrong.
    let res = put("projectors", json!({"ids": ["proj-1"]})).await;
    assert_eq!(res.status(), 409, "a config group is read-only");
    let res = put("empty", json!({})).await;
    assert_eq!(res.status(), 400);
    let e: Value = res.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least one"),
        "{e}"
    );
    let res = put("bad", json!({"pattern": "dev/#/x"})).await;
    assert_eq!(res.status(), 400);
    let res = put("bad", json!({"room": "Lobby"})).await;
    assert_eq!(res.status(), 400, "unknown field");
    let res = put("bad%2Fname", json!({"ids": ["proj-1"]})).await;
    assert_eq!(res.status(), 400);

    let res = client()
        .delete(format!("{http}/api/groups/front"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = client()
        .get(format!("{http}/api/groups/front"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client()
        .delete(format!("{http}/api/groups/projectors"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let audit = get(&format!("{http}/api/audit?kind=group_defined")).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 2, "{audit}");
}

#[tokio::test]
async fn the_cli_sets_a_group_and_a_room() {
    let (_demo, http, hub) = demo().await;
    all_online(&http).await;
    let (ok, out, err) = cli(&hub, &["set", "--room", "Lobby", "mute=on"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("display-1: confirmed mute=true"), "{out}");
    assert!(
        out.contains("room Lobby: all (1 confirmed, 0 failed, 0 skipped"),
        "{out}"
    );

    unplug_proj_3(&hub, &http).await;
    let (ok, out, err) = cli(&hub, &["set", "--group", "projectors", "power=on"]).await;
    assert!(!ok, "a failed member fails the command: {out}{err}");
    assert!(out.contains("proj-3: failed: offline"), "{out}");
    assert!(
        out.contains("group projectors: some (2 confirmed, 1 failed"),
        "{out}"
    );
    assert!(err.contains("1 of the members failed"), "{err}");
    let (ok, _, err) = cli(&hub, &["set", "--group", "nope", "power=on"]).await;
    assert!(!ok);
    assert!(err.contains("no group `nope`"), "{err}");
    let (ok, _, err) = cli(&hub, &["set", "--room", "Lobby"]).await;
    assert!(!ok);
    assert!(err.contains("at least one setting"), "{err}");
}

async fn run_until_done(http: &str, id: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let run = get(&format!("{http}/api/scene-runs/{id}")).await;
        if run["status"] != "running" {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never ended: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_scene_waits_through_warm_up_and_reports_each_step() {
    let (_demo, http, hub) = demo().await;
    all_online(&http).await;
    let scenes = get(&format!("{http}/api/scenes")).await;
    assert!(scenes
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "presentation"));

    let res = client()
        .post(format!("{http}/api/scenes/presentation/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let started: Value = res.json().await.unwrap();
    let id = started["run"].as_u64().unwrap();
    assert_eq!(started["tag"], format!("hub/scene-runs/{id}"));
    // One run at a time.
    let res = client()
        .post(format!("{http}/api/scenes/presentation/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let e: Value = res.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already running"),
        "{e}"
    );

    let run = run_until_done(&http, id).await;
    assert_eq!(run["status"], "done", "{run}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert!(steps.iter().all(|s| s["status"] == "done"), "{run}");
    assert_eq!(steps[1]["what"], "wait until proj-1 power=on");
    // The wait lasted through the projector's warm-up (4 s in the demo).
    let waited = steps[1]["finished"].as_u64().unwrap() - steps[0]["started"].as_u64().unwrap();
    assert!(waited >= 3000, "{waited} ms");
    let proj = get(&format!("{http}/api/devices/proj-1")).await;
    assert_eq!(proj["state"]["input"], "hdmi2");
    assert_eq!(proj["state"]["power"], "on");
    // Each step's command is in the journal under the run.
    let c = get(&format!("{http}/api/commands/scene-{id}-3%2Fproj-1")).await;
    assert_eq!(c["status"], "confirmed", "{c}");

    // A failing first step stops the scene; the rest is skipped, with why.
    unplug_proj_3(&hub, &http).await;
    let res = client()
        .post(format!("{http}/api/scenes/classroom/run"))
        .send()
        .await
        .unwrap();
    let id = res.json::<Value>().await.unwrap()["run"].as_u64().unwrap();
    let run = run_until_done(&http, id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["steps"][0]["status"], "failed");
    assert!(
        run["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("serial port"),
        "{run}"
    );
    assert_eq!(run["steps"][1]["status"], "skipped");

    let res = client()
        .post(format!("{http}/api/scenes/nope/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client()
        .get(format!("{http}/api/scene-runs/12"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client()
        .get(format!("{http}/api/scene-runs/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn the_cli_runs_a_scene_and_shows_its_progress() {
    let (_demo, http, hub) = demo().await;
    all_online(&http).await;
    let (ok, out, err) = cli(&hub, &["scene", "run", "presentation"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("step 1/3 set proj-1 power=on: running"),
        "{out}"
    );
    assert!(
        out.contains("step 2/3 wait until proj-1 power=on: done"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("scene presentation: done"),
        "{out}"
    );
    let (ok, _, err) = cli(&hub, &["scene", "run", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("no scene `nope`"), "{err}");
}

#[tokio::test]
async fn a_config_with_a_wrong_scene_is_refused_at_start() {
    let config = patchbay_tests::temp_file(
        "bad-scene.toml",
        "[groups.front]\nids = [\"p1\"]\n\n[scenes.evening]\n[[scenes.evening.steps]]\ndelay_ms = 10\n[[scenes.evening.steps]]\ngroup = \"back\"\nset = { power = \"off\" }\n",
    );
    let out = tokio::process::Command::new(patchbay_tests::bin("patchbay-hub"))
        .arg("--config")
        .arg(&config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--memory-only",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-scene.toml"), "{err}");
    assert!(
        err.contains("scenes.evening: step 2 (set group back power=off): no group `back`"),
        "{err}"
    );
}

#[tokio::test]
async fn scenes_defined_through_the_api_are_checked_against_the_devices() {
    let (_demo, http, _hub) = demo().await;
    all_online(&http).await;
    let put = |name: &str, body: Value| {
        let url = format!("{http}/api/scenes/{name}");
        async move { client().put(url).json(&body).send().await.unwrap() }
    };
    let refused = |name: &'static str, body: Value, word: &'static str| {
        let put = &put;
        async move {
            let res = put(name, body).await;
            assert_eq!(res.status(), 400, "{name}");
            let e: Value = res.json().await.unwrap();
            let m = e["error"]["message"].as_str().unwrap().to_owned();
            assert!(m.contains(word), "{m}");
        }
    };
    refused(
        "a",
        json!({"steps": [{"device": "proj-9", "set": {"power": "on"}}]}),
        "step 1 (set proj-9 power=on): no device `proj-9`",
    )
    .await;
    refused(
        "a",
        json!({"steps": [{"device": "proj-1", "set": {"brightness": 3}}]}),
        "brightness",
    )
    .await;
    refused(
        "a",
        json!({"steps": [{"device": "proj-1", "set": {"input": "hdmi9"}}]}),
        "hdmi9",
    )
    .await;
    refused(
        "a",
        json!({"steps": [{"delay_ms": 1}, {"device": "proj-1", "wait": {"colour": "red"}}]}),
        "step 2 (wait until proj-1 colour=red): `proj-1` reports no `colour`",
    )
    .await;
    refused(
        "a",
        json!({"steps": [{"room": "Attic", "set": {"power": "on"}}]}),
        "no room `Attic`",
    )
    .await;
    refused(
        "a",
        json!({"steps": [{"parallel": [{"group": "nope", "set": {"power": "on"}}]}]}),
        "no group `nope`",
    )
    .await;
    refused("a", json!({"steps": []}), "at least one step").await;
    let res = put("presentation", json!({"steps": [{"delay_ms": 1}]})).await;
    assert_eq!(res.status(), 409, "a config scene is read-only");

    let res = put(
        "lobby-welcome",
        json!({"label": "Lobby welcome", "steps": [
            {"room": "Lobby", "set": {"power": "on"}},
            {"parallel": [{"device": "display-1", "set": {"input": "hdmi2"}}, {"delay_ms": 10}]}
        ]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let listed = get(&format!("{http}/api/scenes")).await;
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "lobby-welcome")
        .unwrap();
    assert_eq!(mine["origin"], "api");
    let res = client()
        .post(format!("{http}/api/scenes/lobby-welcome/run"))
        .send()
        .await
        .unwrap();
    let id = res.json::<Value>().await.unwrap()["run"].as_u64().unwrap();
    let run = run_until_done(&http, id).await;
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(
        get(&format!("{http}/api/devices/display-1")).await["state"]["input"],
        "hdmi2"
    );

    let res = client()
        .delete(format!("{http}/api/scenes/lobby-welcome"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = client()
        .post(format!("{http}/api/scenes/lobby-welcome/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let audit = get(&format!("{http}/api/audit?kind=scene_defined")).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
}

#[tokio::test]
async fn a_scene_run_can_be_cancelled() {
    let (_demo, http, _hub) = demo().await;
    all_online(&http).await;
    let res = client()
        .post(format!("{http}/api/scenes/presentation/run"))
        .send()
        .await
        .unwrap();
    let id = res.json::<Value>().await.unwrap()["run"].as_u64().unwrap();
    // Cancel it while it waits for the projector to warm up (4 s in the demo).
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(&format!("{http}/api/scene-runs/{id}")).await["steps"][0]["status"] != "running" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wait never started: {}",
            get(&format!("{http}/api/scene-runs/{id}")).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = client()
        .post(format!("{http}/api/scene-runs/{id}/cancel"))
        .header("x-client-name", "lectern")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let run = run_until_done(&http, id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["steps"][0]["status"], "failed");
    assert_eq!(run["steps"][0]["detail"], "cancelled by lectern");
    assert_eq!(run["steps"][1]["status"], "skipped");
    assert_eq!(run["steps"][2]["status"], "skipped");
    assert_eq!(
        run["steps"][2]["detail"],
        "the run was cancelled by lectern"
    );
    let res = client()
        .post(format!("{http}/api/scene-runs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "no longer under way");
    // And the scene may run again at once.
    let res = client()
        .post(format!("{http}/api/scenes/presentation/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn the_cli_cancels_a_scene_run() {
    let (_demo, http, hub) = demo().await;
    let res = client()
        .put(format!("{http}/api/scenes/hold"))
        .json(&serde_json::json!({"steps": [{"delay_ms": 600_000}]}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = client()
        .post(format!("{http}/api/scenes/hold/run"))
        .send()
        .await
        .unwrap();
    let id = res.json::<Value>().await.unwrap()["run"].as_u64().unwrap();
    let (ok, out, err) = cli(&hub, &["scene", "cancel", &id.to_string()]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), format!("run {id}: cancelled"));
    let run = run_until_done(&http, id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(
        run["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("cancelled by"),
        "{run}"
    );
    let (ok, _, err) = cli(&hub, &["scene", "cancel", &id.to_string()]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("no scene run {id} under way")),
        "{err}"
    );
    let (ok, _, err) = cli(&hub, &["scene", "cancel", "hold"]).await;
    assert!(!ok);
    assert!(err.contains("a run id is a number"), "{err}");
}

/// The value of the sample that starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_describe_each_device_and_time_its_commands() {
    let (_demo, http, _hub) = demo().await;
    all_online(&http).await;
    let metrics = || async {
        client()
            .get(format!("{http}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let m = metrics().await;
    assert!(
        m.contains("patchbay_device_info{device=\"proj-1\",driver=\"pjlink\",manufacturer=\"patchbay\",model=\"SIM-1000\",location=\"Auditorium\"} 1"),
        "{m}"
    );
    assert_eq!(
        sample(&m, "patchbay_device_online{device=\"proj-1\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "patchbay_device_power_state{device=\"proj-1\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "patchbay_device_lamp_hours{device=\"proj-1\",lamp=\"1\"}"
        ),
        Some(1234.0)
    );
    assert!(sample(&m, "patchbay_device_filter_hours{device=\"proj-1\"}").is_some());
    let before = sample(&m, "patchbay_request_duration_seconds_count").unwrap();

    let res = client()
        .patch(format!("{http}/api/devices/proj-1"))
        .json(&json!({"power": "on"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let m = metrics().await;
    let count = sample(&m, "patchbay_request_duration_seconds_count").unwrap();
    assert!(count >= before + 1.0, "the command is counted: {count}");
    assert_eq!(
        sample(&m, "patchbay_request_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(count)
    );
    let power = sample(&m, "patchbay_device_power_state{device=\"proj-1\"}").unwrap();
    assert!(power == 1.0 || power == 3.0, "on or warming: {power}");
}
