//! PJLink framing: commands, replies, greetings and the MD5 digest.
//! Pure functions, so the byte format is tested without a device.

use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

use crate::DriverError;

/// PJLink's TCP port.
pub const PORT: u16 = 4352;

/// The authentication digest: lower-case hex MD5 of the greeting's random
/// string followed by the password.
pub fn digest(random: &str, password: &str) -> String {
    let hash = Md5::digest(format!("{random}{password}").as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A command line: `%` class, 4-letter command, space, parameter, CR.
pub fn command(class: u8, cmd: &str, param: &str) -> String {
    format!("%{class}{cmd} {param}\r")
}

/// What the greeting asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// `PJLINK 0`: no authentication.
    Open,
    /// `PJLINK 1 <random>`: authenticate with the digest of this random string.
    Auth(String),
}

/// Parses the greeting line (without its CR).
pub fn parse_greeting(line: &str) -> Result<Greeting, DriverError> {
    match line.split(' ').collect::<Vec<_>>().as_slice() {
        ["PJLINK", "0"] => Ok(Greeting::Open),
        ["PJLINK", "1", random]
            if random.len() == 8 && random.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(Greeting::Auth((*random).to_owned()))
        }
        ["PJLINK", "ERRA"] => Err(DriverError::WrongPassword),
        _ => Err(DriverError::Protocol(format!(
            "not a PJLink greeting: {line:?}"
        ))),
    }
}

/// Parses a reply line (without its CR) to `%<class><cmd>`; returns the result text.
/// Tolerates what real projectors send besides the standard: a line feed
/// after the CR of the previous reply, and lower-case command names or error codes.
pub fn parse_reply(line: &str, class: u8, cmd: &str, param: &str) -> Result<String, DriverError> {
    let line = line.trim_start_matches(['\n', '\r']);
    if line.eq_ignore_ascii_case("PJLINK ERRA") {
        return Err(DriverError::WrongPassword);
    }
    let prefix = format!("%{class}{cmd}=");
    let result = match line.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(&prefix) => &line[prefix.len()..],
        _ => {
            return Err(DriverError::Protocol(format!(
                "expected `{prefix}...`, got {line:?}"
            )))
        }
    };
    let sent = format!("{cmd} {param}");
    match result.to_ascii_uppercase().as_str() {
        "ERR1" => Err(DriverError::Unsupported(sent)),
        "ERR2" => Err(DriverError::OutOfRange(sent)),
        "ERR3" => Err(DriverError::busy(
            "the projector cannot do this now: it is in standby, warming up or cooling down",
            Some(format!("%{class}{sent} answered ERR3")),
        )),
        "ERR4" => Err(DriverError::DeviceFailure(sent)),
        _ => Ok(result.to_owned()),
    }
}

/// The class in a `CLSS ?` result: the standard `1` or `2`, and what some
/// projectors send instead (`Class 2`).
pub fn parse_class(result: &str) -> u8 {
    match result.chars().rev().find(char::is_ascii_digit) {
        Some('2'..='9') => 2,
        _ => 1,
    }
}

/// The class an input code must be sent with: type 6 (internal) and input
/// numbers written as letters (`3A`) exist only in class 2.
pub fn input_class(code: &str) -> u8 {
    let mut chars = code.chars();
    let kind = chars.next();
    let number = chars.as_str();
    if kind == Some('6') || !number.bytes().all(|b| b.is_ascii_digit()) {
        2
    } else {
        1
    }
}

/// `HDMI 1` → `hdmi1`.
pub fn slug(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Ids people see for the inputs of an `INST ?` result: the input's name
/// (`INNM`, class 2) when it has a usable one, else type and number
/// (`digital2`). Any bytes are accepted.
pub fn input_ids(list: &str, names: &[Option<String>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, code) in list.split_whitespace().enumerate() {
        let named = names
            .get(i)
            .and_then(|n| n.as_deref())
            .map(slug)
            .filter(|s| !s.is_empty() && !out.iter().any(|(_, id)| id == s));
        let id = named.unwrap_or_else(|| {
            let number: String = code
                .chars()
                .skip(1)
                .collect::<String>()
                .to_ascii_lowercase();
            let mut id = format!("{}{number}", input_type(code));
            // Two codes that read alike still get distinct ids.
            while out.iter().any(|(_, other)| *other == id) {
                id.push('_');
            }
            id
        });
        out.push((code.to_owned(), id));
    }
    out
}

/// (video muted, audio muted) from an `AVMT ?` result: `11` picture only,
/// `21` sound only, `31` both, `10`/`20`/`30` none.
pub fn parse_mute(result: &str) -> Option<(bool, bool)> {
    match result {
        "11" => Some((true, false)),
        "21" => Some((false, true)),
        "31" => Some((true, true)),
        "10" | "20" | "30" => Some((false, false)),
        _ => None,
    }
}

/// Every lamp of a `LAMP ?` result: pairs of hours and on (1) / off (0).
pub fn parse_lamps(result: &str) -> Vec<(u64, bool)> {
    let words: Vec<&str> = result.split_whitespace().collect();
    words
        .chunks(2)
        .filter_map(|pair| match pair {
            [hours, lit] => Some((hours.parse().ok()?, *lit == "1")),
            _ => None,
        })
        .collect()
}

/// Power state names for `POWR ?` results 0-3.
pub fn power_name(code: &str) -> Option<&'static str> {
    match code {
        "0" => Some("off"),
        "1" => Some("on"),
        "2" => Some("cooling"),
        "3" => Some("warming"),
        _ => None,
    }
}

