//! The shipped NMEA feeder and TLS-350 console configs are documentation: they must load.

use site_sim::nmea::FeederConfig;
use site_sim::tls350::{Console, ConsoleConfig};

fn read(name: &str) -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/sim/");
    std::fs::read_to_string(format!("{p}{name}")).expect("config file")
}

#[test]
fn shipped_feeder_config_loads() {
    let c = FeederConfig::from_toml_str(&read("nmea-truck.toml")).expect("feeder config");
    assert_eq!(c.talker, "GN");
    assert_eq!(c.truck.route.len(), 3);
}

#[test]
fn shipped_console_config_loads_and_answers() {
    let c = ConsoleConfig::from_toml_str(&read("tls350-station.toml")).expect("console config");
    let mut console = Console::new(c);
    let r = console.answer(b"i20200", "2406151200").expect("reply");
    assert!(r.starts_with(b"\x01i202002406151200011012406150800"));
}

#[test]
fn config_errors_are_reported_together() {
    let e = FeederConfig::from_toml_str("talker = \"gps\"\nsentences = [\"GSV\"]\n").unwrap_err();
    assert!(e.contains("talker") && e.contains("GSV"), "{e}");
    let e = ConsoleConfig::from_toml_str(
        "[[tank]]\nnumber = 0\nvolume = 1.0\n[[tank]]\nnumber = 0\nvolume = 2.0\n",
    )
    .unwrap_err();
    assert!(e.contains("tank 0"), "{e}");
}
