//! Hubs federated over a real 3-node NATS cluster (Debian's nats-server,
//! JetStream, R3 buckets), all processes on loopback: state through one hub
//! is seen on the other and in a late joiner's snapshot there, a command
//! through one reaches an agent on the other, a second agent's claim through
//! another hub is refused, a NATS node lost changes nothing, two lost leave
//! each hub serving its own clients and saying so, and agents move to
//! another hub when theirs dies.

use std::path::PathBuf;
use std::time::Duration;

use patchbay_client::{Body, ClientBuilder};
use patchbay_tests::{
    agent, cli, hub_with_config, online, pjlink_sim, temp_dir, temp_file, Proc, Watcher, WAIT,
};
use serde_json::Value;
use tokio::process::{Child, Command};

/// How long a change may take to cross the cluster while the tests load this machine.
const CROSS: Duration = Duration::from_secs(60);

/// The cluster tests run one at a time: each starts three NATS servers and
/// two hubs, and together they would starve each other on a small machine.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A NATS server of the test's cluster.
struct Node {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
}

fn nats_server(conf: &PathBuf) -> Child {
    Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server runs (apt install nats-server; .ci/run does)")
}

/// Three nats-server processes routed to each other, with JetStream.
struct NatsCluster {
    nodes: Vec<Node>,
    _dir: PathBuf,
}

impl NatsCluster {
    async fn start() -> NatsCluster {
        let dir = temp_dir("nats");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let store = dir.join(format!("n{i}"));
            let conf = temp_file(
                &format!("nats-{port}.conf"),
                &format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: pb\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            );
            nodes.push(Node {
                child: Some(nats_server(&conf)),
                port: *port,
                conf,
            });
        }
        NatsCluster { nodes, _dir: dir }
    }

    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("\"nats://127.0.0.1:{}\"", n.port))
            .collect::<Vec<_>>()
            .join(", ")
    }

    async fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Starts a killed node again, with its JetStream store as it was.
    fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.child = Some(nats_server(&n.conf));
    }
}

/// A hub in the cluster; returns the process and its HTTP base URL.
async fn hub(urls: &str, name: &str) -> (Proc, String) {
    let config = temp_file(
        &format!("cluster-hub-{name}-{}.toml", free_port()),
        &format!("[cluster]\nnats = [{urls}]\nreplicas = 3\nlease_ms = 2000\n"),
    );
    let mut p = hub_with_config(&config).await;
    let http = p.next_line_last_word().await;
    (p, http)
}

