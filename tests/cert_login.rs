//! The chain logging in by client certificate (issue 15): `flowsquare-sim` → the `edge-agent`
//! binary (`mqtts://`, `[uplink] ca_file`, `cert_file`, `key_file`) → the `cloud-ingest`
//! binary's embedded broker with `tls_cert_file`, `tls_key_file` and `client_ca_file` → its
//! SQLite store. Certificates are made by the openssl CLI in the test's directory
//! (`flowsquare_tests::pki`). An agent whose certificate comes from another CA (same CN) is
//! refused and stores nothing.

use std::path::Path;
use std::time::Duration;

use flowsquare_tests::chain::{metric, modbus_sim, Agent, AgentToml, Ingest, SIM_TANK_FARM};
use flowsquare_tests::pki::Pki;
use flowsquare_tests::wait_until;

const WAIT: Duration = Duration::from_secs(60);

/// An agent config in `dir/<name>` logging in with certificate `cert`.
fn agent_config(
    dir: &Path,
    name: &str,
    port: u16,
    sim_port: u16,
    cert: &str,
) -> std::path::PathBuf {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).expect("state");
    let d = dir.display();
    let uplink = format!(
        "ca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/{cert}.pem\"\nkey_file = \"{d}/{cert}.key\"\n"
    );
    let toml = AgentToml {
        site: "s1",
        dir: &state,
        broker: &format!("mqtts://127.0.0.1:{port}"),
        root: "certs/fs",
        sim_port,
        agent_extra: "metrics = \"127.0.0.1:0\"\n",
        uplink_extra: &uplink,
    };
    let p = state.join("agent.toml");
    std::fs::write(&p, toml.render()).expect("agent config");
    p
}

#[test]
fn an_edge_agent_logs_in_to_the_embedded_broker_with_its_client_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let pki = Pki::new(dir);
    pki.ca("ca");
    pki.ca("other-ca");
    pki.leaf("ca", "server", "localhost", true);
    pki.leaf("ca", "gw", "s1/gw", false);
    pki.leaf("other-ca", "forged", "s1/gw", false);
    let (_sim, sim_port) = modbus_sim(dir, SIM_TANK_FARM, WAIT);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let d = dir.display();
    let ingest_cfg = dir.join("ingest.toml");
    std::fs::write(
        &ingest_cfg,
        format!(
            "[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\ntopic_root = \"certs/fs\"\n\
             [database]\nsqlite_path = \"{d}/ingest.db\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [reconcile]\nenabled = false\n[broker]\nembedded = true\n\
             listen = \"127.0.0.1:{port}\"\ntls_cert_file = \"{d}/server.pem\"\n\
             tls_key_file = \"{d}/server.key\"\nclient_ca_file = \"{d}/ca.pem\"\n"
        ),
    )
    .expect("ingest config");
    let ingest = Ingest::start(&ingest_cfg, 1, WAIT);

    // The forged certificate (same CN, another CA): refused in the handshake, nothing stored.
    let forged = Agent::start(
        &agent_config(dir, "forged", port, sim_port, "forged"),
        "agent.log",
        |_, _| {},
    );
    assert!(
        wait_until(WAIT, || ingest
            .metric("flowsquare_ingest_broker_refused_total")
            .is_some_and(|v| v >= 1.0)),
        "the forged certificate is refused; ingest log:\n{}",
        ingest.log_text()
    );
    assert_eq!(
        ingest.metric("flowsquare_ingest_stored_readings_total"),
        Some(0.0)
    );
    forged.stop(WAIT);
    assert!(
        ingest.log_text().contains("TLS handshake"),
        "{}",
        ingest.log_text()
    );

    let agent = Agent::start(
        &agent_config(dir, "gw", port, sim_port, "gw"),
        "agent.log",
        |_, _| {},
    );
    let mut seen = String::new();
    assert!(
        wait_until(WAIT, || {
            seen = agent.metrics().unwrap_or_default();
            metric(&seen, "flowsquare_readings_acked_total").is_some_and(|v| v > 0.0)
        }),
        "the agent's readings are stored and acked; agent log:\n{}\ningest log:\n{}",
        agent.log(),
        ingest.log_text()
    );
    assert!(ingest
        .metric("flowsquare_ingest_stored_readings_total")
        .is_some_and(|v| v > 0.0));
    agent.stop(WAIT);
    ingest.stop(WAIT);
}
