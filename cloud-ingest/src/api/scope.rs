//! Site scopes: which sites a token may see.
//!
//! A token configured with `sites = [...]` sees those sites only; without `sites` it sees every
//! site (the behaviour before scopes existed). The scope travels in the request's
//! [`Principal`](super::auth::Principal) and every data handler applies it:
//!
//! - rows that carry a site (agents, tags, gaps, discharges, variance records, alerts, tanks,
//!   meters, trucks) are kept only when their site is in scope; alerts (the one list with a
//!   `limit` whose rows carry a site) are filtered in the SQL, before the limit;
//! - an ePOD has no site of its own: it belongs to the site of its truck's agent (a transport
//!   company's fleet site) and to the `gauge_site` of its station (a station's site), both from
//!   the `[reconcile]` model; a scoped token sees it when either is in scope;
//! - a by-id route of a record outside the scope answers 404, as for an id that does not exist
//!   (the answer does not tell that it exists); a write naming a site outside the scope is 403;
//! - routes whose rows cannot be told apart by site (dead letters: a rejected message may have a
//!   garbled topic; the audit log; starting a reconciliation run, which covers every site) need
//!   an all-sites token: 403 for a scoped one.
//!
//! - a trip variance record (`/api/v1/reconciliation/{date}/trips`) has the terminal's site and
//!   touches two more: the station it delivered to (its `gauge_site`) and its truck's (fleet)
//!   site; a scoped token sees it when any of the three is in scope;
//! - the site model's places (`/api/v1/site-model`): a station is shown by its `gauge_site`;
//!   the other known places (the terminal, depots: they carry no site) are shown to every-site
//!   tokens and to tokens of a terminal or fleet site (a site of the model's tanks, meters or
//!   trucks: their trucks load and stop there), never to a station-only token, which sees its
//!   own station(s) and nothing of the network; `/api/v1/track` needs the truck's site in scope,
//!   and names every known place its stops are at (the token's own truck was there; its ePODs
//!   name the station anyway);
//! - lists are filtered in the SQL, before a page's limit (`page.rs`): a scoped token's pages
//!   are full pages of its own rows, and the cursors cannot reach another site's.
//!
//! The data model knows no transport-company or station ids apart from sites: a transport
//! company is scoped by the site of its trucks' agents, a station by its gauge's site.

use std::collections::BTreeSet;

use super::problem::Problem;
use crate::reconcile::config::ReconcileConfig;
use crate::reconcile::model::Epod;

/// The sites a token may see.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SiteScope {
    /// Every site.
    #[default]
    All,
    /// These sites only (never empty: the configuration refuses `sites = []`).
    Sites(BTreeSet<String>),
}

impl SiteScope {
    /// The scope of a token's `sites` key (absent: every site).
    pub fn from_config(sites: Option<&[String]>) -> SiteScope {
        match sites {
            None => SiteScope::All,
            Some(s) => SiteScope::Sites(s.iter().cloned().collect()),
        }
    }

    /// May this scope see `site`?
    pub fn allows(&self, site: &str) -> bool {
        match self {
            SiteScope::All => true,
            SiteScope::Sites(s) => s.contains(site),
        }
    }

    /// Every site?
    pub fn is_all(&self) -> bool {
        matches!(self, SiteScope::All)
    }

    /// The sites for a query filter: `None` = no filter.
    pub fn list(&self) -> Option<Vec<String>> {
        match self {
            SiteScope::All => None,
            SiteScope::Sites(s) => Some(s.iter().cloned().collect()),
        }
    }

    /// The rows whose site is in scope.
    pub fn keep<T>(&self, rows: Vec<T>, site: impl Fn(&T) -> &str) -> Vec<T> {
        match self {
            SiteScope::All => rows,
            SiteScope::Sites(_) => rows.into_iter().filter(|r| self.allows(site(r))).collect(),
        }
    }

    /// A `site` query parameter: a site outside the scope is asked for as a site with no data
    /// (`Some(None)`: answer an empty list, as for an unknown site), else passed on.
    pub fn narrow<'a>(&self, site: Option<&'a str>) -> Option<Option<&'a str>> {
        match site {
            Some(s) if !self.allows(s) => None,
            other => Some(other),
        }
    }

    /// 403 unless the scope is every site (routes whose rows have no site, or that act on all).
    pub fn require_all(&self, what: &str) -> Result<(), Problem> {
        if self.is_all() {
            Ok(())
        } else {
            tracing::warn!(
                route = what,
                "api request refused: all-sites route, scoped token"
            );
            Err(Problem::forbidden(format!(
                "{what} covers every site; this token is limited to some sites"
            )))
        }
    }

    /// 403 when a write names a site outside the scope.
    pub fn check_write(&self, site: &str) -> Result<(), Problem> {
        if self.allows(site) {
            Ok(())
        } else {
            tracing::warn!(site, "api request refused: write outside the token's sites");
            Err(Problem::forbidden(format!(
                "this token may not write to site {site:?}"
            )))
        }
    }

    /// The 404 of a by-id route whose record is outside the scope: the same answer as for an
    /// id that does not exist (`detail` as the caller gives it); logged for a scoped token.
    pub fn hidden(&self, detail: String) -> Problem {
        if !self.is_all() {
            tracing::warn!(detail = %detail, "api request refused: unknown or outside the token's sites (404)");
        }
        Problem::not_found(detail)
    }

    /// May this scope see the model's places that carry no site (terminal, depots)? Every-site
    /// tokens and tokens of a terminal or fleet site (tanks, meters or trucks of the model at
    /// one of its sites); not a station-only token.
    pub fn sees_places(&self, m: &ReconcileConfig) -> bool {
        self.is_all()
            || m.tanks.iter().any(|t| self.allows(&t.site))
            || m.meters.iter().any(|x| self.allows(&x.site))
            || m.trucks.iter().any(|t| self.allows(&t.site))
    }

    /// May this scope see this ePOD (its truck's site or its station's gauge site in scope)?
    /// Without a site model a scoped token sees no ePODs (nothing ties them to a site).
    pub fn allows_epod(&self, model: Option<&ReconcileConfig>, e: &Epod) -> bool {
        if self.is_all() {
            return true;
        }
        let Some(m) = model else {
            return false;
        };
        let by_truck = m
            .trucks
            .iter()
            .any(|t| t.id == e.truck && self.allows(&t.site));
        let by_station = m
            .stations
            .iter()
            .any(|s| s.id == e.station && s.gauge_site.as_deref().is_some_and(|g| self.allows(g)));
        by_truck || by_station
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_keeps_its_sites() {
        let all = SiteScope::from_config(None);
        let one = SiteScope::from_config(Some(&["s1".to_owned()]));
        assert!(all.allows("x") && all.is_all() && all.list().is_none());
        assert!(one.allows("s1") && !one.allows("s2") && !one.allows(""));
        assert_eq!(one.keep(vec!["s1", "s2", "s1"], |s| s), vec!["s1", "s1"]);
        assert_eq!(one.narrow(Some("s2")), None);
        assert_eq!(one.narrow(Some("s1")), Some(Some("s1")));
        assert_eq!(one.narrow(None), Some(None));
        assert!(one.require_all("x").is_err() && all.require_all("x").is_ok());
        assert!(one.check_write("s2").is_err() && one.check_write("s1").is_ok());
    }
}
