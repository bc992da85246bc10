//! PJLink framing: commands, replies, greetings and the MD5 digest.
//! Pure functions, so the byte format is tested without a device.

use md5::{Digest, Md5};

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
pub fn parse_reply(line: &str, class: u8, cmd: &str, param: &str) -> Result<String, DriverError> {
    if line == "PJLINK ERRA" {
        return Err(DriverError::WrongPassword);
    }
    let prefix = format!("%{class}{cmd}=");
    let Some(result) = line.strip_prefix(&prefix) else {
        return Err(DriverError::Protocol(format!(
            "expected `{prefix}...`, got {line:?}"
        )));
    };
    let sent = format!("{cmd} {param}");
    match result {
        "ERR1" => Err(DriverError::Unsupported(sent)),
        "ERR2" => Err(DriverError::OutOfRange(sent)),
        "ERR3" => Err(DriverError::Busy(format!(
            "`{sent}` is unavailable right now (the projector is in standby, warming up or cooling down)"
        ))),
        "ERR4" => Err(DriverError::DeviceFailure(sent)),
        other => Ok(other.to_owned()),
    }
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

/// Input type names for the first digit of an input code.
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
            Err(DriverError::Busy(_))
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
