//! The moving truck: position along the route, and the sentences of one epoch. Pure: callers
//! give the GPS time and the time since start.

use std::time::Duration;

use super::config::FeederConfig;

/// Kilometres per degree of latitude.
const KM_PER_DEG: f64 = 111.32;

/// The XOR checksum of a sentence body.
pub fn checksum(body: &str) -> u8 {
    body.bytes().fold(0, |a, b| a ^ b)
}

/// `$body*hh\r\n`.
pub fn frame(body: &str) -> String {
    format!("${body}*{:02X}\r\n", checksum(body))
}

/// Degrees → (`ddmm.mmmm`, hemisphere).
fn coord(v: f64, lat: bool) -> (String, &'static str) {
    let a = v.abs();
    let deg = a.trunc();
    let min = (a - deg) * 60.0;
    let hemi = match (lat, v < 0.0) {
        (true, false) => "N",
        (true, true) => "S",
        (false, false) => "E",
        (false, true) => "W",
    };
    if lat {
        (format!("{:02}{:07.4}", deg as u32, min), hemi)
    } else {
        (format!("{:03}{:07.4}", deg as u32, min), hemi)
    }
}

/// The truck and its sentence counter.
#[derive(Debug, Clone)]
pub struct Truck {
    cfg: FeederConfig,
    leg: usize,
    along_km: f64,
    sentences: u64,
}

impl Truck {
    /// At the first waypoint.
    pub fn new(cfg: FeederConfig) -> Self {
        Truck {
            cfg,
            leg: 0,
            along_km: 0.0,
            sentences: 0,
        }
    }

    fn waypoint(&self, i: usize) -> [f64; 2] {
        let r = &self.cfg.truck.route;
        r.get(i % r.len().max(1)).copied().unwrap_or([0.0, 0.0])
    }

    /// Flat-earth distance (km) and bearing (degrees true) from `a` to `b`; fine for a route.
    fn leg_geometry(a: [f64; 2], b: [f64; 2]) -> (f64, f64) {
        let dy = (b[0] - a[0]) * KM_PER_DEG;
        let dx = (b[1] - a[1]) * KM_PER_DEG * a[0].to_radians().cos();
        let dist = (dx * dx + dy * dy).sqrt();
        let bearing = dx.atan2(dy).to_degrees().rem_euclid(360.0);
        (dist, bearing)
    }

    /// Current position and heading.
    pub fn position(&self) -> ([f64; 2], f64) {
        let a = self.waypoint(self.leg);
        let b = self.waypoint(self.leg + 1);
        let (dist, bearing) = Self::leg_geometry(a, b);
        let f = if dist > 0.0 {
            self.along_km / dist
        } else {
            0.0
        };
        (
            [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f],
            bearing,
        )
    }

    /// Drive for `dt`.
    pub fn advance(&mut self, dt: Duration) {
        let mut left = self.cfg.truck.speed_kmh * dt.as_secs_f64() / 3600.0;
        for _ in 0..1000 {
            let (dist, _) =
                Self::leg_geometry(self.waypoint(self.leg), self.waypoint(self.leg + 1));
            if self.along_km + left < dist || self.cfg.truck.route.len() < 2 {
                self.along_km += left;
                return;
            }
            left -= dist - self.along_km;
            self.along_km = 0.0;
            self.leg = (self.leg + 1) % self.cfg.truck.route.len();
        }
    }

    /// Is the fix lost at `elapsed` since start?
    pub fn fix_lost(&self, elapsed: Duration) -> bool {
        let f = &self.cfg.faults;
        if f.fix_loss_every.0.is_zero() || f.fix_loss_for.0.is_zero() {
            return false;
        }
        let every = f.fix_loss_every.0.as_secs_f64();
        let phase = elapsed.as_secs_f64() % every;
        // The first loss starts one period in, so a run starts with a fix.
        elapsed.as_secs_f64() >= every && phase < f.fix_loss_for.0.as_secs_f64()
    }

