//! Mutual TLS on the bus: the `[bus.tls]` table, the identity a certificate carries, and the
//! checks that make a wrong file fail at start with its name.
//!
//! A certificate's subject common name is its [`Identity`], `<role>:<name>`. [`load`] reads the
//! CA, this process's certificate and key, and the members file, and refuses what zenoh would
//! accept but the cluster would not: an expired certificate, one not signed by the CA, one
//! that names another process. [`make_ca`] and [`issue`] make the certificates (`switchboard
//! certs`, and the tests and benches). The policy built from the members file is in
//! [`crate::access`]; `docs/security.md` documents both.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;

use crate::keys::check_name;

/// The `[bus.tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the cluster CA's certificate (several during a CA rotation). Required.
    pub ca: PathBuf,
    /// PEM file of this process's certificate, issued by `switchboard certs issue`. Required.
    pub cert: PathBuf,
    /// PEM file of this process's private key. Required.
    pub key: PathBuf,
    /// The members file: one identity (`<role>:<name>`) per line. Default: `members` in the
    /// directory of `ca`.
    #[serde(default)]
    pub members: Option<PathBuf>,
}

impl TlsConfig {
    /// The members file in force.
    pub fn members_path(&self) -> PathBuf {
        self.members.clone().unwrap_or_else(|| self.ca.parent().unwrap_or(Path::new(".")).join("members"))
    }
}

/// What a certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdRole {
    /// A node agent; its name is its gateway node's.
    Agent,
    /// A collector.
    Collector,
    /// A person or tool that administers the cluster (`switchboard limits set`).
    Admin,
}

impl IdRole {
    /// `agent`, `collector` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdRole::Agent => "agent",
            IdRole::Collector => "collector",
            IdRole::Admin => "admin",
        }
    }
}

impl FromStr for IdRole {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "agent" => Ok(IdRole::Agent),
            "collector" => Ok(IdRole::Collector),
            "admin" => Ok(IdRole::Admin),
            _ => Err(TlsError::Identity(format!("unknown role {s:?} (expected agent, collector or admin)"))),
        }
    }
}

impl fmt::Display for IdRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate's identity: its subject common name, `<role>:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The role.
    pub role: IdRole,
    /// The process's name (`[bus] node`), a valid key chunk.
    pub name: String,
}

impl Identity {
    /// An identity, checking that the name can stand in a key.
    pub fn new(role: IdRole, name: &str) -> Result<Self, TlsError> {
        check_name(name).map_err(|e| TlsError::Identity(format!("name {name:?}: {e}")))?;
        Ok(Self { role, name: name.to_owned() })
    }
}

