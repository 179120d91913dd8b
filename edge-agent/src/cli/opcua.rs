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
        /// PKI directory (the agent's certificate, trusted server certificates).
        #[arg(long, default_value = "/var/lib/flowsquare/pki")]
        pki_dir: PathBuf,
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
        let first = map.devices.iter().position(|d| d.driver.opcua().is_some());
        Ok(match first {
            Some(i) => pki::dir_for(&map, i),
            None => pki::default_dir(&map),
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
    let s = OpcUaSession::connect(&dev, &pki_dir, "flowsquare browse")
        .await
        .map_err(ua_err)?;
    let start = s.resolve(&start).map_err(CliError::Usage)?;
    for (i, ns) in s.namespaces().iter().enumerate() {
        println!("# ns={i} {ns}");
    }
    println!("{:<48} {:<10} {:<10} VALUE", "NODE", "CLASS", "TYPE");
    let mut count = 0usize;
    walk(&s, &start, 0, depth, &mut count).await?;
    eprintln!("{count} node(s)");
    s.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn walk(
    s: &OpcUaSession,
    node: &NodeId,
    level: u32,
    depth: u32,
    count: &mut usize,
) -> Result<(), CliError> {
    let refs = s.browse(node).await.map_err(ua_err)?;
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
        *count += 1;
        let indent = "  ".repeat(level as usize);
        let id = r.node_id.node_id.to_string();
        let class = format!("{:?}", r.node_class);
        let (ty, value) = if r.node_class == NodeClass::Variable {
            match vi.next() {
                Some(dv) => {
                    let status = dv.status.unwrap_or(StatusCode::Good);
                    let ty = dv
                        .value
                        .as_ref()
                        .map(|v| format!("{:?}", v.type_id()))
                        .unwrap_or_default();
                    let val = if status.is_good() {
                        dv.value.as_ref().map(|v| v.to_string()).unwrap_or_default()
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
            "{:<48} {:<10} {:<10} {}",
            format!("{indent}{id}"),
            class,
            short(&ty),
            value
        );
        if level < depth && r.node_class == NodeClass::Object {
            Box::pin(walk(s, &r.node_id.node_id, level + 1, depth, count)).await?;
        }
    }
    Ok(())
}

fn short(ty: &str) -> String {
    ty.rsplit("::")
        .next()
        .unwrap_or(ty)
        .chars()
        .take(10)
        .collect()
}

/// `opcua certs …`.
pub fn run(c: OpcUaCommand) -> Result<ExitCode, CliError> {
    let OpcUaCommand::Certs { command } = c;
    match command {
        CertsCommand::List { pki: p } => {
            let dir = p.dir()?;
            pki::ensure_own_certificate(&dir).map_err(ua_err)?;
            print_list(&dir);
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
