//! 802.1Q VLANs on vhost-user ports, with our own frontend on every port so each frame's bytes
//! can be checked: access ports (untagged, one VLAN), a trunk (tagged), a port that sets
//! nothing (every VLAN, as in OVS), tags pushed, popped and rewritten in the one copy, MAC
//! learning per VLAN, live changes, and hostile tags dropped and counted per reason — all while
//! a streaming pair on a VLAN of its own must see nothing of it and lose nothing.

use std::time::Duration;

use switch::vlan::VlanMode;
use switchyard_tests::lab::{collect, frame, mac, quiet, send_all, Lab, BCAST};
use switchyard_tests::streaming_pair::{check_pair, with_streaming_pair};
use vhost_frontend::VhostUserPort;

const MAC_P10: u8 = 3;
const MAC_P20: u8 = 4;
const MAC_TRUNK: u8 = 5;
/// One station that shows up on two VLANs.
const MAC_TWIN: u8 = 6;

/// `f` with an 802.1Q tag of `tci` after its MACs.
fn tagged(f: &[u8], tci: u16) -> Vec<u8> {
    tagged_with(f, 0x8100, tci)
}

fn tagged_with(f: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&tpid.to_be_bytes());
    t.extend_from_slice(&tci.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    t
}

fn one(port: &mut VhostUserPort, what: &str) -> Vec<u8> {
    let got = collect(port, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "{what}: nothing arrived");
    got.into_iter().next().unwrap()
}

fn nothing(port: &mut VhostUserPort, what: &str) {
    assert_eq!(quiet(port), 0, "{what}: a frame arrived where none may");
}

fn error_count(lab: &Lab, port: &str, reason: &str) -> u64 {
    let s = serde_json::to_value(lab.stats(port)).unwrap();
    s["error_reasons"][reason].as_u64().unwrap_or(0)
}

fn set(lab: &Lab, port: &str, mode: VlanMode) {
    lab.core.set_port_vlan(port, mode).unwrap();
}

