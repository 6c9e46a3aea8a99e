"""An AWS-strict EC2 in front of LocalStack: forwards every request and behaves as AWS documents
where LocalStack is lenient. Standard library only.

- Eventual consistency: for --visibility-seconds after RunInstances, the new instance is unknown
  to DescribeInstances by id (InvalidInstanceID.NotFound), missing from filtered and unfiltered
  describes, and mutating calls on it answer InvalidInstanceID.NotFound. A terminated instance
  stays visible as terminated for --terminated-seconds, then disappears from every describe.
- ClientToken idempotency: RunInstances with a token seen before and the same parameters answers
  the original response (no new instance), however long ago and whatever happened to it since;
  the same token with other parameters answers IdempotentParameterMismatch.
- State rules: ModifyInstanceAttribute of the instance type or user data on an instance that is
  not stopped, and StartInstances on a stopping instance, answer IncorrectInstanceState.

- Faults, for chaos tests (all off by default): --fault-rate answers that share of requests
  with 503 Unavailable or 500 InternalError without forwarding them; --drop-rate forwards that
  share and then closes the connection without an answer (the call happened, the caller never
  learns the result); --throttle-rps answers RequestLimitExceeded once an action's token bucket
  is empty; --latency-ms delays every request; --drop-first-launch carries out the first
  RunInstances of every ClientToken and drops its answer, so every launch meets that case.

Usage: strict_ec2.py --port 4567 --upstream http://127.0.0.1:4566 [--visibility-seconds 2]
GET /_strict/stats answers the count of requests by action and of each strict answer given.
"""

import argparse
import hashlib
import random
import http.client
import http.server
import json
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
MUTATING_BY_INSTANCE_ID = {
    "StartInstances",
    "StopInstances",
    "TerminateInstances",
    "RebootInstances",
    "ModifyInstanceAttribute",
    "ModifyInstanceMetadataOptions",
}
TAGGING = {"CreateTags", "DeleteTags"}


class World:
    """What the proxy remembers: when each instance becomes visible, when it was seen terminated,
    every ClientToken's parameters and answer, and each action's throttling bucket."""

    def __init__(self, visibility, terminated, faults):
        self.visibility = visibility
        self.terminated = terminated
        self.faults = faults
        self.buckets = {}
        self.dropped_tokens = set()
        self.lock = threading.Lock()
        self.visible_at = {}
        self.terminated_at = {}
        self.tokens = {}
        self.stats = {}

    def count(self, key):
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def throttled(self, action):
        """A token bucket per action, refilled at --throttle-rps, holding a second's worth."""
        rate = self.faults.throttle_rps
        if not rate:
            return False
        now = time.monotonic()
        with self.lock:
            tokens, at = self.buckets.get(action, (rate, now))
            tokens = min(rate, tokens + (now - at) * rate)
            if tokens < 1:
                self.buckets[action] = (tokens, now)
                return True
            self.buckets[action] = (tokens - 1, now)
            return False

    def launched(self, ids):
        with self.lock:
            for i in ids:
                self.visible_at[i] = time.monotonic() + self.visibility

    def invisible(self, instance_id):
        now = time.monotonic()
        with self.lock:
            if self.visible_at.get(instance_id, 0) > now:
                return True
            gone = self.terminated_at.get(instance_id)
            return gone is not None and now - gone > self.terminated

    def saw_terminated(self, instance_id):
        with self.lock:
            self.terminated_at.setdefault(instance_id, time.monotonic())


def ids_in(params, prefix):
    return [v for k, v in params.items() if k.startswith(prefix + ".") and k[len(prefix) + 1 :].isdigit()]


def error(code, message, status=400):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return status, {"Content-Type": "text/xml"}, body.encode()


def local(element):
    """The tag without its namespace (LocalStack and AWS spell the EC2 namespace differently)."""
    return element.tag.rsplit("}", 1)[-1]


def child(element, name):
    return next((c for c in element if local(c) == name), None)


def text(element, *path):
    for name in path:
        element = child(element, name) if element is not None else None
    return element.text if element is not None else None


