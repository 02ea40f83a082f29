//! Any bytes a client could send the broker's edge: the CONNECT peek (length and protocol
//! level before the frame is complete), the PUBLISH peek (QoS, packet id), both protocols'
//! packet reads, and each publish written again for 3.1.1 and MQTT 5 subscribers (an MQTT 5
//! publish's properties dropped for 3.1.1). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fieldlink_broker::fuzz_frames(data);
});
