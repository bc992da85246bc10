//! Command and reply templates of binary profiles: bytes written as hex,
//! quoted ASCII, and placeholders for the value, profile variables, a
//! length and a checksum.
//!
//! ```text
//! AA 11 {id} {len} {value} {sum}          Samsung MDC: set power
//! 01 30 {id} 30 41 {len:hex2} 02 "C203D6" {value:hex4} 03 {sum} 0D
//! ```
//!
//! `{len}` counts the bytes after it up to the checksum (or the end), plus
//! the framing's `length_adjust`; `{sum}` is the framing's checksum over the
//! bytes from `checksum_from` up to it. Replies are matched against the same
//! kind of template: literals must be equal, `{value}` is captured,
//! `{any}`/`{any:N}` skip bytes, and `{len}` and `{sum}` are verified.

use std::collections::BTreeMap;

use super::checksum::Checksum;

/// How a value, variable, length or checksum is written as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The wire string as hex bytes (`"21"` → 0x21): binary profiles' default.
    Hex,
    /// The wire string's ASCII bytes, as they are.
    Ascii,
    /// A number as one byte.
    U8,
    /// A number as two bytes, big-endian.
    U16Be,
    /// A number as two bytes, little-endian.
    U16Le,
    /// A number as `n` upper-case ASCII hex digits.
    HexDigits(usize),
    /// A number as `n` zero-padded ASCII decimal digits.
    DecDigits(usize),
}

impl Format {
    fn parse(s: &str) -> Result<Format, String> {
        Ok(match s {
            "hex" => Format::Hex,
            "ascii" => Format::Ascii,
            "u8" => Format::U8,
            "u16be" => Format::U16Be,
            "u16le" => Format::U16Le,
            _ => {
                let digits = |p: &str| -> Option<usize> {
                    s.strip_prefix(p)
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| (1..=20).contains(n))
                };
                if let Some(n) = digits("hex") {
                    Format::HexDigits(n)
                } else if let Some(n) = digits("dec") {
                    Format::DecDigits(n)
                } else {
                    return Err(format!(
                        "unknown format `{s}` (hex, ascii, u8, u16be, u16le, hexN, decN)"
                    ));
                }
            }
        })
    }

    /// Bytes this format always takes, when fixed.
    fn width(self) -> Option<usize> {
        match self {
            Format::U8 => Some(1),
            Format::U16Be | Format::U16Le => Some(2),
            Format::HexDigits(n) | Format::DecDigits(n) => Some(n),
            Format::Hex | Format::Ascii => None,
        }
    }

    /// Writes `wire` (a map's wire string, or a number as text).
    pub fn encode(self, wire: &str) -> Result<Vec<u8>, String> {
        let number = || {
            wire.trim()
                .parse::<i64>()
                .map_err(|_| format!("`{wire}` is not a number"))
        };
        let fits = |n: i64, max: i64| {
            if (0..=max).contains(&n) {
                Ok(n as u64)
            } else {
                Err(format!("{n} does not fit (0 to {max})"))
            }
        };
        Ok(match self {
            Format::Hex => parse_hex(wire)?,
            Format::Ascii => wire.as_bytes().to_vec(),
            Format::U8 => vec![fits(number()?, 0xff)? as u8],
            Format::U16Be => (fits(number()?, 0xffff)? as u16).to_be_bytes().to_vec(),
            Format::U16Le => (fits(number()?, 0xffff)? as u16).to_le_bytes().to_vec(),
            Format::HexDigits(n) => {
                let v = fits(number()?, max_for(16, n))?;
                format!("{v:0n$X}").into_bytes()
            }
            Format::DecDigits(n) => {
                let v = fits(number()?, max_for(10, n))?;
                format!("{v:0n$}").into_bytes()
            }
        })
    }

    /// Reads bytes back into a wire string (hex for [`Format::Hex`], a number as text for numbers).
    pub fn decode(self, bytes: &[u8]) -> Result<String, String> {
        let text =
            || std::str::from_utf8(bytes).map_err(|_| format!("{} is not ASCII", hex(bytes)));
        Ok(match self {
            Format::Hex => hex(bytes).replace(' ', ""),
            Format::Ascii => text()?.to_owned(),
            Format::U8 => bytes.first().copied().unwrap_or(0).to_string(),
            Format::U16Be => u16::from_be_bytes([bytes[0], bytes[1]]).to_string(),
            Format::U16Le => u16::from_le_bytes([bytes[0], bytes[1]]).to_string(),
            Format::HexDigits(_) => u64::from_str_radix(text()?, 16)
                .map_err(|_| format!("`{}` is not hex digits", text().unwrap_or_default()))?
                .to_string(),
            Format::DecDigits(_) => text()?
                .parse::<u64>()
                .map_err(|_| format!("`{}` is not decimal digits", text().unwrap_or_default()))?
                .to_string(),
        })
    }
}

