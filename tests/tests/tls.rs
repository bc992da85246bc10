//! TLS on the hub's ports, with certificates made at test time (rcgen):
//! an agent with a client certificate, the CLI, OpenSSL's own clients
//! (`openssl s_client` on the wire port, `curl` on HTTPS), a certificate
//! renewed by a reload, and the handshake's limits.

use std::process::Stdio;

use patchbay_client::tls::TlsOptions;
use patchbay_client::ClientBuilder;
use patchbay_hub::config::HubConfig;
use patchbay_hub::tls::TlsConfig;
use patchbay_tests::pki::{Ca, Leaf};
use patchbay_tests::{agent, bin, hub_with_config, pjlink_sim, temp_dir, temp_file, WAIT};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Runs the CLI with `args` (TLS options included); returns (success, stdout, stderr).
async fn cli(hub: &str, args: &[&str]) -> (bool, String, String) {
    patchbay_tests::cli(hub, args).await
}

/// Runs curl with `args`; returns (HTTP status, body).
async fn curl(args: &[&str]) -> (u16, String) {
    let out = tokio::time::timeout(
        WAIT,
        Command::new("curl")
            .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl hung")
    .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        status.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// A TLS client configuration trusting `ca`, with `client` as its certificate.
fn client_tls(
    ca: &Ca,
    client: Option<&Leaf>,
) -> std::sync::Arc<patchbay_client::tls::ClientConfig> {
    TlsOptions {
        ca: Some(ca.cert.clone()),
        cert: client.map(|c| c.cert.clone()),
        key: client.map(|c| c.key.clone()),
    }
    .client_config()
    .unwrap()
}

/// An embedded hub speaking TLS with `leaf`.
async fn tls_hub(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
    tune: impl FnOnce(&mut HubConfig),
) -> patchbay_hub::server::RunningHub {
    let mut config = HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsConfig {
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
            client_ca: client_ca.map(|c| c.cert.clone()),
            handshake_timeout_ms: 10_000,
        }),
        ..HubConfig::default()
    };
    tune(&mut config);
    patchbay_hub::server::start(config).await.unwrap()
}

