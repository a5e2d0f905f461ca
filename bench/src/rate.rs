//! Command-line values: offered rate, frame size mix, durations, and the pacing arithmetic.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::packet::{MAX_SIZE, MIN_SIZE, WIRE_OVERHEAD};

/// Errors parsing command-line values.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The rate is not `max`, `NNNpps`, `NNNkpps`, `NNNmpps`, `NNNmbps` or `NNNgbps`.
    #[error("rate {0:?} is not max, NNNpps, NNNkpps, NNNmpps, NNNmbps or NNNgbps")]
    Rate(String),
    /// The size is not a number in 64..=1518 or `imix`.
    #[error("frame size {0:?} is not a number from 64 to 1518 or imix")]
    Size(String),
    /// The duration is not like `10s`, `500ms`, `2m`.
    #[error("duration {0:?} is not like 10s, 500ms or 2m")]
    Duration(String),
}

/// Offered load.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    /// As fast as the ring takes frames.
    Max,
    /// Frames per second.
    Pps(f64),
    /// Megabits per second on the wire (frame + 20 bytes).
    Mbps(f64),
}

impl Rate {
    /// Frames per second for a mean frame size (with FCS); None for `Max`.
    pub fn pps(&self, mean_size: f64) -> Option<f64> {
        match *self {
            Rate::Max => None,
            Rate::Pps(p) => Some(p),
            Rate::Mbps(m) => Some(m * 1e6 / ((mean_size + WIRE_OVERHEAD as f64) * 8.0)),
        }
    }
}

impl FromStr for Rate {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let l = s.trim().to_ascii_lowercase();
        if l == "max" {
            return Ok(Rate::Max);
        }
        let err = || ParseError::Rate(s.to_string());
        let split = l.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(err)?;
        let (num, unit) = l.split_at(split);
        let v: f64 = num.trim().parse().map_err(|_| err())?;
        if !(v.is_finite() && v > 0.0) {
            return Err(err());
        }
        Ok(match unit {
            "pps" => Rate::Pps(v),
            "kpps" => Rate::Pps(v * 1e3),
            "mpps" => Rate::Pps(v * 1e6),
            "mbps" => Rate::Mbps(v),
            "gbps" => Rate::Mbps(v * 1e3),
            _ => return Err(err()),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => write!(f, "max"),
            Rate::Pps(p) => write!(f, "{p:.0}pps"),
            Rate::Mbps(m) => write!(f, "{m}mbps"),
        }
    }
}

/// The simple IMIX: 7 × 64, 4 × 594, 1 × 1518.
pub const IMIX: [usize; 12] = [64, 64, 594, 64, 64, 594, 64, 64, 594, 64, 594, 1518];

/// Frame sizes to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeMix {
    /// Every frame this size (FCS included).
    Fixed(usize),
    /// The simple IMIX cycle.
    Imix,
}

impl SizeMix {
    /// The repeating cycle of sizes.
    pub fn cycle(&self) -> Vec<usize> {
        match *self {
            SizeMix::Fixed(s) => vec![s],
            SizeMix::Imix => IMIX.to_vec(),
        }
    }

    /// Mean frame size (FCS included).
    pub fn mean(&self) -> f64 {
        let c = self.cycle();
        c.iter().sum::<usize>() as f64 / c.len() as f64
    }
}

impl FromStr for SizeMix {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(SizeMix::Imix);
        }
        match s.trim().parse::<usize>() {
            Ok(n) if (MIN_SIZE..=MAX_SIZE).contains(&n) => Ok(SizeMix::Fixed(n)),
            _ => Err(ParseError::Size(s.to_string())),
        }
    }
}

impl fmt::Display for SizeMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeMix::Fixed(s) => write!(f, "{s}"),
            SizeMix::Imix => write!(f, "imix"),
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let l = s.trim().to_ascii_lowercase();
    let err = || ParseError::Duration(s.to_string());
    let (num, mul) = if let Some(n) = l.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = l.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = l.strip_suffix('m') {
        (n, 60.0)
    } else {
        (l.as_str(), 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(v * mul))
}

/// Serde helpers that write a `Duration` as seconds (a float).
pub mod serde_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Reads seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// Parses `64,128,imix` into size mixes.
pub fn parse_sizes(s: &str) -> Result<Vec<SizeMix>, ParseError> {
    s.split(',').map(|p| p.trim().parse()).collect()
}

/// A comma-separated list of sizes as one command-line value (`64,1518,imix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeList(pub Vec<SizeMix>);

impl FromStr for SizeList {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_sizes(s).map(SizeList)
    }
}

/// Paces transmission: how many frames may go now to stay on `pps` since `start_ns`.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// Frames per nanosecond; None = unlimited.
    per_ns: Option<f64>,
}

impl Pacer {
    /// A pacer for `rate` with frames of `mean_size` bytes.
    pub fn new(rate: Rate, mean_size: f64) -> Self {
        Pacer {
            per_ns: rate.pps(mean_size).map(|p| p / 1e9),
        }
    }

    /// Frames allowed now (up to `burst`) after `sent` frames, `elapsed_ns` into the run.
    #[inline]
    pub fn allowed(&self, elapsed_ns: u64, sent: u64, burst: usize) -> usize {
        match self.per_ns {
            None => burst,
            Some(r) => {
                let due = (elapsed_ns as f64 * r) as u64;
                (due.saturating_sub(sent) as usize).min(burst)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse(), Ok(Rate::Max));
        assert_eq!("1000pps".parse(), Ok(Rate::Pps(1000.0)));
        assert_eq!("2.5Mpps".parse(), Ok(Rate::Pps(2.5e6)));
        assert_eq!("10kpps".parse(), Ok(Rate::Pps(1e4)));
        assert_eq!("500mbps".parse(), Ok(Rate::Mbps(500.0)));
        assert_eq!("10gbps".parse(), Ok(Rate::Mbps(10_000.0)));
        assert!("fast".parse::<Rate>().is_err());
        assert!("-5pps".parse::<Rate>().is_err());
        assert!("10".parse::<Rate>().is_err());
        assert!("10furlongs".parse::<Rate>().is_err());
    }

    #[test]
    fn mbps_converts_with_wire_overhead() {
        // 10 Gbit/s of 64-byte frames is the classic 14.88 Mpps.
        let pps = Rate::Mbps(10_000.0).pps(64.0).unwrap();
        assert!((pps - 14_880_952.0).abs() < 1.0, "{pps}");
        assert_eq!(Rate::Max.pps(64.0), None);
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!("64".parse(), Ok(SizeMix::Fixed(64)));
        assert_eq!("IMIX".parse(), Ok(SizeMix::Imix));
        assert!("63".parse::<SizeMix>().is_err());
        assert!("1519".parse::<SizeMix>().is_err());
        assert!((SizeMix::Imix.mean() - 361.83).abs() < 0.01);
        assert_eq!(
            parse_sizes("64, 1518,imix").unwrap(),
            vec![SizeMix::Fixed(64), SizeMix::Fixed(1518), SizeMix::Imix]
        );
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn pacer_holds_the_rate() {
        let p = Pacer::new(Rate::Pps(1e6), 64.0);
        assert_eq!(p.allowed(0, 0, 32), 0);
        assert_eq!(p.allowed(10_000, 0, 32), 10);
        assert_eq!(p.allowed(1_000_000, 990, 32), 10);
        assert_eq!(p.allowed(1_000_000, 1000, 32), 0);
        assert_eq!(Pacer::new(Rate::Max, 64.0).allowed(0, 0, 32), 32);
    }
}
