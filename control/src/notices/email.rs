//! Notices by email: one message per recipient through the inventory's mail server, over
//! STARTTLS (required, not opportunistic), TLS or, for a relay on this host only, plain SMTP;
//! the server's certificate is checked against the system's CAs and `ca_file`.

use super::settings::{NoticeSettings, Security, SmtpSettings};
use super::Notice;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// A connection setting to the mail server, ready to send.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl Mailer {
    /// The mailer of `settings`.
    ///
    /// # Errors
    /// No mail server in the inventory, or its CA file cannot be used.
    pub fn new(settings: &NoticeSettings) -> Result<Mailer, String> {
        let smtp = settings
            .smtp
            .as_ref()
            .ok_or("no mail server: add [environments.NAME.notices.smtp] to the inventory")?;
        let from = smtp
            .from
            .parse::<Mailbox>()
            .map_err(|e| format!("notices.smtp.from {:?}: {e}", smtp.from))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.server)
            .port(smtp.port)
            .timeout(Some(settings.timeout))
            .tls(tls(smtp)?);
        if let Some((user, password)) = &smtp.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            server: format!("{}:{}", smtp.server, smtp.port),
        })
    }

    /// Sends `notice` to `address`.
    ///
    /// # Errors
    /// The message cannot be made, or the server refused it or could not be reached; the error
    /// names the server and what it said.
    pub async fn send(&self, address: &str, notice: &Notice<'_>) -> Result<(), String> {
        self.send_subject(address, notice, notice.subject()).await
    }

    /// Sends `notice` to `address` as the operator's preview.
    ///
    /// # Errors
    /// As [`Mailer::send`].
    pub async fn send_preview(&self, address: &str, notice: &Notice<'_>) -> Result<(), String> {
        let subject = format!("[PREVIEW] {}", notice.subject());
        self.send_subject(address, notice, subject).await
    }

    async fn send_subject(
        &self,
        address: &str,
        notice: &Notice<'_>,
        subject: String,
    ) -> Result<(), String> {
        let to = address
            .parse::<Mailbox>()
            .map_err(|e| format!("{address:?} is not an email address: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(notice.text())
            .map_err(|e| format!("the message cannot be made: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| format!("mail server {}: {e}", self.server))
    }
}

/// The TLS of the connection to `smtp`.
fn tls(smtp: &SmtpSettings) -> Result<Tls, String> {
    if smtp.security == Security::None {
        return Ok(Tls::None);
    }
    let mut parameters = TlsParameters::builder(smtp.server.clone());
    if let Some(path) = &smtp.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("notices.smtp.ca_file: cannot read {}: {e}", path.display()))?;
        let ca = Certificate::from_pem(&pem)
            .map_err(|e| format!("notices.smtp.ca_file: {}: {e}", path.display()))?;
        parameters = parameters.add_root_certificate(ca);
    }
    let parameters = parameters
        .build_rustls()
        .map_err(|e| format!("TLS to the mail server {}: {e}", smtp.server))?;
    Ok(match smtp.security {
        Security::StartTls => Tls::Required(parameters),
        Security::Tls => Tls::Wrapper(parameters),
        Security::None => Tls::None,
    })
}
