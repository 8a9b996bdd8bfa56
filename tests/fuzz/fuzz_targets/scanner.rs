//! Fuzz target `scanner`: the response tracker fed arbitrary client/server byte streams through
//! `PacketStream`, with arbitrary capabilities. It must never panic, and its counters must stay
//! consistent whatever it is fed (errors are expected and ignored).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringproxy::protocol::framing::PacketStream;
use ringproxy::protocol::scanner::{ResponseTracker, MAX_PIPELINE};

fuzz_target!(|data: &[u8]| {
    // 4 bytes capabilities, 1 byte MariaDB extended capabilities, then records
    // [control][length][bytes]: control bit 0 picks the direction.
    let Some((head, mut rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let caps = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let mut t = ResponseTracker::new(caps);
    t.set_mariadb_capabilities(u32::from(head[4]));
    let mut client = PacketStream::new();
    let mut server = PacketStream::new();
    while let [ctl, n, tail @ ..] = rest {
        let n = usize::from(*n).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        if ctl & 1 == 0 {
            let _ = client.feed(chunk, |p| t.on_client_packet(&p).map(|_| ()));
        } else {
            let _ = server.feed(chunk, |p| t.on_server_packet(&p).map(|_| ()));
        }
        assert!(t.pending() <= MAX_PIPELINE);
        if t.is_idle() {
            assert_eq!(t.pending(), 0);
            assert!(!t.awaiting_client());
        }
        if ctl & 0x80 != 0 {
            t.set_capabilities(caps ^ u32::from(*ctl) << 24);
        }
    }
});
