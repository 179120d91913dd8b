//! `edge-agent browse opcua` (the address space, to write tag maps) and `edge-agent opcua certs`
//! (the agent's certificate and the trusted/rejected server certificates).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use opcua::types::{NodeClass, NodeId, StatusCode};

use super::CliError;
use crate::drivers::opcua::config::{
    Auth, Mode, NodeRef, OpcUaDevice, PasswordSource, SecurityMode, SecurityPolicy,
};
use crate::drivers::opcua::{pki, OpcUaSession};

/// Protocols `browse` speaks.
#[derive(Debug, Subcommand)]
pub enum BrowseProtocol {
    /// List an OPC UA server's address space (objects and variables) with NodeIds, data types and
    /// current values — copy the NodeIds into `node = "…"` tag keys.
    Opcua {
        /// Server endpoint, e.g. opc.tcp://10.0.0.5:4840
        #[arg(long)]
        endpoint: String,
        /// Start here (NodeId; default: the Objects folder, i=85).
        #[arg(long, default_value = "i=85")]
        node: String,
        /// Levels to descend below --node.
        #[arg(long, default_value_t = 3)]
        depth: u32,
        /// Security policy: None, Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss.
        #[arg(long, default_value = "None")]
        security_policy: String,
        /// Security mode: None, Sign, SignAndEncrypt.
        #[arg(long, default_value = "None")]
        security_mode: String,
        /// User name (password from --password-file).
        #[arg(long, requires = "password_file")]
        username: Option<String>,
        /// File holding the password (first line).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PKI directory to use read-only (the agent's certificate, trusted server
        /// certificates), e.g. the installed agent's, for secure servers that trust it. Default:
        /// a throw-away certificate in a temporary directory (browse writes no keys).
        #[arg(long)]
        pki_dir: Option<PathBuf>,
        /// Also list the server's own namespace-0 nodes (the Server object, ~230 diagnostics and
        /// capability nodes), hidden by default.
        #[arg(long)]
        server_nodes: bool,
        /// Time to wait for each answer.
        #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
        timeout: Duration,
    },
}

/// `edge-agent opcua …` subcommands.
#[derive(Debug, Subcommand)]
pub enum OpcUaCommand {
    /// The agent's OPC UA certificate and the server certificates it trusts or rejected.
    Certs {
        #[command(subcommand)]
        /// What to do.
        command: CertsCommand,
    },
}