#[test]
fn access_and_trunk_ports_switch_per_vlan_and_edit_tags_in_the_copy() {
    let lab = Lab::new("vlan", &["a", "b", "p10", "p20", "trunk", "plain"]);
    // The streaming pair lives on VLAN 100, which no other port carries.
    set(&lab, "a", VlanMode::Access { tag: 100 });
    set(&lab, "b", VlanMode::Access { tag: 100 });
    set(&lab, "p10", VlanMode::Access { tag: 10 });
    set(&lab, "p20", VlanMode::Access { tag: 20 });
    set(
        &lab,
        "trunk",
        VlanMode::Trunk {
            trunks: "10,20".parse().unwrap(),
            native: None,
        },
    );
    let ports = lab.core.ports();
    let shown: Vec<String> = ports.iter().map(|p| p.vlan.describe()).collect();
    assert_eq!(
        shown,
        [
            "access 100",
            "access 100",
            "access 10",
            "access 20",
            "trunk 10,20",
            "-"
        ]
    );
    let mut p10 = lab.attach("p10");
    let mut p20 = lab.attach("p20");
    let mut trunk = lab.attach("trunk");
    let mut plain = lab.attach("plain");
    let rep = with_streaming_pair(&lab, || {
        // plain carries VLAN 100 too: it heard the pair's first frames (flooded before they
        // learned each other). Nothing of VLAN 100 reaches it after that.
        while plain.recv(|_| {}) > 0 {}
        // An access port's broadcast: tagged on the trunk and on the port that carries every
        // VLAN, unseen on the other VLAN.
        let f = frame(BCAST, mac(MAC_P10), 1, 100);
        send_all(&mut p10, std::slice::from_ref(&f));
        assert_eq!(
            one(&mut trunk, "p10 -> trunk"),
            tagged(&f, 10),
            "pushed tag"
        );
        assert_eq!(one(&mut plain, "p10 -> plain"), tagged(&f, 10));
        nothing(&mut p20, "VLAN 10 broadcast on VLAN 20");

        // A trunk's tagged broadcast on VLAN 20 (priority 5): untagged on the access port.
        let g = frame(BCAST, mac(MAC_TRUNK), 2, 90);
        send_all(&mut trunk, &[tagged(&g, 0xa014)]);
        assert_eq!(one(&mut p20, "trunk -> p20"), g, "popped tag");
        assert_eq!(one(&mut plain, "trunk -> plain"), tagged(&g, 0xa014));
        nothing(&mut p10, "VLAN 20 broadcast on VLAN 10");

        // Unicast to the trunk's station, learned on VLAN 20: only the trunk, tagged.
        let h = frame(mac(MAC_TRUNK), mac(MAC_P20), 3, 64);
        send_all(&mut p20, std::slice::from_ref(&h));
        assert_eq!(one(&mut trunk, "p20 -> trunk"), tagged(&h, 20));
        nothing(&mut plain, "a learned unicast flooded");
        nothing(&mut p10, "a learned unicast crossed VLANs");

        // One MAC on two VLANs is two stations: it broadcasts from each access port (the
        // trunk and plain hear both, tagged by VLAN; neither access port hears the other).
        for (port, vlan) in [(&mut p10, 10), (&mut p20, 20)] {
            let t = frame(BCAST, mac(MAC_TWIN), vlan as u32, 60);
            send_all(port, std::slice::from_ref(&t));
            assert_eq!(one(&mut trunk, "twin -> trunk"), tagged(&t, vlan));
            assert_eq!(one(&mut plain, "twin -> plain"), tagged(&t, vlan));
        }
        nothing(&mut p10, "the twin's VLAN 20 broadcast");
        nothing(&mut p20, "the twin's VLAN 10 broadcast");
        let fdb = lab.core.fdb_rows();
        let twins: Vec<(u16, &str)> = fdb
            .iter()
            .filter(|r| r.mac == "52:54:00:00:00:06")
            .map(|r| (r.vlan, r.port.as_str()))
            .collect();
        assert_eq!(twins, [(10, "p10"), (20, "p20")], "{fdb:?}");
        let k = frame(mac(MAC_TWIN), mac(MAC_TRUNK), 6, 70);
        send_all(&mut trunk, &[tagged(&k, 10)]);
        assert_eq!(one(&mut p10, "trunk VLAN 10 -> twin"), k);
        nothing(&mut p20, "the twin's VLAN 20 side");

        // A priority tag (VLAN 0, priority 3) from an access port: the access VLAN's tag with
        // the priority kept on the trunk.
        let m = frame(BCAST, mac(MAC_P10), 7, 80);
        send_all(&mut p10, &[tagged(&m, 0x6000)]);
        assert_eq!(
            one(&mut trunk, "priority tag"),
            tagged(&m, 0x600a),
            "rewritten tag"
        );
        assert_eq!(one(&mut plain, "priority tag, plain"), tagged(&m, 0x600a));

        // Hostile tags: each dropped and counted by reason; nobody sees them.
        let bad = frame(BCAST, mac(MAC_TRUNK), 8, 60);
        let cases = [
            ("trunk", tagged(&bad, 30), "vlan_not_allowed"),
            ("trunk", bad.clone(), "vlan_not_allowed"),
            ("p10", tagged(&bad, 10), "vlan_not_allowed"),
            ("trunk", tagged_with(&bad, 0x88a8, 10), "vlan_qinq"),
            ("trunk", tagged(&bad, 0x0fff), "vlan_malformed"),
            ("trunk", tagged(&bad[..12], 10), "vlan_malformed"),
        ];
        for (name, f, reason) in cases {
            let before = error_count(&lab, name, reason);
            let port = if name == "p10" { &mut p10 } else { &mut trunk };
            send_all(port, &[f]);
            assert!(
                switchyard_tests::wait_until(Duration::from_secs(5), || error_count(
                    &lab, name, reason
                ) == before + 1),
                "{name}: {reason} not counted"
            );
        }
        nothing(&mut p10, "hostile tags");
        nothing(&mut p20, "hostile tags");
        nothing(&mut plain, "hostile tags");

        // Live: p20 joins VLAN 10 and hears p10's broadcasts; the trunk drops VLAN 10.
        set(&lab, "p20", VlanMode::Access { tag: 10 });
        set(
            &lab,
            "trunk",
            VlanMode::Trunk {
                trunks: "20".parse().unwrap(),
                native: Some(10),
            },
        );
        let n = frame(BCAST, mac(MAC_P10), 9, 100);
        send_all(&mut p10, std::slice::from_ref(&n));
        assert_eq!(one(&mut p20, "p20 moved to VLAN 10"), n);
        assert_eq!(one(&mut trunk, "VLAN 10 native: untagged"), n);
        assert_eq!(one(&mut plain, "plain"), tagged(&n, 10));
    });
    check_pair(&rep, "vlan");
    assert_eq!(rep.foreign, 0, "the pair's VLAN saw others' frames");
}

#[test]
fn vlans_set_with_add_port_and_refused_when_wrong() {
    let lab = Lab::new("vlan-ctl", &[]);
    let add = |name: &str, vlan: serde_json::Value| {
        let req = serde_json::json!({
            "cmd": "add-port",
            "name": name,
            "port": {"type": "vhost-user", "socket": lab.sock(name)},
            "vlan": vlan,
        });
        switch::ctl::execute(&lab.core, serde_json::from_value(req).unwrap())
    };
    let r = add(
        "t",
        serde_json::json!({"mode": "trunk", "trunks": "10-12,40", "native": 5}),
    );
    assert!(r.ok, "{:?}", r.error);
    let r = add("bad", serde_json::json!({"mode": "access", "tag": 4095}));
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert!(e.contains("4095"), "{e}");
    let names: Vec<String> = lab.core.ports().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["t"], "a refused port is not left behind");
    assert_eq!(
        lab.core.ports()[0].vlan.describe(),
        "trunk 10-12,40 native 5"
    );
    let set = serde_json::json!({"cmd": "set-port", "name": "t", "vlan": {"mode": "untagged"}});
    let r = switch::ctl::execute(&lab.core, serde_json::from_value(set).unwrap());
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(lab.core.ports()[0].vlan, VlanMode::Untagged);
}