    /// The sentence bodies of one epoch at GPS time `gps_ms`.
    pub fn bodies(&self, gps_ms: i64, lost: bool) -> Vec<String> {
        let t = &self.cfg.truck;
        let talker = &self.cfg.talker;
        let secs = gps_ms.div_euclid(1000);
        let day = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        let hhmmss = format!(
            "{:02}{:02}{:02}.{:02}",
            tod / 3600,
            tod / 60 % 60,
            tod % 60,
            gps_ms.rem_euclid(1000) / 10
        );
        let date = time::Date::from_julian_day(2_440_588 + day as i32)
            .map(|d| {
                format!(
                    "{:02}{:02}{:02}",
                    d.day(),
                    u8::from(d.month()),
                    d.year() % 100
                )
            })
            .unwrap_or_else(|_| "010100".into());
        let ([lat, lon], heading) = self.position();
        let (la, ns) = coord(lat, true);
        let (lo, ew) = coord(lon, false);
        let knots = t.speed_kmh / 1.852;
        self.cfg
            .sentences
            .iter()
            .map(|s| match (s.as_str(), lost) {
                ("GGA", false) => format!(
                    "{talker}GGA,{hhmmss},{la},{ns},{lo},{ew},{},{:02},{:.1},{:.1},M,20.0,M,,",
                    t.fix_quality, t.satellites, t.hdop, t.altitude
                ),
                ("GGA", true) => format!("{talker}GGA,{hhmmss},,,,,0,00,99.9,,M,,M,,"),
                ("RMC", false) => format!(
                    "{talker}RMC,{hhmmss},A,{la},{ns},{lo},{ew},{knots:.2},{heading:.1},{date},,,A"
                ),
                ("RMC", true) => format!("{talker}RMC,{hhmmss},V,,,,,,,{date},,,N"),
                ("VTG", false) => format!(
                    "{talker}VTG,{heading:.1},T,,M,{knots:.2},N,{:.2},K,A",
                    t.speed_kmh
                ),
                _ => format!("{talker}VTG,,T,,M,,N,,K,N"),
            })
            .collect()
    }

    /// The bytes of one epoch, with the configured faults applied.
    pub fn epoch(&mut self, gps_ms: i64, elapsed: Duration) -> String {
        let lost = self.fix_lost(elapsed);
        let mut out = String::new();
        for body in self.bodies(gps_ms, lost) {
            self.sentences += 1;
            let f = &self.cfg.faults;
            let n = self.sentences;
            if f.partial_every > 0 && n % u64::from(f.partial_every) == 0 {
                out.push('$');
                out.push_str(&body[..body.len() / 2]);
            } else if f.corrupt_every > 0 && n % u64::from(f.corrupt_every) == 0 {
                out.push_str(&format!("${body}*{:02X}\r\n", checksum(&body) ^ 0x5A));
            } else {
                out.push_str(&frame(&body));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> FeederConfig {
        FeederConfig::from_toml_str(extra).expect("config")
    }

    #[test]
    fn sentences_have_valid_checksums_and_hemispheres() {
        let t = Truck::new(cfg("[truck]\nroute = [[-33.5, -70.25], [-33.6, -70.3]]\n"));
        let b = t.bodies(1_711_197_319_000, false);
        assert_eq!(b.len(), 3);
        assert!(
            b[0].starts_with("GPRMC,123519.00,A,3330.0000,S,07015.0000,W,"),
            "{}",
            b[0]
        );
        assert!(b[0].contains(",230324,"), "{}", b[0]);
        assert!(frame(&b[1]).ends_with("\r\n"));
    }

    #[test]
    fn the_truck_moves_and_loops() {
        let mut t = Truck::new(cfg(
            "[truck]\nspeed_kmh = 100.0\nroute = [[0.0, 0.0], [0.0, 0.01]]\n",
        ));
        let (p0, h) = t.position();
        assert_eq!(p0, [0.0, 0.0]);
        assert!((h - 90.0).abs() < 1e-6);
        t.advance(Duration::from_secs(18)); // 0.5 km of ~1.11 km
        assert!(t.position().0[1] > 0.004);
        t.advance(Duration::from_secs(3600));
        let p = t.position().0;
        assert!(p[1].is_finite());
    }

    #[test]
    fn faults() {
        let c = cfg("[faults]\nfix_loss_every = \"10s\"\nfix_loss_for = \"3s\"\ncorrupt_every = 2\npartial_every = 3\n");
        let mut t = Truck::new(c);
        assert!(!t.fix_lost(Duration::from_secs(1)));
        assert!(t.fix_lost(Duration::from_secs(11)));
        assert!(!t.fix_lost(Duration::from_secs(14)));
        let e = t.epoch(0, Duration::ZERO);
        assert_eq!(e.matches("\r\n").count(), 2, "one partial: {e}");
    }
}