/// The format called `name` in a placeholder (`hex`, `ascii`, `u8`, `u16be`, `u16le`, `hexN`, `decN`).
pub fn format_named(name: &str) -> Result<Format, String> {
    Format::parse(name)
}

fn max_for(base: i64, digits: usize) -> i64 {
    base.checked_pow(digits as u32).map_or(i64::MAX, |m| m - 1)
}

/// Bytes as spaced upper-case hex, for messages: `AA 11 01`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// Hex digits (spaces allowed) to bytes.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not hex bytes"));
    }
    Ok((0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("checked"))
        .collect())
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Bytes(Vec<u8>),
    Value(Format),
    Var(String, Format),
    Len(Format),
    Sum(Format),
    Any(usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    source: String,
}

/// How templates are written out: the framing's length and checksum rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Added to `{len}`'s count.
    pub length_adjust: i64,
    /// The checksum `{sum}` stands for.
    pub checksum: Checksum,
    /// The first byte the checksum covers.
    pub checksum_from: usize,
}

/// What a reply frame held, when it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The `{value}`, as a wire string, if the template has one.
    pub value: Option<String>,
}

/// Why a frame does not fit a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Another frame (not this reply).
    Other,
    /// This reply, but its length or checksum is wrong.
    Corrupt(String),
}

