//! Benchmark peer (scripts/bench-footprint), not part of the agent: a minimal stand-in for
//! cloud-ingest that acknowledges every data batch as committed, for farms whose reading rate a
//! real ingest with PostgreSQL on the benchmark machine cannot keep up with.
//!
//! It subscribes to `<root>/+/+/data` (QoS 1), decodes every batch (to count its readings and
//! to ack it with its buffer epoch, like cloud-ingest) and publishes `Ack::committed` on the
//! agent's ack topic. Nothing is stored. Every second it prints one line to stdout:
//! `acked <batches> <readings>` (totals since start), which the script samples.
//!
//!   cargo run --release -p edge-agent --example bench_ack_peer -- HOST:PORT ROOT

use std::time::Duration;

use flowsquare_wire as wire;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(broker), Some(root)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bench_ack_peer HOST:PORT TOPIC_ROOT");
    };
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("broker must be HOST:PORT"))?;
    let mut o = MqttOptions::new(
        format!("bench-ack-peer-{}", std::process::id()),
        host,
        port.parse()?,
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    o.set_clean_session(true);
    let (client, mut ev) = AsyncClient::new(o, 4096);
    let filter = wire::Topics::filter(&root, wire::Kind::Data)?;
    let (mut batches, mut readings) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => println!("acked {batches} {readings}"),
            e = ev.poll() => match e {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(filter.clone(), QoS::AtLeastOnce).await?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok((wire::Kind::Data, site, agent)) = wire::Topics::parse(&root, &p.topic)
                    else {
                        continue;
                    };
                    let Ok(b) = wire::decode(&p.payload) else {
                        eprintln!("undecodable batch on {}", p.topic);
                        continue;
                    };
                    let topic = wire::Topics::new(root.clone(), site, agent)?.ack();
                    let ack = wire::Ack::committed(vec![b.batch_id]).for_epoch(b.buffer_epoch);
                    client.publish(topic, QoS::AtLeastOnce, false, ack.encode()).await?;
                    batches += 1;
                    readings += b.readings.len() as u64;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mqtt: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}
