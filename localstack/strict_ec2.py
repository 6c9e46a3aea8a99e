"""An AWS-strict EC2 in front of LocalStack: forwards every request and behaves as AWS documents
where LocalStack is lenient. Standard library only.

- Eventual consistency: for --visibility-seconds after RunInstances, the new instance is unknown
  to DescribeInstances by id (InvalidInstanceID.NotFound), missing from filtered and unfiltered
  describes, and mutating calls on it answer InvalidInstanceID.NotFound. A terminated instance
  stays visible as terminated for --terminated-seconds, then disappears from every describe.
- ClientToken idempotency: RunInstances with a token seen before and the same parameters answers
  the original response (no new instance), however long ago and whatever happened to it since;
  the same token with other parameters answers IdempotentParameterMismatch.
- State rules: ModifyInstanceAttribute of the instance type, user data or EBS optimization on an
  instance that is not stopped, StartInstances on a stopping instance or on a spot instance EC2
  stopped (interrupted), answer IncorrectInstanceState; StopInstances of a one-time spot instance
  answers UnsupportedOperation.

- Faults, for chaos tests (all off by default): --fault-rate answers that share of requests
  with 503 Unavailable or 500 InternalError without forwarding them; --drop-rate forwards that
  share and then closes the connection without an answer (the call happened, the caller never
  learns the result); --throttle-rps answers RequestLimitExceeded once an action's token bucket
  is empty; --latency-ms delays every request; --drop-first-launch carries out the first
  RunInstances of every ClientToken and drops its answer, so every launch meets that case.

- Chosen errors, so a test can pick how EC2 fails by the AMI or instance type it asks for:
  --chosen-error KEY=CODE (repeatable) answers RunInstances whose ImageId or InstanceType is KEY
  with CODE, as AWS words it, without forwarding. CODE is one of InvalidAMIID.NotFound,
  InsufficientInstanceCapacity, InstanceLimitExceeded, UnauthorizedOperation,
  InvalidParameterValue. ModifyInstanceAttribute to an InstanceType mapped to
  InvalidParameterValue answers that error too (a type the AMI cannot run), and StartInstances of
  an instance whose type is mapped to InsufficientInstanceCapacity answers it (AWS accepts the
  modify to a type it has no capacity for; the start fails).
  --dies-at-launch KEY (repeatable, an AMI id or an instance type) lets RunInstances through,
  shows the new instance as pending, terminates it upstream --visibility-seconds + 1 s after the
  launch, and shows stateReason Client.InternalError ("Client error on launch") in every describe,
  as AWS does when e.g. the root volume's KMS key cannot be used.
  localstack.sh starts the bed's proxy with this table (ids and types pass the CRD's patterns):
      ami-0000000000badbad1  InvalidAMIID.NotFound         x9.nonsense    InvalidParameterValue
      ami-0000000000badbad2  UnauthorizedOperation         a1.medium      InvalidParameterValue
      ami-0000000000badbad3  dies at launch                p5.48xlarge    InsufficientInstanceCapacity
                                                           u-24tb1.metal  InstanceLimitExceeded

- The operator's instance fields (strict_fields.py; README.md has the table of what and why):
  ModifyInstanceAttribute forms LocalStack mishandles are translated, and the ones it would turn into
  a security-group wipe refused (UnsupportedOperation); EbsOptimized, like InstanceType and UserData,
  needs a stopped instance; RunInstances DisableApiTermination is applied. MonitorInstances,
  UnmonitorInstances, DescribeInstanceCreditSpecifications, ModifyInstanceCreditSpecification and
  DescribePlacementGroups are answered by the proxy; ModifyInstanceMetadataOptions gets its omitted
  parameters from the instance; ReplaceIamInstanceProfileAssociation is carried out as disassociate +
  associate. RunInstances is validated as AWS does before anything launches (spot options, placement,
  capacity reservation, CPU options, block devices, network interfaces), and what LocalStack ignores
  is remembered and shown in describes (spot request id, tenancy, placement group and partition, CPU
  and enclave options, capacity reservation, IPv6 addresses, volume encryption and
  DeleteOnTermination) or applied after the launch (volume IOPS/throughput/io1/io2, secondary private
  IPs). LocalStack's 404/500 answers for an unknown profile, launch template id or private IP become
  AWS's 400s. ModifyVolume refuses a shrink, and a second modification of a volume within
  --volume-modify-cooldown-seconds (AWS: 6 h; default 21600).
  Tables LocalStack cannot hold: --placement-group NAME=partition:N|cluster|spread (repeatable; an
  unknown group answers InvalidPlacementGroup.Unknown), --capacity-reservation cr-ID (repeatable; an
  unknown target answers InvalidCapacityReservationId.NotFound), --ssm-parameter NAME=ami-ID
  (repeatable; RunInstances ImageId resolve:ssm:NAME launches that AMI).
  POST /_strict/interrupt?instance=i-... interrupts a spot instance launched through the proxy as EC2
  does: terminated upstream (stopped, for the stop/hibernate behavior), then shown with stateReason
  Server.SpotInstanceTermination (Server.SpotInstanceShutdown); answers JSON, 404 for another instance.

Usage: strict_ec2.py --port 4567 --upstream http://127.0.0.1:4566 [--visibility-seconds 2]
GET /_strict/stats answers the count of requests by action and of each strict answer given
(strict:*: an AWS error LocalStack would not give, or a call or field the proxy emulated), each
fault injected (fault:*) and each chosen error answered (chosen:CODE).
"""

