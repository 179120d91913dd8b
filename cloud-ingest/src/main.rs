//! `cloud-ingest` binary.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("cloud-ingest: the service is not assembled yet (see issue 4)")
}