/// Names of the six `ERST` digits, in order.
pub const ERST_FIELDS: [&str; 6] = ["fan", "lamp", "temperature", "cover", "filter", "other"];

/// `ok`, `warning` or `error` for an `ERST` digit.
pub fn erst_level(digit: u8) -> Option<&'static str> {
    match digit {
        b'0' => Some("ok"),
        b'1' => Some("warning"),
        b'2' => Some("error"),
        _ => None,
    }
}

/// Input type names for the first character of an input code.
pub fn input_type(code: &str) -> &'static str {
    match code.as_bytes().first() {
        Some(b'1') => "rgb",
        Some(b'2') => "video",
        Some(b'3') => "digital",
        Some(b'4') => "storage",
        Some(b'5') => "network",
        Some(b'6') => "internal",
        _ => "input",
    }
}

/// Parses the six `ERST` digits.
pub fn parse_erst(erst: &str) -> Result<Map<String, Value>, DriverError> {
    let bytes = erst.as_bytes();
    if bytes.len() != 6 {
        return Err(DriverError::Protocol(format!(
            "ERST should be six digits, got {erst:?}"
        )));
    }
    ERST_FIELDS
        .iter()
        .zip(bytes)
        .map(|(field, d)| {
            erst_level(*d)
                .map(|l| ((*field).to_owned(), json!(l)))
                .ok_or_else(|| DriverError::Protocol(format!("bad ERST digit in {erst:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_specification_example() {
        // The PJLink specification's example: random "498e4a67", password "JBMIAProjectorLink".
        assert_eq!(
            digest("498e4a67", "JBMIAProjectorLink"),
            "5d8409bc1c3fa39749434aa3a5c38682"
        );
    }

    #[test]
    fn transcript_of_every_command_format() {
        let cases = [
            (1, "POWR", "1", "%1POWR 1\r"),
            (1, "POWR", "0", "%1POWR 0\r"),
            (1, "POWR", "?", "%1POWR ?\r"),
            (1, "INPT", "31", "%1INPT 31\r"),
            (1, "INPT", "?", "%1INPT ?\r"),
            (1, "AVMT", "31", "%1AVMT 31\r"),
            (1, "AVMT", "30", "%1AVMT 30\r"),
            (1, "AVMT", "?", "%1AVMT ?\r"),
            (1, "ERST", "?", "%1ERST ?\r"),
            (1, "LAMP", "?", "%1LAMP ?\r"),
            (1, "INST", "?", "%1INST ?\r"),
            (1, "NAME", "?", "%1NAME ?\r"),
            (1, "INF1", "?", "%1INF1 ?\r"),
            (1, "INF2", "?", "%1INF2 ?\r"),
            (1, "INFO", "?", "%1INFO ?\r"),
            (1, "CLSS", "?", "%1CLSS ?\r"),
            (2, "SNUM", "?", "%2SNUM ?\r"),
            (2, "SVER", "?", "%2SVER ?\r"),
            (2, "INNM", "?31", "%2INNM ?31\r"),
            (2, "FILT", "?", "%2FILT ?\r"),
            (2, "FREZ", "1", "%2FREZ 1\r"),
            (2, "FREZ", "?", "%2FREZ ?\r"),
            (2, "INPT", "3A", "%2INPT 3A\r"),
        ];
        for (class, cmd, param, wire) in cases {
            assert_eq!(command(class, cmd, param), wire);
        }
    }

    #[test]
    fn replies_and_errors() {
        assert_eq!(parse_reply("%1POWR=1", 1, "POWR", "?").unwrap(), "1");
        assert_eq!(parse_reply("%1POWR=OK", 1, "POWR", "1").unwrap(), "OK");
        assert_eq!(
            parse_reply("%1LAMP=1234 1", 1, "LAMP", "?").unwrap(),
            "1234 1"
        );
        assert!(matches!(
            parse_reply("%1XYZW=ERR1", 1, "XYZW", "?"),
            Err(DriverError::Unsupported(_))
        ));
        assert!(matches!(
            parse_reply("%1INPT=ERR2", 1, "INPT", "59"),
            Err(DriverError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_reply("%1INPT=ERR3", 1, "INPT", "31"),
            Err(DriverError::Busy { .. })
        ));
        assert!(matches!(
            parse_reply("%1POWR=ERR4", 1, "POWR", "1"),
            Err(DriverError::DeviceFailure(_))
        ));
        assert!(matches!(
            parse_reply("PJLINK ERRA", 1, "POWR", "?"),
            Err(DriverError::WrongPassword)
        ));
        assert!(matches!(
            parse_reply("%1INPT=31", 1, "POWR", "?"),
            Err(DriverError::Protocol(_))
        ));
    }

    #[test]
    fn greetings() {
        assert_eq!(parse_greeting("PJLINK 0").unwrap(), Greeting::Open);
        assert_eq!(
            parse_greeting("PJLINK 1 498e4a67").unwrap(),
            Greeting::Auth("498e4a67".into())
        );
        assert!(matches!(
            parse_greeting("PJLINK ERRA"),
            Err(DriverError::WrongPassword)
        ));
        assert!(matches!(
            parse_greeting("HELLO"),
            Err(DriverError::Protocol(_))
        ));
    }
}
