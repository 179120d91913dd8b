use super::*;
use crate::synth::{readings_json, TankFarm, XorShift64};

fn reading(tag: u32, ts_ms: i64, value: Option<WireValue>) -> WireReading {
    WireReading {
        tag,
        ts_ms,
        value,
        quality: Quality::Good,
        status: None,
        error: None,
        counter: None,
    }
}

fn bad(tag: u32, ts_ms: i64, quality: Quality, error: &str) -> WireReading {
    WireReading {
        tag,
        ts_ms,
        value: None,
        quality,
        status: None,
        error: Some(error.to_string()),
        counter: None,
    }
}

/// A comparable rendering that tells apart every float bit pattern (Debug alone shows all NaNs
/// alike).
fn canon(b: &Batch) -> String {
    fn v(v: &WireValue) -> String {
        match v {
            WireValue::Float(f) => format!("Float({f:?}/{:#018x})", f.to_bits()),
            other => format!("{other:?}"),
        }
    }
    let mut s = format!(
        "{} {} {} {} {}\n",
        b.site, b.agent, b.batch_id, b.config_hash, b.created_ms
    );
    for r in &b.readings {
        let c = match r.counter {
            Some(Counter::Rollover { delta }) => format!("R{:#x}", delta.to_bits()),
            Some(Counter::Reset { previous }) => format!("Z{:#x}", previous.to_bits()),
            None => "-".into(),
        };
        s += &format!(
            "{} {} {:?} {:?} {:?} {:?} {c}\n",
            r.tag,
            r.ts_ms,
            r.value.as_ref().map(v),
            r.quality,
            r.status,
            r.error
        );
    }
    for e in &b.events {
        s += &format!("E {} {} {} {}", e.source, e.kind, e.seq, e.ts_ms);
        for (n, x) in &e.fields {
            s += &format!(" {n}={}", v(x));
        }
        s += "\n";
    }
    for g in &b.gaps {
        s += &format!("G {g:?}\n");
    }
    s
}

/// Encode both ways, decode, and compare with the input's readings sorted by (tag, ts).
fn round_trip(b: &Batch) -> Vec<u8> {
    let mut expected = b.clone();
    expected.sort_readings();
    let mut last = Vec::new();
    for c in [
        Compression::None,
        Compression::Zstd(DEFAULT_ZSTD_LEVEL),
        Compression::Zstd(1),
    ] {
        let bytes = encode_with(b, c).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(canon(&back), canon(&expected), "{c:?}");
        assert_eq!(
            decode_identity(&bytes).unwrap(),
            (b.site.clone(), b.agent.clone(), b.batch_id)
        );
        last = bytes;
    }
    last
}

fn empty() -> Batch {
    Batch::new("site-1", "agent-1", 7, "cfg", 1_700_000_000_000)
}

