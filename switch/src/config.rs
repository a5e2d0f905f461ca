//! `vswitch run` settings from the command line and/or a TOML file with the same content.
//!
//! ```toml
//! pmd_cores = [1]
//! ctl = "/run/switchyard/vswitch.ctl"
//! mac_aging_secs = 300
//! pmd_max_sleep_us = 0
//! max_frame_len = 9234        # longest frame without TSO
//! allow_unsealed_memory = false  # accept shmem memfds without F_SEAL_SHRINK
//! max_guest_memory = "64G"       # per memory table (default: the host's MemTotal)
//! [[port]]
//! name = "vm1"
//! type = "vhost-user"        # or "tap"
//! socket = "/tmp/vm1.sock"   # for vhost-user
//! client = false             # true: the switch connects (QEMU server=on)
//! allowed_macs = ["52:54:00:00:00:01"]   # port security (optional): only these sources
//! max_macs = 4                # port security (optional): most MACs learned on the port
//! [[port]]
//! name = "uplink"
//! type = "tap"
//! ifname = "sy-tap0"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One port in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub client: bool,
    pub ifname: Option<String>,
    /// Port security: source MACs the port may use (absent or empty: any).
    #[serde(default)]
    pub allowed_macs: Vec<String>,
    /// Port security: most MACs learned on the port (absent or 0: no cap).
    #[serde(default)]
    pub max_macs: u32,
}

impl PortConfig {
    /// The port's security settings, when any are set.
    pub fn security(
        &self,
    ) -> Result<Option<crate::datapath::PortSecurity>, crate::bridge::SwitchError> {
        if self.allowed_macs.is_empty() && self.max_macs == 0 {
            return Ok(None);
        }
        Ok(Some(crate::datapath::PortSecurity {
            allowed_macs: crate::bridge::parse_mac_list(&self.allowed_macs.join(","))?,
            max_macs: self.max_macs,
        }))
    }
}

/// The config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub pmd_cores: Option<Vec<usize>>,
    pub ctl: Option<PathBuf>,
    pub mac_aging_secs: Option<u32>,
    pub pmd_max_sleep_us: Option<u64>,
    /// Longest frame without TSO (bytes, Ethernet header included).
    pub max_frame_len: Option<u32>,
    pub allow_unsealed_memory: Option<bool>,
    pub max_guest_memory: Option<crate::guest_mem::ByteSize>,
    #[serde(default)]
    pub port: Vec<PortConfig>,
}

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("config file {0} is not valid")]
    Parse(PathBuf, #[source] toml::de::Error),
    #[error("config file {path}: port {name:?} needs `{field}`")]
    Missing {
        path: PathBuf,
        name: String,
        field: &'static str,
    },
    #[error("{0:?} is not NAME:{1}")]
    BadPortArg(String, &'static str),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        let cfg: FileConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e))?;
        for p in &cfg.port {
            let (field, ok) = match p.kind.as_str() {
                "tap" => ("ifname", p.ifname.is_some()),
                _ => ("socket", p.socket.is_some()),
            };
            if !ok {
                return Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                    name: p.name.clone(),
                    field,
                });
            }
        }
        Ok(cfg)
    }
}

/// Splits `NAME:VALUE` (the value may itself contain ':').
pub fn split_port_arg(arg: &str, what: &'static str) -> Result<(String, String), ConfigError> {
    match arg.split_once(':') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n.to_string(), v.to_string())),
        _ => Err(ConfigError::BadPortArg(arg.to_string(), what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_config_file() {
        let dir = std::env::temp_dir().join(format!("sy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vswitch.toml");
        std::fs::write(
            &path,
            "pmd_cores = [1]\nmac_aging_secs = 60\nmax_guest_memory = \"2G\"\n[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nsocket = \"/tmp/a.sock\"\n[[port]]\nname = \"up\"\ntype = \"tap\"\nifname = \"tap9\"\n",
        )
        .unwrap();
        let cfg = FileConfig::load(&path).unwrap();
        assert_eq!(cfg.pmd_cores, Some(vec![1]));
        assert_eq!(cfg.port.len(), 2);
        assert_eq!(cfg.max_guest_memory.map(|b| b.0), Some(2 << 30));
        assert_eq!(cfg.port[1].ifname.as_deref(), Some("tap9"));
        std::fs::write(&path, "[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\n").unwrap();
        assert!(matches!(
            FileConfig::load(&path),
            Err(ConfigError::Missing {
                field: "socket",
                ..
            })
        ));
        std::fs::write(&path, "pmd_cores = 1\n").unwrap();
        assert!(matches!(
            FileConfig::load(&path),
            Err(ConfigError::Parse(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn splits_port_args() {
        assert_eq!(
            split_port_arg("vm1:/tmp/x.sock", "SOCKET").unwrap(),
            ("vm1".into(), "/tmp/x.sock".into())
        );
        assert!(split_port_arg("vm1", "SOCKET").is_err());
        assert!(split_port_arg(":x", "SOCKET").is_err());
    }
}
