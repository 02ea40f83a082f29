//! MQTT packets as bytes, for clients that must send exactly what a test says (the broker's
//! hostile-client tests) or spend nothing per message (the broker bench's load generator).

/// MQTT's variable byte integer.
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A length-prefixed string.
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A whole packet: first byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// In the body of a PUBLISH whose first byte is `first`: its packet id (QoS 1 and 2), and
/// where its payload starts (after the properties when `v5`). `None` if the body is short.
pub fn publish_parts(first: u8, body: &[u8], v5: bool) -> Option<(Option<[u8; 2]>, usize)> {
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic_len;
    let pkid = if (first >> 1) & 3 > 0 {
        at += 2;
        Some([*body.get(at - 2)?, *body.get(at - 1)?])
    } else {
        None
    };
    if v5 {
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let byte = *body.get(at)?;
            at += 1;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        at += len;
    }
    (at <= body.len()).then_some((pkid, at))
}
