//! The line-protocol driver with both shipped profiles, against scripted peers.

use std::path::Path;
use std::time::Duration;

use patchbay_drivers::line::LineDriver;
use patchbay_drivers::{DriverError, State, Transport};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn profile(name: &str) -> patchbay_drivers::line::LineProfile {
    LineDriver::load_profile(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../profiles")
            .join(name),
    )
    .unwrap()
}

fn desired(v: serde_json::Value) -> State {
    v.as_object().unwrap().clone()
}

/// Serves one connection: `split` finds the end of a command in the buffer,
/// `answer` maps a command to a reply.
async fn peer(
    split: fn(&[u8]) -> Option<usize>,
    mut answer: impl FnMut(&str) -> String + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = split(&buf) {
                let cmd: Vec<u8> = buf.drain(..end).collect();
                let reply = answer(String::from_utf8_lossy(&cmd).trim());
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        }
    });
    addr
}

#[tokio::test]
async fn extron_sis_switcher() {
    // SIS: commands end with their letter or `!`, no terminator.
    let split = |b: &[u8]| {
        b.iter()
            .position(|c| matches!(c, b'!' | b'B' | b'V'))
            .map(|i| i + 1)
    };
    let (mut input, mut mute, mut volume) = (1u32, 0u32, 50u32);
    let addr = peer(split, move |cmd| match cmd {
        "!" => format!("{input}\r\n"),
        "B" => format!("{mute}\r\n"),
        "V" => format!("{volume}\r\n"),
        c if c.ends_with('!') => {
            input = c[..c.len() - 1].parse().unwrap();
            if input > 4 {
                return "E01\r\n".into();
            }
            // Switchers also print unsolicited lines; the driver must skip them.
            format!("Reconfig\r\nIn{input} All\r\n")
        }
        c if c.ends_with('B') => {
            mute = c[..c.len() - 1].parse().unwrap();
            format!("Vmt{mute}\r\n")
        }
        c if c.ends_with('V') => {
            volume = c[..c.len() - 1].parse().unwrap();
            format!("Vol{volume}\r\n")
        }
        _ => "E10\r\n".into(),
    })
    .await;
    let mut d = LineDriver::new(Transport::tcp(&addr), profile("extron-sw-sis.toml")).unwrap();
    let desc = d.describe().await.unwrap();
    assert_eq!(desc.model, "SW4 HD 4K (SIS)");
    assert!(desc.validate(&json!({"volume": 101})).is_err());
    let s = d.poll().await.unwrap();
    assert_eq!(s, desired(json!({"input":"1","mute":false,"volume":50})));
    let s = d
        .apply(&desired(json!({"input":"3","mute":true,"volume":70})))
        .await
        .unwrap();
    assert_eq!(s, desired(json!({"input":"3","mute":true,"volume":70})));
}

#[tokio::test]
async fn lg_display() {
    let split = |b: &[u8]| b.iter().position(|c| *c == b'\r').map(|i| i + 1);
    let (mut power, mut input, mut mute) = ("00".to_string(), "90".to_string(), "01".to_string());
    let addr = peer(split, move |cmd| {
        let parts: Vec<&str> = cmd.split(' ').collect();
        let (c, data) = (parts[0], parts[2]);
        // The display refuses input changes in standby.
        if data != "ff" && c == "xb" && power == "00" {
            return "b 01 NG01x".into();
        }
        let slot = match c {
            "ka" => &mut power,
            "xb" => &mut input,
            "ke" => &mut mute,
            _ => return format!("{} 01 NG00x", &c[1..]),
        };
        if data != "ff" {
            *slot = data.to_owned();
        }
        format!("{} 01 OK{}x", &c[1..], slot)
    })
    .await;
    let mut d = LineDriver::new(Transport::tcp(&addr), profile("lg-display.toml")).unwrap();
    let s = d.poll().await.unwrap();
    assert_eq!(
        s,
        desired(json!({"power":"off","input":"hdmi1","mute":false}))
    );
    // The display refuses an input change in standby: a clear error, not a wrong state.
    let e = d
        .apply(&desired(json!({"input":"hdmi2"})))
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::Busy { .. }), "{e:?}");
    assert_eq!(e.summary(), "the device refused the command");
    assert_eq!(
        e.to_string(),
        "the device refused the command (`xb 01 91 answered b 01 NG01`)"
    );
    let s = d.apply(&desired(json!({"power":"on"}))).await.unwrap();
    assert_eq!(s["power"], "on");
    let s = d
        .apply(&desired(json!({"input":"displayport","mute":true})))
        .await
        .unwrap();
    assert_eq!(
        s,
        desired(json!({"power":"on","input":"displayport","mute":true}))
    );
}