import argparse
import base64
import hashlib
import random
import http.client
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from strict_fields import (FieldRules, Fields, child, ids_in, local, placement_group_arg,
                           set_state_reason, ssm_parameter_arg, text)

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
# Calls on instances with no strict_<Action> handler of their own (those call strict_mutation first).
MUTATING_BY_INSTANCE_ID = {"StartInstances", "TerminateInstances", "RebootInstances"}
TAGGING = {"CreateTags", "DeleteTags"}
# The chosen errors: code -> HTTP status. AWS lists InsufficientInstanceCapacity among its "server
# error codes" (5xx) in the EC2 error code reference, and boto3 reports it after "reached max
# retries", which it only does for a 5xx (it does not retry a 400 with that code): so 500. An SDK
# retries it like any 500 before it gives up.
CHOSEN_STATUS = {
    "InvalidAMIID.NotFound": 400,
    "InsufficientInstanceCapacity": 500,
    "InstanceLimitExceeded": 400,
    "UnauthorizedOperation": 403,
    "InvalidParameterValue": 400,
}
# What a chosen instance type also fails at: the modify that asks for it (a type the AMI cannot
# run), the start that needs it (AWS accepts a modify to a type it has no capacity for; the start
# fails).
CHOSEN_AT_MODIFY = {"InvalidParameterValue"}
CHOSEN_AT_START = {"InsufficientInstanceCapacity"}
DEATH_AFTER_VISIBLE = 1.0
DEATH_CODE = "Client.InternalError"
DEATH_MESSAGE = "Client.InternalError: Client error on launch"


class World:
    """What the proxy remembers: when each instance becomes visible, when it was seen terminated,
    every ClientToken's parameters and answer, and each action's throttling bucket."""

    def __init__(self, visibility, terminated, faults, chosen=None, dies=(), fields=None):
        self.fields = fields or Fields({}, (), {}, 0)
        self.visibility = visibility
        self.terminated = terminated
        self.faults = faults
        self.chosen = dict(chosen or {})
        self.dies = set(dies)
        self.doomed = {}
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

    def doom(self, ids):
        """These instances die on their own: pending until then, terminated after."""
        with self.lock:
            for i in ids:
                self.doomed[i] = False

    def died(self, ids):
        with self.lock:
            now = time.monotonic()
            for i in ids:
                self.doomed[i] = True
                self.terminated_at.setdefault(i, now)

    def doom_of(self, instance_id):
        """None if the instance is not doomed, else whether it has died yet."""
        with self.lock:
            return self.doomed.get(instance_id)


def error(code, message, status=400):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return status, {"Content-Type": "text/xml"}, body.encode()


def chosen_error(code, field, value, params):
    """The error AWS answers with `code` when `field` (ImageId or InstanceType) is `value`."""
    if code == "InvalidAMIID.NotFound":
        message = f"The image id '[{value}]' does not exist"
    elif code == "InsufficientInstanceCapacity":
        zone = params.get("Placement.AvailabilityZone") or "us-east-1a"
        kind = f"{value} capacity" if field == "InstanceType" else "capacity"
        message = (
            f"We currently do not have sufficient {kind} in the Availability Zone you requested "
            f"({zone}). Our system will be working on provisioning additional capacity. You can "
            f"currently get {kind} by not specifying an Availability Zone in your request or "
            "choosing us-east-1b, us-east-1c, us-east-1d, us-east-1f."
        )
    elif code == "InstanceLimitExceeded":
        message = (
            f"You have requested more instances ({params.get('MinCount', '1')}) than your current "
            "instance limit of 0 allows for the specified instance type. Please visit "
            "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit."
        )
    elif code == "UnauthorizedOperation":
        encoded = base64.urlsafe_b64encode(os.urandom(300)).decode().rstrip("=")
        message = (
            "You are not authorized to perform this operation. "
            f"Encoded authorization failure message: {encoded}"
        )
    else:
        message = f"Invalid value '{value}' for {field}."
    return error(code, message, CHOSEN_STATUS[code])