impl FromStr for Identity {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let (role, name) =
            s.split_once(':').ok_or_else(|| TlsError::Identity(format!("{s:?} is not <role>:<name>")))?;
        Identity::new(role.parse()?, name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

/// A TLS file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM block of the expected kind, or one that does not parse.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate's validity period has ended (or not begun).
    #[error("{path}: the certificate is valid from {not_before} to {not_after}, not now; issue a new one with `switchboard certs issue`")]
    NotValidNow {
        /// The file.
        path: PathBuf,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// The certificate is not signed by (any of) the CA(s).
    #[error("{path} is not signed by the CA in {ca}")]
    NotSignedByCa {
        /// The certificate.
        path: PathBuf,
        /// The CA file.
        ca: PathBuf,
    },
    /// An identity that is not `<role>:<name>` or names another process.
    #[error("identity: {0}")]
    Identity(String),
    /// A certificate or key could not be made.
    #[error("making a certificate: {0}")]
    Make(String),
    /// The CA's key is not the key of any certificate of the CA file: what it signs, no process
    /// trusting that file accepts.
    #[error("the CA key is not the key of any certificate in the CA file")]
    KeyNotOfCa,
    /// A line of the members file.
    #[error("{path} line {line}: {reason}")]
    Members {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What [`load`] found: this process's identity and the cluster's members.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The identity in this process's certificate.
    pub identity: Identity,
    /// Every identity of the members file, sorted, without repeats.
    pub members: Vec<Identity>,
    /// When this process's certificate expires (RFC 2822).
    pub not_after: String,
    /// What works but should not be so: a key others may read, an identity the members file
    /// does not name (the other processes drop all this one sends).
    pub warnings: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid { path: path.to_owned(), reason: reason.into() }
}

/// Every certificate PEM block of `data`.
fn pem_certificates(path: &Path, data: &[u8]) -> Result<Vec<Pem>, TlsError> {
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(data) {
        let pem = pem.map_err(|e| invalid(path, format!("not PEM: {e}")))?;
        if pem.label == "CERTIFICATE" {
            out.push(pem);
        }
    }
    if out.is_empty() {
        return Err(invalid(path, "no CERTIFICATE block"));
    }
    Ok(out)
}

fn parse<'a>(path: &Path, pem: &'a Pem) -> Result<X509Certificate<'a>, TlsError> {
    pem.parse_x509().map_err(|e| invalid(path, format!("not an X.509 certificate: {e}")))
}

fn check_validity(path: &Path, cert: &X509Certificate<'_>) -> Result<(), TlsError> {
    if cert.validity().is_valid() {
        return Ok(());
    }
    Err(TlsError::NotValidNow {
        path: path.to_owned(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}

/// The identity in a certificate's subject common name.
pub fn identity_of(path: &Path, cert: &X509Certificate<'_>) -> Result<Identity, TlsError> {
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| invalid(path, "the certificate has no subject common name"))?;
    cn.parse().map_err(|e| invalid(path, format!("common name {cn:?}: {e}")))
}

/// Read a members file: one identity per line, `#` starts a comment, blank lines are skipped.
pub fn read_members(path: &Path) -> Result<Vec<Identity>, TlsError> {
    let text = String::from_utf8(read(path)?).map_err(|_| invalid(path, "not UTF-8"))?;
    let mut members = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let id = line.parse().map_err(|e: TlsError| TlsError::Members {
            path: path.to_owned(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        members.push(id);
    }
    members.sort();
    members.dedup();
    Ok(members)
}

/// Read and check `config`'s files. `expect` is the identity this process must hold (`None`
/// for a command-line tool, which may use any member's certificate).
pub fn load(config: &TlsConfig, expect: Option<&Identity>) -> Result<Credentials, TlsError> {
    let ca_data = read(&config.ca)?;
    let ca_pems = pem_certificates(&config.ca, &ca_data)?;
    let mut cas = Vec::new();
    for pem in &ca_pems {
        let ca = parse(&config.ca, pem)?;
        check_validity(&config.ca, &ca)?;
        cas.push(ca);
    }
    let cert_data = read(&config.cert)?;
    let cert_pems = pem_certificates(&config.cert, &cert_data)?;
    let cert = parse(&config.cert, &cert_pems[0])?;
    check_validity(&config.cert, &cert)?;
    if !cas.iter().any(|ca| cert.verify_signature(Some(ca.public_key())).is_ok()) {
        return Err(TlsError::NotSignedByCa { path: config.cert.clone(), ca: config.ca.clone() });
    }
    let identity = identity_of(&config.cert, &cert)?;
    if let Some(expect) = expect {
        check_tls_name(&expect.name).map_err(TlsError::Identity)?;
        if &identity != expect {
            return Err(TlsError::Identity(format!(
                "{} is the certificate of {identity}, but this process is {expect}; issue one with \
                 `switchboard certs issue {} --role {}`",
                config.cert.display(),
                expect.name,
                expect.role
            )));
        }
    }
    let key = String::from_utf8(read(&config.key)?).map_err(|_| invalid(&config.key, "not PEM"))?;
    if !key.contains("PRIVATE KEY-----") {
        return Err(invalid(&config.key, "no PRIVATE KEY block"));
    }
    // A key of a kind read here must be the certificate's (others are left to the TLS stack).
    if let Ok(pair) = rcgen::KeyPair::from_pem(&key) {
        if pair.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(invalid(&config.key, format!("not the key of {}", config.cert.display())));
        }
    }
    let members_path = config.members_path();
    let members = read_members(&members_path)?;
    let mut warnings = Vec::new();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config.key).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{} may be read by others than its owner (mode {mode:04o}): `chmod 600 {}`",
                config.key.display(),
                config.key.display()
            ));
        }
    }
    if !members.contains(&identity) {
        warnings.push(format!(
            "{identity} is not in the members file {}: the other processes drop everything this one sends (add \
             it there, the same file on every node, and restart them: docs/security.md, \"Rotation\")",
            members_path.display()
        ));
    }
    Ok(Credentials { identity, members, not_after: cert.validity().not_after.to_string(), warnings })
}

fn make_err(e: impl fmt::Display) -> TlsError {
    TlsError::Make(e.to_string())
}