#[tokio::test]
async fn bad_profiles_name_the_problem() {
    let bad = |text: &str| {
        let p: patchbay_drivers::line::LineProfile = toml::from_str(text).unwrap();
        LineDriver::new(Transport::tcp("127.0.0.1:1"), p)
            .err()
            .unwrap()
            .to_string()
    };
    let head = "manufacturer = \"x\"\nmodel = \"y\"\n[[setting]]\nname = \"power\"\n";
    assert_eq!(
        bad(&format!("{head}type = \"enum\"\nvalues = [\"on\"]\nquery = \"p?\"\nreply = \"(\"\n")),
        "configuration: setting `power`: `reply` is not a valid regex: regex parse error:     (     ^ error: unclosed group"
    );
    assert_eq!(
        bad(&format!(
            "{head}type = \"enum\"\nvalues = [\"on\"]\nquery = \"p?\"\nreply = \"on\"\n"
        )),
        "configuration: setting `power`: `reply` needs a capture group for the value"
    );
    assert_eq!(
        bad(&format!(
            "{head}type = \"float\"\nquery = \"p?\"\nreply = \"(.*)\"\n"
        )),
        "configuration: setting `power`: `type` must be enum, bool, int or text, not \"float\""
    );
    let e = d_timeout().await;
    assert_eq!(e.code().as_str(), "device_timeout");
}

async fn d_timeout() -> DriverError {
    // A peer that never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (_s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut d = LineDriver::new(Transport::tcp(&addr), profile("lg-display.toml")).unwrap();
    d.poll().await.unwrap_err()
}