/// A small batch that touches every feature of the format.
fn sample() -> Batch {
    let t0 = 1_700_000_000_000;
    let mut b = Batch::new("terminal-01", "gw-1", 42, "sha256:0123abcd", t0 + 3_000);
    b.readings = vec![
        reading(0, t0, Some(WireValue::Float(12.345))),
        reading(1, t0, Some(WireValue::Int(-5))),
        reading(2, t0, Some(WireValue::Bool(true))),
        reading(0, t0 + 1000, Some(WireValue::Float(12.346))),
        reading(1, t0 + 1000, Some(WireValue::Int(-4))),
        reading(2, t0 + 1000, Some(WireValue::Bool(false))),
        reading(3, t0, Some(WireValue::UInt(u64::MAX))),
        reading(4, t0, Some(WireValue::Text("ÉTAT OK".into()))),
        reading(5, t0, Some(WireValue::Float(f64::from(835.2f32)))),
        WireReading {
            status: Some(2),
            ..bad(6, t0 + 2000, Quality::BadDevice, "exception 2")
        },
        bad(7, t0 + 2000, Quality::BadCommunication, "timeout"),
        bad(8, t0 + 2000, Quality::Stale, "unit skipped"),
        bad(9, t0 + 2000, Quality::BadDecode, "short frame"),
        WireReading {
            counter: Some(Counter::Rollover { delta: 1.5 }),
            ..reading(10, t0 + 2000, Some(WireValue::Float(0.75)))
        },
        WireReading {
            counter: Some(Counter::Reset { previous: 1234.5 }),
            ..reading(11, t0 + 2000, Some(WireValue::Float(0.0)))
        },
    ];
    b.events = vec![Event {
        source: "gantry-3".into(),
        kind: "gantry-batch".into(),
        seq: 1017,
        ts_ms: t0 + 2500,
        fields: vec![
            ("ticket".into(), WireValue::Text("T-88812".into())),
            ("volume_l".into(), WireValue::Float(31_250.5)),
            ("product".into(), WireValue::Int(3)),
            ("meter_ok".into(), WireValue::Bool(true)),
            ("counter".into(), WireValue::UInt(1 << 40)),
        ],
    }];
    b.gaps = vec![
        Gap {
            tags: vec![],
            from_ms: t0 - 60_000,
            to_ms: t0 - 1_000,
            count: 600,
            count_known: true,
            reason: GapReason::BufferFull,
        },
        Gap {
            tags: vec![3, 4],
            from_ms: t0 - 1_000,
            to_ms: t0,
            count: 2,
            count_known: true,
            reason: GapReason::Other("operator purge".into()),
        },
    ];
    b
}

#[test]
fn empty_batch_round_trips() {
    let bytes = round_trip(&empty());
    assert!(bytes.len() < 48, "{} bytes", bytes.len());
}

#[test]
fn sample_batch_round_trips() {
    round_trip(&sample());
}

#[test]
fn every_value_kind_round_trips() {
    let mut b = empty();
    let t = b.created_ms;
    let floats = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.1,
        0.1 + 0.2,
        12.345,
        -12.345,
        1e-9,
        123_456_789.123,
        4_294_967.295,
        1e300,
        -1e300,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        f64::EPSILON,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7ff0_0000_dead_beef), // NaN with a payload
        9_007_199_254_740_993.0,
        f64::from(0.1f32),
        std::f64::consts::PI,
    ];
    for (i, f) in floats.iter().enumerate() {
        b.readings
            .push(reading(0, t + i as i64, Some(WireValue::Float(*f))));
    }
    for (i, v) in [0, 1, -1, i64::MAX, i64::MIN, 42, i64::MIN, i64::MAX, 0]
        .iter()
        .enumerate()
    {
        b.readings
            .push(reading(1, t + i as i64, Some(WireValue::Int(*v))));
    }
    for (i, v) in [0, u64::MAX, 1, u64::MAX / 2, 0, u64::MAX]
        .iter()
        .enumerate()
    {
        b.readings
            .push(reading(2, t + i as i64, Some(WireValue::UInt(*v))));
    }
    for (i, v) in [true, true, false, true].iter().enumerate() {
        b.readings
            .push(reading(3, t + i as i64, Some(WireValue::Bool(*v))));
    }
    for (i, s) in ["", "a", "ünïcødé ✓", &"x".repeat(MAX_STRING_BYTES)]
        .iter()
        .enumerate()
    {
        b.readings.push(reading(
            4,
            t + i as i64,
            Some(WireValue::Text(s.to_string())),
        ));
    }
    // One tag that changes type from reading to reading.
    let mixed = [
        Some(WireValue::Float(1.5)),
        Some(WireValue::Int(7)),
        None,
        Some(WireValue::Float(1.25)),
        Some(WireValue::Float(f64::NAN)),
        Some(WireValue::Float(1.5)),
        Some(WireValue::UInt(3)),
        Some(WireValue::Text("x".into())),
        Some(WireValue::Int(8)),
    ];
    for (i, v) in mixed.into_iter().enumerate() {
        b.readings.push(reading(u32::MAX, t + i as i64, v));
    }
    round_trip(&b);
}

