//! Bounded resources for every agent (issue 16): what one agent, hostile or broken but
//! authenticated, can make the store spend.
//!
//! - **Accepted time window** ([`Limits::accept_past_ms`], [`Limits::accept_future_ms`]):
//!   readings and events whose time is outside `[now − past, now + future]` on the ingest's data
//!   clock are not stored and never create a partition. They are split off the batch
//!   ([`split_window`]) and kept, in the same transaction as the batch's other rows and its
//!   ledger row, as one dead letter (an encoded batch of the refused readings and events, same
//!   identity, on topic `out-of-window/v1/{site}/{agent}/data`) whose reason names the counts and
//!   the window. The batch is then acknowledged as committed: everything it carried is either
//!   stored or in the dead-letter table, and the agent must not re-send it for ever. The ledger
//!   row keeps the digest of the whole batch (a re-send later, when the window has moved, is
//!   still a duplicate, never a conflict) and the counts actually stored.
//! - **Tag registry limit** ([`Limits::max_tags_per_agent`]): a birth that would leave an agent
//!   with more registered tags than this is refused ([`tag_limit_error`]); the consumer keeps it
//!   as a dead letter naming the agent and the counts.
//! - **Dead letters**: each payload is capped ([`Limits::dead_letter_keep_bytes`]): the first
//!   bytes (the frame header among them) are kept, the reason gains the original length and the
//!   SHA-256 of the whole payload ([`cap_dead_letter`]). [`crate::store::Store::prune_dead_letters`]
//!   drops those older than [`Limits::dead_letter_retention_ms`] and then the oldest while the
//!   kept payloads exceed [`Limits::dead_letter_max_total_bytes`].
//!
//! [`Limits::default`] bounds nothing (what a store opened by a test or a tool gets); the
//! service takes its limits from `[ingest]` ([`crate::config::IngestTuning::limits`]), whose
//! defaults bound everything.

use std::borrow::Cow;

use flowsquare_wire as wire;
use sha2::{Digest, Sha256};

use super::DeadLetter;

/// The bounds a store holds every agent to. `Default`: none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// Readings and events older than now − this (ms) are refused. `None`: no bound.
    pub accept_past_ms: Option<i64>,
    /// Readings and events later than now + this (ms) are refused. `None`: no bound.
    pub accept_future_ms: Option<i64>,
    /// Most tags registered per agent (births that would pass it are refused). `None`: no bound.
    pub max_tags_per_agent: Option<usize>,
    /// Bytes of a dead letter's payload kept (the rest is replaced by its length and SHA-256).
    /// `None`: kept whole.
    pub dead_letter_keep_bytes: Option<usize>,
    /// Dead letters older than this (ms, by receive time) are dropped by
    /// [`crate::store::Store::prune_dead_letters`]. `None`: kept.
    pub dead_letter_retention_ms: Option<i64>,
    /// After the age rule, the oldest dead letters are dropped while their payloads add up to
    /// more than this. `None`: no bound.
    pub dead_letter_max_total_bytes: Option<u64>,
}

/// The topic prefix of the dead letters holding refused (out-of-window) readings; the rest is
/// `v1/{site}/{agent}/data`, so the reconciliation's coverage counts them with the agent's
/// dead-lettered batches.
pub const OUT_OF_WINDOW_ROOT: &str = "out-of-window";

impl Limits {
    /// The accepted window `[from, to]` (UTC ms) at `now_ms`.
    pub fn window(&self, now_ms: i64) -> (i64, i64) {
        (
            self.accept_past_ms
                .map_or(i64::MIN, |p| now_ms.saturating_sub(p)),
            self.accept_future_ms
                .map_or(i64::MAX, |f| now_ms.saturating_add(f)),
        )
    }
}

/// What [`split_window`] took out of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The dead letter to keep (an encoded batch of the refused readings and events).
    pub letter: DeadLetter,
    /// Readings refused.
    pub readings: u64,
    /// Events refused.
    pub events: u64,
}

/// Split a batch at the accepted window ([`Limits::window`] at `now_ms`): the part to store
/// (borrowed when nothing is refused) and the refused readings and events as a dead letter.
pub fn split_window<'b>(
    b: &'b wire::Batch,
    limits: &Limits,
    now_ms: i64,
) -> (Cow<'b, wire::Batch>, Option<Refused>) {
    let (from, to) = limits.window(now_ms);
    let inside = |t: i64| (from..=to).contains(&t);
    if b.readings.iter().all(|r| inside(r.ts_ms)) && b.events.iter().all(|e| inside(e.ts_ms)) {
        return (Cow::Borrowed(b), None);
    }
    let mut kept = b.clone();
    let mut out = wire::Batch {
        readings: Vec::new(),
        events: Vec::new(),
        gaps: Vec::new(),
        ..b.clone()
    };
    (kept.readings, out.readings) = b.readings.iter().cloned().partition(|r| inside(r.ts_ms));
    (kept.events, out.events) = b.events.iter().cloned().partition(|e| inside(e.ts_ms));
    let times = out
        .readings
        .iter()
        .map(|r| r.ts_ms)
        .chain(out.events.iter().map(|e| e.ts_ms));
    let (lo, hi) = times.fold((i64::MAX, i64::MIN), |(l, h), t| (l.min(t), h.max(t)));
    let reason = format!(
        "out of window: {} reading(s) and {} event(s) of batch {}/{} buffer {} batch {} have times ({} .. {}) outside the accepted window {} .. {} (ingest clock {}); not stored, the batch's other {} reading(s) and {} event(s) were",
        out.readings.len(),
        out.events.len(),
        b.site,
        b.agent,
        b.buffer_epoch,
        b.batch_id,
        crate::times::show(lo),
        crate::times::show(hi),
        crate::times::show(from),
        crate::times::show(to),
        crate::times::show(now_ms),
        kept.readings.len(),
        kept.events.len(),
    );
    // A batch that decoded re-encodes; should it not, the reason still names every count.
    let payload = wire::encode(&out).unwrap_or_default();
    let refused = Refused {
        letter: DeadLetter {
            topic: format!("{OUT_OF_WINDOW_ROOT}/v1/{}/{}/data", b.site, b.agent),
            payload,
            reason,
            received_ms: now_ms,
        },
        readings: out.readings.len() as u64,
        events: out.events.len() as u64,
    };
    (Cow::Owned(kept), Some(refused))
}