#[test]
fn profile_mistakes_are_named_with_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("patchbay-profile-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        patchbay_drivers::line::LineProfile::load(&path)
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"))
            .to_string()
    };
    let head = "manufacturer = \"x\"\nmodel = \"y\"\n";
    // An unknown key, on line 5.
    let e = check(
        "unknown.toml",
        &format!("{head}[[setting]]\nname = \"power\"\nreplyy = \"(.*)\"\n"),
    );
    assert!(
        e.contains("unknown.toml:5:") && e.contains("unknown field `replyy`"),
        "{e}"
    );
    // A bad hex template in a binary profile, on line 10.
    let e = check(
        "hex.toml",
        &format!("{head}binary = true\nframe_end = \"0D\"\n[[setting]]\nname = \"power\"\ntype = \"enum\"\nmap = {{ on = \"01\" }}\nquery = \"AA GG {{sum}}\"\nreply = \"AA {{value}} 0D\"\n"),
    );
    assert!(
        e.contains("hex.toml:9:") && e.contains("setting `power`: `query`") && e.contains("`GG`"),
        "{e}"
    );
    // A regex that does not compile.
    let e = check(
        "regex.toml",
        &format!("{head}[[setting]]\nname = \"input\"\ntype = \"text\"\nquery = \"I?\"\nreply = \"(unclosed\"\n"),
    );
    assert!(
        e.contains("regex.toml:7:") && e.contains("`reply` is not a valid regex"),
        "{e}"
    );
    // A checksum placeholder without a checksum.
    let e = check(
        "sum.toml",
        &format!("{head}binary = true\nframe_end = \"0D\"\n[[setting]]\nname = \"power\"\ntype = \"enum\"\nmap = {{ on = \"01\" }}\nquery = \"AA {{sum}}\"\nreply = \"AA {{value}} 0D\"\n"),
    );
    assert!(e.contains("names no `checksum`"), "{e}");
    // A variable the profile does not declare, in a text command.
    let e = check(
        "var.toml",
        &format!("{head}[[setting]]\nname = \"power\"\ntype = \"text\"\nquery = \"ka {{idd}} ff\"\nreply = '^a (.*)$'\n"),
    );
    assert!(
        e.contains("var.toml:6:") && e.contains("`idd` is not in `[vars]`"),
        "{e}"
    );
    // A query that would need the value it asks for.
    let e = check(
        "query.toml",
        &format!("{head}[[setting]]\nname = \"power\"\ntype = \"text\"\nquery = \"P {{value}}\"\nreply = '^P (.*)$'\n"),
    );
    assert!(e.contains("`query` cannot send `{value}`"), "{e}");
    // A length without a fixed width.
    let e = check(
        "len.toml",
        &format!("{head}binary = true\nframe_end = \"0D\"\n[[setting]]\nname = \"power\"\ntype = \"enum\"\nmap = {{ on = \"01\" }}\nquery = \"AA {{len:ascii}} 0D\"\nreply = \"AA {{value}} 0D\"\n"),
    );
    assert!(e.contains("needs a fixed width"), "{e}");
    // Mistakes found after parsing name the line of the key they are about.
    let e = check(
        "format.toml",
        &format!("{head}binary = true\nframe_length_at = 1\nframe_length_format = \"u16\"\n[[setting]]\nname = \"power\"\ntype = \"enum\"\nmap = {{ on = \"01\" }}\nquery = \"AA 0D\"\nreply = \"AA {{value}} 0D\"\n"),
    );
    assert!(
        e.contains("format.toml:5:") && e.contains("`frame_length_format` is u8 or hex2"),
        "{e}"
    );
    let e = check(
        "text-frame.toml",
        &format!("{head}frame_end = \"0D\"\n[[setting]]\nname = \"power\"\ntype = \"text\"\nquery = \"P?\"\nreply = '^P (.*)$'\n"),
    );
    assert!(
        e.contains("text-frame.toml:3:") && e.contains("add `binary = true`"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A one-setting text profile: `P?` answered `P=<value>`.
fn tiny_profile() -> patchbay_drivers::line::LineProfile {
    toml::from_str(
        "manufacturer = \"x\"\nmodel = \"y\"\ntimeout_ms = 500\n[[notify]]\nreply = '^N=(\\d)$'\nsetting = \"power\"\n[[setting]]\nname = \"power\"\ntype = \"enum\"\nvalues = [\"0\", \"1\"]\nquery = \"P?\"\nset = \"P={value}\"\nreply = '^P=(\\d)$'\n",
    )
    .unwrap()
}

#[tokio::test]
async fn a_device_that_closes_after_every_reply_is_reconnected_each_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf).await {
                if n > 0 {
                    let _ = s.write_all(b"P=1\r\n").await;
                }
            }
            // Closes after one reply, as some projectors do.
        }
    });
    let mut d = LineDriver::new(Transport::tcp(&addr), tiny_profile()).unwrap();
    for _ in 0..3 {
        assert_eq!(d.poll().await.unwrap(), desired(json!({"power": "1"})));
    }
}

#[tokio::test]
async fn a_flood_of_notifications_cannot_hold_a_command_past_its_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
        // Never the answer: only notifications, every 20 ms.
        loop {
            if s.write_all(b"N=1\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut d = LineDriver::new(Transport::tcp(&addr), tiny_profile()).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), d.poll())
        .await
        .expect("the command outlived its timeout many times over")
        .unwrap_err();
    // The profile's timeout ends it, however much the device says meanwhile.
    assert!(matches!(e, DriverError::Timeout { .. }), "{e:?}");
}
