//! Stale tags: a tag whose newest reading is older than `factor` × its poll interval (from the
//! birth catalog) and older than `min_age_s`.

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
    /// Newest reading (any quality), ms; None: never reported.
    pub latest_ms: Option<i64>,
    /// When the tag was registered (birth), ms: a tag that never reported is stale from then.
    pub since_ms: i64,
}

/// A stale tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Stale {
    /// The tag.
    pub tag: TagAge,
    /// Silent since (newest reading, or registration), ms.
    pub silent_since_ms: i64,
    /// The age limit it exceeded, ms.
    pub limit_ms: i64,
}

/// A tag's stale limit: `factor` × its poll interval, at least `min_age_s` (also the limit of
/// the reconciliation's stale spans).
pub fn limit_ms(interval_ms: i64, cfg: &StaleConfig) -> i64 {
    let min_ms = i64::try_from(cfg.min_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    (((interval_ms.max(1) as f64) * cfg.factor) as i64).max(min_ms)
}

/// The stale tags at `now_ms`.
pub fn stale_tags(tags: &[TagAge], now_ms: i64, cfg: &StaleConfig) -> Vec<Stale> {
    tags.iter()
        .filter_map(|t| {
            let limit_ms = limit_ms(t.interval_ms, cfg);
            let since = t.latest_ms.unwrap_or(t.since_ms);
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

    fn tag(interval_ms: i64, latest_ms: Option<i64>) -> TagAge {
        TagAge {
            id: 1,
            site: "s".into(),
            name: "a/t".into(),
            interval_ms,
            latest_ms,
            since_ms: 0,
        }
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