def parse(answer):
    root = ET.fromstring(answer)
    if root.tag.startswith("{"):
        ET.register_namespace("", root.tag[1:].split("}", 1)[0])
    return root


class Proxy(FieldRules, http.server.BaseHTTPRequestHandler):
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
        if self.path.startswith("/_strict/interrupt"):
            return self.interrupt_reply(urllib.parse.urlsplit(self.path).query)
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
        for field in ("ImageId", "InstanceType"):
            code = self.world.chosen.get(params.get(field))
            if code is not None:
                self.world.count("chosen:" + code)
                return chosen_error(code, field, params[field], params)
        asked = dict(params)
        refusal = self.resolve_image(params) or self.launch_refusal(params)
        if refusal is not None:
            return refusal
        token = params.get("ClientToken")
        key = None
        if token:
            rest = sorted((k, v) for k, v in asked.items() if k != "ClientToken")
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
        status, headers, answer = self.upstream_call(self.launch_params(params))
        if status != 200:
            return self.launch_error(params, status, answer) or (status, headers, answer)
        root = parse(answer)
        ids = [e.text for e in root.iter() if local(e) == "instanceId"]
        self.world.launched(ids)
        if params.get("ImageId") in self.world.dies or params.get("InstanceType") in self.world.dies:
            self.doom(ids, params)
        self.after_launch(params, root)
        if any([self.decorate(item) for item in root.iter() if child(item, "instanceState") is not None]):
            answer = ET.tostring(root, xml_declaration=True, encoding="UTF-8")
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
        changed = rewritten = False
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
                else:
                    if self.world.doom_of(instance_id) is not None:
                        dying(instance, self.world.doom_of(instance_id))
                        rewritten = True
                    rewritten = self.decorate(instance) or rewritten
            if instances is not None and len(instances) == 0:
                reservations.remove(reservation)
        if not changed and not rewritten:
            return status, headers, answer
        if changed:
            self.world.count("strict:hidden-from-describe")
        if rewritten:
            self.world.count("strict:describe-rewritten")
        return status, headers, ET.tostring(root, xml_declaration=True, encoding="UTF-8")

    def strict_mutation(self, params, body, action):
        ids = ids_in(params, "ResourceId") if action in TAGGING else ids_in(params, "InstanceId")
        if "InstanceId" in params:
            ids.append(params["InstanceId"])
        hidden = [i for i in ids if i.startswith("i-") and self.world.invisible(i)]
        if hidden:
            self.world.count("strict:NotFound")
            return error("InvalidInstanceID.NotFound", f"The instance ID '{hidden[0]}' does not exist")
        if action == "ModifyInstanceAttribute":
            new_type = params.get("InstanceType.Value")
            if params.get("Attribute") == "instanceType":
                new_type = params.get("Value")
            code = self.world.chosen.get(new_type)
            if code in CHOSEN_AT_MODIFY:
                self.world.count("chosen:" + code)
                return chosen_error(code, "InstanceType", new_type, params)
        if action == "StartInstances":
            for instance_id in ids:
                instance = self.describe_one(instance_id, body)
                # only EC2 restarts a spot instance it stopped (when capacity returns)
                spot = self.world.fields.get(instance_id).get("spot") or {}
                if text(instance, "instanceState", "name") == "stopping" or spot.get("interrupted"):
                    return self.strict(
                        "IncorrectInstanceState",
                        f"The instance '{instance_id}' is not in a state from which it can be started.",
                    )
                current = text(instance, "instanceType")
                code = self.world.chosen.get(current)
                if code in CHOSEN_AT_START:
                    self.world.count("chosen:" + code)
                    zone = text(instance, "placement", "availabilityZone")
                    where = {"Placement.AvailabilityZone": zone} if zone else {}
                    return chosen_error(code, "InstanceType", current, where)
        return None

    def doom(self, ids, params):
        """The launched instances die on their own once visible: terminated upstream from a timer."""
        self.world.doom(ids)
        terminate = {"Action": "TerminateInstances", "Version": params.get("Version", "2016-11-15")}
        terminate.update({f"InstanceId.{n}": i for n, i in enumerate(ids, 1)})
        body = urllib.parse.urlencode(terminate).encode()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        upstream, path, world = self.upstream, self.path, self.world

        def die():
            try:
                status, _, answer = call(upstream, "POST", path, headers, body)
            except OSError as err:
                status, answer = None, str(err).encode()
            if status != 200:
                print(f"dies-at-launch: terminating {ids} failed: {status} {answer[:300]!r}", file=sys.stderr)
            world.died(ids)
            for _ in ids:
                world.count("chosen:" + DEATH_CODE)

        timer = threading.Timer(self.world.visibility + DEATH_AFTER_VISIBLE, die)
        timer.daemon = True
        timer.start()

    # --- plumbing ---------------------------------------------------------------------------

    def state_of(self, instance_id, template_body):
        """The instance's state as LocalStack sees it, or None if it does not know it."""
        return text(self.describe_one(instance_id, template_body), "instanceState", "name")

    def describe_one(self, instance_id, template_body):
        """The instance's item as LocalStack describes it, or None if it does not know it."""
        params = dict(urllib.parse.parse_qsl(template_body.decode()))
        describe = {"Action": "DescribeInstances", "Version": params.get("Version", "2016-11-15")}
        describe["InstanceId.1"] = instance_id
        status, _, answer = self.forward(urllib.parse.urlencode(describe).encode())
        if status != 200:
            return None
        items = (e for e in parse(answer).iter() if local(e) == "item")
        return next((e for e in items if child(e, "instanceState") is not None), None)

    def strict(self, code, message, status=400):
        """A strict answer: AWS's error where LocalStack would have accepted or answered otherwise."""
        self.world.count("strict:" + code)
        return error(code, message, status)

    def upstream_call(self, params, headers=None):
        """An EC2 call of the proxy's own to LocalStack, signed like the request being served."""
        params = {"Version": "2016-11-15", **params}
        headers = {k: v for k, v in (headers or self.headers).items() if k.lower() not in HOP_HEADERS}
        return call(self.upstream, "POST", "/", headers, urllib.parse.urlencode(params).encode())

    def forward(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        return call(self.upstream, self.command, self.path, headers, body)

    def forward_raw(self, body):
        self.reply(*self.forward(body))

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def call(upstream, method, path, headers, body):
    """One request to LocalStack; answers (status, headers without hop-by-hop ones, body)."""
    conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
    headers = dict(headers, **{"Content-Length": str(len(body))})
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_HEADERS}
    conn.close()
    return response.status, kept, answer


