//! Stale tags: a tag whose newest reading *of good quality* is older than `factor` × its poll
//! interval (from the birth catalog) and older than `min_age_s`. A span of bad-quality readings
//! counts like a silent span: a PLC answering only bad readings is stale.

use crate::reconcile::config::StaleConfig;

/// A tag as the check sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TagAge {
    /// Tag id.
    pub id: i64,
    /// Site.
    pub site: String,
    /// `agent/name`.
    pub name: String,
    /// Expected interval, ms.
    pub interval_ms: i64,
    /// Newest reading of good quality, ms; None: none (in the window looked at).
    pub latest_good_ms: Option<i64>,
    /// Since when the tag has had no good reading when `latest_good_ms` is None, ms (its first
    /// reading of any quality, or its registration): it is stale from then.
    pub since_ms: i64,
}

/// A stale tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Stale {
    /// The tag.
    pub tag: TagAge,
    /// Without a good reading since (newest good reading, or `since_ms`), ms.
    pub silent_since_ms: i64,
    /// The age limit it exceeded, ms.
    pub limit_ms: i64,
}

/// Where freshness looks for a tag's last good reading (older ones count as "none").
pub const LOOKBACK_MS: i64 = 7 * 86_400_000;

/// A tag's age from its readings since `now − LOOKBACK_MS` (`good`, see
/// [`crate::store::ledger::GoodSince`]) and its newest reading of any quality (`latest_ms`): a
/// tag with readings in the window but no good one is without good data since its first
/// reading in the window; one whose newest reading is older than the window, since that
/// reading; one that never reported, since `registered_ms`.
pub fn age_of(
    tag: (i64, &str, String, i64),
    good: crate::store::ledger::GoodSince,
    latest_ms: Option<i64>,
    registered_ms: i64,
) -> TagAge {
    let (id, site, name, interval_ms) = tag;
    TagAge {
        id,
        site: site.to_owned(),
        name,
        interval_ms,
        latest_good_ms: good.last_good_ms,
        since_ms: good.first_ms.or(latest_ms).unwrap_or(registered_ms),
    }
}

/// A tag's age limit: max(factor × poll interval, min age), ms.
pub fn limit_ms(interval_ms: i64, cfg: &StaleConfig) -> i64 {
    let min_ms = i64::try_from(cfg.min_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    (((interval_ms.max(1) as f64) * cfg.factor) as i64).max(min_ms)
}

/// The stale tags at `now_ms`.
pub fn stale_tags(tags: &[TagAge], now_ms: i64, cfg: &StaleConfig) -> Vec<Stale> {
    tags.iter()
        .filter_map(|t| {
            let limit_ms = limit_ms(t.interval_ms, cfg);
            let since = t.latest_good_ms.unwrap_or(t.since_ms);
            (now_ms - since > limit_ms).then(|| Stale {
                tag: t.clone(),
                silent_since_ms: since,
                limit_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(interval_ms: i64, latest_good_ms: Option<i64>) -> TagAge {
        TagAge {
            id: 1,
            site: "s".into(),
            name: "a/t".into(),
            interval_ms,
            latest_good_ms,
            since_ms: 0,
        }
    }

    #[test]
    fn a_tag_silent_for_longer_than_the_window_is_stale_since_its_last_reading() {
        use crate::store::ledger::GoodSince;
        let cfg = StaleConfig::default();
        let now = 30 * 86_400_000;
        let t = age_of(
            (1, "s", "a/t".into(), 1000),
            GoodSince::default(),
            Some(1000),
            now,
        );
        let s = stale_tags(&[t], now, &cfg);
        assert_eq!(s[0].silent_since_ms, 1000);
        // Never reported: not stale (registered now).
        let t = age_of(
            (1, "s", "a/t".into(), 1000),
            GoodSince::default(),
            None,
            now,
        );
        assert!(stale_tags(&[t], now, &cfg).is_empty());
    }

    #[test]
    fn bad_quality_only_is_stale_from_its_first_reading() {
        let cfg = StaleConfig::default();
        let now = 4 * 3_600_000;
        // No good reading; bad readings from t=0 until now (every second).
        let t = TagAge {
            since_ms: 0,
            ..tag(1000, None)
        };
        let s = stale_tags(&[t], now, &cfg);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].silent_since_ms, 0);
    }

    #[test]
    fn three_intervals_and_a_minute_make_a_tag_stale() {
        let cfg = StaleConfig::default();
        let now = 1_000_000;
        // 1 s tag: the 60 s floor applies.
        assert!(stale_tags(&[tag(1000, Some(now - 59_000))], now, &cfg).is_empty());
        assert_eq!(
            stale_tags(&[tag(1000, Some(now - 61_000))], now, &cfg).len(),
            1
        );
        // 5 min tag: 15 min.
        assert!(stale_tags(&[tag(300_000, Some(now - 800_000))], now, &cfg).is_empty());
        let s = stale_tags(&[tag(300_000, Some(now - 901_000))], now, &cfg);
        assert_eq!(s[0].limit_ms, 900_000);
        // never reported: from registration.
        assert_eq!(
            stale_tags(&[tag(1000, None)], now, &cfg)[0].silent_since_ms,
            0
        );
    }
}
