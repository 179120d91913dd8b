//! Pure message handling: what an incoming message is, whether it may be stored, and which
//! acknowledgements follow a commit. No I/O, unit-tested.

use flowsquare_wire as wire;

use crate::store::{CommitOutcome, DeadLetter};

/// An incoming message, classified.
#[derive(Debug)]
pub enum Incoming {
    /// A decoded data batch whose payload identity matches its topic.
    Batch(Box<wire::Batch>),
    /// A birth message.
    Birth(Box<wire::Birth>),
    /// A status message (or Last Will).
    Status {
        /// Site.
        site: String,
        /// Agent.
        agent: String,
        /// The status.
        status: wire::Status,
    },
    /// A heartbeat.
    Heartbeat {
        /// Site.
        site: String,
        /// Agent.
        agent: String,
        /// The heartbeat.
        heartbeat: Box<wire::Heartbeat>,
    },
    /// Unusable: keep it in the dead-letter table. `reject` names the batch to acknowledge as
    /// rejected when its identity could be read (so the agent stops re-sending it); `None` when
    /// nothing about it can be trusted (the agent will re-send an intact copy).
    Dead {
        /// What to keep.
        letter: DeadLetter,
        /// (site, agent, batch id) to reject, if known.
        reject: Option<(String, String, u64)>,
    },
    /// Not ours (another kind of topic): acknowledge and ignore.
    Ignore,
}

/// Classify a message received on `topic` under `root`.
pub fn classify(root: &str, topic: &str, payload: &[u8], received_ms: i64) -> Incoming {
    let dead = |reason: String, reject| Incoming::Dead {
        letter: DeadLetter {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            reason,
            received_ms,
        },
        reject,
    };
    let (kind, site, agent) = match wire::Topics::parse(root, topic) {
        Ok(t) => t,
        Err(e) => return dead(format!("bad topic: {e}"), None),
    };
    match kind {
        wire::Kind::Data => match wire::decode(payload) {
            Ok(b) if b.site != site || b.agent != agent => {
                let reason = format!(
                    "identity mismatch: payload names {}/{} but was published on {}/{}'s topic",
                    b.site, b.agent, site, agent
                );
                dead(reason, Some((site, agent, b.batch_id)))
            }
            Ok(b) => Incoming::Batch(Box::new(b)),
            Err(e) => {
                // The identity is only trusted when the frame is intact (checksum verified).
                let reject = wire::decode_identity(payload)
                    .ok()
                    .filter(|(s, a, _)| *s == site && *a == agent);
                dead(format!("undecodable batch: {e}"), reject)
            }
        },
        wire::Kind::Birth => match wire::Birth::decode(payload) {
            Ok(b) if b.site != site || b.agent != agent => {
                dead("identity mismatch in birth".into(), None)
            }
            Ok(b) => Incoming::Birth(Box::new(b)),
            Err(e) => dead(format!("undecodable birth: {e}"), None),
        },
        wire::Kind::Status => match wire::Status::decode(payload) {
            Ok(status) => Incoming::Status {
                site,
                agent,
                status,
            },
            Err(e) => dead(format!("undecodable status: {e}"), None),
        },
        wire::Kind::Heartbeat => match wire::Heartbeat::decode(payload) {
            Ok(h) => Incoming::Heartbeat {
                site,
                agent,
                heartbeat: Box::new(h),
            },
            Err(e) => dead(format!("undecodable heartbeat: {e}"), None),
        },
        wire::Kind::Ack | wire::Kind::Cmd => Incoming::Ignore,
    }
}

/// The end-to-end acknowledgements owed after a commit: per (site, agent), the batch ids to
/// acknowledge as committed (stored now or already stored). `UnknownCatalog` batches get none.
pub fn acks_for(
    batches: &[wire::Batch],
    outcomes: &[CommitOutcome],
) -> Vec<(String, String, Vec<u64>)> {
    let mut out: Vec<(String, String, Vec<u64>)> = Vec::new();
    for (b, o) in batches.iter().zip(outcomes) {
        if matches!(o, CommitOutcome::UnknownCatalog) {
            continue;
        }
        match out
            .iter_mut()
            .find(|(s, a, _)| *s == b.site && *a == b.agent)
        {
            Some((_, _, ids)) => ids.push(b.batch_id),
            None => out.push((b.site.clone(), b.agent.clone(), vec![b.batch_id])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(site: &str, agent: &str, id: u64) -> wire::Batch {
        wire::Batch::new(site, agent, id, "h", 0)
    }

    #[test]
    fn a_batch_on_its_own_topic_is_accepted() {
        let p = wire::encode(&batch("s", "a", 1)).expect("encode");
        assert!(matches!(
            classify("fs", "fs/v1/s/a/data", &p, 0),
            Incoming::Batch(_)
        ));
    }

    #[test]
    fn a_payload_naming_another_agent_is_dead_lettered_and_rejected() {
        let p = wire::encode(&batch("s", "b", 9)).expect("encode");
        match classify("fs", "fs/v1/s/a/data", &p, 0) {
            Incoming::Dead { letter, reject } => {
                assert!(letter.reason.contains("identity mismatch"));
                assert_eq!(reject, Some(("s".into(), "a".into(), 9)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_bit_flips_are_dead_lettered_without_rejecting() {
        let mut p = wire::encode(&batch("s", "a", 1)).expect("encode");
        let n = p.len();
        p[n / 2] ^= 0x10;
        for payload in [&p[..], b"garbage", &[][..]] {
            match classify("fs", "fs/v1/s/a/data", payload, 0) {
                Incoming::Dead { reject, .. } => assert_eq!(reject, None),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn acks_group_per_agent_and_skip_unknown_catalogs() {
        let bs = [
            batch("s", "a", 1),
            batch("s", "b", 2),
            batch("s", "a", 3),
            batch("s", "a", 4),
        ];
        let os = [
            CommitOutcome::Stored {
                readings: 1,
                events: 0,
                gaps: 0,
            },
            CommitOutcome::Duplicate,
            CommitOutcome::UnknownCatalog,
            CommitOutcome::Stored {
                readings: 1,
                events: 0,
                gaps: 0,
            },
        ];
        assert_eq!(
            acks_for(&bs, &os),
            vec![
                ("s".into(), "a".into(), vec![1, 4]),
                ("s".into(), "b".into(), vec![2])
            ]
        );
    }
}
