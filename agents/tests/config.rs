//! Invalid configuration files: the agent names the file, the device and the
//! field, and does not start.

use std::process::Command;

fn check(name: &str, text: &str) -> (bool, String) {
    let dir =
        std::env::temp_dir().join(format!("patchbay-agent-cfg-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay-agent"))
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace(&path.display().to_string(), "agent.toml");
    (out.status.success(), err)
}

const PROJ: &str = "[[device]]\nid = \"proj-1\"\ndriver = \"pjlink\"\ntcp = \"127.0.0.1:4352\"\n";

#[test]
fn a_valid_file_passes() {
    let (ok, err) = check("valid", PROJ);
    assert!(ok, "{err}");
    let epson = "[[device]]\nid = \"e\"\ndriver = \"escvp21\"\ntcp = \"h:3629\"\npassword = \"x\"\n[device.sources]\nhdmi1 = \"30\"\ndvi = \"a0\"\n";
    let (ok, err) = check("valid-epson", epson);
    assert!(ok, "{err}");
}

#[test]
fn exact_error_messages() {
    let cases: &[(&str, String, &str)] = &[
        (
            "typo",
            format!("{PROJ}pasword = \"x\"\n"),
            "patchbay-agent: agent.toml: device `proj-1`: unknown field `pasword`, expected one of `id`, `name`, `location`, `driver`, `tcp`, `serial`, `visca_ip`, `serial_settings`, `poll_ms`, `password`, `user`, `profile`, `connect_timeout_ms`, `sources`, `vars`",
        ),
        (
            "both",
            format!("{PROJ}serial = \"/dev/ttyUSB0\"\n"),
            "patchbay-agent: agent.toml: device `proj-1`: give either `tcp` or `serial`, not both",
        ),
        (
            "neither",
            "[[device]]\nid = \"p\"\ndriver = \"escvp21\"\n".into(),
            "patchbay-agent: agent.toml: device `p`: missing `tcp = \"host:port\"` or `serial = \"/dev/...\"`",
        ),
        (
            "dup",
            format!("{PROJ}{PROJ}"),
            "patchbay-agent: agent.toml: device `proj-1`: `id` is used by another device",
        ),
        (
            "poll",
            format!("{PROJ}poll_ms = 5\n"),
            "patchbay-agent: agent.toml: device `proj-1`: `poll_ms` must be at least 100, not 5",
        ),
        (
            "noid",
            format!("{PROJ}[[device]]\ndriver = \"pjlink\"\ntcp = \"h:1\"\n"),
            "patchbay-agent: agent.toml: device #2: missing field `id`",
        ),
        (
            "driver",
            "[[device]]\nid = \"x\"\ndriver = \"visca\"\ntcp = \"h:1\"\n".into(),
            "patchbay-agent: agent.toml: device `x`: unknown variant `visca`, expected one of `pjlink`, `escvp21`, `line`, `panasonic`",
        ),
        (
            "parity",
            "[[device]]\nid = \"e\"\ndriver = \"escvp21\"\nserial = \"/dev/ttyS0\"\n[device.serial_settings]\nparity = \"mark\"\n"
                .into(),
            "patchbay-agent: agent.toml: device `e`: serial_settings: `parity` must be none, odd or even, not \"mark\"",
        ),
        (
            "pjlink-serial",
            "[[device]]\nid = \"p\"\ndriver = \"pjlink\"\nserial = \"/dev/ttyS0\"\n".into(),
            "patchbay-agent: agent.toml: device `p`: the pjlink driver needs `tcp`; PJLink has no serial transport",
        ),
        (
            "line-profile",
            "[[device]]\nid = \"sw\"\ndriver = \"line\"\ntcp = \"h:23\"\n".into(),
            "patchbay-agent: agent.toml: device `sw`: the line driver needs `profile = \"path/to/profile.toml\"`",
        ),
        (
            "hub",
            format!("hub = \"localhost\"\n{PROJ}"),
            "patchbay-agent: agent.toml: `hub` must be host:port, several of them (\"a:7400,b:7400\", hubs of one cluster), or \"auto\" (found on the LAN), not \"localhost\"",
        ),
        (
            "sources-code",
            "[[device]]\nid = \"e\"\ndriver = \"escvp21\"\ntcp = \"h:3629\"\n[device.sources]\nhdmi1 = \"3\"\n".into(),
            "patchbay-agent: agent.toml: device `e`: sources: `hdmi1` must be a two-digit hex source code such as \"30\", not \"3\"",
        ),
        (
            "sources-twice",
            "[[device]]\nid = \"e\"\ndriver = \"escvp21\"\ntcp = \"h:3629\"\n[device.sources]\nhdmi = \"30\"\nhdmi1 = \"30\"\n".into(),
            "patchbay-agent: agent.toml: device `e`: sources: `hdmi1` and `hdmi` both use code 30",
        ),
        (
            "sources-id",
            "[[device]]\nid = \"e\"\ndriver = \"escvp21\"\ntcp = \"h:3629\"\n[device.sources]\n\"HDMI 1\" = \"30\"\n".into(),
            "patchbay-agent: agent.toml: device `e`: sources: \"HDMI 1\" must be 1-32 lowercase letters, digits, `-` or `_`",
        ),
        (
            "user-pjlink",
            format!("{PROJ}user = \"admin1\"\n"),
            "patchbay-agent: agent.toml: device `proj-1`: `user` applies to the panasonic driver only",
        ),
        (
            "panasonic-serial",
            "[[device]]\nid = \"p\"\ndriver = \"panasonic\"\nserial = \"/dev/ttyUSB0\"\n".into(),
            "patchbay-agent: agent.toml: device `p`: the panasonic driver needs `tcp` (NTCONTROL, port 1024); for RS-232 write a profile",
        ),
        (
            "sources-pjlink",
            format!("{PROJ}[device.sources]\nhdmi1 = \"30\"\n"),
            "patchbay-agent: agent.toml: device `proj-1`: `sources` applies to the escvp21 driver only",
        ),
        (
            "password-serial",
            "[[device]]\nid = \"e\"\ndriver = \"escvp21\"\nserial = \"/dev/ttyS0\"\npassword = \"x\"\n".into(),
            "patchbay-agent: agent.toml: device `e`: `password` applies to ESC/VP.net over `tcp`; the serial port has none",
        ),
        ("empty", String::new(), "patchbay-agent: agent.toml: no devices: add at least one [[device]]"),
    ];
    for (name, text, want) in cases {
        let (ok, err) = check(name, text);
        assert!(!ok, "{name}: should be refused");
        assert_eq!(&err, want, "{name}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay-agent"))
        .args(["--config", "/nonexistent/agent.toml", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "patchbay-agent: /nonexistent/agent.toml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn a_bad_line_profile_is_named() {
    let dir =
        std::env::temp_dir().join(format!("patchbay-agent-cfg-{}-profile", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "manufacturer = \"x\"\nmodel = \"y\"\n[[setting]]\nname = \"power\"\ntype = \"bool\"\nquery = \"p\"\nreply = \"ok\"\n",
    )
    .unwrap();
    let (ok, err) = check("profile", "[[device]]\nid = \"sw\"\ndriver = \"line\"\ntcp = \"h:23\"\nprofile = \"../patchbay-agent-cfg-PID-profile/bad.toml\"\n".replace("PID", &std::process::id().to_string()).as_str());
    assert!(!ok);
    assert!(
        err.ends_with("bad.toml:7: setting `power`: `reply` needs a capture group for the value"),
        "{err}"
    );
    assert!(
        err.starts_with("patchbay-agent: agent.toml: device `sw`: profile "),
        "{err}"
    );
}

#[test]
fn library_profiles_are_listed_and_named_by_devices() {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay-agent"))
        .args(["profiles", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert!(list.len() >= 10, "{list:?}");
    let samsung = list.iter().find(|p| p["name"] == "samsung-mdc").unwrap();
    assert_eq!(samsung["manufacturer"], "Samsung");
    assert_eq!(samsung["category"], "display");
    assert!(samsung["source"]
        .as_str()
        .unwrap()
        .contains("Multiple Display Control"));
    let table = Command::new(env!("CARGO_BIN_EXE_patchbay-agent"))
        .arg("profiles")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("kramer-p3000") && l.contains("Protocol 3000")),
        "{table}"
    );

    // A device names a library profile, with its variables.
    let (ok, err) = check(
        "library",
        "[[device]]\nid = \"wall\"\ndriver = \"line\"\ntcp = \"10.0.0.5:1515\"\nprofile = \"samsung-mdc\"\nvars = { id = \"02\" }\n",
    );
    assert!(ok, "{err}");
    let (ok, err) = check(
        "library-unknown",
        "[[device]]\nid = \"wall\"\ndriver = \"line\"\ntcp = \"10.0.0.5:1515\"\nprofile = \"samsung-mcd\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("`profile = \"samsung-mcd\"`: no such profile in the library"),
        "{err}"
    );
    let (ok, err) = check(
        "library-var",
        "[[device]]\nid = \"wall\"\ndriver = \"line\"\ntcp = \"10.0.0.5:1515\"\nprofile = \"samsung-mdc\"\nvars = { display = \"02\" }\n",
    );
    assert!(!ok);
    assert!(
        err.contains("`vars.display`: the profile has no such variable (it has: id)"),
        "{err}"
    );
}

#[test]
fn a_line_device_password_goes_to_a_profile_that_sends_it() {
    let dir = std::env::temp_dir().join(format!("patchbay-agent-cfg-{}-pw", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("login.toml"),
        "manufacturer = \"x\"\nmodel = \"y\"\n[[login]]\nexpect = 'Password:'\nsend = \"{password}\"\n[[setting]]\nname = \"input\"\ntype = \"text\"\nquery = \"I?\"\nreply = '^I(.*)$'\n",
    )
    .unwrap();
    let pid = std::process::id().to_string();
    let (ok, err) = check(
        "pw-ok",
        &"[[device]]\nid = \"sw\"\ndriver = \"line\"\ntcp = \"h:23\"\npassword = \"secret\"\nprofile = \"../patchbay-agent-cfg-PID-pw/login.toml\"\n".replace("PID", &pid),
    );
    assert!(ok, "{err}");
    // A library profile that sends no password: the password is a mistake.
    let (ok, err) = check(
        "pw-unused",
        "[[device]]\nid = \"sw\"\ndriver = \"line\"\ntcp = \"h:23\"\npassword = \"secret\"\nprofile = \"kramer-p3000\"\n",
    );
    assert!(!ok);
    assert!(err.contains("the profile sends no `{password}`"), "{err}");
}
