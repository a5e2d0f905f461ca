//! What a port is and where it connects, as the config file's `[[port]]` tables and
//! `vswitch ctl add-port` give it: one type, read by one set of rules for both.
//!
//! ```toml
//! type = "vhost-user"          # or dpdkvhostuser; "vhost-user-client" / dpdkvhostuserclient;
//! socket = "/tmp/vm1.sock"     #   "tap" with `ifname`
//! client = false               # vhost-user: true makes the switch connect
//! ```

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::vhost_port::Mode;

/// The port types, by the names users give them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortType {
    /// The switch listens on a socket (OVS: `dpdkvhostuser`).
    VhostUser,
    /// The switch connects to a socket the frontend listens on (OVS: `dpdkvhostuserclient`).
    VhostUserClient,
    /// A TAP device.
    Tap,
}

impl PortType {
    /// Every accepted name and the type it stands for; a type's first name is the one shown.
    const NAMES: [(&'static str, PortType); 5] = [
        ("vhost-user", PortType::VhostUser),
        ("dpdkvhostuser", PortType::VhostUser),
        ("vhost-user-client", PortType::VhostUserClient),
        ("dpdkvhostuserclient", PortType::VhostUserClient),
        ("tap", PortType::Tap),
    ];

    /// The type's name.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .expect("every type has a name")
    }

    /// The accepted names, for messages.
    fn accepted() -> String {
        Self::NAMES.map(|(n, _)| n).join(", ")
    }
}

