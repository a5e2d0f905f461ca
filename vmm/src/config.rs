//! Parsing of the `vmm run` option values: memory sizes, MAC addresses, `--net` specs.

use std::path::PathBuf;

/// Errors in option values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size like 256M could not be parsed.
    #[error("bad size {0:?} (use e.g. 256M, 1G, 268435456)")]
    BadSize(String),
    /// A MAC address could not be parsed.
    #[error("bad MAC address {0:?} (use xx:xx:xx:xx:xx:xx)")]
    BadMac(String),
    /// A --net spec could not be parsed.
    #[error("bad --net {0:?}: {1}")]
    BadNet(String, &'static str),
}

/// Parses 256M, 1G, 512K or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| ConfigError::BadSize(s.into()))
}

/// Parses a MAC address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(ConfigError::BadMac(s.into()));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| ConfigError::BadMac(s.into()))?;
    }
    Ok(mac)
}

/// Formats a MAC address.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// One `--net vhost-user:SOCKET[,mac=MAC][,queues=N][,server]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub socket: PathBuf,
    pub mac: Option<[u8; 6]>,
    /// Queue pairs.
    pub queues: u16,
    pub server: bool,
}

/// Parses a `--net` value.
pub fn parse_net(s: &str) -> Result<NetSpec, ConfigError> {
    let bad = |why| ConfigError::BadNet(s.into(), why);
    let rest = s
        .strip_prefix("vhost-user:")
        .ok_or_else(|| bad("only vhost-user:SOCKET is supported"))?;
    let mut parts = rest.split(',');
    let socket = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("missing socket path"))?;
    let mut spec = NetSpec {
        socket: socket.into(),
        mac: None,
        queues: 1,
        server: false,
    };
    for p in parts {
        match p.split_once('=') {
            Some(("mac", v)) => spec.mac = Some(parse_mac(v)?),
            Some(("queues", v)) => {
                spec.queues = v
                    .parse()
                    .ok()
                    .filter(|q| (1..=8).contains(q))
                    .ok_or_else(|| bad("queues must be 1..8"))?
            }
            None if p == "server" => spec.server = true,
            _ => return Err(bad("unknown option (mac=, queues=, server)")),
        }
    }
    Ok(spec)
}

/// A locally administered MAC derived from the VM name and NIC index.
pub fn default_mac(name: &str, nic: usize) -> [u8; 6] {
    let mut h: u32 = 2166136261;
    for b in name.bytes() {
        h = (h ^ b as u32).wrapping_mul(16777619);
    }
    let h = h.to_be_bytes();
    [0x52, 0x54, h[1], h[2], h[3], nic as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn net_specs() {
        let n = parse_net("vhost-user:/tmp/a.sock,mac=52:54:00:00:00:01,queues=2,server").unwrap();
        assert_eq!(n.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!((n.queues, n.server), (2, true));
        let n = parse_net("vhost-user:/s").unwrap();
        assert_eq!((n.queues, n.server, n.mac), (1, false, None));
        assert!(parse_net("tap:tap0").is_err());
        assert!(parse_net("vhost-user:/s,queues=0").is_err());
        assert!(parse_net("vhost-user:/s,bogus").is_err());
        assert!(parse_net("vhost-user:").is_err());
        assert_eq!(
            fmt_mac(&parse_mac("de:ad:be:ef:00:01").unwrap()),
            "de:ad:be:ef:00:01"
        );
        assert_ne!(default_mac("a", 0), default_mac("b", 0));
        assert_eq!(default_mac("a", 0)[0] & 1, 0, "unicast");
    }
}
