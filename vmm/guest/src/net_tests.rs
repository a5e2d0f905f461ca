use super::*;

const A: Identity = Identity {
    mac: [0x52, 0x54, 0, 0, 0, 1],
    ip: [10, 0, 0, 1],
};
const B: Identity = Identity {
    mac: [0x52, 0x54, 0, 0, 0, 2],
    ip: [10, 0, 0, 2],
};

#[test]
fn cmdline_defaults_and_values() {
    assert_eq!(parse_cmdline(b"").unwrap(), Config::default());
    let c = parse_cmdline(
        b"console=ttyS0 ip=10.0.0.7 mac=52:54:00:ab:cd:EF ping=10.0.0.2 count=5 \
          linger=3 quiet nomsix size=100 interval=0 queue_size=64\n",
    )
    .unwrap();
    assert_eq!(c.ip, [10, 0, 0, 7]);
    assert_eq!(c.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]));
    assert_eq!(c.ping, Some([10, 0, 0, 2]));
    assert_eq!(
        (c.count, c.linger, c.size, c.interval_ms),
        (5, 3, Some(100), 0)
    );
    assert!(c.quiet && !c.msix && c.mrg_rxbuf);
    assert_eq!(c.queue_size, 64);
    let c = parse_cmdline(b"send=ff:ff:ff:ff:ff:ff linger=forever").unwrap();
    assert_eq!(c.send, Some(BROADCAST));
    assert_eq!(c.linger, LINGER_FOREVER);
}

#[test]
fn cmdline_rejects_malformed_values() {
    assert_eq!(parse_cmdline(b"ip=10.0.0"), Err(&b"ip=10.0.0"[..]));
    assert!(parse_cmdline(b"ip=10.0.0.256").is_err());
    assert!(parse_cmdline(b"ip=10.0.0.1.2").is_err());
    assert!(parse_cmdline(b"mac=52:54:00:ab:cd").is_err());
    assert!(parse_cmdline(b"count=-1").is_err());
    assert!(parse_cmdline(b"count=99999999999").is_err());
    assert!(parse_cmdline(b"queue_size=100").is_err());
}

#[test]
fn checksum_matches_rfc1071_example() {
    // RFC 1071 section 3: the sum of these words is 0xddf2, so the checksum is !0xddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(checksum(&data), !0xddf2);
    // A buffer with its checksum in place sums to zero; odd lengths pad with a zero byte.
    let mut h = [
        0x45, 0, 0, 0x54, 0, 0, 0x40, 0, 0x40, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(checksum(&h), 0);
    assert_eq!(checksum(&[1, 2, 3]), checksum(&[1, 2, 3, 0]));
}

#[test]
fn arp_request_gets_a_reply_and_the_reply_is_learned() {
    let mut req = [0u8; 64];
    let len = build_arp_request(&mut req, &B, &A.ip);
    assert_eq!(len, 60);
    assert_eq!(&req[0..6], &BROADCAST);
    let mut out = [0u8; 64];
    let Event::ArpRequest { len } = handle_frame(&A, &req[..len], &mut out) else {
        panic!("not answered");
    };
    assert_eq!(len, 60);
    assert_eq!(&out[0..6], &B.mac);
    let mut out2 = [0u8; 64];
    assert_eq!(
        handle_frame(&B, &out[..len], &mut out2),
        Event::ArpReply {
            ip: A.ip,
            mac: A.mac
        }
    );
    // A request for somebody else's address is not answered.
    let len = build_arp_request(&mut req, &B, &[10, 0, 0, 9]);
    assert_eq!(handle_frame(&A, &req[..len], &mut out), Event::Ignored);
}

#[test]
fn echo_request_gets_a_valid_reply() {
    for payload in [0usize, 1, 56, 1400] {
        let mut req = [0u8; 1514];
        let len = build_echo_request(&mut req, &B, &A.mac, &A.ip, 7, payload);
        assert_eq!(len, (42 + payload).max(60));
        let mut out = [0u8; 1514];
        let Event::EchoRequest { len: rlen } = handle_frame(&A, &req[..len], &mut out) else {
            panic!("echo request of {payload} bytes not answered");
        };
        assert_eq!(rlen, len);
        assert_eq!(checksum(&out[14..34]), 0);
        assert_eq!(&out[42..42 + payload], &req[42..42 + payload]);
        let mut out2 = [0u8; 1514];
        assert_eq!(
            handle_frame(&B, &out[..rlen], &mut out2),
            Event::EchoReply {
                from: A.ip,
                id: PING_ID,
                seq: 7
            }
        );
    }
}

#[test]
fn corrupt_or_foreign_frames_are_ignored() {
    let mut req = [0u8; 128];
    let len = build_echo_request(&mut req, &B, &A.mac, &A.ip, 1, 8);
    let mut out = [0u8; 128];
    let mut bad = req;
    bad[45] ^= 1; // ICMP payload
    assert_eq!(handle_frame(&A, &bad[..len], &mut out), Event::Ignored);
    let mut bad = req;
    bad[22] ^= 1; // TTL: IP header checksum
    assert_eq!(handle_frame(&A, &bad[..len], &mut out), Event::Ignored);
    let mut bad = req;
    bad[0..6].copy_from_slice(&B.mac); // unicast to someone else
    assert_eq!(handle_frame(&A, &bad[..len], &mut out), Event::Ignored);
    assert_eq!(handle_frame(&A, &req[..10], &mut out), Event::Ignored);
    assert_eq!(handle_frame(&A, &req[..30], &mut out), Event::Ignored);
}

#[test]
fn test_frames_and_numbers() {
    let mut f = [0u8; 1600];
    assert_eq!(build_test_frame(&mut f, &A.mac, &B.mac, 9, 10), 60);
    assert_eq!(build_test_frame(&mut f, &A.mac, &B.mac, 9, 9000), 1514);
    assert_eq!(&f[14..18], &9u32.to_be_bytes());
    set_test_seq(&mut f, 0x0102_0304);
    assert_eq!(&f[14..18], &[1, 2, 3, 4]);
    let mut out = [0u8; 64];
    assert_eq!(handle_frame(&B, &f[..60], &mut out), Event::TestFrame);
    let mut buf = [0u8; 20];
    assert_eq!(fmt_u64(&mut buf, 0), b"0");
    assert_eq!(fmt_u64(&mut buf, u64::MAX), b"18446744073709551615");
}

#[test]
fn gratuitous_arp_announces_without_asking_anyone() {
    let mut f = [0u8; 64];
    let len = build_gratuitous_arp(&mut f, &A);
    assert_eq!(len, 60);
    assert_eq!(&f[0..6], &BROADCAST);
    assert_eq!(&f[22..28], &A.mac); // sender hardware address
    assert_eq!(&f[28..32], &A.ip); // sender IP
    assert_eq!(&f[38..42], &A.ip); // target IP: our own
    let mut out = [0u8; 64];
    // Others do not answer it; we would (it asks for our address), which is harmless.
    assert_eq!(handle_frame(&B, &f[..len], &mut out), Event::Ignored);
}
