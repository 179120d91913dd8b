//! Serial-protocol parser throughput: NMEA 0183 sentences (decode + merge into the fix) and
//! TLS-350 replies (checksum + i201 / i202 decode), measured in one run so the figures compare.
//!
//!     cargo bench -p edge-agent --bench serial_parsers
//!
//! A GPS sends ~3 sentences a second and a console a few replies a minute, so these numbers
//! are headroom: how little CPU a gateway spends per device.

use std::hint::black_box;
use std::time::{Duration, Instant};

use edge_agent::drivers::gps::fix::FixState;
use edge_agent::drivers::gps::nmea;
use edge_agent::drivers::tls350::frame;

fn rate(label: &str, items: u64, bytes: u64, took: Duration) {
    let s = took.as_secs_f64();
    println!(
        "{label:<44} {:>12.0} /s  {:>8.1} MB/s  ({items} in {:.2} s)",
        items as f64 / s,
        bytes as f64 / s / 1e6,
        s
    );
}

fn main() {
    // One epoch of a receiver (RMC, GGA, VTG, GSA, GSV) repeated.
    let epoch = [
        nmea::frame("GNRMC,101500.00,A,3327.0000,S,07039.6000,W,10.80,045.0,150624,,,A"),
        nmea::frame("GNGGA,101500.00,3327.0000,S,07039.6000,W,1,08,0.9,520.0,M,30.0,M,,"),
        nmea::frame("GNVTG,045.0,T,,M,10.80,N,20.00,K,A"),
        nmea::frame("GNGSA,A,3,01,03,07,08,11,13,17,19,,,,,1.5,0.9,1.2"),
        nmea::frame("GPGSV,3,1,11,01,45,120,40,03,30,200,38,07,60,050,44,08,15,310,30"),
    ];
    let n: u64 = 2_000_000;
    let mut bytes = 0u64;
    let mut fix = FixState::default();
    let now = Instant::now();
    let t0 = Instant::now();
    for i in 0..n {
        let s = &epoch[(i % 5) as usize];
        bytes += s.len() as u64;
        if let Ok(sentence) = nmea::parse(s.as_bytes()) {
            fix.apply(&sentence, now, 0);
        }
    }
    rate("NMEA parse + merge (mixed epoch)", n, bytes, t0.elapsed());
    black_box(&fix);

    // A corrupted sentence is rejected at the checksum.
    let bad = epoch[1].replace("*", "0*");
    let t0 = Instant::now();
    for _ in 0..n {
        black_box(nmea::parse(black_box(bad.as_bytes())).is_err());
    }
    rate(
        "NMEA reject (bad checksum)",
        n,
        n * bad.len() as u64,
        t0.elapsed(),
    );

    // An all-tanks inventory of a large site (20 tanks) and a full delivery report (20 × 10).
    let mut inv = String::from("i201002406151435");
    let mut del = String::from("i202002406151435");
    for t in 1..=20u8 {
        inv.push_str(&format!("{t:02}1000007"));
        for k in 0..7 {
            inv.push_str(&frame::hex_float(1000.0 * f32::from(t) + k as f32));
        }
        del.push_str(&format!("{t:02}110"));
        for d in 0..10u8 {
            del.push_str(&format!("24061{d}0800"));
            del.push_str(&format!("24061{d}0835"));
            del.push_str("0A");
            for k in 0..10 {
                del.push_str(&frame::hex_float(100.0 * f32::from(d) + k as f32));
            }
        }
    }
    for (label, body, echo, count) in [
        ("TLS-350 i201 reply, 20 tanks", &inv, "i20100", 200_000u64),
        (
            "TLS-350 i202 reply, 20 tanks x 10 deliveries",
            &del,
            "i20200",
            20_000,
        ),
    ] {
        let f = frame::encode_reply(body);
        let t0 = Instant::now();
        for _ in 0..count {
            let data = frame::open_reply(black_box(&f), echo).unwrap_or(&[]);
            if echo == "i20100" {
                black_box(frame::parse_inventory(data).map(|i| i.tanks.len()).ok());
            } else {
                black_box(
                    frame::parse_deliveries(data)
                        .map(|r| r.deliveries.len())
                        .ok(),
                );
            }
        }
        rate(label, count, count * f.len() as u64, t0.elapsed());
    }
}
