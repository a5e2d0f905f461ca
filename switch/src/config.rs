//! `vswitch run` settings from the command line and/or a TOML file with the same content.
//!
//! ```toml
//! pmd_cores = [1]
//! ctl = "/run/switchyard/vswitch.ctl"
//! mac_aging_secs = 300
//! mac_table_size = 4096     # MACs the learning table is sized for
//! pmd_max_sleep_us = 0
//! max_frame_len = 9234        # longest frame without TSO
//! allow_unsealed_memory = false  # accept shmem memfds without F_SEAL_SHRINK
//! max_guest_memory = "64G"       # per memory table (default: the host's MemTotal)
//! [[port]]
//! name = "vm1"
//! type = "vhost-user"        # or "tap"; also "vhost-user-client", and OVS's dpdkvhostuser(client)
//! socket = "/tmp/vm1.sock"   # for vhost-user
//! client = false             # true: the switch connects (QEMU server=on)
//! allowed_macs = ["52:54:00:00:00:01"]   # port security (optional): only these sources
//! max_macs = 4                # port security (optional): most MACs learned on the port
//! tag = 10                    # VLANs (optional): an access port of VLAN 10, or
//! # trunks = "10,20-30"       #   a trunk of these VLANs ("all": every one)
//! # native = 5                #   with a native VLAN for its untagged frames
//! [[port]]
//! name = "uplink"
//! type = "tap"
//! ifname = "sy-tap0"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::port_spec::{PortFields, PortSpec, PortSpecError, PortType};
use crate::vlan::{VlanError, VlanMode};

/// One port in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "PortTable")]
pub struct PortConfig {
    pub name: String,
    /// What the port is (the table's `type`, `socket`, `client` and `ifname`).
    pub spec: PortSpec,
    /// Port security: source MACs the port may use (absent or empty: any).
    pub allowed_macs: Vec<String>,
    /// Port security: most MACs learned on the port (absent or 0: no cap).
    pub max_macs: u32,
    /// The VLANs the port carries (`tag`, `trunks`, `native`).
    pub vlan: VlanMode,
}

/// A `[[port]]` table as written. The port's own fields are [`PortFields`]' (not flattened in:
/// `#[serde(flatten)]` would let unknown keys through).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortTable {
    name: String,
    #[serde(rename = "type")]
    kind: PortType,
    socket: Option<PathBuf>,
    client: Option<bool>,
    ifname: Option<String>,
    #[serde(default)]
    allowed_macs: Vec<String>,
    #[serde(default)]
    max_macs: u32,
    tag: Option<u16>,
    trunks: Option<String>,
    native: Option<u16>,
}

/// A `[[port]]` table that does not describe a port.
#[derive(Debug, thiserror::Error)]
#[error("port {name:?}: {error}")]
pub struct PortTableError {
    name: String,
    error: PortTableFault,
}

/// What is wrong with a `[[port]]` table.
#[derive(Debug, thiserror::Error)]
pub enum PortTableFault {
    #[error(transparent)]
    Spec(#[from] PortSpecError),
    #[error(transparent)]
    Vlan(#[from] VlanError),
}

impl TryFrom<PortTable> for PortConfig {
    type Error = PortTableError;

    fn try_from(t: PortTable) -> Result<Self, PortTableError> {
        let fields = PortFields {
            kind: t.kind,
            socket: t.socket,
            client: t.client,
            ifname: t.ifname,
        };
        let parsed = PortSpec::try_from(fields)
            .map_err(PortTableFault::from)
            .and_then(|spec| {
                let vlan = VlanMode::from_flags(
                    t.tag.map(|v| v.to_string()).as_deref(),
                    t.trunks.as_deref(),
                    t.native.map(|v| v.to_string()).as_deref(),
                )?;
                Ok((spec, vlan))
            });
        match parsed {
            Ok((spec, vlan)) => Ok(PortConfig {
                name: t.name,
                spec,
                allowed_macs: t.allowed_macs,
                max_macs: t.max_macs,
                vlan,
            }),
            Err(error) => Err(PortTableError {
                name: t.name,
                error,
            }),
        }
    }
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
    /// MACs the learning table is sized for.
    pub mac_table_size: Option<u32>,
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
    #[error("{0:?} is not NAME:{1}")]
    BadPortArg(String, &'static str),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e))
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
        assert_eq!(
            cfg.port[0].spec,
            PortSpec::VhostUser {
                socket: "/tmp/a.sock".into(),
                mode: crate::vhost_port::Mode::Server
            }
        );
        assert_eq!(
            cfg.port[1].spec,
            PortSpec::Tap {
                ifname: "tap9".into()
            }
        );
        let refused = |text: &str| -> String {
            std::fs::write(&path, text).unwrap();
            match FileConfig::load(&path) {
                Err(ConfigError::Parse(_, e)) => e.to_string(),
                other => panic!("{text:?} was not refused: {other:?}"),
            }
        };
        let e = refused("[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\n");
        assert!(
            e.contains("port \"vm1\": a vhost-user port needs `socket`"),
            "{e}"
        );
        // An unknown type (which used to start a vhost-user port) names the field and the
        // accepted values; so does an unknown key.
        let e = refused("[[port]]\nname = \"vm1\"\ntype = \"vhots-user\"\nsocket = \"/a\"\n");
        assert!(
            e.contains(
                "unknown port type \"vhots-user\": `type` accepts vhost-user, dpdkvhostuser, \
                 vhost-user-client, dpdkvhostuserclient, tap"
            ),
            "{e}"
        );
        let e = refused("[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nsockt = \"/a\"\n");
        assert!(e.contains("unknown field `sockt`"), "{e}");
        let e = refused("[[port]]\nname = \"t\"\ntype = \"tap\"\nifname = \"t\"\nclient = true\n");
        assert!(
            e.contains("port \"t\": `client` does not apply to a tap port"),
            "{e}"
        );
        // OVS's names, and the client type.
        std::fs::write(
            &path,
            "[[port]]\nname = \"a\"\ntype = \"dpdkvhostuserclient\"\nsocket = \"/a\"\n\
             [[port]]\nname = \"b\"\ntype = \"vhost-user\"\nsocket = \"/b\"\nclient = true\n",
        )
        .unwrap();
        let cfg = FileConfig::load(&path).unwrap();
        assert!(cfg.port.iter().all(|p| matches!(
            p.spec,
            PortSpec::VhostUser {
                mode: crate::vhost_port::Mode::Client,
                ..
            }
        )));
        // VLANs: an access port, a trunk with a native VLAN; contradictions refused.
        std::fs::write(
            &path,
            "[[port]]\nname = \"a\"\ntype = \"tap\"\nifname = \"t\"\ntag = 10\n\
             [[port]]\nname = \"b\"\ntype = \"vhost-user\"\nsocket = \"/b\"\n\
             trunks = \"10,20-22\"\nnative = 5\n",
        )
        .unwrap();
        let cfg = FileConfig::load(&path).unwrap();
        assert_eq!(cfg.port[0].vlan, VlanMode::Access { tag: 10 });
        assert_eq!(cfg.port[1].vlan.describe(), "trunk 10,20-22 native 5");
        let e = refused(
            "[[port]]\nname = \"a\"\ntype = \"tap\"\nifname = \"t\"\ntag = 1\ntrunks = \"2\"\n",
        );
        assert!(
            e.contains("port \"a\": a port is either an access port"),
            "{e}"
        );
        let e = refused("[[port]]\nname = \"a\"\ntype = \"tap\"\nifname = \"t\"\ntag = 4095\n");
        assert!(e.contains("4095"), "{e}");
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
