//! ESC/VP21 framing: the ESC/VP.net handshake, reply lines, power codes and
//! source tables. Pure functions, so the byte format is tested (and fuzzed)
//! without a device, and the simulator speaks from the same facts.

use crate::DriverError;

/// ESC/VP.net's TCP port.
pub const PORT: u16 = 3629;

/// The 10-byte signature every ESC/VP.net header starts with.
pub const SIGNATURE: &[u8; 10] = b"ESC/VP.net";
/// Protocol version byte.
pub const VERSION: u8 = 0x10;
/// Header type: connect (the client's request, and the projector's answer).
pub const TYPE_CONNECT: u8 = 3;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 16;
/// Size of each extra header (identifier, attribute, 16 bytes of information).
pub const EXTRA_LEN: usize = 18;
/// Extra-header identifier of a password.
pub const ID_PASSWORD: u8 = 1;

/// Status byte of the projector's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetStatus {
    /// 0x20: connected.
    Ok,
    /// 0x41: a password is required, or the one sent is wrong.
    Unauthorized,
    /// 0x43: the password is refused.
    Forbidden,
    /// 0x53: busy (another client is connected).
    Busy,
    /// Anything else.
    Other(u8),
}

impl NetStatus {
    /// The status for a byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x20 => NetStatus::Ok,
            0x41 => NetStatus::Unauthorized,
            0x43 => NetStatus::Forbidden,
            0x53 => NetStatus::Busy,
            other => NetStatus::Other(other),
        }
    }

    /// The byte for a status.
    pub fn byte(self) -> u8 {
        match self {
            NetStatus::Ok => 0x20,
            NetStatus::Unauthorized => 0x41,
            NetStatus::Forbidden => 0x43,
            NetStatus::Busy => 0x53,
            NetStatus::Other(b) => b,
        }
    }
}

/// A connect header with `extras` extra headers and `status`.
pub fn header(status: u8, extras: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..10].copy_from_slice(SIGNATURE);
    h[10] = VERSION;
    h[11] = TYPE_CONNECT;
    h[14] = status;
    h[15] = extras;
    h
}

/// The client's connect request, with the password (at most 16 bytes) when there is one.
pub fn connect_request(password: Option<&str>) -> Vec<u8> {
    let mut out = header(0, u8::from(password.is_some())).to_vec();
    if let Some(p) = password {
        let mut info = [0u8; 16];
        let n = p.len().min(16);
        info[..n].copy_from_slice(&p.as_bytes()[..n]);
        out.push(ID_PASSWORD);
        out.push(1);
        out.extend_from_slice(&info);
    }
    out
}

/// Reads a 16-byte header: (status, number of extra headers that follow).
pub fn parse_header(h: &[u8]) -> Result<(NetStatus, u8), DriverError> {
    if h.len() < HEADER_LEN || &h[..10] != SIGNATURE {
        return Err(DriverError::Protocol(format!(
            "not an ESC/VP.net header: {:02x?}",
            &h[..h.len().min(HEADER_LEN)]
        )));
    }
    Ok((NetStatus::from_byte(h[14]), h[15]))
}

/// The password of a connect request's extra headers, if any.
pub fn request_password(extras: &[u8]) -> Option<String> {
    extras
        .chunks(EXTRA_LEN)
        .find(|x| x.len() == EXTRA_LEN && x[0] == ID_PASSWORD)
        .map(|x| {
            let info = &x[2..];
            let end = info.iter().position(|b| *b == 0).unwrap_or(info.len());
            String::from_utf8_lossy(&info[..end]).into_owned()
        })
}

/// The reply lines before a `:` prompt, trimmed, blank ones dropped.
pub fn reply_lines(reply: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(reply)
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The value of `KEY=value` among reply lines.
pub fn value_of<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        k.eq_ignore_ascii_case(key).then_some(v)
    })
}

/// What a `PWR?` code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCode {
    /// `00` standby, `04` standby with network on, `09` standby with A/V output.
    Standby,
    /// `01`.
    On,
    /// `02`.
    Warming,
    /// `03`.
    Cooling,
    /// `05`: abnormal standby (an error put the projector in standby).
    AbnormalStandby,
}

/// Parses a `PWR?` code.
pub fn parse_power(code: &str) -> Option<PowerCode> {
    match code.trim() {
        "00" | "04" | "09" => Some(PowerCode::Standby),
        "01" => Some(PowerCode::On),
        "02" => Some(PowerCode::Warming),
        "03" => Some(PowerCode::Cooling),
        "05" => Some(PowerCode::AbnormalStandby),
        _ => None,
    }
}

/// The default source table: (id people see, code that selects it).
pub const DEFAULT_SOURCES: &[(&str, &str)] = &[
    ("hdmi1", "30"),
    ("hdmi2", "A0"),
    ("computer", "10"),
    ("video", "41"),
];

/// The id of a `SOURCE?` code in `table`: an exact match, else the source
/// of the same group (the first hex digit: `1F`, `11` and `14` are sub-sources
/// of the computer input `10` on many models), else the code itself.
pub fn source_id(table: &[(String, String)], code: &str) -> String {
    let code = code.trim();
    if let Some((id, _)) = table.iter().find(|(_, c)| c.eq_ignore_ascii_case(code)) {
        return id.clone();
    }
    let group = code.chars().next();
    table
        .iter()
        .find(|(_, c)| {
            c.chars().next().map(|g| g.to_ascii_uppercase())
                == group.map(|g| g.to_ascii_uppercase())
        })
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| code.to_ascii_lowercase())
}

/// Error texts for `ERR?` codes.
pub fn error_text(code: &str) -> String {
    let what = match code {
        "01" => "fan error",
        "03" => "lamp failure at power on",
        "04" => "high internal temperature",
        "06" => "lamp error",
        "07" => "lamp cover open",
        "08" => "cinema filter error",
        "09" => "electric dual-layered capacitor disconnected",
        "0A" => "auto iris error",
        "0B" => "subsystem error",
        "0C" => "low air flow",
        "0D" => "air filter air flow sensor error",
        "0E" => "power supply unit error (ballast)",
        "0F" => "shutter error",
        "10" => "cooling system error (peltier element)",
        "11" => "cooling system error (pump)",
        _ => "projector error",
    };
    format!("{what} (ERR={code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request_layout() {
        let r = connect_request(None);
        assert_eq!(r, b"ESC/VP.net\x10\x03\x00\x00\x00\x00");
        let r = connect_request(Some("secret"));
        assert_eq!(r.len(), HEADER_LEN + EXTRA_LEN);
        assert_eq!(r[15], 1);
        assert_eq!(&r[16..18], &[ID_PASSWORD, 1]);
        assert_eq!(&r[18..24], b"secret");
        assert!(r[24..].iter().all(|b| *b == 0));
        assert_eq!(request_password(&r[16..]).as_deref(), Some("secret"));
    }

    #[test]
    fn power_codes_and_sources() {
        assert_eq!(parse_power("09"), Some(PowerCode::Standby));
        assert_eq!(parse_power("05"), Some(PowerCode::AbnormalStandby));
        assert_eq!(parse_power("07"), None);
        let table: Vec<(String, String)> = DEFAULT_SOURCES
            .iter()
            .map(|(i, c)| (i.to_string(), c.to_string()))
            .collect();
        assert_eq!(source_id(&table, "1F"), "computer");
        assert_eq!(source_id(&table, "a0"), "hdmi2");
        assert_eq!(source_id(&table, "B1"), "b1");
    }
}
