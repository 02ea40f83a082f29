//! Any bytes from a serial line: framed with a small max_line, each line parsed as regex, JSON
//! and NMEA. Nothing may panic, and no line longer than max_line may come out of the framer.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use fieldlink_core::config::devices::{
    DataType, LineFormat, LineSettings, PointSettings, Real, Source,
};
use fieldlink_serial::line_protocol::{Frame, Framer, LineParser, nmea_sentence};
use libfuzzer_sys::fuzz_target;

fn point(name: &str, data_type: DataType) -> PointSettings {
    PointSettings {
        name: name.into(),
        source: Source::Field(name.into()),
        data_type,
        scale: Real(1.0),
        offset: Real(0.0),
        unit: None,
        deadband: Real(0.0),
        interval: Duration::from_secs(1),
        heartbeat: None,
        writable: false,
        min: None,
        max: None,
    }
}

/// Built once: compiling the patterns on every input would slow the fuzzer tenfold.
fn parsers() -> &'static [Option<LineParser>; 3] {
    static PARSERS: OnceLock<[Option<LineParser>; 3]> = OnceLock::new();
    PARSERS.get_or_init(|| {
        let points = [
            point("v", DataType::F64),
            point("n", DataType::I32),
            point("b", DataType::Bool),
            point("a.b", DataType::String { len: 16 }),
        ];
        let settings = |format| LineSettings {
            format,
            delimiter: b'\n',
            max_line: 64,
        };
        [
            LineParser::new(&settings(LineFormat::Json), &points),
            LineParser::new(
                &settings(LineFormat::Regex {
                    pattern: r"(?P<v>[-0-9.e]+),(?P<n>-?\d+),(?P<b>\w+)".into(),
                }),
                &points,
            ),
            LineParser::new(
                &settings(LineFormat::Nmea {
                    pattern: r"^GP\w+,(?P<v>[^,]*),(?P<n>[^,]*)".into(),
                }),
                &points,
            ),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let parsers = parsers();
    let mut framer = Framer::new(b'\n', 64);
    let mut out = Vec::new();
    // Feed in two chunks, split where the first byte says, to exercise partial lines.
    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    for chunk in [&data[..split], &data[split..]] {
        framer.push(chunk, |frame| {
            if let Frame::Line(line) = frame {
                assert!(line.len() <= 64);
                for parser in parsers.iter().flatten() {
                    let _ = parser.parse(line, &mut out);
                }
                if let Ok(text) = std::str::from_utf8(line) {
                    let _ = nmea_sentence(text);
                }
            }
        });
    }
});