#[test]
fn random_float_bit_patterns_round_trip_exactly() {
    let mut rng = XorShift64::new(7);
    let mut b = empty();
    for i in 0..5_000 {
        let f = match i % 4 {
            0 => f64::from_bits(rng.next_u64()),
            1 => (rng.below(2_000_000) as i64 - 1_000_000) as f64 / POW10[rng.below(10) as usize],
            2 => f64::from(f32::from_bits(rng.next_u64() as u32)),
            _ => rng.below(1000) as f64 * 0.001,
        };
        b.readings.push(reading(
            (i % 7) as u32,
            i64::from(i),
            Some(WireValue::Float(f)),
        ));
    }
    round_trip(&b);
}

#[test]
fn qualities_and_optional_columns_round_trip() {
    let mut b = empty();
    for (i, q) in Quality::ALL.into_iter().enumerate() {
        assert_eq!(Quality::from_code(q.code()), Some(q));
        assert_eq!(Quality::from_name(q.as_str()), Some(q));
        assert_eq!(q.code() as usize, i);
        b.readings.push(WireReading {
            tag: 9,
            ts_ms: i as i64,
            value: None,
            quality: q,
            status: (i % 2 == 0).then_some(i as u32 * 1000),
            error: (i % 3 == 0).then(|| format!("error {i}")),
            counter: None,
        });
    }
    assert_eq!(Quality::from_code(6), None);
    // Only one optional column present.
    let mut only_counters = empty();
    only_counters.readings = vec![
        reading(1, 0, Some(WireValue::Float(1.0))),
        WireReading {
            counter: Some(Counter::Rollover { delta: f64::NAN }),
            ..reading(1, 1, Some(WireValue::Float(0.5)))
        },
        WireReading {
            counter: Some(Counter::Reset { previous: -0.0 }),
            ..reading(1, 2, Some(WireValue::Float(0.0)))
        },
    ];
    round_trip(&b);
    round_trip(&only_counters);
}

#[test]
fn readings_come_back_sorted_by_tag_then_time_stably() {
    let mut b = empty();
    b.readings = vec![
        reading(5, 300, Some(WireValue::Int(1))),
        reading(1, 200, Some(WireValue::Int(2))),
        reading(5, 100, Some(WireValue::Int(3))),
        reading(1, 200, Some(WireValue::Int(4))), // same (tag, ts) as the second: kept after it
        reading(1, i64::MIN, Some(WireValue::Int(5))),
        reading(1, i64::MAX, Some(WireValue::Int(6))),
        reading(0, -5, None),
    ];
    let back = decode(&encode(&b).unwrap()).unwrap();
    let keys: Vec<(u32, i64, Option<WireValue>)> = back
        .readings
        .iter()
        .map(|r| (r.tag, r.ts_ms, r.value.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            (0, -5, None),
            (1, i64::MIN, Some(WireValue::Int(5))),
            (1, 200, Some(WireValue::Int(2))),
            (1, 200, Some(WireValue::Int(4))),
            (1, i64::MAX, Some(WireValue::Int(6))),
            (5, 100, Some(WireValue::Int(3))),
            (5, 300, Some(WireValue::Int(1))),
        ]
    );
    round_trip(&b);
}

