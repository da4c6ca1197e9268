"""A real SMTP server for the notice tests (Debian's python3-aiosmtpd), on loopback.

It requires STARTTLS (with the test's certificate) before AUTH, accepts one user and password,
and appends each message it accepts to a JSON-lines file: the envelope sender, recipients and
the whole message. With --refuse it answers every RCPT with a permanent 550, so a sender sees a
refusal after a complete SMTP conversation.

usage: smtp_recorder.py PORT CERT KEY USER PASSWORD OUT.jsonl [--refuse]
"""

import asyncio
import json
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Recorder:
    def __init__(self, out, refuse):
        self.out = out
        self.refuse = refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return "550 5.7.1 refused by the test"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "tls": session.ssl is not None,
            "user": session.auth_data.decode() if isinstance(session.auth_data, bytes) else None,
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 Message accepted"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login.decode() == user and auth_data.password.decode() == password
        return AuthResult(success=ok, auth_data=auth_data.login if ok else None)

    return check


def main():
    port, cert, key, user, password, out = sys.argv[1:7]
    refuse = "--refuse" in sys.argv[7:]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    controller = Controller(
        Recorder(out, refuse),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=context,
        require_starttls=True,
        auth_require_tls=True,
        authenticator=authenticator(user, password),
        auth_required=True,
        server_hostname="localhost",
    )
    controller.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        asyncio.get_event_loop().run_until_complete(asyncio.Event().wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
