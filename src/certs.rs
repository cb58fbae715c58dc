//! `switchboard certs`: the cluster's certificates without a PKI team.
//!
//! `init` makes a cluster CA (ECDSA P-256, 10 years) and an empty members file; `issue` makes a
//! process's key and certificate, signed by that CA, whose subject common name is its identity
//! (`<role>:<name>`, [`switchboard_bus::tls::Identity`]), and adds the identity to the members
//! file. Certificates are for both ends of a link (server and client authentication). Rotation is
//! documented in docs/security.md.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use switchboard_bus::tls::{self, read_members, IdRole, Identity};

/// `switchboard certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a cluster CA: <dir>/ca.crt (give it to every process), <dir>/ca.key (keep it
    /// offline; it signs certificates) and an empty <dir>/members.
    Init {
        /// Where to write the files.
        #[arg(long, default_value = "tls")]
        dir: PathBuf,
        /// How long the CA is valid, in days (1 to 36500).
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Make a key and certificate for one process: <dir>/<role>-<name>.crt and .key, signed by
    /// <dir>/ca.key, and add <role>:<name> to <dir>/members. Issuing again for the same name
    /// makes a new key (rotation).
    Issue {
        /// The process's name, `[bus] node` of its config (an agent's is its gateway node's), of
        /// ASCII letters, digits, `.`, `_` and `-`, with `<role>:<name>` at most 64 characters
        name: String,
        /// What the holder may do (docs/security.md).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Where the CA is and the files go.
        #[arg(long, default_value = "tls")]
        dir: PathBuf,
        /// How long the certificate is valid, in days (1 to 36500).
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Print a certificate's identity, issuer and validity (and, with --ca, whether that CA
    /// signed it: during a CA rotation, which nodes already hold a new certificate). Exit 1 when
    /// the certificate is not valid now (expired, or not yet valid).
    Show {
        /// A PEM certificate file.
        file: PathBuf,
        /// A CA certificate (PEM; the first of a bundle) to check the signature against: exit 1
        /// when it did not sign the certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// A node agent.
    Agent,
    /// A collector.
    Collector,
    /// A person or tool that sets limits, pushes the cluster's configuration and asks for DLRs.
    Admin,
}

impl From<RoleArg> for IdRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Agent => IdRole::Agent,
            RoleArg::Collector => IdRole::Collector,
            RoleArg::Admin => IdRole::Admin,
        }
    }
}

/// Run one `certs` command.
pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Init { dir, days, force } => init(&dir, days, force),
        CertsCommand::Issue { name, role, dir, days } => issue(&dir, &Identity::new(role.into(), &name)?, days),
        CertsCommand::Show { file, ca } => show(&file, ca.as_deref()),
    }
}

/// Write `contents` to `path` with `mode` (a new file, or replacing one).
fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn init(dir: &Path, days: u32, force: bool) -> Result<()> {
    let (crt, key, members) = (dir.join("ca.crt"), dir.join("ca.key"), dir.join("members"));
    // The certificate too: its key may have been moved offline, as advised.
    if let Some(existing) = [&key, &crt].into_iter().find(|p| p.exists()).filter(|_| !force) {
        bail!(
            "{} exists: a cluster has one CA (use --force to replace it and every certificate it issued; to \
             issue with the CA whose key was moved offline, put ca.key back beside ca.crt)",
            existing.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_cert, ca_key) = tls::make_ca(days)?;
    write(&key, &ca_key, 0o600)?;
    write(&crt, &ca_cert, 0o644)?;
    if !members.exists() || force {
        write(
            &members,
            "# Switchboard cluster members: one <role>:<name> per line, the same file on every node.\n",
            0o644,
        )?;
    }
    out!("CA: {} (give it to every process) and {} (keep it offline)", crt.display(), key.display());
    out!("members: {}", members.display());
    out!("next: switchboard certs issue <name> --role agent|collector|admin --dir {}", dir.display());
    Ok(())
}

fn issue(dir: &Path, id: &Identity, days: u32) -> Result<()> {
    let (ca_crt, ca_key, members) = (dir.join("ca.crt"), dir.join("ca.key"), dir.join("members"));
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| {
            if p == ca_key && ca_crt.exists() {
                // The CA exists; its key was moved away (offline, as advised): a new CA is not the answer.
                format!(
                    "cannot read {}: the CA's key is not beside {}; put it back (it was kept offline?) to issue \
                     (`certs init` would make another CA, which none of the cluster's processes trusts)",
                    p.display(),
                    ca_crt.display()
                )
            } else {
                format!("cannot read {} (run `switchboard certs init --dir {}` first)", p.display(), dir.display())
            }
        })
    };
    let (cert, key) = tls::issue(&read(&ca_crt)?, &read(&ca_key)?, id, days).map_err(|e| match e {
        tls::TlsError::KeyNotOfCa => anyhow::anyhow!(
            "{} is not the key of the CA in {}: a certificate it signed would be trusted by no process using \
             that file. After the CA was rotated, issue from the new CA's directory (docs/security.md, \"Rotation\")",
            ca_key.display(),
            ca_crt.display()
        ),
        other => other.into(),
    })?;
    let base = format!("{}-{}", id.role, id.name);
    let (crt_path, key_path) = (dir.join(format!("{base}.crt")), dir.join(format!("{base}.key")));
    write(&key_path, &key, 0o600)?;
    write(&crt_path, &cert, 0o644)?;
    let known = if members.exists() { read_members(&members)? } else { Vec::new() };
    if !known.contains(id) {
        let mut text = if members.exists() { read(&members)? } else { String::new() };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{id}\n"));
        write(&members, &text, 0o644)?;
        out!("added {id} to {} (copy it to every node, then restart their processes)", members.display());
    }
    out!("{id}: {} and {} (valid {days} days)", crt_path.display(), key_path.display());
    Ok(())
}

fn show(file: &Path, ca: Option<&Path>) -> Result<()> {
    let pem = read_pem(file)?;
    let cert = pem.parse_x509().map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", file.display()))?;
    let identity =
        switchboard_bus::tls::identity_of(file, &cert).map_or_else(|e| format!("none ({e})"), |i| i.to_string());
    out!("identity:  {identity}");
    out!("subject:   {}", cert.subject());
    out!("issuer:    {}", cert.issuer());
    out!("valid:     {} to {}", cert.validity().not_before, cert.validity().not_after);
    out!("valid now: {}", if cert.validity().is_valid() { "yes" } else { "NO" });
    if let Some(ca_file) = ca {
        let ca_pem = read_pem(ca_file)?;
        let ca_cert =
            ca_pem.parse_x509().map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", ca_file.display()))?;
        if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
            out!("signed by: NOT {}", ca_file.display());
            anyhow::bail!("{} was not signed by the CA in {}", file.display(), ca_file.display());
        }
        out!("signed by: {}", ca_file.display());
    }
    if !cert.validity().is_valid() {
        anyhow::bail!(
            "{} is valid from {} to {}, not now: no process accepts it; issue a new one with `switchboard certs issue`",
            file.display(),
            cert.validity().not_before,
            cert.validity().not_after
        );
    }
    Ok(())
}

/// The first PEM block of `file`.
fn read_pem(file: &Path) -> Result<x509_parser::pem::Pem> {
    let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&data).map_err(|e| anyhow::anyhow!("{}: not PEM: {e}", file.display()))?;
    Ok(pem)
}
