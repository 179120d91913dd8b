//! `GET /api/v1/freshness?site=&limit=&cursor=`: every tag's freshness as the stale-tag check sees it (the
//! same rule, the same clock): fresh only with a *good* reading within max(factor × poll
//! interval, min age); a span of bad-quality readings counts like a silent span.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Serialize;

use super::page::{self, lists, PageReq};
use super::params::Query;
use super::problem::Problem;
use super::routes::{call, tag_filter, tag_key};
use super::ApiState;
use crate::analytics::stale::{age_of, limit_ms, stale_tags, LOOKBACK_MS};
use crate::reconcile::config::StaleConfig;
use flowsquare_service::clock::now_ms;

/// One tag's freshness.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    /// Tag id.
    pub tag_id: i64,
    /// Site.
    pub site: String,
    /// Agent.
    pub agent: String,
    /// Tag name.
    pub name: String,
    /// Poll interval, ms.
    pub interval_ms: i64,
    /// Newest reading of any quality, ms.
    pub latest_ms: Option<i64>,
    /// Its quality.
    pub latest_quality: Option<String>,
    /// Newest good reading within the last 7 days, ms.
    pub last_good_ms: Option<i64>,
    /// The age limit, ms.
    pub limit_ms: i64,
    /// No good reading within the limit.
    pub stale: bool,
    /// Without a good reading since, ms (stale tags).
    pub stale_since_ms: Option<i64>,
    /// The server's data clock when this was computed, ms (ages are relative to it).
    pub now_ms: i64,
}

/// `GET /api/v1/freshness?site=&limit=&cursor=`: pages of the tag list (same order and keys
/// as `/api/v1/tags`).
pub(super) async fn freshness(
    State(s): State<ApiState>,
    axum::Extension(who): axum::Extension<super::auth::Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["site", "limit", "cursor"])?;
    let p: PageReq<crate::store::TagKey> = lists::FRESHNESS.parse(&q)?;
    let Some(f) = tag_filter(&who, &q)? else {
        return Ok(page::answer::<Freshness>(
            &[],
            None,
            uri.path(),
            raw.as_deref(),
        ));
    };
    let cfg = s
        .reconciler
        .as_ref()
        .map_or_else(StaleConfig::default, |r| r.cfg.stale.clone());
    let now = now_ms();
    let tags = call(s.store.tags_page(&f, p.after.as_ref(), p.fetch())).await?;
    let (tags, next) = p.cut(tags, tag_key);
    let ids: Vec<i64> = tags.iter().map(|t| t.id).collect();
    let mut out = Vec::with_capacity(tags.len());
    for (chunk_tags, chunk_ids) in tags.chunks(1_000).zip(ids.chunks(1_000)) {
        let latest: std::collections::HashMap<i64, (i64, String)> = call(s.store.latest(chunk_ids))
            .await?
            .into_iter()
            .map(|l| (l.tag_id, (l.ts_ms, l.quality)))
            .collect();
        let good = call(s.store.ledger().last_good(chunk_ids, now - LOOKBACK_MS)).await?;
        for (t, g) in chunk_tags.iter().zip(good) {
            let l = latest.get(&t.id);
            let age = age_of(
                (
                    t.id,
                    &t.site,
                    format!("{}/{}", t.agent, t.name),
                    t.interval_ms,
                ),
                g,
                l.map(|x| x.0),
                now,
            );
            let st = stale_tags(std::slice::from_ref(&age), now, &cfg);
            let limit_ms = limit_ms(t.interval_ms, &cfg);
            out.push(Freshness {
                tag_id: t.id,
                site: t.site.clone(),
                agent: t.agent.clone(),
                name: t.name.clone(),
                interval_ms: t.interval_ms,
                latest_ms: l.map(|x| x.0),
                latest_quality: l.map(|x| x.1.clone()),
                last_good_ms: g.last_good_ms,
                limit_ms,
                stale: !st.is_empty() || l.is_none(),
                stale_since_ms: st.first().map(|x| x.silent_since_ms),
                now_ms: now,
            });
        }
    }
    Ok(page::answer(&out, next, uri.path(), raw.as_deref()))
}
