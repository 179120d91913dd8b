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
        /// The batch to reject, if known.
        reject: Option<BatchKey>,
    },
    /// Not ours (another kind of topic): acknowledge and ignore.
    Ignore,
}

/// The ledger identity of a batch: (site, agent, buffer epoch, batch id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchKey {
    /// Site.
    pub site: String,
    /// Agent.
    pub agent: String,
    /// Buffer epoch (0: version 1 frame).
    pub epoch: u64,
    /// Batch id.
    pub batch_id: u64,
}

impl BatchKey {
    /// The key of a decoded batch.
    pub fn of(b: &wire::Batch) -> BatchKey {
        BatchKey {
            site: b.site.clone(),
            agent: b.agent.clone(),
            epoch: b.buffer_epoch,
            batch_id: b.batch_id,
        }
    }
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
                let key = BatchKey {
                    site,
                    agent,
                    epoch: b.buffer_epoch,
                    batch_id: b.batch_id,
                };
                dead(reason, Some(key))
            }
            Ok(b) => Incoming::Batch(Box::new(b)),
            Err(e) => {
                // The identity is only trusted when the frame is intact (checksum verified).
                let reject = wire::peek_header(payload)
                    .ok()
                    .filter(|h| h.site == site && h.agent == agent)
                    .map(|h| BatchKey {
                        site: h.site,
                        agent: h.agent,
                        epoch: h.buffer_epoch,
                        batch_id: h.batch_id,
                    });
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

/// One acknowledgement to publish: to (site, agent), naming the buffer epoch of its batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckGroup {
    /// Site.
    pub site: String,
    /// Agent.
    pub agent: String,
    /// Buffer epoch of the batches (0: version 1 frames; the ack then names none).
    pub epoch: u64,
    /// Batch ids.
    pub ids: Vec<u64>,
}

impl AckGroup {
    /// The ack message: committed.
    pub fn committed(&self) -> wire::Ack {
        wire::Ack::committed(self.ids.clone()).for_epoch(self.epoch)
    }
}

/// The end-to-end acknowledgements owed after a commit: per (site, agent, buffer epoch), the
/// batch ids to acknowledge as committed (stored now or already stored with the same content).
/// `UnknownCatalog` batches get none; `Conflict` ones are rejected (see [`conflicts`]), never
/// acknowledged as committed.
pub fn acks_for(batches: &[wire::Batch], outcomes: &[CommitOutcome]) -> Vec<AckGroup> {
    let mut out: Vec<AckGroup> = Vec::new();
    for (b, o) in batches.iter().zip(outcomes) {
        if !matches!(o, CommitOutcome::Stored { .. } | CommitOutcome::Duplicate) {
            continue;
        }
        match out
            .iter_mut()
            .find(|g| g.site == b.site && g.agent == b.agent && g.epoch == b.buffer_epoch)
        {
            Some(g) => g.ids.push(b.batch_id),
            None => out.push(AckGroup {
                site: b.site.clone(),
                agent: b.agent.clone(),
                epoch: b.buffer_epoch,
                ids: vec![b.batch_id],
            }),
        }
    }
    out
}

/// The batches the store found in conflict (their key stored with other content): index in
/// the slice, key and reason. Each is kept as a dead letter and then rejected.
pub fn conflicts(
    batches: &[wire::Batch],
    outcomes: &[CommitOutcome],
) -> Vec<(usize, BatchKey, String)> {
    batches
        .iter()
        .zip(outcomes)
        .enumerate()
        .filter_map(|(i, (b, o))| match o {
            CommitOutcome::Conflict { reason } => Some((i, BatchKey::of(b), reason.clone())),
            _ => None,
        })
        .collect()
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
                assert_eq!(
                    reject,
                    Some(BatchKey {
                        site: "s".into(),
                        agent: "a".into(),
                        epoch: 0,
                        batch_id: 9
                    })
                );
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
    fn acks_group_per_agent_and_epoch_and_skip_unknown_catalogs_and_conflicts() {
        let mut v2 = batch("s", "a", 5);
        v2.buffer_epoch = 77;
        let bs = [
            batch("s", "a", 1),
            batch("s", "b", 2),
            batch("s", "a", 3),
            batch("s", "a", 4),
            v2.clone(),
            batch("s", "a", 6),
        ];
        let stored = CommitOutcome::Stored {
            readings: 1,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        };
        let os = [
            stored.clone(),
            CommitOutcome::Duplicate,
            CommitOutcome::UnknownCatalog,
            stored.clone(),
            stored,
            CommitOutcome::Conflict {
                reason: "other content".into(),
            },
        ];
        let g = |agent: &str, epoch, ids: Vec<u64>| AckGroup {
            site: "s".into(),
            agent: agent.into(),
            epoch,
            ids,
        };
        let acks = acks_for(&bs, &os);
        assert_eq!(
            acks,
            vec![
                g("a", 0, vec![1, 4]),
                g("b", 0, vec![2]),
                g("a", 77, vec![5])
            ]
        );
        assert_eq!(acks[2].committed().buffer_epoch, Some(77));
        assert_eq!(acks[0].committed().buffer_epoch, None);
        assert_eq!(
            conflicts(&bs, &os),
            vec![(5, BatchKey::of(&bs[5]), "other content".to_owned())]
        );
    }

    #[test]
    fn a_rejected_v2_frame_names_its_epoch() {
        let mut b = batch("s", "b", 9);
        b.buffer_epoch = 1234;
        let p = wire::encode(&b).expect("encode");
        match classify("fs", "fs/v1/s/a/data", &p, 0) {
            Incoming::Dead { reject, .. } => assert_eq!(reject.map(|k| k.epoch), Some(1234)),
            other => panic!("{other:?}"),
        }
    }
}