/// `edge-agent opcua certs …`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// List the agent's own certificate (created here if missing) and every trusted and
    /// rejected server certificate with its thumbprint.
    List {
        #[command(flatten)]
        /// Where the PKI is.
        pki: PkiArg,
    },
    /// Trust a rejected server certificate (by thumbprint prefix or file name), or a certificate
    /// file given with --file.
    Trust {
        #[command(flatten)]
        /// Where the PKI is.
        pki: PkiArg,
        /// Thumbprint (or its first characters) or file name from `certs list`.
        #[arg(required_unless_present = "file")]
        thumbprint: Option<String>,
        /// Trust this certificate file (DER or PEM) instead.
        #[arg(long, conflicts_with = "thumbprint")]
        file: Option<PathBuf>,
    },
    /// The agent's own certificate: subject, application URI, validity, thumbprint, file, and
    /// whether it was made for the tag map's `[agent] site`/`id`.
    Show {
        /// Tag map (its `[agent]` and OPC UA PKI directory).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a new key and certificate for the tag map's `[agent] site`/`id` (valid 2 years); the
    /// old pair is kept beside it with a timestamp. The OPC UA servers must then trust the new
    /// certificate.
    Renew {
        /// Tag map (its `[agent]` and OPC UA PKI directory).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Withdraw trust from a server certificate (moved back to rejected/).
    Reject {
        #[command(flatten)]
        /// Where the PKI is.
        pki: PkiArg,
        /// Thumbprint (or its first characters) or file name from `certs list`.
        thumbprint: String,
    },
}

/// The PKI directory, given directly or as the tag map's.
#[derive(Debug, clap::Args)]
pub struct PkiArg {
    /// PKI directory.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pki_dir: Option<PathBuf>,
    /// Tag map: its OPC UA PKI directory (first OPC UA device's `pki_dir`, else pki/ next to
    /// the buffer).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl PkiArg {
    fn dir(&self) -> Result<PathBuf, CliError> {
        if let Some(d) = &self.pki_dir {
            return Ok(d.clone());
        }
        let path = self
            .config
            .as_deref()
            .ok_or_else(|| CliError::Usage("give --pki-dir or --config".into()))?;
        let map = super::load_map(path)?;
        let agent = map.agent_context();
        let first = map.devices.iter().find(|d| d.driver.opcua().is_some());
        Ok(match first {
            Some(d) => pki::dir_for(d, &agent),
            None => pki::default_dir(&agent),
        })
    }
}

fn ua_err(e: crate::drivers::opcua::OpcUaError) -> CliError {
    CliError::Usage(e.to_string())
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, CliError> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
        .map_err(|_| CliError::Usage(format!("--{what} {s:?} is not valid (see --help)")))
}

/// `browse opcua`.
pub async fn browse(p: BrowseProtocol) -> Result<ExitCode, CliError> {
    let BrowseProtocol::Opcua {
        endpoint,
        node,
        depth,
        security_policy,
        security_mode,
        username,
        password_file,
        pki_dir,
        server_nodes,
        timeout,
    } = p;
    let start = NodeRef::parse(&node).map_err(CliError::Usage)?;
    let auth = match (username, password_file) {
        (Some(username), Some(f)) => Auth::Username {
            username,
            password: PasswordSource::File(f),
        },
        _ => Auth::Anonymous,
    };
    let dev = OpcUaDevice {
        endpoint,
        security_policy: parse_enum::<SecurityPolicy>("security-policy", &security_policy)?,
        security_mode: parse_enum::<SecurityMode>("security-mode", &security_mode)?,
        auth,
        mode: Mode::Polling,
        publishing_interval: Duration::from_secs(1),
        session_timeout: Duration::from_secs(60),
        request_timeout: timeout,
        reconnect_min: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(1),
        max_nodes_per_request: 1000,
        pki_dir: None,
        verify_server_certificate: false,
        time: crate::model::TimePolicy::default(),
    };
    // Browsing persists nothing: the session's certificate lives in a temporary copy.
    let pki = pki::EphemeralPki::new(pki_dir.as_deref()).map_err(ua_err)?;
    let s = OpcUaSession::connect(
        &dev,
        pki.path(),
        &pki::Identity::new("browse", "cli"),
        "flowsquare browse",
    )
    .await
    .map_err(ua_err)?;
    let start = s.resolve(&start).map_err(CliError::Usage)?;
    for (i, ns) in s.namespaces().iter().enumerate() {
        println!("# ns={i} {ns}");
    }
    println!(
        "{:<48} {:<28} {:<10} {:<14} VALUE",
        "NODE", "NAME", "CLASS", "TYPE"
    );
    let mut w = Walk {
        count: 0,
        hidden: 0,
        server_nodes,
    };
    walk(&s, &start, 0, depth, &mut w).await?;
    eprintln!("{} node(s)", w.count);
    if w.hidden > 0 {
        eprintln!(
            "{} server node(s) of namespace 0 hidden (--server-nodes lists them)",
            w.hidden
        );
    }
    s.close().await;
    Ok(ExitCode::SUCCESS)
}

/// What a browse walk counts.
struct Walk {
    count: usize,
    hidden: usize,
    server_nodes: bool,
}

async fn walk(
    s: &OpcUaSession,
    node: &NodeId,
    level: u32,
    depth: u32,
    w: &mut Walk,
) -> Result<(), CliError> {
    let mut refs = s.browse(node).await.map_err(ua_err)?;
    if !w.server_nodes {
        let before = refs.len();
        refs.retain(|r| r.node_id.node_id.namespace != 0);
        w.hidden += before - refs.len();
    }
    let vars: Vec<NodeId> = refs
        .iter()
        .filter(|r| r.node_class == NodeClass::Variable)
        .map(|r| r.node_id.node_id.clone())
        .collect();
    let values = if vars.is_empty() {
        Vec::new()
    } else {
        s.read_nodes(&vars).await.map_err(ua_err)?
    };
    let mut vi = values.iter();
    for r in &refs {
        w.count += 1;
        let indent = "  ".repeat(level as usize);
        let id = r.node_id.node_id.to_string();
        let class = format!("{:?}", r.node_class);
        let name = r.display_name.text.as_ref().to_owned();
        let name = if name.is_empty() {
            r.browse_name.name.as_ref().to_owned()
        } else {
            name
        };
        let (ty, value) = if r.node_class == NodeClass::Variable {
            match vi.next() {
                Some(dv) => {
                    let status = dv.status.unwrap_or(StatusCode::Good);
                    let ty = dv.value.as_ref().map(type_name).unwrap_or_default();
                    let val = if status.is_good() {
                        dv.value.as_ref().map(value_text).unwrap_or_default()
                    } else {
                        status.to_string()
                    };
                    (ty, val)
                }
                None => (String::new(), String::new()),
            }
        } else {
            (String::new(), String::new())
        };
        println!(
            "{:<48} {:<28} {:<10} {:<14} {}",
            format!("{indent}{id}"),
            name,
            class,
            ty,
            value
        );
        if level < depth && r.node_class == NodeClass::Object {
            Box::pin(walk(s, &r.node_id.node_id, level + 1, depth, w)).await?;
        }
    }
    Ok(())
}

/// The OPC UA type name of a value: `Double`, `Int32`, `String`; arrays as `Double[]`.
fn type_name(v: &opcua::types::Variant) -> String {
    use opcua::types::VariantTypeId;
    match v.type_id() {
        VariantTypeId::Empty => "Null".into(),
        VariantTypeId::Scalar(t) => format!("{t:?}"),
        VariantTypeId::Array(t, _) => format!("{t:?}[]"),
    }
}

/// Most array elements shown.
const ARRAY_SHOWN: usize = 8;

/// A value as text; arrays as `[1.5, 2, 3]` (elements formatted like scalars, the first
/// `ARRAY_SHOWN`, then `… (N)` with the count).
fn value_text(v: &opcua::types::Variant) -> String {
    match v {
        opcua::types::Variant::Array(a) => {
            let mut parts: Vec<String> = a
                .values
                .iter()
                .take(ARRAY_SHOWN)
                .map(|e| e.to_string())
                .collect();
            if a.values.len() > ARRAY_SHOWN {
                parts.push(format!("… ({})", a.values.len()));
            }
            format!("[{}]", parts.join(", "))
        }
        v => v.to_string(),
    }
}

/// `opcua certs …`.
pub fn run(c: OpcUaCommand) -> Result<ExitCode, CliError> {
    let OpcUaCommand::Certs { command } = c;
    match command {
        CertsCommand::List { pki: p } => {
            let dir = p.dir()?;
            if !pki::own_cert_path(&dir).exists() {
                // Without a tag map the identity is unknown: the pair is made by `certs renew`
                // or the agent's first connection.
                if let Some(cfg) = &p.config {
                    let map = super::load_map(cfg)?;
                    let who = pki::Identity::of(&map.agent_context());
                    pki::ensure_own_certificate(&dir, &who).map_err(ua_err)?;
                }
            }
            print_list(&dir);
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Show { config } => {
            let (dir, who) = identity_of(&config)?;
            let c = pki::own_certificate(&dir, &who).map_err(ua_err)?;
            print_own(&c, &who);
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Renew { config } => {
            let (dir, who) = identity_of(&config)?;
            let backups = pki::renew(&dir, &who).map_err(ua_err)?;
            for b in &backups {
                println!("kept old {}", b.display());
            }
            let c = pki::own_certificate(&dir, &who).map_err(ua_err)?;
            print_own(&c, &who);
            println!(
                "next: every OPC UA server with security (Sign / SignAndEncrypt) must trust this certificate \
                 (copy {} into the server's trusted certificates, thumbprint {}) and may drop the old one; \
                 restart the agent so new sessions use it",
                c.path.display(),
                c.thumbprint
            );
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Trust {
            pki: p,
            thumbprint,
            file,
        } => {
            let dir = p.dir()?;
            let dest = match (thumbprint, file) {
                (_, Some(f)) => pki::trust_file(&dir, &f),
                (Some(t), None) => pki::trust(&dir, &t),
                (None, None) => return Err(CliError::Usage("give a thumbprint or --file".into())),
            }
            .map_err(ua_err)?;
            println!("trusted {}", dest.display());
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Reject { pki: p, thumbprint } => {
            let dir = p.dir()?;
            let dest = pki::reject(&dir, &thumbprint).map_err(ua_err)?;
            println!("rejected {}", dest.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The PKI directory (as `PkiArg --config`) and `[agent]` identity of a tag map.
fn identity_of(config: &Path) -> Result<(PathBuf, pki::Identity), CliError> {
    let map = super::load_map(config)?;
    let agent = map.agent_context();
    let first = map.devices.iter().find(|d| d.driver.opcua().is_some());
    let dir = match first {
        Some(d) => pki::dir_for(d, &agent),
        None => pki::default_dir(&agent),
    };
    Ok((dir, pki::Identity::of(&agent)))
}

fn print_own(c: &pki::OwnCert, who: &pki::Identity) {
    println!("file            {}", c.path.display());
    println!("subject         {}", c.subject);
    println!("application uri {}", c.application_uri);
    println!("valid from      {}", c.not_before);
    println!("valid until     {}", c.not_after);
    println!("thumbprint      {}", c.thumbprint);
    if c.matches {
        println!("identity        matches [agent] site/id");
    } else {
        println!(
            "identity        DOES NOT match [agent] site/id (expected CN={}, URI {}): run `edge-agent opcua certs renew`",
            who.common_name(),
            who.application_uri()
        );
    }
}

fn print_list(dir: &Path) {
    println!("# PKI {}", dir.display());
    println!(
        "{:<9} {:<40} {:<25} {:<32} SUBJECT",
        "STATE", "THUMBPRINT", "EXPIRES", "COMMON NAME"
    );
    for c in pki::list(dir) {
        println!(
            "{:<9} {:<40} {:<25} {:<32} {}",
            c.state.as_str(),
            c.thumbprint,
            c.not_after,
            c.common_name,
            c.subject
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::Variant;

    #[test]
    fn type_names_and_arrays_read_like_values() {
        assert_eq!(type_name(&Variant::Double(1.5)), "Double");
        assert_eq!(type_name(&Variant::from("x")), "String");
        let a = Variant::from(vec![1.5f64, 2.0, 3.25]);
        assert_eq!(type_name(&a), "Double[]");
        assert_eq!(value_text(&a), "[1.5, 2, 3.25]");
        let long = Variant::from((0..20).map(f64::from).collect::<Vec<_>>());
        assert!(
            value_text(&long).ends_with(", … (20)]"),
            "{}",
            value_text(&long)
        );
        assert_eq!(value_text(&Variant::Double(2.5)), "2.5");
    }
}