impl std::fmt::Display for PortType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PortType {
    type Err = PortSpecError;
    fn from_str(s: &str) -> Result<Self, PortSpecError> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| PortSpecError::UnknownType(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for PortType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for PortType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Why a port description was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error("unknown port type {0:?}: `type` accepts {accepted}", accepted = PortType::accepted())]
    UnknownType(String),
    #[error("a {kind} port needs `{field}`")]
    Missing { kind: PortType, field: &'static str },
    #[error("`{field}` does not apply to a {kind} port")]
    NotApplicable { kind: PortType, field: &'static str },
}

/// What a port is and where it connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PortFields", into = "PortFields")]
pub enum PortSpec {
    VhostUser { socket: PathBuf, mode: Mode },
    Tap { ifname: String },
}

/// A port's fields as written: a `[[port]]` table without its name and security settings, or
/// the `port` of an add-port request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortFields {
    #[serde(rename = "type")]
    pub kind: PortType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

impl TryFrom<PortFields> for PortSpec {
    type Error = PortSpecError;

    fn try_from(f: PortFields) -> Result<Self, PortSpecError> {
        let kind = f.kind;
        let not_for = |field| PortSpecError::NotApplicable { kind, field };
        let needs = |field| PortSpecError::Missing { kind, field };
        match kind {
            PortType::VhostUser | PortType::VhostUserClient => {
                if f.ifname.is_some() {
                    return Err(not_for("ifname"));
                }
                let client = kind == PortType::VhostUserClient || f.client == Some(true);
                Ok(PortSpec::VhostUser {
                    socket: f.socket.ok_or_else(|| needs("socket"))?,
                    mode: if client { Mode::Client } else { Mode::Server },
                })
            }
            PortType::Tap => {
                if f.socket.is_some() {
                    return Err(not_for("socket"));
                }
                if f.client.is_some() {
                    return Err(not_for("client"));
                }
                Ok(PortSpec::Tap {
                    ifname: f.ifname.ok_or_else(|| needs("ifname"))?,
                })
            }
        }
    }
}

impl From<PortSpec> for PortFields {
    fn from(spec: PortSpec) -> Self {
        match spec {
            PortSpec::VhostUser { socket, mode } => PortFields {
                kind: PortType::VhostUser,
                socket: Some(socket),
                client: Some(mode == Mode::Client),
                ifname: None,
            },
            PortSpec::Tap { ifname } => PortFields {
                kind: PortType::Tap,
                socket: None,
                client: None,
                ifname: Some(ifname),
            },
        }
    }
}

impl PortSpec {
    /// A port from `add-port NAME TYPE TARGET [--client]`: TARGET is the socket of a
    /// vhost-user port, the interface of a TAP.
    pub fn from_words(kind: &str, target: &str, client: bool) -> Result<Self, PortSpecError> {
        let kind: PortType = kind.parse()?;
        let tap = kind == PortType::Tap;
        PortFields {
            kind,
            socket: (!tap).then(|| target.into()),
            client: client.then_some(true),
            ifname: tap.then(|| target.to_string()),
        }
        .try_into()
    }

    /// The type shown in `ports`.
    pub fn type_name(&self) -> &'static str {
        match self {
            PortSpec::VhostUser { .. } => PortType::VhostUser.name(),
            PortSpec::Tap { .. } => PortType::Tap.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PortSpec, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn every_name_and_alias_means_its_type() {
        let socket = PathBuf::from("/tmp/a.sock");
        let server = PortSpec::VhostUser {
            socket: socket.clone(),
            mode: Mode::Server,
        };
        let client = PortSpec::VhostUser {
            socket,
            mode: Mode::Client,
        };
        for (words, want) in [
            (("vhost-user", false), &server),
            (("dpdkvhostuser", false), &server),
            (("vhost-user", true), &client),
            (("vhost-user-client", false), &client),
            (("dpdkvhostuserclient", false), &client),
        ] {
            let (kind, flag) = words;
            assert_eq!(
                &PortSpec::from_words(kind, "/tmp/a.sock", flag).unwrap(),
                want
            );
            let json = format!(r#"{{"type":"{kind}","socket":"/tmp/a.sock","client":{flag}}}"#);
            assert_eq!(&parse(&json).unwrap(), want, "{json}");
        }
        let tap = PortSpec::Tap {
            ifname: "tap0".into(),
        };
        assert_eq!(PortSpec::from_words("tap", "tap0", false).unwrap(), tap);
        assert_eq!(parse(r#"{"type":"tap","ifname":"tap0"}"#).unwrap(), tap);
        // What is sent reads back the same.
        for spec in [server, client, tap] {
            assert_eq!(parse(&serde_json::to_string(&spec).unwrap()).unwrap(), spec);
        }
    }

    #[test]
    fn an_unknown_type_is_refused_with_the_field_and_the_accepted_values() {
        let e = PortSpec::from_words("vhots-user", "/tmp/a.sock", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown port type \"vhots-user\": `type` accepts vhost-user, dpdkvhostuser, \
             vhost-user-client, dpdkvhostuserclient, tap"
        );
        let e = parse(r#"{"type":"vhots-user","socket":"/tmp/a.sock"}"#).unwrap_err();
        assert!(
            e.contains("unknown port type \"vhots-user\": `type` accepts"),
            "{e}"
        );
    }

    #[test]
    fn unknown_missing_and_misplaced_fields_are_refused() {
        let e = parse(r#"{"type":"vhost-user","sockt":"/tmp/a.sock"}"#).unwrap_err();
        assert!(e.contains("unknown field `sockt`"), "{e}");
        assert_eq!(
            parse(r#"{"type":"vhost-user"}"#).unwrap_err(),
            "a vhost-user port needs `socket`"
        );
        let e = parse(r#"{"socket":"/tmp/a.sock"}"#).unwrap_err();
        assert!(e.contains("missing field `type`"), "{e}");
        assert_eq!(
            parse(r#"{"type":"tap","ifname":"t","socket":"/tmp/a.sock"}"#).unwrap_err(),
            "`socket` does not apply to a tap port"
        );
        assert_eq!(
            PortSpec::from_words("tap", "t", true).unwrap_err(),
            PortSpecError::NotApplicable {
                kind: PortType::Tap,
                field: "client"
            }
        );
        assert_eq!(
            parse(r#"{"type":"vhost-user","socket":"/a","ifname":"t"}"#).unwrap_err(),
            "`ifname` does not apply to a vhost-user port"
        );
    }
}
