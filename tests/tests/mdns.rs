//! Finding a hub on the LAN over mDNS/DNS-SD: the hub advertises
//! `_patchbay._tcp` and `_http._tcp` on loopback here; the crate's own
//! browser, the CLI's `--hub auto` and an agent's `hub = "auto"` find it.

use std::time::Duration;

use patchbay_tests::{cli, hub_with_config, temp_file, Watcher};

/// Whether multicast works on loopback here (some sandboxes have no
/// multicast route): a datagram sent to a group comes back.
fn multicast_works() -> Result<(), String> {
    use std::net::{Ipv4Addr, UdpSocket};
    let group = Ipv4Addr::new(239, 255, 74, 1);
    let rx = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    rx.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .map_err(|e| format!("cannot join a multicast group on loopback: {e}"))?;
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let port = rx.local_addr().unwrap().port();
    let tx = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    tx.set_multicast_loop_v4(true).map_err(|e| e.to_string())?;
    tx.send_to(b"probe", (group, port))
        .map_err(|e| format!("cannot send to a multicast group from loopback: {e}"))?;
    let mut buf = [0u8; 8];
    rx.recv(&mut buf)
        .map(drop)
        .map_err(|e| format!("a multicast datagram on loopback never came back: {e}"))
}

#[tokio::test]
async fn a_hub_is_found_on_the_lan_by_the_cli_and_an_agent() {
    if let Err(why) = multicast_works() {
        eprintln!("skipped: {why}; the record contents are covered by the hub's unit test");
        return;
    }
    let config = temp_file("mdns-hub.toml", "mdns = true\n");
    let mut hub = hub_with_config(&config).await;
    let wire = hub.addr();
    let http = hub.next_line_last_word().await;

    // The crate's own browser sees the records.
    let found =
        tokio::task::spawn_blocking(|| patchbay_hub::mdns::find(Duration::from_secs(10), true))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(found.wire.to_string(), wire);
    assert_eq!(found.api.as_deref(), Some(format!("{}api", http).as_str()));
    assert_eq!(found.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));

    // The CLI finds it with --hub auto.
    let (ok, out, err) = cli("auto", &["devices"]).await;
    assert!(ok, "{out}{err}");
    assert!(err.contains(&format!("found a hub at {wire}")), "{err}");

    // And so does an agent with hub = "auto": its device appears.
    let sim = patchbay_tests::pjlink_sim("127.0.0.1:0", &[]).await;
    let agent_config = temp_file(
        "mdns-agent.toml",
        &format!(
            "hub = \"auto\"\n[[device]]\nid = \"found-1\"\ndriver = \"pjlink\"\ntcp = \"{}\"\n",
            sim.addr()
        ),
    );
    let mut watcher = Watcher::new(&wire).await;
    let _agent = patchbay_tests::agent(&agent_config);
    watcher
        .until("the agent's device online", |d| {
            patchbay_tests::online(d, "found-1")
        })
        .await;
}
