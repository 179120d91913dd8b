//! Paging of list routes: one keyset scheme for every list.
//!
//! - `limit`: rows per page, an integer from 1 to the route's maximum ([`Paging`]); absent: the
//!   route's default.
//! - `cursor`: opaque; taken from the previous page's `next`. It holds the sort key of the last
//!   row of that page and the route it belongs to; the next page is the rows strictly after it
//!   in the list's (stable, unique) order, so rows added or removed meanwhile neither repeat nor
//!   shift a page. A cursor that does not decode, or belongs to another route, is a 400 naming
//!   `cursor`.
//! - The answer is `{"data": [...], "next": "<cursor>" | null}` and, when there is a next page,
//!   `Link: <path?…&cursor=…>; rel="next"` (the request's own parameters, `cursor` replaced);
//!   `next` null: this was the last page. CSV answers carry the `Link` header only.
//! - Site scoping is applied by the store query itself (the token's sites are a filter of the
//!   SQL), before the limit: a scoped token's pages are full pages of its own sites' rows.
//! - The store fetches `limit + 1` rows: the extra one only tells that a next page exists.

use axum::http::header::LINK;
use axum::http::HeaderValue;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::params::Query;
use super::problem::Problem;

/// The `limit` bounds of one list route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// The cursor's route tag (a cursor of another list is refused).
    pub list: &'static str,
    /// `limit` when absent.
    pub default: i64,
    /// Largest `limit`.
    pub max: i64,
}

/// The paging of each list route (OpenAPI documents these figures).
pub mod lists {
    use super::Paging;
    /// `/api/v1/agents`.
    pub const AGENTS: Paging = Paging::new("agents", 1_000, 10_000);
    /// `/api/v1/tags`.
    pub const TAGS: Paging = Paging::new("tags", 1_000, 10_000);
    /// `/api/v1/latest` (at most 1,000 ids per request anyway).
    pub const LATEST: Paging = Paging::new("latest", 1_000, 1_000);
    /// `/api/v1/tags/{id}/series` (at most 10,000 buckets per request anyway).
    pub const SERIES: Paging = Paging::new("series", 10_000, 10_000);
    /// `/api/v1/gaps`.
    pub const GAPS: Paging = Paging::new("gaps", 1_000, 10_000);
    /// `/api/v1/dead-letters`.
    pub const DEAD_LETTERS: Paging = Paging::new("dead-letters", 100, 1_000);
    /// `/api/v1/discharges`.
    pub const DISCHARGES: Paging = Paging::new("discharges", 1_000, 10_000);
    /// `/api/v1/epods`.
    pub const EPODS: Paging = Paging::new("epods", 1_000, 10_000);
    /// `/api/v1/reconciliation/runs`.
    pub const RUNS: Paging = Paging::new("runs", 100, 10_000);
    /// `/api/v1/reconciliation/{date}` and its `/tanks`, `/trips`, `/meters` (a run's records
    /// are bounded by the site model: the default page is the largest, so a CSV export is
    /// whole unless a model has more than 10,000 records a day).
    pub const RECORDS: Paging = Paging::new("records", 10_000, 10_000);
    /// `/api/v1/alerts`.
    pub const ALERTS: Paging = Paging::new("alerts", 100, 10_000);
    /// `/api/v1/freshness`.
    pub const FRESHNESS: Paging = Paging::new("freshness", 1_000, 10_000);
    /// `/api/v1/audit` and `/api/v1/audit.csv`.
    pub const AUDIT: Paging = Paging::new("audit", 1_000, 100_000);
}

/// Every paged route (GET) and its paging: the OpenAPI document and the route-table test are
/// held to this list, and every GET route of `/api/v1` that answers a list is in it.
pub const PAGED: [(&str, Paging); 17] = [
    ("/api/v1/agents", lists::AGENTS),
    ("/api/v1/tags", lists::TAGS),
    ("/api/v1/latest", lists::LATEST),
    ("/api/v1/tags/{id}/series", lists::SERIES),
    ("/api/v1/gaps", lists::GAPS),
    ("/api/v1/dead-letters", lists::DEAD_LETTERS),
    ("/api/v1/discharges", lists::DISCHARGES),
    ("/api/v1/epods", lists::EPODS),
    ("/api/v1/reconciliation/runs", lists::RUNS),
    ("/api/v1/reconciliation/{date}", lists::RECORDS),
    ("/api/v1/reconciliation/{date}/tanks", lists::RECORDS),
    ("/api/v1/reconciliation/{date}/trips", lists::RECORDS),
    ("/api/v1/reconciliation/{date}/meters", lists::RECORDS),
    ("/api/v1/alerts", lists::ALERTS),
    ("/api/v1/freshness", lists::FRESHNESS),
    ("/api/v1/audit", lists::AUDIT),
    ("/api/v1/audit.csv", lists::AUDIT),
];

/// GET routes of `/api/v1` that are not lists, and why (the route-table test checks that every
/// other GET route is in [`PAGED`]).
#[cfg(test)]
pub const NOT_LISTS: [(&str, &str); 7] = [
    ("/api/v1/openapi.json", "one document"),
    ("/api/v1/discharges/{id}", "one record with its versions"),
    ("/api/v1/epods/{id}", "one record with its versions"),
    ("/api/v1/whoami", "one row"),
    ("/api/v1/kpis", "one report"),
    (
        "/api/v1/site-model",
        "one model, bounded by the configuration",
    ),
    ("/api/v1/track", "one truck's track, at most 2 days"),
];

