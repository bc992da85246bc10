//! Panasonic projector control over the network (NTCONTROL, TCP 1024):
//! greetings, the MD5 digest, command lines and replies. Pure functions, so
//! the byte format is tested without a projector.
//!
//! A connection carries one command: the projector greets with
//! `NTCONTROL 0` (no protection) or `NTCONTROL 1 <random>` (protect mode),
//! the controller sends `<digest>00<command>[:<param>]\r` (no digest without
//! protection), the projector answers `00<data>\r` or an error, and the
//! connection is closed.

use md5::{Digest, Md5};

use crate::DriverError;

/// The projector's network control port.
pub const PORT: u16 = 1024;

/// The user name Panasonic projectors ship with.
pub const DEFAULT_USER: &str = "admin1";

/// What the greeting asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// `NTCONTROL 0`: no protection.
    Open,
    /// `NTCONTROL 1 <random>`: prefix each command with the digest of this random value.
    Protected(String),
}

/// Parses the greeting line (without its CR).
pub fn parse_greeting(line: &str) -> Result<Greeting, DriverError> {
    match line.trim().split(' ').collect::<Vec<_>>().as_slice() {
        ["NTCONTROL", "0"] => Ok(Greeting::Open),
        ["NTCONTROL", "1", random] if !random.is_empty() && random.len() <= 64 => {
            Ok(Greeting::Protected((*random).to_owned()))
        }
        _ => Err(DriverError::Protocol(format!(
            "not an NTCONTROL greeting: {line:?}"
        ))),
    }
}

/// The digest for protect mode: lower-case hex MD5 of `user:password:random`.
pub fn digest(user: &str, password: &str, random: &str) -> String {
    Md5::digest(format!("{user}:{password}:{random}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A command line: the digest (in protect mode), `00`, the command, CR.
pub fn command(digest: Option<&str>, cmd: &str) -> String {
    format!("{}00{cmd}\r", digest.unwrap_or(""))
}

/// Parses a reply line (without its CR) to `cmd`; returns its data.
pub fn parse_reply(line: &str, cmd: &str) -> Result<String, DriverError> {
    let line = line.trim_start_matches(['\n', '\r']);
    let data = line.strip_prefix("00");
    let code = data.unwrap_or(line);
    let busy = |why: &str| DriverError::busy(why, Some(format!("{cmd} answered {code}")));
    match code {
        "ERRA" => Err(DriverError::WrongPassword),
        "ERR1" => Err(DriverError::Unsupported(cmd.to_owned())),
        "ERR2" | "ER402" => Err(DriverError::OutOfRange(cmd.to_owned())),
        "ERR3" => Err(busy(
            "the projector cannot do this now: it is busy or changing power state",
        )),
        "ERR4" => Err(busy("the projector cannot accept this now (it timed out)")),
        "ER401" => Err(busy("the projector cannot execute this now")),
        "ERR5" => Err(DriverError::Protocol(format!(
            "the projector says `{cmd}` has the wrong data length (ERR5)"
        ))),
        _ => match data {
            Some(d) => Ok(d.to_owned()),
            None => Err(DriverError::Protocol(format!(
                "expected `00...` in reply to `{cmd}`, got {line:?}"
            ))),
        },
    }
}

/// Power from `QPW` (`000` standby, `001` on).
pub fn parse_qpw(data: &str) -> Option<&'static str> {
    match data {
        "000" | "0" => Some("off"),
        "001" | "1" => Some("on"),
        _ => None,
    }
}

/// Power from the lamp status `Q$S` (`0` standby, `1` lamp lighting,
/// `2` on, `3` lamp going out).
pub fn parse_lamp_status(data: &str) -> Option<&'static str> {
    match data {
        "0" => Some("off"),
        "1" => Some("warming"),
        "2" => Some("on"),
        "3" => Some("cooling"),
        _ => None,
    }
}

/// Input ids and their codes (`IIS:<code>`, `QIN`), in menu order.
pub const INPUTS: &[(&str, &str)] = &[
    ("hdmi1", "HD1"),
    ("hdmi2", "HD2"),
    ("rgb1", "RG1"),
    ("rgb2", "RG2"),
    ("dvi", "DVI"),
    ("video", "VID"),
    ("digital-link", "DL1"),
    ("sdi", "SD1"),
    ("displayport", "DP1"),
];

/// The input id for a `QIN` code (an unknown code shown in lower case).
pub fn input_id(code: &str) -> String {
    INPUTS
        .iter()
        .find(|(_, c)| c.eq_ignore_ascii_case(code))
        .map(|(id, _)| (*id).to_owned())
        .unwrap_or_else(|| code.to_ascii_lowercase())
}

/// An on/off value (`QSH`, `QFZ`): `0` or `1`.
pub fn parse_flag(data: &str) -> Option<bool> {
    match data {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings() {
        assert_eq!(parse_greeting("NTCONTROL 0").unwrap(), Greeting::Open);
        assert_eq!(
            parse_greeting("NTCONTROL 1 09b075be").unwrap(),
            Greeting::Protected("09b075be".into())
        );
        assert!(parse_greeting("PJLINK 0").is_err());
        assert!(parse_greeting("NTCONTROL 1").is_err());
    }

    #[test]
    fn replies_and_errors() {
        assert_eq!(parse_reply("00001", "QPW").unwrap(), "001");
        assert_eq!(parse_reply("00HD1", "QIN").unwrap(), "HD1");
        assert!(matches!(
            parse_reply("ERRA", "QPW"),
            Err(DriverError::WrongPassword)
        ));
        assert!(matches!(
            parse_reply("ERR1", "QXX"),
            Err(DriverError::Unsupported(_))
        ));
        assert!(matches!(
            parse_reply("00ER402", "IIS:ZZZ"),
            Err(DriverError::OutOfRange(_))
        ));
        let e = parse_reply("ERR3", "IIS:HD1").unwrap_err();
        assert_eq!(e.code().as_str(), "busy");
        assert!(e.to_string().contains("IIS:HD1 answered ERR3"), "{e}");
        assert!(parse_reply("what", "QPW").is_err());
    }
}