#[tokio::test]
async fn an_agent_the_cli_and_openssl_clients_work_over_tls_with_client_certificates() {
    let dir = temp_dir("tls-e2e");
    let hub_ca = Ca::new(&dir, "hub");
    let clients_ca = Ca::new(&dir, "clients");
    let hub_leaf = hub_ca.leaf(&dir, "hub", &["localhost", "127.0.0.1"]);
    let agent_leaf = clients_ca.leaf(&dir, "agent", &["agent-1"]);
    let cli_leaf = clients_ca.leaf(&dir, "operator", &["operator"]);
    let config = temp_file(
        "tls-hub.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            hub_leaf.cert, hub_leaf.key, clients_ca.cert
        ),
    );
    let mut hub = hub_with_config(&config).await;
    assert!(
        hub.first_line.contains("listening with TLS on"),
        "{}",
        hub.first_line
    );
    let addr = hub.addr();
    let api = hub.next_line_last_word().await;
    assert!(api.starts_with("https://"), "{api}");

    let sim = pjlink_sim("127.0.0.1:0", &[]).await;
    let agent_cfg = temp_file(
        "tls-agent.toml",
        &format!(
            "hub = \"{addr}\"\nname = \"tls-agent\"\nreconnect_max_ms = 300\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n\n[[device]]\nid = \"proj-tls\"\nname = \"Projector\"\nlocation = \"TLS Room\"\ndriver = \"pjlink\"\ntcp = \"{}\"\npoll_ms = 300\n",
            hub_ca.cert,
            agent_leaf.cert,
            agent_leaf.key,
            sim.addr()
        ),
    );
    let _agent = agent(&agent_cfg);

    // A watcher through the client library, with its own certificate.
    let client = ClientBuilder::new(&addr)
        .name("tls-watcher")
        .tls(client_tls(&hub_ca, Some(&cli_leaf)))
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    let mut sub = client
        .subscribe_with_snapshot(["dev/proj-tls/online"])
        .await
        .unwrap();
    let mut seen = sub.snapshot().await.unwrap();
    while !seen
        .iter()
        .any(|m| m.json::<Value>().unwrap()["online"] == true)
    {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("the agent's device never came online over TLS")
            .unwrap();
        seen.push(m);
    }

    // The CLI with its certificate sets the device.
    let ca = hub_ca.cert.to_str().unwrap();
    let tls_args = [
        "--tls-ca",
        ca,
        "--tls-cert",
        cli_leaf.cert.to_str().unwrap(),
        "--tls-key",
        cli_leaf.key.to_str().unwrap(),
    ];
    let mut args = tls_args.to_vec();
    args.extend(["set", "proj-tls", "power=on"]);
    let (ok, out, err) = cli(&addr, &args).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("proj-tls: confirmed"), "{out}");

    // Without a certificate: refused, saying what is missing.
    let (ok, _, err) = cli(&addr, &["--tls-ca", ca, "devices"]).await;
    assert!(!ok);
    assert!(err.contains("requires a client certificate"), "{err}");
    // Without TLS: told the port speaks TLS.
    let (ok, _, err) = cli(&addr, &["devices"]).await;
    assert!(!ok);
    assert!(err.contains("speaks TLS"), "{err}");
    // A certificate from a CA the hub does not trust for clients: refused, and said so.
    let stranger = hub_ca.leaf(&dir, "stranger", &["stranger"]);
    let (ok, _, err) = cli(
        &addr,
        &[
            "--tls-ca",
            ca,
            "--tls-cert",
            stranger.cert.to_str().unwrap(),
            "--tls-key",
            stranger.key.to_str().unwrap(),
            "devices",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("refused this connection's TLS"), "{err}");
    // Trusting another CA: the hub's certificate is refused.
    let (ok, _, err) = cli(
        &addr,
        &["--tls-ca", clients_ca.cert.to_str().unwrap(), "devices"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("UnknownIssuer"), "{err}");

    // OpenSSL's client on the wire port: hello, welcome.
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-connect",
            &addr,
        ])
        .args(["-CAfile", ca, "-cert", cli_leaf.cert.to_str().unwrap()])
        .args(["-key", cli_leaf.key.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is installed");
    let mut stdin = s_client.stdin.take().unwrap();
    stdin
        .write_all(b"{\"op\":\"hello\",\"id\":1,\"name\":\"openssl\"}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(s_client.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("no welcome over openssl")
        .unwrap()
        .unwrap();
    let welcome: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(welcome["op"], "welcome", "{line}");
    assert_eq!(welcome["name"], "openssl", "{line}");
    drop(stdin);
    let _ = s_client.kill().await;

    // curl over HTTPS: the API (which asks no client certificate) lists the
    // device, and a room command goes through the hub's automation, which
    // reaches its own TLS port without a client certificate.
    let (status, body) = curl(&["--cacert", ca, &format!("{api}api/devices")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("proj-tls"), "{body}");
    let (status, body) = curl(&[
        "--cacert",
        ca,
        "-X",
        "PATCH",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"power":"off"}"#,
        &format!("{api}api/rooms/TLS%20Room"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let outcome: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(outcome["status"], "all", "{body}");
    // Plain HTTP to the HTTPS port: a clear 400.
    let plain = api.replacen("https://", "http://", 1);
    let (status, body) = curl(&[&format!("{plain}api/devices")]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tls_required"), "{body}");
    let _ = hub.child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_client_library_says_why_a_tls_connection_fails() {
    let dir = temp_dir("tls-client");
    let ca = Ca::new(&dir, "main");
    let localhost_only = ca.leaf(&dir, "localhost", &["localhost"]);
    let hub = tls_hub(&localhost_only, None, |_| {}).await;
    let addr = hub.addr.to_string();

    // Plain text to the TLS port: the hub says so in plain text.
    let err = ClientBuilder::new(&addr)
        .no_reconnect()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("tls_required"), "{err}");

    // The address is an IP the certificate does not hold.
    let err = ClientBuilder::new(&addr)
        .tls(client_tls(&ca, None))
        .no_reconnect()
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");

    // With the name the certificate holds: connected, and a message larger
    // than a TLS record goes both ways intact.
    let tls = client_tls(&ca, None);
    let connect = || {
        ClientBuilder::new(&addr)
            .tls(tls.clone())
            .tls_server_name("localhost")
            .no_reconnect()
            .connect()
    };
    let a = connect().await.unwrap();
    let b = connect().await.unwrap();
    let mut sub = b.subscribe(["big/#"]).await.unwrap();
    let big = serde_json::json!({ "blob": "x".repeat(200_000) });
    a.publish_acked(
        "big/one",
        &patchbay_client::Body::json(&big).unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.json::<Value>().unwrap(), big);

    // TLS to a plain hub: said in words.
    let plain = patchbay_hub::server::start(HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..HubConfig::default()
    })
    .await
    .unwrap();
    let err = ClientBuilder::new(plain.addr.to_string())
        .tls(tls.clone())
        .tls_server_name("localhost")
        .no_reconnect()
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not answer in TLS"), "{err}");
    plain.stop().await;
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn idle_handshakes_make_room_for_new_clients_and_time_out() {
    let dir = temp_dir("tls-limits");
    let ca = Ca::new(&dir, "limits");
    let leaf = ca.leaf(&dir, "hub", &["localhost"]);
    let hub = tls_hub(&leaf, None, |c| c.max_unauthenticated = 2).await;
    let connect = || {
        ClientBuilder::new(hub.addr.to_string())
            .tls(client_tls(&ca, None))
            .tls_server_name("localhost")
            .no_reconnect()
            .connect()
    };
    // Silent sockets fill every handshake place; a real client still gets
    // in, and the oldest silent one is closed to make room.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(hub.addr).await.unwrap());
    }
    // Each has been taken in once a probe client has passed them.
    connect().await.unwrap();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(hub.addr).await.unwrap());
    }
    let client = connect()
        .await
        .expect("a client gets in past idle handshakes");
    let mut oldest = silent.remove(0);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, oldest.read(&mut buf))
        .await
        .expect("the oldest idle handshake was left open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    client.flush().await.unwrap();
    let dropped = hub
        .hub
        .metrics()
        .unauthenticated_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 1, "evictions are counted");
    hub.stop().await;

    // A handshake that does not finish in time is closed.
    let hub = tls_hub(&leaf, None, |c| {
        if let Some(t) = c.tls.as_mut() {
            t.handshake_timeout_ms = 300;
        }
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let n = tokio::time::timeout(WAIT, slow.read(&mut buf))
        .await
        .expect("a half handshake outlived the handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Plain text on the wire port: an `err tls_required` frame, then closed.
    let mut plain = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    plain
        .write_all(b"{\"op\":\"hello\",\"name\":\"plain\"}\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, plain.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    let frame: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(frame["code"], "tls_required", "{text}");
    let failures = hub
        .hub
        .metrics()
        .tls_handshake_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(failures >= 2, "{failures}");
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket client over TLS (no client certificate) that says `hello` with `token`.
async fn ws_hello(hub: &patchbay_hub::server::RunningHub, ca: &Ca, token: Option<&str>) -> Value {
    use futures_util::{SinkExt, StreamExt};
    let tcp = tokio::net::TcpStream::connect(hub.http_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(ca, None))
        .connect(rustls_name("localhost"), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/ws", hub.http_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let hello = match token {
        Some(t) => serde_json::json!({"op": "hello", "id": 1, "name": "ws", "token": t}),
        None => serde_json::json!({"op": "hello", "id": 1, "name": "ws"}),
    };
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        hello.to_string().into(),
    ))
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no answer over WebSocket")
            .expect("closed without an answer")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn rustls_name(name: &str) -> tokio_rustls::rustls::pki_types::ServerName<'static> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap()
}

#[tokio::test]
async fn with_a_client_ca_nobody_becomes_an_agent_over_websocket() {
    let dir = temp_dir("tls-ws");
    let ca = Ca::new(&dir, "ws");
    let leaf = ca.leaf(&dir, "hub", &["localhost"]);
    let clients = Ca::new(&dir, "ws-clients");
    // Without tokens, a WebSocket client is an operator, not an agent.
    let hub = tls_hub(&leaf, Some(&clients), |_| {}).await;
    let welcome = ws_hello(&hub, &ca, None).await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    assert_eq!(welcome["role"], "operator", "{welcome}");
    hub.stop().await;
    // With tokens, an agent token is refused over WebSocket; an operator's is not.
    let hub = tls_hub(&leaf, Some(&clients), |c| {
        c.tokens = vec![
            patchbay_hub::config::TokenConfig {
                name: None,
                token: "agent-secret-1".into(),
                role: patchbay_hub::config::Role::Agent,
                claims: vec!["dev/ws-1".into()],
                read: vec![],
                write: vec![],
                deny: vec![],
            },
            patchbay_hub::config::TokenConfig {
                name: None,
                token: "operator-secret-1".into(),
                role: patchbay_hub::config::Role::Operator,
                claims: vec![],
                read: vec![],
                write: vec![],
                deny: vec![],
            },
        ];
    })
    .await;
    let refused = ws_hello(&hub, &ca, Some("agent-secret-1")).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{refused}"
    );
    let welcome = ws_hello(&hub, &ca, Some("operator-secret-1")).await;
    assert_eq!(welcome["role"], "operator", "{welcome}");
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_renewed_certificate_takes_effect_at_reload_and_a_broken_one_is_refused() {
    let dir = temp_dir("tls-reload");
    let old_ca = Ca::new(&dir, "old");
    let new_ca = Ca::new(&dir, "new");
    let old = old_ca.leaf(&dir, "hub-old", &["localhost", "127.0.0.1"]);
    let new = new_ca.leaf(&dir, "hub-new", &["localhost", "127.0.0.1"]);
    let cert = dir.join("hub.pem");
    let key = dir.join("hub-key.pem");
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let config = temp_file(
        "tls-reload.toml",
        &format!(
            "[tls]\ncert = {cert:?}\nkey = {key:?}\n\n[[tokens]]\nname = \"admin\"\ntoken = \"admin-secret-1\"\nrole = \"admin\"\n"
        ),
    );
    let mut hub = hub_with_config(&config).await;
    let addr = hub.addr();
    let api = hub.next_line_last_word().await;
    let connect = |ca: &Ca| {
        ClientBuilder::new(&addr)
            .tls(client_tls(ca, None))
            .token("admin-secret-1")
            .no_reconnect()
            .connect()
    };
    let before = connect(&old_ca).await.unwrap();
    assert!(connect(&new_ca).await.is_err());
    let reload = |ca: &Ca| {
        let ca = ca.cert.to_str().unwrap().to_owned();
        let url = format!("{api}api/admin/reload");
        async move {
            curl(&[
                "--cacert",
                &ca,
                "-X",
                "POST",
                "-H",
                "authorization: Bearer admin-secret-1",
                &url,
            ])
            .await
        }
    };

    // The renewed certificate, put in place and reloaded.
    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    let (status, body) = reload(&old_ca).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tls\""), "the report names tls: {body}");
    connect(&new_ca).await.unwrap();
    let err = connect(&old_ca).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // Connections made before keep working.
    before.flush().await.unwrap();
    before
        .publish_acked(
            "test/still",
            &patchbay_client::Body::json(&1).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();

    // The expiry is a metric, for alerting before it comes.
    let (status, metrics) = curl(&[
        "--cacert",
        new_ca.cert.to_str().unwrap(),
        "-H",
        "authorization: Bearer admin-secret-1",
        &format!("{api}metrics"),
    ])
    .await;
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("patchbay_tls_certificate_not_after_seconds "),
        "{metrics}"
    );
    // An expired certificate is refused, and the running one stays.
    let expired = new_ca.leaf_valid(
        &dir,
        "hub-expired",
        &["localhost", "127.0.0.1"],
        Some(((2020, 1, 1), (2021, 1, 1))),
    );
    std::fs::copy(&expired.cert, &cert).unwrap();
    std::fs::copy(&expired.key, &key).unwrap();
    let (status, body) = reload(&new_ca).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("expired at 2021-01-01"), "{body}");
    connect(&new_ca).await.unwrap();

    // A broken file: the reload is refused with the file's name, and the
    // running certificate stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let (status, body) = reload(&new_ca).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("hub.pem"), "{body}");
    connect(&new_ca).await.unwrap();
    let _ = hub.child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_hub_with_a_missing_or_mismatched_key_does_not_start_and_names_the_file() {
    let dir = temp_dir("tls-start");
    let ca = Ca::new(&dir, "start");
    let a = ca.leaf(&dir, "a", &["localhost"]);
    let b = ca.leaf(&dir, "b", &["localhost"]);
    for (cert, key, expect) in [
        (
            a.cert.clone(),
            dir.join("missing-key.pem"),
            "missing-key.pem",
        ),
        (
            a.cert.clone(),
            b.key.clone(),
            "do not make a server identity",
        ),
        (a.key.clone(), a.key.clone(), "no `BEGIN CERTIFICATE`"),
    ] {
        let config = temp_file(
            "tls-start.toml",
            &format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n"),
        );
        let out = tokio::time::timeout(
            WAIT,
            Command::new(bin("patchbay-hub"))
                .args(["--config", config.to_str().unwrap(), "--memory-only"])
                .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the hub should refuse to start")
        .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "expected {expect:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTPS receiver written with Python's standard library (its own TLS,
/// OpenSSL): prints its port, then each POST body on a line.
const HTTPS_RECEIVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['content-length']))
        print(self.path, body.decode(), flush=True)
        self.send_response(200)
        self.send_header('content-length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(('127.0.0.1', 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

#[tokio::test]
async fn alert_webhooks_are_posted_over_https() {
    use patchbay_client::{Body, PublishOptions};

    let dir = temp_dir("tls-webhook");
    let ca = Ca::new(&dir, "receiver");
    let leaf = ca.leaf(&dir, "receiver", &["localhost"]);
    let mut receiver = Command::new("python3")
        .arg("-c")
        .arg(HTTPS_RECEIVER)
        .arg(&leaf.cert)
        .arg(&leaf.key)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is installed");
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the receiver printed no port")
        .unwrap()
        .unwrap();

    let config = HubConfig::from_toml(
        &format!(
            "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nwebhook_ca = {:?}\n\n\
             [alerts.lamp]\nfield = \"lamp_hours\"\nabove = 2000\nwebhook = \"https://localhost:{port}/hooks/av\"\n",
            ca.cert
        ),
        "test",
    )
    .unwrap();
    let hub = patchbay_hub::server::start(config).await.unwrap();
    let agent = ClientBuilder::new(hub.addr.to_string())
        .name("lamp-agent")
        .connect()
        .await
        .unwrap();
    agent.claim("dev/proj-w").await.unwrap();
    let retain = PublishOptions {
        retain: true,
        cid: None,
    };
    for (tag, body) in [
        (
            "dev/proj-w/meta",
            serde_json::json!({"id": "proj-w", "name": "Projector", "settings": []}),
        ),
        ("dev/proj-w/online", serde_json::json!({"online": true})),
        ("dev/proj-w/state", serde_json::json!({"lamp_hours": 2500})),
    ] {
        agent
            .publish_acked(tag, &Body::json(&body).unwrap(), retain.clone())
            .await
            .unwrap();
    }
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("no webhook arrived over HTTPS")
        .unwrap()
        .unwrap();
    let (path, body) = line.split_once(' ').unwrap();
    assert_eq!(path, "/hooks/av");
    let posted: Value = serde_json::from_str(body).unwrap();
    assert_eq!(posted["event"], "opened", "{posted}");
    assert_eq!(posted["alert"]["device"], "proj-w", "{posted}");
    hub.stop().await;

    // A webhook CA that cannot be read stops the configuration, naming it.
    let err = HubConfig::from_toml("webhook_ca = \"/nonexistent/hooks-ca.pem\"\n", "hub.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/hooks-ca.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