/// Cap a dead letter's payload at `limits.dead_letter_keep_bytes`: the first bytes kept, the
/// original length and the SHA-256 of the whole payload added to the reason.
pub fn cap_dead_letter<'a>(dl: &'a DeadLetter, limits: &Limits) -> Cow<'a, DeadLetter> {
    let Some(keep) = limits.dead_letter_keep_bytes else {
        return Cow::Borrowed(dl);
    };
    if dl.payload.len() <= keep {
        return Cow::Borrowed(dl);
    }
    let digest = hex::encode(Sha256::digest(&dl.payload));
    Cow::Owned(DeadLetter {
        topic: dl.topic.clone(),
        payload: dl.payload[..keep].to_vec(),
        reason: format!(
            "{} [payload truncated: {} bytes, first {keep} kept, sha256 {digest}]",
            dl.reason,
            dl.payload.len()
        ),
        received_ms: dl.received_ms,
    })
}

/// The refusal of a birth that would leave its agent with `total` registered tags (`new` of
/// them not registered before) when `limits` allows fewer; `None` when it fits.
pub fn tag_limit_error(
    b: &wire::Birth,
    registered: usize,
    total: usize,
    limits: &Limits,
) -> Option<super::StoreError> {
    let max = limits.max_tags_per_agent?;
    (total > max).then(|| {
        let message = format!(
            "tag limit: the birth of {}/{} (config {}) names {} tag(s); with the {registered} already registered the agent would have {total}, above max_tags_per_agent = {max}; birth refused, its batches wait",
            b.site,
            b.agent,
            b.config_hash,
            b.tags.len()
        );
        super::StoreError::TagLimit(Box::new(super::error::TagLimitRefusal {
            site: b.site.clone(),
            agent: b.agent.clone(),
            config_hash: b.config_hash.clone(),
            total,
            limit: max,
            message,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000;
    const DAY: i64 = 86_400_000;

    fn limits() -> Limits {
        Limits {
            accept_past_ms: Some(30 * DAY),
            accept_future_ms: Some(DAY),
            ..Limits::default()
        }
    }

    #[test]
    fn a_batch_is_split_at_the_window() {
        let mut b = wire::Batch::new("s", "a", 7, "h", NOW);
        for (i, t) in [NOW - 31 * DAY, NOW - DAY, NOW, NOW + 2 * DAY]
            .into_iter()
            .enumerate()
        {
            b.readings.push(wire::WireReading {
                tag: i as u32,
                ts_ms: t,
                value: Some(wire::WireValue::Float(1.0)),
                quality: wire::Quality::Good,
                status: None,
                error: None,
                counter: None,
            });
        }
        let (kept, refused) = split_window(&b, &limits(), NOW);
        assert_eq!(kept.readings.len(), 2);
        let r = refused.expect("refused");
        assert_eq!((r.readings, r.events), (2, 0));
        assert!(r.letter.topic.ends_with("/s/a/data"), "{}", r.letter.topic);
        assert!(
            r.letter.reason.contains("2 reading(s)") && r.letter.reason.contains("other 2"),
            "{}",
            r.letter.reason
        );
        let back = wire::decode(&r.letter.payload).expect("decodes");
        assert_eq!(back.readings.len(), 2);
        assert_eq!(back.batch_id, 7);
        // Inside: borrowed, nothing refused; no bounds: nothing refused.
        let (k, none) = split_window(&kept, &limits(), NOW);
        assert!(matches!(k, Cow::Borrowed(_)) && none.is_none());
        assert!(split_window(&b, &Limits::default(), NOW).1.is_none());
    }

    #[test]
    fn dead_letters_are_capped_with_length_and_digest() {
        let dl = DeadLetter {
            topic: "t".into(),
            payload: vec![7; 5000],
            reason: "garbage".into(),
            received_ms: NOW,
        };
        let l = Limits {
            dead_letter_keep_bytes: Some(1024),
            ..Limits::default()
        };
        let c = cap_dead_letter(&dl, &l);
        assert_eq!(c.payload.len(), 1024);
        let digest = hex::encode(Sha256::digest(&dl.payload));
        assert!(
            c.reason.starts_with("garbage")
                && c.reason.contains("5000 bytes")
                && c.reason.contains(&digest),
            "{}",
            c.reason
        );
        assert!(matches!(
            cap_dead_letter(&dl, &Limits::default()),
            Cow::Borrowed(_)
        ));
    }
}