/// A page asked for: at most `limit` rows after `after` (None: from the start).
#[derive(Debug, Clone, PartialEq)]
pub struct PageReq<K> {
    /// Rows on this page.
    pub limit: i64,
    /// The sort key of the last row of the previous page.
    pub after: Option<K>,
    list: &'static str,
}

/// What a cursor holds.
#[derive(Serialize, serde::Deserialize)]
struct Cursor<K> {
    /// The list it belongs to.
    l: String,
    /// The last row's key.
    k: K,
}

impl Paging {
    const fn new(list: &'static str, default: i64, max: i64) -> Paging {
        Paging { list, default, max }
    }

    /// `limit` and `cursor` of a request (400 naming the parameter when either is bad).
    pub(crate) fn parse<K: DeserializeOwned>(&self, q: &Query) -> Result<PageReq<K>, Problem> {
        let limit = match q.opt("limit")? {
            None => self.default,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=self.max).contains(&n) => n,
                _ => {
                    return Err(Problem::bad_parameter(
                        "limit",
                        format!("{v:?} is not an integer from 1 to {}", self.max),
                    ))
                }
            },
        };
        let after = match q.opt("cursor")? {
            None => None,
            Some(c) => Some(self.decode(c)?),
        };
        Ok(PageReq {
            limit,
            after,
            list: self.list,
        })
    }

    fn decode<K: DeserializeOwned>(&self, c: &str) -> Result<K, Problem> {
        let bad = |why: &str| {
            Problem::bad_parameter(
                "cursor",
                format!("not a cursor of this list ({why}); use the `next` of the previous page, or leave `cursor` out for the first page"),
            )
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(c.as_bytes())
            .map_err(|_| bad("not base64url"))?;
        let cur: Cursor<serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|_| bad("does not decode"))?;
        if cur.l != self.list {
            return Err(bad("it is a cursor of another list"));
        }
        serde_json::from_value(cur.k).map_err(|_| bad("its key does not fit"))
    }
}

impl<K: Serialize> PageReq<K> {
    /// Rows to ask the store for: one more than the page, to tell whether a next page exists.
    pub fn fetch(&self) -> i64 {
        self.limit.saturating_add(1)
    }

    /// The page of `rows` (as fetched with [`PageReq::fetch`]) and the cursor of the next one.
    pub fn cut<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        if rows.len() <= limit {
            return (rows, None);
        }
        rows.truncate(limit);
        let next = rows.last().map(|r| self.encode(&key(r)));
        (rows, next)
    }

    /// The cursor of a key.
    pub fn encode(&self, key: &K) -> String {
        let cur = Cursor {
            l: self.list.to_owned(),
            k: key,
        };
        // Keys are tuples of strings and integers: they always encode.
        let json = serde_json::to_vec(&cur).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }
}

/// `{"data": rows, "next": cursor}` with the `Link` header of the next page.
pub(super) fn answer<T: Serialize>(
    rows: &[T],
    next: Option<String>,
    path: &str,
    raw_query: Option<&str>,
) -> Response {
    #[derive(Serialize)]
    struct Body<'a, T> {
        data: &'a [T],
        next: Option<&'a str>,
    }
    let mut res = super::routes::json_no_store(&Body {
        data: rows,
        next: next.as_deref(),
    });
    link(&mut res, next.as_deref(), path, raw_query);
    res
}

/// Add `Link: <…>; rel="next"` to a response when there is a next page.
pub(super) fn link(res: &mut Response, next: Option<&str>, path: &str, raw_query: Option<&str>) {
    let Some(next) = next else { return };
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        if k != "cursor" {
            q.append_pair(&k, &v);
        }
    }
    q.append_pair("cursor", next);
    if let Ok(v) = HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", q.finish())) {
        res.headers_mut().insert(LINK, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw), &["limit", "cursor"]).expect("query")
    }

    #[test]
    fn limits_and_cursors() {
        let p = lists::TAGS;
        let r: PageReq<(String, i64)> = p.parse(&q("")).expect("default");
        assert_eq!((r.limit, r.after.clone()), (1_000, None));
        assert_eq!(r.fetch(), 1_001);
        for bad in ["0", "10001", "x", "-1"] {
            let e = p
                .parse::<(String, i64)>(&q(&format!("limit={bad}")))
                .unwrap_err();
            assert_eq!(e.parameter(), Some("limit"), "{bad}");
        }
        let r: PageReq<(String, i64)> = p.parse(&q("limit=2")).expect("2");
        let (rows, next) = r.cut(vec![("a", 1), ("b", 2), ("c", 3)], |x| {
            (x.0.to_owned(), x.1)
        });
        assert_eq!(rows.len(), 2);
        let next = next.expect("next");
        let r2: PageReq<(String, i64)> = p
            .parse(&q(&format!("limit=2&cursor={next}")))
            .expect("cursor");
        assert_eq!(r2.after, Some(("b".to_owned(), 2)));
        assert_eq!(r2.cut(vec![("c", 3)], |x| (x.0.to_owned(), x.1)).1, None);
        // Garbage, another list's cursor, a key of another shape: 400 naming `cursor`.
        let other = lists::AGENTS.parse::<(String, i64)>(&q(&format!("cursor={next}")));
        assert_eq!(other.unwrap_err().parameter(), Some("cursor"));
        for bad in ["%%%", "abc", "eyJ4IjoxfQ"] {
            let e = p
                .parse::<(String, i64)>(&q(&format!("cursor={bad}")))
                .unwrap_err();
            assert_eq!(e.parameter(), Some("cursor"), "{bad}");
        }
        assert_eq!(
            p.parse::<(i64, i64)>(&q(&format!("cursor={next}")))
                .unwrap_err()
                .parameter(),
            Some("cursor")
        );
    }
}