#[test]
fn events_and_gaps_round_trip() {
    let mut b = empty();
    for seq in 0..50u64 {
        b.events.push(Event {
            source: format!("gantry-{}", seq % 3),
            kind: if seq % 2 == 0 {
                "gantry-batch"
            } else {
                "delivery"
            }
            .into(),
            seq,
            ts_ms: 1_700_000_000_000 - seq as i64 * 7_777,
            fields: (0..(seq % 4))
                .map(|i| (format!("f{i}"), WireValue::Int(i as i64 - 2)))
                .collect(),
        });
    }
    b.events.push(Event {
        source: String::new(),
        kind: String::new(),
        seq: u64::MAX,
        ts_ms: i64::MIN,
        fields: vec![("nan".into(), WireValue::Float(f64::NAN))],
    });
    b.gaps = vec![
        Gap {
            tags: vec![],
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            count: u64::MAX,
            count_known: true,
            reason: GapReason::BufferAge,
        },
        Gap {
            tags: vec![u32::MAX, 0, 17],
            from_ms: 5,
            to_ms: 1,
            count: 0,
            count_known: true,
            reason: GapReason::MissedEvent,
        },
        Gap {
            tags: vec![1],
            from_ms: 0,
            to_ms: 0,
            count: 1,
            count_known: true,
            reason: GapReason::BufferFull,
        },
        Gap {
            tags: vec![],
            from_ms: 0,
            to_ms: 0,
            count: 1,
            count_known: true,
            reason: GapReason::Other(String::new()),
        },
    ];
    round_trip(&b);
}

#[test]
fn header_can_be_read_without_the_body() {
    let bytes = encode(&sample()).unwrap();
    let h = peek_header(&bytes).unwrap();
    assert_eq!(h.version, FORMAT_VERSION);
    assert_eq!(h.flags, FLAG_ZSTD);
    assert_eq!(
        (h.site.as_str(), h.agent.as_str(), h.batch_id),
        ("terminal-01", "gw-1", 42)
    );
    assert!(h.payload_len < h.body_len);
    let raw = encode_with(&sample(), Compression::None).unwrap();
    let h = peek_header(&raw).unwrap();
    assert_eq!((h.flags, h.payload_len), (0, h.body_len));
}

/// The exact bytes of a small batch, uncompressed (zstd's output may change between library
/// versions without the format changing, so the layout is pinned without it).
///
/// CHANGING THESE BYTES MEANS A NEW FORMAT VERSION: old agents and ingests in the field still
/// speak version 1.
#[rustfmt::skip]
const GOLDEN_RAW: &str = concat!(
    "465342", "01", "00",         // magic, version 1, flags (not compressed)
    "027331", "026731", "0b",     // site "s1", agent "g1", batch id 11
    "31", "31",                   // body length 49, payload length 49
    "026331", "1e",               // config hash "c1", created_ms 15 (zz 30)
    "04",                         // 4 readings
    "02", "0103", "0401",         // 2 tag runs: tag 1 × 3, tag 5 (1 + 4) × 1
    "08", "00", "0c",             // tag 1: ts 19 (15 + 4, zz 8), 19 (dd 0), 25 (dd 6, zz 12)
    "10",                         // tag 5: ts 27 (19 + 8, zz 16)
    "0003", "0101",               // quality: good × 3, bad-communication × 1
    "1302", "0301", "0001",       // types: decimal k=3 × 2, int × 1, none × 1
    "f2c001", "02", "0b",         // 12.345 → m 12345 (zz 24690), 12.346 → +1 (zz 2), int −6
    "02", "08", "0174",           // optional: error column; bitmap 0b1000; "t"
    "01", "0165", "016b", "05",   // 1 event: source "e", kind "k", seq 5,
    "00", "00",                   //   ts 15 (created + 0), no fields
    "01", "00", "00", "02", "03", // 1 gap: all tags, from 15 (+0), to 16 (+1), 3 lost,
    "03", "0120",                 //   reason other " "
    "65bb7905",                   // CRC-32C of all the above
);