impl Template {
    /// Parses `source`: hex bytes, `"ASCII"`, and `{value[:fmt]}`,
    /// `{<var>[:fmt]}`, `{len[:fmt]}`, `{sum[:fmt]}`, `{any[:N]}`.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source.trim();
        let push_bytes = |parts: &mut Vec<Part>, b: Vec<u8>| match parts.last_mut() {
            Some(Part::Bytes(prev)) => prev.extend(b),
            _ => parts.push(Part::Bytes(b)),
        };
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('"') {
                let end = r
                    .find('"')
                    .ok_or_else(|| format!("a quoted text in `{source}` is not closed"))?;
                push_bytes(&mut parts, r.as_bytes()[..end].to_vec());
                rest = r[end + 1..].trim_start();
            } else if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| format!("a `{{` in `{source}` is not closed"))?;
                let inner = &r[..end];
                let (name, fmt) = match inner.split_once(':') {
                    Some((n, f)) => (n.trim(), Some(f.trim())),
                    None => (inner.trim(), None),
                };
                let format = |default| fmt.map(Format::parse).unwrap_or(Ok(default));
                parts.push(match name {
                    "value" => Part::Value(format(Format::Hex)?),
                                        "len" | "sum" => {
                        let f = format(Format::U8)?;
                        if f.width().is_none() {
                            return Err(format!(
                                "`{{{inner}}}`: a length or checksum needs a fixed width (u8, u16be, u16le, hexN, decN)"
                            ));
                        }
                        if name == "len" {
                            Part::Len(f)
                        } else {
                            Part::Sum(f)
                        }
                    }
                    "any" => Part::Any(match fmt {
                        Some(n) => n
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("`{{any:{n}}}`: a count of bytes"))?,
                        None => 1,
                    }),
                    var if !var.is_empty()
                        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                    {
                        Part::Var(var.to_owned(), format(Format::Hex)?)
                    }
                    other => return Err(format!("`{{{other}}}` is not a placeholder")),
                });
                rest = r[end + 1..].trim_start();
            } else {
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '{' || c == '"')
                    .unwrap_or(rest.len());
                let token = &rest[..end];
                let bytes = parse_hex(token).map_err(|_| {
                    format!("`{token}` in `{source}` is neither hex bytes, a \"quoted text\" nor a {{placeholder}}")
                })?;
                push_bytes(&mut parts, bytes);
                rest = rest[end..].trim_start();
            }
        }
        if parts.is_empty() {
            return Err("the template is empty".into());
        }
        let t = Template {
            parts,
            source: source.to_owned(),
        };
        if t.count(|p| matches!(p, Part::Sum(_))) > 1 || t.count(|p| matches!(p, Part::Len(_))) > 1
        {
            return Err(format!("`{source}` has more than one {{sum}} or {{len}}"));
        }
        Ok(t)
    }

    fn count(&self, f: impl Fn(&Part) -> bool) -> usize {
        self.parts.iter().filter(|p| f(p)).count()
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether it has a `{value}`.
    pub fn has_value(&self) -> bool {
        self.count(|p| matches!(p, Part::Value(_))) > 0
    }

    /// The variables it names.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v, _) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Writes the bytes, with `value` (a wire string) and `vars`.
    pub fn encode(
        &self,
        value: Option<&str>,
        vars: &BTreeMap<String, String>,
        rules: &Rules,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut len_at = None;
        let mut sum_at = None;
        for p in &self.parts {
            match p {
                Part::Bytes(b) => out.extend_from_slice(b),
                Part::Value(f) => {
                    let v = value.ok_or("this command needs a value")?;
                    out.extend(f.encode(v)?);
                }
                Part::Var(name, f) => {
                    let v = vars
                        .get(name)
                        .ok_or_else(|| format!("the variable `{name}` has no value"))?;
                    out.extend(f.encode(v)?);
                }
                Part::Len(f) => {
                    len_at = Some((out.len(), *f));
                    out.extend(f.encode("0")?);
                }
                Part::Sum(f) => {
                    sum_at = Some((out.len(), *f));
                    out.extend(f.encode("0")?);
                }
                Part::Any(n) => out.extend(std::iter::repeat_n(0u8, *n)),
            }
        }
        if let Some((at, f)) = len_at {
            let width = f.width().unwrap_or(1);
            let end = sum_at.map_or(out.len(), |(s, _)| s);
            let n = (end as i64 - (at + width) as i64) + rules.length_adjust;
            let bytes = f.encode(&n.to_string())?;
            out[at..at + width].copy_from_slice(&bytes);
        }
        if let Some((at, f)) = sum_at {
            let width = f.width().unwrap_or(1);
            let covered = out.get(rules.checksum_from..at).ok_or_else(|| {
                format!(
                    "`checksum_from` ({}) is past the checksum",
                    rules.checksum_from
                )
            })?;
            let sum = rules.checksum.compute(covered);
            let bytes = match f {
                Format::U8 | Format::U16Be | Format::U16Le => rules.checksum.to_bytes(sum),
                other => other.encode(&sum.to_string())?,
            };
            if bytes.len() != width {
                return Err(format!(
                    "the {} checksum takes {} bytes, not {width}",
                    rules.checksum.name(),
                    bytes.len()
                ));
            }
            out[at..at + width].copy_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Matches a whole frame; `value_width` is the width of `{value}` in
    /// the default hex format (the map's wire bytes).
    pub fn matches(
        &self,
        frame: &[u8],
        vars: &BTreeMap<String, String>,
        rules: &Rules,
        value_width: Option<usize>,
    ) -> Result<Matched, Mismatch> {
        let mut pos = 0;
        let mut value = None;
        let mut len_check = None;
        let mut sum_check = None;
        for (i, p) in self.parts.iter().enumerate() {
            let take = |pos: &mut usize, n: usize| -> Result<std::ops::Range<usize>, Mismatch> {
                if *pos + n > frame.len() {
                    return Err(Mismatch::Other);
                }
                let r = *pos..*pos + n;
                *pos += n;
                Ok(r)
            };
            match p {
                Part::Bytes(b) => {
                    let r = take(&mut pos, b.len())?;
                    if &frame[r] != b.as_slice() {
                        return Err(Mismatch::Other);
                    }
                }
                Part::Var(name, f) => {
                    let want = vars
                        .get(name)
                        .and_then(|v| f.encode(v).ok())
                        .ok_or(Mismatch::Other)?;
                    let r = take(&mut pos, want.len())?;
                    if frame[r] != want[..] {
                        return Err(Mismatch::Other);
                    }
                }
                Part::Value(f) => {
                    let n = match f.width().or(value_width) {
                        Some(n) => n,
                        // Variable width: up to the next literal, or the end.
                        None => {
                            self.rest_width(i + 1, frame.len() - pos.min(frame.len()), frame, pos)?
                        }
                    };
                    let r = take(&mut pos, n)?;
                    value = Some(f.decode(&frame[r]).map_err(|_| Mismatch::Other)?);
                }
                Part::Len(f) => {
                    let n = f.width().unwrap_or(1);
                    let r = take(&mut pos, n)?;
                    len_check = Some((r, *f));
                }
                Part::Sum(f) => {
                    let n = f.width().unwrap_or(1);
                    let r = take(&mut pos, n)?;
                    sum_check = Some((r, *f));
                }
                Part::Any(n) => {
                    take(&mut pos, *n)?;
                }
            }
        }
        if pos != frame.len() {
            return Err(Mismatch::Other);
        }
        if let Some((r, f)) = len_check {
            let end = sum_check.as_ref().map_or(frame.len(), |(s, _)| s.start);
            let want = (end as i64 - r.end as i64) + rules.length_adjust;
            let got = f.decode(&frame[r.clone()]).unwrap_or_default();
            if got != want.to_string() {
                return Err(Mismatch::Corrupt(format!(
                    "length {got} where the frame holds {want}"
                )));
            }
        }
        if let Some((r, f)) = sum_check {
            let covered = frame.get(rules.checksum_from..r.start).unwrap_or_default();
            let sum = rules.checksum.compute(covered);
            let want = match f {
                Format::U8 | Format::U16Be | Format::U16Le => rules.checksum.to_bytes(sum),
                other => other.encode(&sum.to_string()).unwrap_or_default(),
            };
            if frame[r.clone()] != want[..] {
                return Err(Mismatch::Corrupt(format!(
                    "checksum {} where the bytes give {}",
                    hex(&frame[r]),
                    hex(&want)
                )));
            }
        }
        Ok(Matched { value })
    }

    /// How many bytes a variable-width value takes: up to where the next
    /// literal bytes are found, or the fixed-width parts after it.
    fn rest_width(
        &self,
        next: usize,
        left: usize,
        frame: &[u8],
        pos: usize,
    ) -> Result<usize, Mismatch> {
        let mut fixed_after = 0;
        for p in &self.parts[next..] {
            match p {
                Part::Bytes(b) if fixed_after == 0 => {
                    let hay = &frame[pos.min(frame.len())..];
                    return hay
                        .windows(b.len())
                        .position(|w| w == b.as_slice())
                        .ok_or(Mismatch::Other);
                }
                Part::Bytes(b) => fixed_after += b.len(),
                Part::Value(_) => return Err(Mismatch::Other),
                Part::Var(_, f) | Part::Len(f) | Part::Sum(f) => {
                    fixed_after += f.width().unwrap_or(1)
                }
                Part::Any(n) => fixed_after += n,
            }
        }
        left.checked_sub(fixed_after).ok_or(Mismatch::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(checksum: Checksum, from: usize) -> Rules {
        Rules {
            length_adjust: 0,
            checksum,
            checksum_from: from,
        }
    }

    fn vars(id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("id".to_owned(), id.to_owned())])
    }

    #[test]
    fn samsung_mdc_power_on_is_encoded_with_length_and_sum() {
        // Samsung MDC: AA 11 01 01 01 14 (0x11+0x01+0x01+0x01 = 0x14).
        let t = Template::parse("AA 11 {id} {len} {value} {sum}").unwrap();
        let r = rules(Checksum::Sum8, 1);
        let bytes = t.encode(Some("01"), &vars("01"), &r).unwrap();
        assert_eq!(hex(&bytes), "AA 11 01 01 01 14");
        let reply = Template::parse("AA FF {id} {len} 41 11 {value} {sum}").unwrap();
        let frame = parse_hex("AA FF 01 03 41 11 01 56").unwrap();
        let m = reply.matches(&frame, &vars("01"), &r, Some(1)).unwrap();
        assert_eq!(m.value.as_deref(), Some("01"));
        // A wrong checksum is corrupt, another command's answer is other.
        let bad = parse_hex("AA FF 01 03 41 11 01 55").unwrap();
        assert!(matches!(
            reply.matches(&bad, &vars("01"), &r, Some(1)),
            Err(Mismatch::Corrupt(_))
        ));
        let other = parse_hex("AA FF 01 03 41 14 21 79").unwrap();
        assert_eq!(
            reply.matches(&other, &vars("01"), &r, Some(1)),
            Err(Mismatch::Other)
        );
    }

    #[test]
    fn ascii_hex_fields_and_bcc() {
        let t = Template::parse(
            "01 30 {id:ascii} 30 41 {len:hex2} 02 \"C203D6\" {value:hex4} 03 {sum} 0D",
        )
        .unwrap();
        let r = rules(Checksum::Xor8, 1);
        let bytes = t.encode(Some("1"), &vars("A"), &r).unwrap();
        // NEC's power-on to monitor A, BCC 0x73 (XOR from after SOH through ETX).
        assert_eq!(
            bytes,
            parse_hex("01 30 41 30 41 30 43 02 43 32 30 33 44 36 30 30 30 31 03 73 0D").unwrap()
        );
    }

    #[test]
    fn variable_width_values_end_at_the_next_literal() {
        let t = Template::parse("\"Vol\" {value:ascii} 0D 0A").unwrap();
        let r = rules(Checksum::None, 0);
        let m = t.matches(b"Vol42\r\n", &BTreeMap::new(), &r, None).unwrap();
        assert_eq!(m.value.as_deref(), Some("42"));
        assert!(t.matches(b"Vol42\r", &BTreeMap::new(), &r, None).is_err());
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(Template::parse("AA GG").unwrap_err().contains("`GG`"));
        assert!(Template::parse("AA {value:hex99}")
            .unwrap_err()
            .contains("unknown format"));
        assert!(Template::parse("AA {nope!}")
            .unwrap_err()
            .contains("placeholder"));
        assert!(Template::parse("\"open")
            .unwrap_err()
            .contains("not closed"));
        assert!(Template::parse("{sum} {sum}")
            .unwrap_err()
            .contains("more than one"));
        assert!(Template::parse("").is_err());
    }
}
