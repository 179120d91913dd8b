//! The console's state and its answers: commands in, computer-format replies out. Pure: the
//! caller gives the console time. Encoding is written independently of the agent's decoder, so
//! each checks the other.

use super::config::{ConsoleConfig, DeliveryConfig, TankConfig};

const SOH: u8 = 0x01;
const ETX: u8 = 0x03;

/// 8 hex digits of an IEEE-754 single, big-endian.
pub fn hex_float(v: f32) -> String {
    format!("{:08X}", v.to_bits())
}

/// `<SOH>body&&CCCC<ETX>`, CCCC making every byte from SOH through `&&` sum to 0 (mod 2^16).
pub fn reply(body: &str, corrupt: bool) -> Vec<u8> {
    let mut f = vec![SOH];
    f.extend_from_slice(body.as_bytes());
    f.extend_from_slice(b"&&");
    let sum = f.iter().fold(0u16, |a, &b| a.wrapping_add(u16::from(b)));
    let mut c = sum.wrapping_neg();
    if corrupt {
        c ^= 0x0101;
    }
    f.extend_from_slice(format!("{c:04X}").as_bytes());
    f.push(ETX);
    f
}

/// The unsupported-command answer.
pub const UNSUPPORTED: &[u8] = b"\x019999FF1B\x03";

/// A simulated console.
#[derive(Debug, Clone)]
pub struct Console {
    cfg: ConsoleConfig,
    replies: u64,
    /// Commands answered, by function (`i201`, `i202`, other).
    pub answered: std::collections::BTreeMap<String, u64>,
}

impl Console {
    /// From a validated config.
    pub fn new(cfg: ConsoleConfig) -> Self {
        Console {
            cfg,
            replies: 0,
            answered: Default::default(),
        }
    }

    /// The config (tanks, faults) as it is now.
    pub fn config(&self) -> &ConsoleConfig {
        &self.cfg
    }

    /// Change tanks or faults while serving.
    pub fn config_mut(&mut self) -> &mut ConsoleConfig {
        &mut self.cfg
    }

    /// Length of a command after SOH (security code + `i201TT`).
    pub fn command_len(&self) -> usize {
        self.cfg.security_code.as_ref().map_or(0, String::len) + 6
    }

    /// Record a delivery into tank `n` (keeps the last ten, like a console) and set its volume.
    pub fn add_delivery(&mut self, n: u8, d: DeliveryConfig) -> bool {
        let Some(t) = self.cfg.tanks.iter_mut().find(|t| t.number == n) else {
            return false;
        };
        t.volume = d.end_volume;
        t.deliveries.push(d);
        if t.deliveries.len() > 10 {
            t.deliveries.remove(0);
        }
        true
    }

    /// Answer `cmd` (the bytes after SOH) at console time `now` (`YYMMDDHHmm`); `None` when
    /// silent.
    pub fn answer(&mut self, cmd: &[u8], now: &str) -> Option<Vec<u8>> {
        if self.cfg.faults.silent {
            return None;
        }
        let code_len = self.cfg.security_code.as_ref().map_or(0, String::len);
        let ok_code = self
            .cfg
            .security_code
            .as_ref()
            .is_none_or(|c| cmd.get(..code_len) == Some(c.as_bytes()));
        if !ok_code {
            // "When a security code is enabled … it must be used in any commands …, or else the
            // console will not respond" (Veeder-Root serial interface manual, §4).
            return None;
        }
        let cmd = cmd.get(code_len..).unwrap_or(&[]);
        let func = cmd
            .get(..4)
            .and_then(|f| std::str::from_utf8(f).ok())
            .unwrap_or("");
        let tank: Option<u8> = cmd
            .get(4..)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse().ok())
            .filter(|t| *t <= 99);
        let known = matches!(func, "i201" | "i202");
        let key = if known { func } else { "other" };
        *self.answered.entry(key.to_owned()).or_default() += 1;
        let unsupported = self.cfg.faults.unsupported.iter().any(|u| u == func);
        let (Some(tank), true, false) = (tank, known, unsupported) else {
            return Some(UNSUPPORTED.to_vec());
        };
        self.replies += 1;
        let every = self.cfg.faults.bad_checksum_every;
        let corrupt = every > 0 && self.replies % u64::from(every) == 0;
        let mut body = format!("{func}{tank:02}{now}");
        let tanks = self
            .cfg
            .tanks
            .iter()
            .filter(|t| tank == 0 || t.number == tank);
        for t in tanks {
            if func == "i201" {
                inventory(&mut body, t);
            } else {
                deliveries(&mut body, t);
            }
        }
        Some(reply(&body, corrupt))
    }
}

fn inventory(body: &mut String, t: &TankConfig) {
    body.push_str(&format!("{:02}{}{:04X}07", t.number, t.product, t.status));
    for v in [
        t.volume,
        t.tc_volume.unwrap_or(t.volume * 0.995),
        t.ullage,
        t.height,
        t.water,
        t.temperature,
        t.water_volume,
    ] {
        body.push_str(&hex_float(v));
    }
}

fn deliveries(body: &mut String, t: &TankConfig) {
    body.push_str(&format!(
        "{:02}{}{:02}",
        t.number,
        t.product,
        t.deliveries.len()
    ));
    for d in &t.deliveries {
        body.push_str(&d.start);
        body.push_str(&d.end);
        body.push_str("0A");
        for v in [
            d.start_volume,
            d.start_tc_volume.unwrap_or(d.start_volume * 0.995),
            d.start_water,
            d.start_temperature,
            d.end_volume,
            d.end_tc_volume.unwrap_or(d.end_volume * 0.995),
            d.end_water,
            d.end_temperature,
            d.start_height,
            d.end_height,
        ] {
            body.push_str(&hex_float(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[[tank]]
number = 1
volume = 1000.0
[[tank.delivery]]
start = "2403230900"
end = "2403230945"
start_volume = 100.0
end_volume = 1000.0
[[tank]]
number = 2
volume = 50.5
"#;

    #[test]
    fn answers_inventory_deliveries_and_unsupported() {
        let mut c = Console::new(ConsoleConfig::from_toml_str(CFG).expect("cfg"));
        let r = c.answer(b"i20100", "2403231435").expect("reply");
        let s = String::from_utf8_lossy(&r);
        assert!(
            s.starts_with("\u{1}i201002403231435011000007447A0000"),
            "{s}"
        );
        let sum = r[..r.len() - 5]
            .iter()
            .fold(0u16, |a, &b| a.wrapping_add(u16::from(b)));
        let c4 = u16::from_str_radix(&s[s.len() - 5..s.len() - 1], 16).expect("hex");
        assert_eq!(sum.wrapping_add(c4), 0);
        let d = c.answer(b"i20201", "2403231435").expect("reply");
        assert!(String::from_utf8_lossy(&d).contains("01101240323090024032309450A"));
        assert_eq!(c.answer(b"i10100", "x"), Some(UNSUPPORTED.to_vec()));
        assert_eq!(c.answer(b"i201zz", "x"), Some(UNSUPPORTED.to_vec()));
        for junk in [&b"\xff\xfe\xfd\xfc\xfb\xfa"[..], b"\xe9i2010", b"", b"i2"] {
            assert_eq!(c.answer(junk, "x"), Some(UNSUPPORTED.to_vec()));
        }
    }
}