fn validity(params: &mut rcgen::CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks that differ a little between nodes.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// A new cluster CA valid for `days` (ECDSA P-256): `(certificate PEM, key PEM)`.
pub fn make_ca(days: u32) -> Result<(String, String), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().map_err(make_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(make_err)?;
    params.distinguished_name.push(DnType::CommonName, "switchboard cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(make_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether `name` can name a node that runs with TLS: a certificate names it in a DNS name, so
/// ASCII letters, digits, `.`, `_` and `-` only (which also keeps a second `:` out of the
/// `<role>:<name>` identity).
fn check_tls_name(name: &str) -> Result<(), String> {
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Ok(());
    }
    Err(format!(
        "node name {name:?}: a certificate names its node in a DNS name, so a node that runs with TLS needs a \
         name of ASCII letters, digits, '.', '_' and '-'"
    ))
}

/// The longest common name a certificate may hold (X.520's `ub-common-name`).
const MAX_COMMON_NAME: usize = 64;

/// A key and certificate for `id`, valid for `days`, signed by the CA (`ca_cert`, `ca_key`: PEM),
/// for both ends of a link: `(certificate PEM, key PEM)`.
pub fn issue(ca_cert: &str, ca_key: &str, id: &Identity, days: u32) -> Result<(String, String), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    // The name goes into a DNS name and `role:name` into the common name (64 characters at
    // most): say so before any file is read.
    check_tls_name(&id.name).map_err(TlsError::Make)?;
    let common_name = id.to_string();
    if common_name.len() > MAX_COMMON_NAME {
        return Err(TlsError::Make(format!(
            "{common_name:?} is {} characters, over the {MAX_COMMON_NAME} of a certificate's common name: a node \
             that runs with TLS needs a name of at most {} characters",
            common_name.len(),
            MAX_COMMON_NAME.saturating_sub(id.role.to_string().len() + 1)
        )));
    }
    let ca_key = KeyPair::from_pem(ca_key).map_err(|e| TlsError::Make(format!("the CA key does not parse: {e}")))?;
    // The CA file may hold two CAs while the CA is rotated: sign as the one whose key this is,
    // and refuse when it is none of them (a certificate no process trusting the file accepts).
    let mut of_key = None;
    for pem in Pem::iter_from_buffer(ca_cert.as_bytes()) {
        let pem = pem.map_err(|e| TlsError::Make(format!("the CA certificate does not parse: {e}")))?;
        let cert = pem.parse_x509().map_err(|e| TlsError::Make(format!("the CA certificate does not parse: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() == ca_key.public_key_raw() {
            of_key = Some(pem.contents.clone());
            break;
        }
    }
    let der = of_key.ok_or(TlsError::KeyNotOfCa)?;
    let issuer = Issuer::from_ca_cert_der(&der.into(), ca_key)
        .map_err(|e| TlsError::Make(format!("the CA certificate does not parse: {e}")))?;
    let key = KeyPair::generate().map_err(make_err)?;
    let mut params = CertificateParams::new(vec![id.name.clone()]).map_err(make_err)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every process is both ends of some link: it accepts connections and makes them.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer).map_err(make_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A whole cluster's files in `dir`, for tests and benchmarks: `ca.crt`, `ca.key`, `members`
/// listing `ids`, and `<role>-<name>.crt`/`.key` for each; returns the config of each identity.
pub fn write_cluster(dir: &Path, ids: &[Identity]) -> Result<Vec<TlsConfig>, TlsError> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| TlsError::Read { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read { path: dir.to_owned(), source })?;
    let (ca_cert, ca_key) = make_ca(30)?;
    write("ca.crt", &ca_cert)?;
    write("ca.key", &ca_key)?;
    write("members", &ids.iter().map(|i| format!("{i}\n")).collect::<String>())?;
    let mut configs = Vec::new();
    for id in ids {
        let (cert, key) = issue(&ca_cert, &ca_key, id, 30)?;
        let base = format!("{}-{}", id.role, id.name);
        write(&format!("{base}.crt"), &cert)?;
        write(&format!("{base}.key"), &key)?;
        // As `switchboard certs issue` writes a key: for its owner alone.
        let key_path = dir.join(format!("{base}.key"));
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| TlsError::Read { path: key_path.clone(), source })?;
        }
        configs.push(TlsConfig {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{base}.crt")),
            key: dir.join(format!("{base}.key")),
            members: None,
        });
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_bad_ones_are_refused() {
        let id: Identity = "agent:gw1".parse().unwrap();
        assert_eq!((id.role, id.name.as_str()), (IdRole::Agent, "gw1"));
        assert_eq!(id.to_string(), "agent:gw1");
        for bad in ["gw1", "root:gw1", "agent:", "agent:a/b", "collector:*"] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn made_certificates_load_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gw1 = Identity::new(IdRole::Agent, "gw1").unwrap();
        let configs = write_cluster(dir.path(), std::slice::from_ref(&gw1)).unwrap();
        let creds = load(&configs[0], Some(&gw1)).unwrap();
        assert_eq!((creds.identity, creds.members), (gw1.clone(), vec![gw1.clone()]));
        assert!(creds.warnings.is_empty(), "{:?}", creds.warnings);
        // A key others may read, an identity the members file does not name: loaded, with a
        // warning each.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&configs[0].key, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::write(dir.path().join("members"), "agent:gw2\n").unwrap();
        let warnings = load(&configs[0], Some(&gw1)).unwrap().warnings;
        assert!(warnings[0].contains("mode 0644") && warnings[0].contains("chmod 600"), "{warnings:?}");
        assert!(warnings[1].contains("agent:gw1 is not in the members file"), "{warnings:?}");
        std::fs::write(dir.path().join("members"), "agent:gw1\n").unwrap();
        let other = Identity::new(IdRole::Collector, "gw1").unwrap();
        assert!(matches!(load(&configs[0], Some(&other)), Err(TlsError::Identity(_))));
        // A process whose name no certificate can hold is told so, whatever its files.
        let odd = Identity::new(IdRole::Agent, "gw+1").unwrap();
        let err = load(&configs[0], Some(&odd)).unwrap_err().to_string();
        assert!(err.contains("letters, digits, '.', '_' and '-'"), "{err}");
        // A certificate of another CA.
        let elsewhere = tempfile::tempdir().unwrap();
        let foreign = write_cluster(elsewhere.path(), std::slice::from_ref(&gw1)).unwrap();
        let mixed = TlsConfig { cert: foreign[0].cert.clone(), key: foreign[0].key.clone(), ..configs[0].clone() };
        assert!(matches!(load(&mixed, Some(&gw1)), Err(TlsError::NotSignedByCa { .. })));
        // Both CAs in one file (a CA rotation) take either's certificates.
        let both = dir.path().join("both.crt");
        let text = std::fs::read_to_string(&configs[0].ca).unwrap() + &std::fs::read_to_string(&foreign[0].ca).unwrap();
        std::fs::write(&both, text).unwrap();
        let rotating = TlsConfig { ca: both, members: Some(dir.path().join("members")), ..mixed };
        load(&rotating, Some(&gw1)).unwrap();
    }

    #[test]
    fn a_certificate_is_issued_by_the_ca_whose_key_is_given_or_not_at_all() {
        let gw1 = Identity::new(IdRole::Agent, "gw1").unwrap();
        let (old_crt, old_key) = make_ca(30).unwrap();
        let (new_crt, new_key) = make_ca(30).unwrap();
        let check = |ca: &str, cert: &str| {
            let ca = Pem::iter_from_buffer(ca.as_bytes()).next().unwrap().unwrap();
            let cert = Pem::iter_from_buffer(cert.as_bytes()).next().unwrap().unwrap();
            cert.parse_x509().unwrap().verify_signature(Some(ca.parse_x509().unwrap().public_key())).is_ok()
        };
        // A rotation's bundle, either order: each key signs as its own CA.
        for bundle in [format!("{new_crt}{old_crt}"), format!("{old_crt}{new_crt}")] {
            for (key, own) in [(&old_key, &old_crt), (&new_key, &new_crt)] {
                let (cert, _) = issue(&bundle, key, &gw1, 30).unwrap();
                assert!(check(own, &cert), "not signed by the CA of its key");
            }
        }
        // The old key beside the new CA alone: refused, not a certificate nobody trusts.
        assert!(matches!(issue(&new_crt, &old_key, &gw1, 30), Err(TlsError::KeyNotOfCa)));
    }

    #[test]
    fn members_files_skip_comments_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("members");
        std::fs::write(&p, "# cluster\nagent:gw1\n\ncollector:c1  # the writer\nagent:gw1\n").unwrap();
        let m = read_members(&p).unwrap();
        assert_eq!(m.iter().map(|i| i.to_string()).collect::<Vec<_>>(), ["agent:gw1", "collector:c1"]);
        std::fs::write(&p, "agent:gw1\nnode:gw2\n").unwrap();
        let e = read_members(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("unknown role"), "{e}");
    }
}
