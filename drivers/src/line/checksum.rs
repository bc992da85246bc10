//! The checksums device protocols put at the end of their frames.

use serde::Deserialize;

/// A checksum over a frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    /// None: `{sum}` may not be used.
    #[default]
    None,
    /// The low byte of the sum (Samsung MDC, NEC projectors).
    Sum8,
    /// The two's complement of the low byte of the sum.
    Twos8,
    /// The XOR of the bytes (NEC displays' BCC).
    Xor8,
    /// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), low byte first.
    Crc16Modbus,
    /// CRC-16/XMODEM (poly 0x1021, init 0), high byte first.
    Crc16Xmodem,
}

impl Checksum {
    /// Its name in profiles.
    pub fn name(self) -> &'static str {
        match self {
            Checksum::None => "none",
            Checksum::Sum8 => "sum8",
            Checksum::Twos8 => "twos8",
            Checksum::Xor8 => "xor8",
            Checksum::Crc16Modbus => "crc16_modbus",
            Checksum::Crc16Xmodem => "crc16_xmodem",
        }
    }

    /// The checksum of `bytes`.
    pub fn compute(self, bytes: &[u8]) -> u32 {
        match self {
            Checksum::None => 0,
            Checksum::Sum8 => bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).into(),
            Checksum::Twos8 => bytes
                .iter()
                .fold(0u8, |a, b| a.wrapping_add(*b))
                .wrapping_neg()
                .into(),
            Checksum::Xor8 => bytes.iter().fold(0u8, |a, b| a ^ b).into(),
            Checksum::Crc16Modbus => {
                let mut crc: u16 = 0xffff;
                for b in bytes {
                    crc ^= u16::from(*b);
                    for _ in 0..8 {
                        crc = if crc & 1 != 0 {
                            (crc >> 1) ^ 0xa001
                        } else {
                            crc >> 1
                        };
                    }
                }
                crc.into()
            }
            Checksum::Crc16Xmodem => {
                let mut crc: u16 = 0;
                for b in bytes {
                    crc ^= u16::from(*b) << 8;
                    for _ in 0..8 {
                        crc = if crc & 0x8000 != 0 {
                            (crc << 1) ^ 0x1021
                        } else {
                            crc << 1
                        };
                    }
                }
                crc.into()
            }
        }
    }

    /// The checksum as the bytes that go on the wire.
    pub fn to_bytes(self, sum: u32) -> Vec<u8> {
        match self {
            Checksum::None => Vec::new(),
            Checksum::Sum8 | Checksum::Twos8 | Checksum::Xor8 => vec![sum as u8],
            Checksum::Crc16Modbus => (sum as u16).to_le_bytes().to_vec(),
            Checksum::Crc16Xmodem => (sum as u16).to_be_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // The CRC catalogue's check value over "123456789".
        assert_eq!(Checksum::Crc16Modbus.compute(b"123456789"), 0x4b37);
        assert_eq!(Checksum::Crc16Xmodem.compute(b"123456789"), 0x31c3);
        assert_eq!(Checksum::Sum8.compute(&[0x11, 0x01, 0x01, 0x01]), 0x14);
        assert_eq!(Checksum::Twos8.compute(&[0x01, 0x02]), 0xfd);
        assert_eq!(Checksum::Xor8.compute(&[0x30, 0x41, 0x30]), 0x41);
        assert_eq!(Checksum::Crc16Modbus.to_bytes(0x4b37), vec![0x37, 0x4b]);
    }
}