/// Waits until `/healthz` of the hub at `http` satisfies `ok`.
async fn health_until(http: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{http}healthz")).await {
            if let Ok(v) = r.json::<Value>().await {
                if ok(&v) {
                    return v;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "/healthz never showed {what}: {v}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn joined(v: &Value) -> bool {
    v["cluster"]["connected"] == true
}

/// Hubs `a` and `b` in the cluster, once both say they joined it.
async fn two_hubs(urls: &str) -> ((Proc, String), (Proc, String)) {
    let a = hub(urls, "a").await;
    let b = hub(urls, "b").await;
    health_until(&a.1, "hub a in the cluster", joined).await;
    health_until(&b.1, "hub b in the cluster", joined).await;
    (a, b)
}

fn agent_config(hubs: &str, name: &str, sim: &str) -> PathBuf {
    temp_file(
        &format!("cluster-agent-{name}-{}.toml", free_port()),
        &format!(
            "hub = \"{hubs}\"\nname = \"{name}\"\nreconnect_max_ms = 300\n\n[[device]]\nid = \"proj-1\"\nlocation = \"Hall\"\ndriver = \"pjlink\"\ntcp = \"{sim}\"\npoll_ms = 300\n"
        ),
    )
}

#[tokio::test]
async fn hubs_share_state_commands_and_claims_over_nats() {
    let _turn = one_at_a_time().await;
    let mut nats = NatsCluster::start().await;
    let urls = nats.urls();
    let ((a, a_http), (b, b_http)) = two_hubs(&urls).await;

    // An agent on hub A; its device is seen on hub B.
    let mut sim = pjlink_sim("127.0.0.1:0", &["--warmup-ms", "200"]).await;
    let _agent = agent(&agent_config(&a.addr(), "rack-a", &sim.addr()));
    let mut on_b = Watcher::new(&b.addr()).await;
    on_b.until_within(CROSS, "proj-1 online, seen on hub B", |d| {
        online(d, "proj-1")
    })
    .await;
    // A late joiner on B gets it in its snapshot.
    let mut late = Watcher::new(&b.addr()).await;
    late.until_within(CROSS, "proj-1 in a late joiner's snapshot on B", |d| {
        online(d, "proj-1") && d["proj-1"].state.is_some()
    })
    .await;

    // A command through B reaches the agent on A and comes back.
    let (ok, out, err) = cli(&b.addr(), &["set", "proj-1", "power=on"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["power", "on"])),
        "{out}"
    );
    let state: Value = serde_json::from_str(&sim.control("state").await).unwrap();
    assert_eq!(state["power"], "on");
    on_b.until_within(CROSS, "power on, seen on B", |d| {
        d["proj-1"].state_text("power") == "on"
    })
    .await;
    // And through B's HTTP API, as a console does: the confirmed state comes back.
    let res = reqwest::Client::new()
        .patch(format!("{b_http}api/devices/proj-1"))
        .json(&serde_json::json!({"input": "hdmi2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let confirmed: Value = res.json().await.unwrap();
    assert_eq!(confirmed["input"], "hdmi2", "{confirmed}");
    let state: Value = serde_json::from_str(&sim.control("state").await).unwrap();
    assert_eq!(state["input"], "32", "HDMI 2 on the projector: {state}");

    // A second agent's claim through B is refused: the device is owned
    // cluster-wide. With the same name (a token shared by mistake) too.
    for name in ["rack-b", "rack-a"] {
        let intruder = ClientBuilder::new(b.addr())
            .name(name)
            .connect()
            .await
            .unwrap();
        let e = intruder.claim("dev/proj-1").await.unwrap_err();
        assert!(
            e.to_string().contains("claimed by `rack-a` on another hub"),
            "{name}: {e}"
        );
    }

    // A request nobody answers on any hub: no_responder, saying so.
    let asker = ClientBuilder::new(b.addr())
        .name("asker")
        .connect()
        .await
        .unwrap();
    let e = asker
        .request("svc/nobody/set", &Body::from(serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("no_responder"), "{e}");
    assert!(e.to_string().contains("any hub of the cluster"), "{e}");

    // A plain (not retained) message through A reaches a subscriber on B.
    let listener = ClientBuilder::new(b.addr())
        .name("ear")
        .connect()
        .await
        .unwrap();
    let mut sub = listener.subscribe(&["chat/#"]).await.unwrap();
    let talker = ClientBuilder::new(a.addr())
        .name("mouth")
        .connect()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let heard = loop {
        talker
            .publish("chat/room", &Body::from(serde_json::json!("hello")))
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing heard on B");
    };
    assert_eq!(heard.body_str(), "\"hello\"");

    // One NATS node lost: nothing a user sees changes.
    nats.kill(0).await;
    let (ok, _, err) = cli(
        &format!("{},{}", b.addr(), a.addr()),
        &["set", "proj-1", "power=off"],
    )
    .await;
    assert!(ok, "{err}");
    on_b.until_within(CROSS, "power off through the remaining nodes", |d| {
        d["proj-1"].state_text("power") == "off"
    })
    .await;

    // Two of three lost: no quorum. Each hub still serves its own clients
    // and says it is degraded.
    nats.kill(1).await;
    let local = ClientBuilder::new(a.addr())
        .name("local")
        .connect()
        .await
        .unwrap();
    let mut local_sub = local.subscribe(&["note/#"]).await.unwrap();
    let note = ClientBuilder::new(a.addr())
        .name("note")
        .connect()
        .await
        .unwrap();
    let retain = patchbay_client::PublishOptions {
        retain: true,
        cid: None,
    };
    note.publish_acked("note/x", &Body::from(serde_json::json!(1)), retain)
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, local_sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.tag(), "note/x");
    let h = health_until(&a_http, "hub a degraded", |v| v["status"] == "degraded").await;
    assert_eq!(h["cluster"]["connected"], false, "{h}");
    assert!(h["cluster"]["error"].as_str().is_some(), "says why: {h}");

    // The quorum returns: what A wrote meanwhile reaches B, and A is whole again.
    nats.restart(1);
    let mut late_b = Watcher::new(&b.addr()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = ClientBuilder::new(b.addr())
            .name("reader")
            .connect()
            .await
            .unwrap()
            .subscribe_with_snapshot(&["note/x"])
            .await
            .unwrap()
            .snapshot()
            .await
            .unwrap();
        if seen.iter().any(|m| m.body_str() == "1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the value written during the partition never reached B"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    health_until(&a_http, "hub a whole again", |v| v["status"] == "ok").await;
    late_b
        .until_within(CROSS, "proj-1 still there on B", |d| online(d, "proj-1"))
        .await;
}

#[tokio::test]
async fn agents_move_to_another_hub_when_theirs_dies() {
    let _turn = one_at_a_time().await;
    let nats = NatsCluster::start().await;
    let urls = nats.urls();
    let ((a, _), (b, _)) = two_hubs(&urls).await;
    let sim = pjlink_sim("127.0.0.1:0", &[]).await;
    // The agent knows both hubs and starts on A.
    let hubs = format!("{},{}", a.addr(), b.addr());
    let _agent = agent(&agent_config(&hubs, "rack-a", &sim.addr()));
    let mut on_b = Watcher::new(&b.addr()).await;
    on_b.until_within(CROSS, "proj-1 online, seen on B", |d| online(d, "proj-1"))
        .await;
    // Hub A dies (kill -9): the agent reconnects to B, claims again and
    // publishes again; the device is online and controllable through B.
    a.kill().await;
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let (ok, _, err) = cli(&b.addr(), &["set", "proj-1", "power=on"]).await;
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never came back through B: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("agent moved to hub B in {:?}", started.elapsed());
    // Past the dead hub's lease time, the device is still online: no hub
    // took the agent's move for a death.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, _, err) = cli(&b.addr(), &["set", "proj-1", "power=off"]).await;
    assert!(ok, "{err}");
    let mut late = Watcher::new(&b.addr()).await;
    late.until_within(CROSS, "proj-1 online on B after the lease time", |d| {
        online(d, "proj-1")
    })
    .await;
}

#[tokio::test]
async fn a_dead_hubs_devices_go_offline_when_its_leases_expire() {
    let _turn = one_at_a_time().await;
    let nats = NatsCluster::start().await;
    let urls = nats.urls();
    let ((a, _), (b, _)) = two_hubs(&urls).await;
    let sim = pjlink_sim("127.0.0.1:0", &[]).await;
    // This agent knows only hub A.
    let _agent = agent(&agent_config(&a.addr(), "rack-a", &sim.addr()));
    let mut on_b = Watcher::new(&b.addr()).await;
    on_b.until_within(CROSS, "proj-1 online, seen on B", |d| online(d, "proj-1"))
        .await;
    a.kill().await;
    // No last will from a killed hub; its lease expires (2 s) and B says why.
    on_b.until_within(CROSS, "proj-1 offline because its hub is gone", |d| {
        d.get("proj-1").is_some_and(|v| {
            !v.is_online()
                && v.reason()
                    .is_some_and(|r| r.contains("its hub stopped answering"))
        })
    })
    .await;
}