fn golden_batch() -> Batch {
    let mut b = Batch::new("s1", "g1", 11, "c1", 15);
    b.readings = vec![
        reading(1, 19, Some(WireValue::Float(12.345))),
        reading(1, 25, Some(WireValue::Int(-6))),
        reading(1, 19, Some(WireValue::Float(12.346))),
        bad(5, 27, Quality::BadCommunication, "t"),
    ];
    b.events = vec![Event {
        source: "e".into(),
        kind: "k".into(),
        seq: 5,
        ts_ms: 15,
        fields: vec![],
    }];
    b.gaps = vec![Gap {
        tags: vec![],
        from_ms: 15,
        to_ms: 16,
        count: 3,
        count_known: true,
        reason: GapReason::Other(" ".into()),
    }];
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Version 1 (no buffer epoch) frames keep decoding, as epoch 0.
#[test]
fn golden_bytes_of_a_small_version_1_batch() {
    let mut expected = golden_batch();
    expected.sort_readings();
    assert_eq!(decode(&unhex(GOLDEN_RAW)).unwrap(), expected);
    assert_eq!(peek_header(&unhex(GOLDEN_RAW)).unwrap().buffer_epoch, 0);
}

/// `golden_batch()` with buffer epoch 300 and a second gap of unknown count, as version 2.
const GOLDEN_RAW_V2: &str = "46534202000273310267310bac0247470263311e04020103040108000c1000030101130203010001f2c001020b02080174010165016b050000020000020303012000000a008310756e636c65616e2d73687574646f776e27e98361";

fn golden_batch_v2() -> Batch {
    let mut b = golden_batch();
    b.buffer_epoch = 300;
    b.gaps.push(Gap::uncounted(
        vec![],
        15,
        20,
        GapReason::Other("unclean-shutdown".into()),
    ));
    b
}

#[test]
fn golden_bytes_of_a_small_batch() {
    let bytes = encode_with(&golden_batch_v2(), Compression::None).unwrap();
    assert_eq!(hex(&bytes), GOLDEN_RAW_V2);
    let mut expected = golden_batch_v2();
    expected.sort_readings();
    let back = decode(&unhex(GOLDEN_RAW_V2)).unwrap();
    assert_eq!(back, expected);
    assert_eq!(peek_header(&bytes).unwrap().buffer_epoch, 300);
}

#[test]
fn version_1_unclean_shutdown_with_count_0_reads_as_unknown() {
    // A version 1 frame: the golden batch with its gap renamed; count 0 meant "unknown".
    let mut v1 = golden_batch();
    v1.gaps[0].count = 0;
    v1.gaps[0].reason = GapReason::Other("unclean-shutdown".into());
    let mut bytes = encode_with(&v1, Compression::None).unwrap();
    // Rewrite as version 1: drop the epoch varint (0 → one byte) after the batch id.
    let epoch_at = 3 + 1 + 1 + 3 + 3 + 1;
    assert_eq!(bytes[epoch_at], 0);
    bytes.remove(epoch_at);
    bytes[3] = 1;
    let n = bytes.len() - 4;
    let crc = crate::codec::crc32c(&bytes[..n]).to_be_bytes();
    bytes[n..].copy_from_slice(&crc);
    let back = decode(&bytes).unwrap();
    assert!(!back.gaps[0].count_known);
}

#[test]
fn unknown_count_with_a_count_is_corrupt() {
    let mut b = golden_batch();
    b.gaps[0].count_known = false; // count stays 3: the encoder writes 0, so forge the bytes
    let mut bytes = encode_with(&b, Compression::None).unwrap();
    let good = encode_with(&golden_batch(), Compression::None).unwrap();
    // The two frames differ only in the gap's reason byte (0x83 vs 0x03) and count (0 vs 3).
    let diff: Vec<usize> = (0..bytes.len() - 4)
        .filter(|&i| bytes[i] != good[i])
        .collect();
    assert_eq!(diff.len(), 2, "{diff:?}");
    bytes[diff[0]] = 3;
    let n = bytes.len() - 4;
    let crc = crate::codec::crc32c(&bytes[..n]).to_be_bytes();
    bytes[n..].copy_from_slice(&crc);
    assert!(matches!(decode(&bytes), Err(WireError::Corrupt(_))));
}

#[test]
fn content_digest_ignores_framing_and_sees_content() {
    let a = sample();
    let mut b = sample();
    b.created_ms += 1000;
    b.batch_id += 1;
    b.buffer_epoch = 99;
    b.readings.reverse();
    assert_eq!(a.content_digest(), b.content_digest());
    let back = decode(&encode(&a).unwrap()).unwrap();
    assert_eq!(back.content_digest(), a.content_digest());
    let mut c = sample();
    if let Some(WireValue::Float(f)) = c.readings[0].value.as_mut() {
        *f += 1.0;
    } else {
        c.readings[0].ts_ms += 1;
    }
    assert_ne!(a.content_digest(), c.content_digest());
    let mut d = sample();
    d.gaps.clear();
    assert_ne!(a.content_digest(), d.content_digest());
}

/// A zstd-compressed batch as version 1 wrote it: must keep decoding.
/// (`sample()` encoded by version 1 with zstd 1.5.7 at level 9.)
const GOLDEN_ZSTD: &str = concat!(
    "46534201010b7465726d696e616c2d30310467772d312aca02ad0228b52ffd60",
    "4a001d090054100f7368613235363a3031323361626364f0ceabfef9620f0c00",
    "0201ef2ed00f000000a01f000904010301000213020302060105010004120110",
    "01f2c0010209020108c389544154204f4b408a1999a000000096010007000202",
    "001e0b657863657074696f6e20320774696d656f75740c756e697420736b6970",
    "7065640b73686f7274206672616d650060003ff80140934a0867616e7472792d",
    "330c6261746368f907e70705067469636b65740607542d383838313208766f6c",
    "756d655f6c0540de84000770726f647563740306086d657465725f6f6b020763",
    "6f756e7465720480200200afd807f09907d80400020304bf3ed00f02030e6f70",
    "657261746f722070757267650b00e3e1ae30e1818c5883ba3d0c13739aa960b8",
    "fb74c383b1c7ba3195cf5649",
);

#[test]
fn golden_compressed_batch_decodes() {
    let bytes = unhex(GOLDEN_ZSTD);
    assert_eq!(peek_header(&bytes).unwrap().flags, FLAG_ZSTD);
    let back = decode(&bytes).unwrap();
    let mut expected = sample();
    expected.sort_readings();
    assert_eq!(canon(&back), canon(&expected));
}

#[test]
fn unsupported_version_and_bad_magic() {
    let mut bytes = encode(&sample()).unwrap();
    bytes[3] = 3;
    assert_eq!(decode(&bytes), Err(WireError::UnsupportedVersion(3)));
    assert_eq!(peek_header(&bytes), Err(WireError::UnsupportedVersion(3)));
    bytes[3] = 0;
    assert_eq!(decode(&bytes), Err(WireError::UnsupportedVersion(0)));
    for bad in [&b"FSX\x01"[..], b"{\"v\":1}", b"x"] {
        assert_eq!(decode(bad), Err(WireError::BadMagic));
    }
    for short in [&b""[..], b"F", b"FS", b"FSB"] {
        assert!(matches!(decode(short), Err(WireError::Truncated { .. })));
    }
}

#[test]
fn every_truncation_is_an_error() {
    for c in [Compression::None, Compression::Zstd(DEFAULT_ZSTD_LEVEL)] {
        let bytes = encode_with(&sample(), c).unwrap();
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{c:?} prefix {len}");
            assert!(peek_header(&bytes[..len]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(WireError::Corrupt(_))));
    }
}

#[test]
fn every_single_bit_flip_is_an_error() {
    for c in [Compression::None, Compression::Zstd(DEFAULT_ZSTD_LEVEL)] {
        let bytes = encode_with(&sample(), c).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&b).is_err(), "{c:?} bit {bit}");
        }
    }
}

