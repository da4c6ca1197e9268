//! Certificates for the TLS tests, made with Debian's `openssl` command, the tool operators use:
//! a certificate authority per test ([`TestCa`]) and the certificates it issues ([`Issued`]).

use std::path::{Path, PathBuf};

/// Runs `openssl` with the words of `line` (none has a space) in `dir`; returns its output.
///
/// # Panics
/// When the command is missing or fails, with its output.
pub fn openssl(dir: &Path, line: &str) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(line.split_whitespace())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install Debian's openssl package"));
    assert!(
        out.status.success(),
        "openssl {line} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A certificate and its key, as files, with the DER of the certificate (what a client sees).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

/// A certificate authority made for one test, in its folder (ECDSA P-256, valid 30 days).
pub struct TestCa {
    dir: PathBuf,
    /// The CA certificate (PEM), what clients trust.
    pub cert: PathBuf,
}

/// The key of every certificate of these tests.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

impl TestCa {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> TestCa {
        TestCa::named(dir, "drawbridge-e2e-ca")
    }

    /// A new CA in `dir` with the common name `name`: a CA that shares no name with another is
    /// unknown to a client trusting only that other (one with the same name is found, and its
    /// signature does not match).
    pub fn named(dir: &Path, name: &str) -> TestCa {
        openssl(
            dir,
            &format!(
                "req -x509 {NEW_KEY} -keyout ca.key -out ca.pem -days 30 -subj /CN={name} \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
            ),
        );
        TestCa {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
        }
    }

    /// Issues `<stem>.pem` and `<stem>.key` for DNS `names`, with common name `stem` (what
    /// `openssl s_client` shows as `subject=CN = <stem>`).
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            self.dir.join(format!("{stem}.ext")),
            format!("subjectAltName={}\n", san.join(",")),
        )
        .unwrap();
        openssl(
            &self.dir,
            &format!("req {NEW_KEY} -keyout {stem}.key -out {stem}.csr -subj /CN={stem}"),
        );
        openssl(
            &self.dir,
            &format!(
                "x509 -req -in {stem}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
                 -extfile {stem}.ext -out {stem}.pem"
            ),
        );
        Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            der: openssl(&self.dir, &format!("x509 -in {stem}.pem -outform DER")),
        }
    }
}
