//! Every profile in `profiles/` against byte transcripts taken from its
//! vendor's protocol document (`profiles/transcripts/`): a scripted peer
//! checks that the driver sends exactly the bytes the document shows and
//! answers with the document's replies; the state or error that results
//! is checked too. The transcripts are written from the documents, never
//! generated from the profiles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patchbay_drivers::line::template::{hex, parse_hex};
use patchbay_drivers::line::{LineDriver, LineProfile};
use patchbay_drivers::{State, Transport};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One transcript file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transcript {
    /// The profile it checks (in `profiles/`).
    profile: String,
    /// Where the bytes come from.
    source: String,
    /// The device's variables.
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(rename = "step")]
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// What the step shows.
    what: String,
    /// Poll every setting.
    #[serde(default)]
    poll: bool,
    /// Or set these.
    set: Option<State>,
    /// What goes over the wire, in order.
    exchange: Vec<Exchange>,
    /// Settings the resulting state must hold.
    state: Option<State>,
    /// Or: text the error must contain.
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Exchange {
    /// Bytes the driver must send (hex).
    send: Option<String>,
    /// Or as text.
    send_text: Option<String>,
    /// Bytes the device answers (hex).
    reply: Option<String>,
    /// Or as text.
    reply_text: Option<String>,
}

impl Exchange {
    fn bytes(hex_form: &Option<String>, text: &Option<String>) -> Vec<u8> {
        match (hex_form, text) {
            (Some(h), None) => parse_hex(h).unwrap(),
            (None, Some(t)) => t.as_bytes().to_vec(),
            (None, None) => Vec::new(),
            _ => panic!("give the hex or the text form, not both"),
        }
    }
}

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

/// Plays the device's side: for each exchange, reads what the driver must
/// send and answers. Returns the first difference, if any.
async fn device(listener: TcpListener, script: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
    let (mut s, _) = listener.accept().await.map_err(|e| e.to_string())?;
    for (i, (send, reply)) in script.into_iter().enumerate() {
        if !send.is_empty() {
            let mut got = vec![0u8; send.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
                .await
                .map_err(|_| {
                    format!(
                        "exchange {i}: the driver sent nothing; expected {}",
                        hex(&send)
                    )
                })?
                .map_err(|e| format!("exchange {i}: {e}"))?;
            if got != send {
                return Err(format!(
                    "exchange {i}: the driver sent {} ({:?}); the document says {} ({:?})",
                    hex(&got),
                    String::from_utf8_lossy(&got),
                    hex(&send),
                    String::from_utf8_lossy(&send)
                ));
            }
        }
        s.write_all(&reply).await.map_err(|e| e.to_string())?;
    }
    // Anything more the driver sends is not in the document.
    let mut extra = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut extra)).await {
        Ok(Ok(n)) if n > 0 => Err(format!(
            "after the transcript the driver also sent {}",
            hex(&extra[..n])
        )),
        _ => Ok(()),
    }
}

async fn run(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let t: Transcript = toml::from_str(&text).map_err(|e| e.to_string())?;
    assert!(!t.source.trim().is_empty());
    let profile = LineProfile::load(&profiles_dir().join(&t.profile)).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let script = t
        .steps
        .iter()
        .flat_map(|s| &s.exchange)
        .map(|x| {
            (
                Exchange::bytes(&x.send, &x.send_text),
                Exchange::bytes(&x.reply, &x.reply_text),
            )
        })
        .collect();
    let peer = tokio::spawn(device(listener, script));
    let mut d = LineDriver::new(Transport::tcp(&addr), profile)
        .map_err(|e| e.to_string())?
        .with_vars(&t.vars);
    for step in &t.steps {
        let result = match (&step.set, step.poll) {
            (Some(set), false) => d.apply(set).await,
            (None, true) => d.poll().await,
            _ => return Err(format!("step `{}`: give `poll = true` or `set`", step.what)),
        };
        match (result, &step.state, &step.error) {
            (Ok(state), Some(want), None) => {
                for (k, v) in want {
                    if state.get(k) != Some(v) {
                        return Err(format!(
                            "step `{}`: {k} is {:?}, the document says {v}",
                            step.what,
                            state.get(k)
                        ));
                    }
                }
            }
            (Err(e), None, Some(want)) => {
                if !e.to_string().contains(want.as_str()) {
                    return Err(format!(
                        "step `{}`: error `{e}` does not say `{want}`",
                        step.what
                    ));
                }
            }
            (Ok(state), _, Some(want)) => {
                return Err(format!(
                    "step `{}`: expected an error saying `{want}`, got {}",
                    step.what,
                    Value::Object(state)
                ))
            }
            (Err(e), _, _) => return Err(format!("step `{}`: {e}", step.what)),
            (Ok(_), None, None) => {}
        }
    }
    d.disconnect();
    peer.await.map_err(|e| e.to_string())?
}

#[tokio::test]
async fn every_profile_matches_its_vendor_transcripts() {
    let dir = profiles_dir().join("transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for f in &files {
        if let Err(e) = run(f).await {
            failures.push(format!("{}: {e}", f.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_profile_cites_its_source_and_has_transcripts() {
    let dir = profiles_dir();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let profile = LineProfile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if profile
            .source
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
        {
            missing.push(format!("{name}: no `source`"));
        }
        if !dir.join("transcripts").join(&name).exists() {
            missing.push(format!("{name}: no transcripts/{name}"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn the_built_in_library_holds_every_profile() {
    let mut files: Vec<String> = std::fs::read_dir(profiles_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let built_in: Vec<String> = patchbay_drivers::library::PROFILES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        built_in, files,
        "add new profiles to drivers/src/library.rs"
    );
    for (name, p) in patchbay_drivers::library::all() {
        p.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