/// The checksum stops corrupted frames early; these go past it by framing damaged bodies with
/// a correct checksum, so the body parser itself meets every defect.
#[test]
fn damaged_bodies_with_valid_checksums_never_panic() {
    let b = sample();
    let body = encode_body(&b).unwrap();
    let wrap = |body: &[u8]| {
        frame(
            0,
            &b.site,
            &b.agent,
            (b.buffer_epoch, b.batch_id),
            body.len(),
            body,
        )
    };
    assert!(decode(&wrap(&body)).is_ok());
    for len in 0..body.len() {
        assert!(decode(&wrap(&body[..len])).is_err(), "body prefix {len}");
    }
    for bit in 0..body.len() * 8 {
        let mut d = body.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        let _ = decode(&wrap(&d)); // may even decode: only a panic fails
    }
    for i in 0..body.len() {
        for v in [0x00, 0x7f, 0x80, 0xff] {
            let mut d = body.clone();
            d[i] = v;
            let _ = decode(&wrap(&d));
        }
    }
    // The same through zstd.
    let z = zstd::bulk::compress(&body, 3).unwrap();
    let zframe = |z: &[u8], len: usize| frame(FLAG_ZSTD, "s", "a", (0, 1), len, z);
    assert!(decode(&zframe(&z, body.len())).is_ok());
    assert!(matches!(
        decode(&zframe(&z, body.len() - 1)),
        Err(WireError::Decompress(_))
    ));
    assert!(matches!(
        decode(&zframe(&z, body.len() + 1)),
        Err(WireError::Corrupt(_))
    ));
    for bit in 0..z.len() * 8 {
        let mut d = z.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        let _ = decode(&zframe(&d, body.len()));
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = XorShift64::new(99);
    for i in 0..20_000 {
        let len = rng.below(300) as usize;
        let mut g: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 && g.len() >= 5 {
            g[..4].copy_from_slice(b"FSB\x01"); // get past magic and version
            g[4] = (rng.next_u64() & 1) as u8;
        }
        assert!(decode(&g).is_err());
        // Garbage bodies with a valid frame, raw and through zstd.
        let _ = decode(&frame(0, "s", "a", (0, 1), g.len(), &g));
        if let Ok(z) = zstd::bulk::compress(&g, 1) {
            let _ = decode(&frame(FLAG_ZSTD, "s", "a", (0, 1), g.len(), &z));
        }
    }
}

#[test]
fn huge_claimed_lengths_are_refused_before_allocating() {
    // body_len beyond the cap.
    let mut f = Vec::from(&b"FSB\x01\x01\x01s\x01a\x01"[..]);
    put_varint(&mut f, (MAX_BODY_BYTES + 1) as u64);
    assert!(matches!(
        decode(&f),
        Err(WireError::TooLarge {
            what: "batch body",
            ..
        })
    ));
    // payload_len far beyond the input.
    let mut f = Vec::from(&b"FSB\x01\x00\x01s\x01a\x01\x05"[..]);
    put_varint(&mut f, 1 << 20);
    assert!(matches!(decode(&f), Err(WireError::Truncated { .. })));
    // A zstd bomb: 20 MiB of zeros in a few hundred bytes, claiming 1 KiB or the maximum.
    let bomb = zstd::bulk::compress(&vec![0u8; 20 << 20], 19).unwrap();
    assert!(bomb.len() < 4096);
    for claimed in [1024, MAX_BODY_BYTES] {
        assert!(matches!(
            decode(&frame(FLAG_ZSTD, "s", "a", (0, 1), claimed, &bomb)),
            Err(WireError::Decompress(_))
        ));
    }
    // A body claiming a million readings in a few bytes.
    let mut body = Vec::new();
    put_str(&mut body, "c");
    put_zigzag(&mut body, 0);
    put_varint(&mut body, MAX_READINGS as u64);
    assert!(matches!(
        decode(&frame(0, "s", "a", (0, 1), body.len(), &body)),
        Err(WireError::Truncated { .. })
    ));
    put_varint(&mut body, u64::MAX);
    let mut body2 = Vec::new();
    put_str(&mut body2, "c");
    put_zigzag(&mut body2, 0);
    put_varint(&mut body2, MAX_READINGS as u64 + 1);
    assert!(matches!(
        decode(&frame(0, "s", "a", (0, 1), body2.len(), &body2)),
        Err(WireError::TooLarge { .. })
    ));
    // A string length of 2^63.
    let mut body = Vec::new();
    put_varint(&mut body, 1 << 63);
    assert!(matches!(
        decode(&frame(0, "s", "a", (0, 1), body.len(), &body)),
        Err(WireError::TooLarge {
            what: "config hash",
            ..
        })
    ));
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    let mut b = empty();
    b.site = "a/b".into();
    assert!(matches!(encode(&b), Err(WireError::BadId(_))));
    let mut b = empty();
    b.agent = String::new();
    assert!(matches!(encode(&b), Err(WireError::BadId(_))));
    let mut b = empty();
    b.readings.push(bad(
        1,
        0,
        Quality::BadDecode,
        &"x".repeat(MAX_STRING_BYTES + 1),
    ));
    assert!(matches!(
        encode(&b),
        Err(WireError::TooLarge { what: "error", .. })
    ));
    let mut b = empty();
    b.events.push(Event {
        source: "s".repeat(MAX_STRING_BYTES + 1),
        kind: "k".into(),
        seq: 0,
        ts_ms: 0,
        fields: vec![],
    });
    assert!(encode(&b).is_err());
    let mut b = empty();
    // Incompressible text over 16 MiB.
    let mut rng = XorShift64::new(3);
    for i in 0..300 {
        let s: String = (0..MAX_STRING_BYTES)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect();
        b.readings.push(reading(i, 0, Some(WireValue::Text(s))));
    }
    assert!(matches!(
        encode(&b),
        Err(WireError::TooLarge {
            what: "batch body",
            ..
        })
    ));
}

#[test]
fn bytes_per_reading_on_typical_tank_data() {
    let batch = TankFarm::new(200, 60).batch();
    let n = batch.readings.len();
    assert_eq!(n, 12_000);
    let bytes = encode(&batch).unwrap();
    let json = readings_json(&batch);
    let json_zstd = zstd::bulk::compress(&json, DEFAULT_ZSTD_LEVEL).unwrap();
    let per = bytes.len() as f64 / n as f64;
    println!(
        "{n} readings: batch {} B = {per:.2} B/reading; JSON {:.1} B/reading ({:.0}x larger); \
         JSON+zstd {:.2} B/reading ({:.1}x larger)",
        bytes.len(),
        json.len() as f64 / n as f64,
        json.len() as f64 / bytes.len() as f64,
        json_zstd.len() as f64 / n as f64,
        json_zstd.len() as f64 / bytes.len() as f64,
    );
    assert!(per < 6.0, "{per:.2} B/reading");
    let mut expected = batch.clone();
    expected.sort_readings();
    assert_eq!(canon(&decode(&bytes).unwrap()), canon(&expected));
}

#[test]
fn decoded_reading_size() {
    // MAX_READINGS' doc says a decoded reading takes about 100 bytes.
    let size = std::mem::size_of::<WireReading>();
    assert!((64..=112).contains(&size), "{size}");
}

#[test]
fn reframe_changes_the_identity_and_keeps_the_body() {
    let bytes = encode(&sample()).unwrap();
    let out = reframe(&bytes, ("site-2", "agent-2"), 77, 9).unwrap();
    let got = decode(&out).unwrap();
    let mut want = decode(&bytes).unwrap();
    want.site = "site-2".into();
    want.agent = "agent-2".into();
    want.batch_id = 77;
    want.buffer_epoch = 9;
    assert_eq!(canon(&got), canon(&want));
    // The compressed body is the stored one, byte for byte.
    let (h, p) = parse_frame(&bytes).unwrap();
    let (h2, p2) = parse_frame(&out).unwrap();
    assert_eq!((p, h.body_len, h.flags), (p2, h2.body_len, h2.flags));
    // A damaged frame is refused, never re-signed; so is a bad id.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(reframe(&bad, ("s", "a"), 1, 1).is_err());
    assert!(reframe(&bytes, ("", "a"), 1, 1).is_err());
}