def parse(answer):
    root = ET.fromstring(answer)
    if root.tag.startswith("{"):
        ET.register_namespace("", root.tag[1:].split("}", 1)[0])
    return root


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    world = None
    upstream = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/_strict/stats"):
            with self.world.lock:
                body = json.dumps(self.world.stats).encode()
            return self.reply(200, {"Content-Type": "application/json"}, body)
        self.forward_raw(b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        action = params.get("Action", "")
        self.world.count(action)
        faults = self.world.faults
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        if self.world.throttled(action):
            self.world.count("fault:RequestLimitExceeded")
            return self.reply(*error("RequestLimitExceeded", "Request limit exceeded."))
        if random.random() < faults.fault_rate:
            self.world.count("fault:5xx")
            if random.random() < 0.5:
                return self.reply(*error("Unavailable", "The service is unavailable.", 503))
            return self.reply(*error("InternalError", "An internal error has occurred.", 500))
        drop = random.random() < faults.drop_rate
        token = params.get("ClientToken")
        if action == "RunInstances" and token and faults.drop_first_launch:
            with self.world.lock:
                drop = drop or token not in self.world.dropped_tokens
                self.world.dropped_tokens.add(token)
        handler = getattr(self, "strict_" + action, None)
        if handler is None:
            handler = self.strict_mutation if action in MUTATING_BY_INSTANCE_ID | TAGGING else None
        answer = handler(params, body, action) if handler else None
        if answer is None:
            answer = self.forward(body)
        if drop:
            self.world.count("fault:dropped-response")
            self.close_connection = True
            return
        self.reply(*answer)

    # --- the strict rules -------------------------------------------------------------------

    def strict_RunInstances(self, params, body, _action):
        token = params.get("ClientToken")
        key = None
        if token:
            rest = sorted((k, v) for k, v in params.items() if k != "ClientToken")
            key = hashlib.sha256(json.dumps(rest).encode()).hexdigest()
            with self.world.lock:
                known = self.world.tokens.get(token)
            if known is not None:
                if known[0] != key:
                    self.world.count("strict:IdempotentParameterMismatch")
                    return error(
                        "IdempotentParameterMismatch",
                        f"The client token {token} was used before with different parameters",
                    )
                self.world.count("strict:idempotent-replay")
                return known[1]
        status, headers, answer = self.forward(body)
        if status == 200:
            root = parse(answer)
            self.world.launched([e.text for e in root.iter() if local(e) == "instanceId"])
            if key is not None:
                with self.world.lock:
                    self.world.tokens.setdefault(token, (key, (status, headers, answer)))
        return status, headers, answer

    def strict_DescribeInstances(self, params, body, _action):
        asked = ids_in(params, "InstanceId")
        hidden = [i for i in asked if self.world.invisible(i)]
        if hidden:
            self.world.count("strict:NotFound")
            return error("InvalidInstanceID.NotFound", f"The instance IDs '{', '.join(hidden)}' do not exist")
        status, headers, answer = self.forward(body)
        if status != 200:
            return status, headers, answer
        root = parse(answer)
        changed = False
        reservations = child(root, "reservationSet")
        for reservation in list(reservations if reservations is not None else []):
            instances = child(reservation, "instancesSet")
            for instance in list(instances if instances is not None else []):
                instance_id = text(instance, "instanceId")
                if text(instance, "instanceState", "name") == "terminated":
                    self.world.saw_terminated(instance_id)
                if self.world.invisible(instance_id):
                    instances.remove(instance)
                    changed = True
            if instances is not None and len(instances) == 0:
                reservations.remove(reservation)
        if not changed:
            return status, headers, answer
        self.world.count("strict:hidden-from-describe")
        return status, headers, ET.tostring(root, xml_declaration=True, encoding="UTF-8")

    def strict_mutation(self, params, body, action):
        ids = ids_in(params, "ResourceId") if action in TAGGING else ids_in(params, "InstanceId")
        if "InstanceId" in params:
            ids.append(params["InstanceId"])
        hidden = [i for i in ids if i.startswith("i-") and self.world.invisible(i)]
        if hidden:
            self.world.count("strict:NotFound")
            return error("InvalidInstanceID.NotFound", f"The instance ID '{hidden[0]}' does not exist")
        if action == "ModifyInstanceAttribute" and (
            "InstanceType.Value" in params or "UserData.Value" in params
        ):
            state = self.state_of(params["InstanceId"], body)
            if state not in (None, "stopped"):
                self.world.count("strict:IncorrectInstanceState")
                return error(
                    "IncorrectInstanceState",
                    f"The instance '{params['InstanceId']}' is not in the 'stopped' state.",
                )
        if action == "StartInstances":
            for instance_id in ids:
                if self.state_of(instance_id, body) == "stopping":
                    self.world.count("strict:IncorrectInstanceState")
                    return error(
                        "IncorrectInstanceState",
                        f"The instance '{instance_id}' is not in a state from which it can be started.",
                    )
        return None

    # --- plumbing ---------------------------------------------------------------------------

    def state_of(self, instance_id, template_body):
        """The instance's state as LocalStack sees it, or None if it does not know it."""
        params = dict(urllib.parse.parse_qsl(template_body.decode()))
        describe = {"Action": "DescribeInstances", "Version": params.get("Version", "2016-11-15")}
        describe["InstanceId.1"] = instance_id
        status, _, answer = self.forward(urllib.parse.urlencode(describe).encode())
        if status != 200:
            return None
        for element in parse(answer).iter():
            if local(element) == "instanceState":
                return text(element, "name")
        return None

    def forward(self, body):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_HEADERS}
        conn.close()
        return response.status, kept, answer

    def forward_raw(self, body):
        self.reply(*self.forward(body))

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--visibility-seconds", type=float, default=2.0)
    parser.add_argument("--terminated-seconds", type=float, default=60.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--throttle-rps", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--drop-first-launch", action="store_true")
    args = parser.parse_args()
    Proxy.world = World(args.visibility_seconds, args.terminated_seconds, args)
    Proxy.upstream = urllib.parse.urlparse(args.upstream)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Proxy)
    server.daemon_threads = True
    print(f"strict EC2 on 127.0.0.1:{args.port} -> {args.upstream}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
