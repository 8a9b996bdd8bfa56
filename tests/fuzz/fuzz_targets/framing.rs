//! Fuzz target `framing`: arbitrary bytes, fed in arbitrary chunks, through the streaming packet
//! splitter (`PacketStream`) and the logical-packet splitter (`split_logical`). Besides "never
//! panics", it checks both against a plain reference split of the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringproxy::protocol::constants::{HEADER_LEN, MAX_PAYLOAD_LEN};
use ringproxy::protocol::framing::{split_logical, split_packet, PacketStream, HEAD_CAP};

fuzz_target!(|data: &[u8]| {
    // First byte: chunk-size seed; second: max_len selector for split_logical; rest: the stream.
    let (seed, max_sel, stream) = match data {
        [a, b, rest @ ..] => (*a, *b, rest),
        _ => return,
    };

    // Reference: whole physical packets of the complete input.
    let mut reference = Vec::new();
    let mut at = 0;
    let mut cont = false;
    while let Some((h, payload, used)) = split_packet(&stream[at..]) {
        let head = payload[..payload.len().min(HEAD_CAP)].to_vec();
        reference.push((h.len, h.seq, head, cont));
        cont = h.len as usize == MAX_PAYLOAD_LEN;
        at += used;
    }
    // A trailing partial packet is reported once its header and head bytes are in.
    if let Some(h) = stream.get(at..at + HEADER_LEN) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], 0]);
        let want = (len as usize).min(HEAD_CAP);
        if let Some(head) = stream.get(at + HEADER_LEN..at + HEADER_LEN + want) {
            reference.push((len, h[3], head.to_vec(), cont));
        }
    }

    // PacketStream over chunks of varying size.
    let mut ps = PacketStream::new();
    let mut seen = Vec::new();
    let mut rest = stream;
    let mut step = usize::from(seed % 17) + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        ps.feed(chunk, |p| {
            assert!(p.head.len() <= HEAD_CAP);
            assert_eq!(p.head.len(), (p.len as usize).min(HEAD_CAP));
            seen.push((p.len, p.seq, p.head.to_vec(), p.continuation));
            Ok::<(), ()>(())
        })
        .unwrap();
        step = step * 7 % 61 + 1;
    }
    assert_eq!(seen, reference);
    if at == stream.len() {
        assert!(ps.at_boundary());
    }

    // split_logical: consecutive logical packets until incomplete or too large.
    let max_len = [0usize, 16, 1 << 10, MAX_PAYLOAD_LEN, 1 << 30][usize::from(max_sel % 5)];
    let mut off = 0;
    while let Ok(Some(lp)) = split_logical(&stream[off..], max_len) {
        assert!(lp.consumed >= HEADER_LEN && off + lp.consumed <= stream.len());
        assert!(lp.payload.len() <= max_len);
        assert!(lp.payload.len() + HEADER_LEN <= lp.consumed);
        off += lp.consumed;
    }
});