def dying(instance, dead):
    """Rewrite a describe item of an instance that dies at launch: pending until it has died, and
    AWS's reason for a launch that failed (LocalStack would show a user-initiated one)."""
    state = child(instance, "instanceState")
    if not dead and state is not None and text(state, "name") not in ("shutting-down", "terminated"):
        for name, value in (("code", "0"), ("name", "pending")):
            if child(state, name) is not None:
                child(state, name).text = value
    set_state_reason(instance, DEATH_CODE, DEATH_MESSAGE)


def table_arg(parse):
    """An argparse type from a parser that raises ValueError."""

    def parsed(value):
        try:
            return parse(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err))

    return parsed


def chosen_pair(value):
    key, sep, code = value.partition("=")
    if not sep or not key or code not in CHOSEN_STATUS:
        codes = ", ".join(CHOSEN_STATUS)
        raise argparse.ArgumentTypeError(f"want KEY=CODE with CODE one of {codes}: {value!r}")
    return key, code


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
    parser.add_argument("--chosen-error", type=chosen_pair, action="append", default=[], metavar="KEY=CODE")
    parser.add_argument("--dies-at-launch", action="append", default=[], metavar="KEY")
    parser.add_argument("--placement-group", type=table_arg(placement_group_arg), action="append", default=[],
                        metavar="NAME=partition:N|cluster|spread")
    parser.add_argument("--capacity-reservation", action="append", default=[], metavar="cr-ID")
    parser.add_argument("--ssm-parameter", type=table_arg(ssm_parameter_arg), action="append", default=[],
                        metavar="NAME=ami-ID")
    parser.add_argument("--volume-modify-cooldown-seconds", type=float, default=6 * 3600)
    args = parser.parse_args()
    fields = Fields(args.placement_group, args.capacity_reservation, args.ssm_parameter,
                    args.volume_modify_cooldown_seconds)
    Proxy.world = World(
        args.visibility_seconds, args.terminated_seconds, args, dict(args.chosen_error), args.dies_at_launch, fields
    )
    Proxy.upstream = urllib.parse.urlparse(args.upstream)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Proxy)
    server.daemon_threads = True
    print(f"strict EC2 on 127.0.0.1:{args.port} -> {args.upstream}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
