"""A throwaway SMTP server for healthd's tests (testkit/src/smtp.rs).

aiosmtpd on 127.0.0.1:PORT: STARTTLS that must happen before MAIL
(`starttls`), TLS from the first byte (`tls`) or `plain`; with --user, AUTH
(PLAIN or LOGIN) is required, with the password read from the environment
variable TESTKIT_SMTP_PASSWORD (not the command line, which `ps` shows).
Each message is written to --dir as NNNN.eml, its bytes as received after
DATA, with NNNN.meta beside it (the envelope, whether TLS was on, who logged
in). The .meta is written first and each file is renamed into place, so a
reader that sees NNNN.eml sees both whole. With --reply, every DATA is
answered with that reply instead (such as "451 4.3.0 try again later").
"""

import argparse
import asyncio
import os
import ssl

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--dir", required=True)
parser.add_argument("--security", choices=["starttls", "tls", "plain"], required=True)
parser.add_argument("--chain")
parser.add_argument("--key")
parser.add_argument("--user")
parser.add_argument("--reply")
args = parser.parse_args()
password = os.environ.get("TESTKIT_SMTP_PASSWORD", "")


def write(path, data):
    with open(path + ".tmp", "wb") as file:
        file.write(data)
    os.rename(path + ".tmp", path)


class Handler:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        if args.reply:
            return args.reply
        self.count += 1
        base = os.path.join(args.dir, f"{self.count:04d}")
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        lines = [f"mail_from {envelope.mail_from}"]
        lines += [f"rcpt_to {rcpt}" for rcpt in envelope.rcpt_tos]
        lines.append(f"tls {'yes' if tls else 'no'}")
        if session.authenticated:
            lines.append(f"auth {session.auth_data}")
        write(base + ".meta", ("\n".join(lines) + "\n").encode())
        write(base + ".eml", envelope.original_content)
        return "250 2.0.0 OK: queued as " + f"{self.count:04d}"


def authenticator(server, session, envelope, mechanism, auth_data):
    if (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == args.user
        and auth_data.password.decode() == password
    ):
        return AuthResult(success=True, auth_data=args.user)
    return AuthResult(success=False, handled=False)


def main():
    context = None
    if args.security != "plain":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.chain, args.key)
    handler = Handler()
    auth = {}
    if args.user:
        auth = dict(
            authenticator=authenticator,
            auth_required=True,
            # Implicit TLS is TLS too, though aiosmtpd only counts STARTTLS.
            auth_require_tls=args.security == "starttls",
        )

    def factory():
        return SMTP(
            handler,
            hostname="testkit-smtp",
            tls_context=context if args.security == "starttls" else None,
            require_starttls=args.security == "starttls",
            **auth,
        )

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(
            factory,
            host="127.0.0.1",
            port=args.port,
            ssl=context if args.security == "tls" else None,
        )
    )
    print(f"testkit-smtp listening on 127.0.0.1:{args.port} ({args.security})", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


main()
