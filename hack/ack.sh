#!/usr/bin/env bash
# The AWS ACK ec2-controller (github.com/aws-controllers-k8s/ec2-controller), built from its Go
# module and run out of cluster against the test bed, for the side-by-side benchmark.
#
#   hack/ack.sh build        download the module (Go module proxy), build .cache/ack/bin/ack-ec2-controller
#   hack/ack.sh crds         print the paths of the CRD YAMLs to apply (kubectl apply -f each)
#   hack/ack.sh run [ARGS]   exec the controller against the bed; ARGS are appended to its flags
#
# By hand: apply the CRDs, start `run`, then `kubectl apply -f bench/ack-instance.yaml` (one ACK
# Instance; tests/bench.rs makes the same spec for each of its objects).
#
# Env for run (defaults in brackets): ACK_ENDPOINT_URL [$STRICT_EC2_ENDPOINT from hack/bed.sh env],
#   ACK_IDENTITY_ENDPOINT_URL, STS for the account-id lookup at start [a stub this script starts on
#   loopback, answering account ACK_ACCOUNT_ID (000000000000) and gone when the controller is],
#   ACK_AWS_REGION [$AWS_REGION or us-east-1], ACK_WATCH_NAMESPACE [all], ACK_RESYNC_SECONDS
#   [0 = ACK's default, 10 h], ACK_LOG_LEVEL [info], ACK_RECONCILE_RESOURCES [Instance],
#   ACK_METRICS_ADDR / ACK_HEALTHZ_ADDR [127.0.0.1:<a free port>], ACK_ENABLE_CARM [true],
#   KUBECONFIG [from hack/bed.sh env]. BED_CACHE as for hack/bed.sh.
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
MODULE=github.com/aws-controllers-k8s/ec2-controller
VERSION="${ACK_VERSION:-v1.9.2}"
ACK="$ROOT/.cache/ack"
SRC="$ACK/src"
BIN="$ACK/bin/ack-ec2-controller"
STAMP="$ACK/bin/.stamp"

say() { echo "ack: $*" >&2; }

# The stamp: what the binary was built from.
stamp() { printf '%s@%s %s\n' "$MODULE" "$VERSION" "$(go version)"; }

build() {
  if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp)" ]]; then
    say "$BIN is up to date ($VERSION)"
    return 0
  fi
  local t0=$SECONDS
  mkdir -p "$ACK/bin"
  [[ -f "$ROOT/.cache/.gitignore" ]] || echo '*' >"$ROOT/.cache/.gitignore"
  rm -f "$STAMP"
  go_module_copy "$MODULE" "$VERSION" "$SRC"
  say "building $MODULE@$VERSION (cmd/controller) in $SRC"
  # The version variables are the ones ACK's release build sets: GitVersion goes into the
  # services.k8s.aws/controller-version tag and the User-Agent.
  local v="$MODULE/pkg/version"
  (cd "$SRC" && go build -mod=readonly -trimpath \
    -ldflags "-s -w -X $v.GitVersion=$VERSION -X $v.GitCommit=$MODULE_COMMIT -X $v.BuildDate=$MODULE_TIME" \
    -o "$BIN" ./cmd/controller) || die "building the ACK ec2-controller failed (see go output above)"
  stamp >"$STAMP"
  say "built $BIN in $((SECONDS - t0))s"
}

# The Instance CRD, plus the ACK common CRDs a Helm install puts in (FieldExport, IAMRoleSelector).
# Only the Instance one is required with --reconcile-resources Instance: the FieldExport reconciler
# is skipped when its CRD is absent, IAMRoleSelector is an off-by-default feature gate.
crds() {
  [[ -d "$SRC/config/crd" ]] || die "no $SRC: run '$0 build' first"
  local f
  for f in "$SRC/config/crd/bases/ec2.services.k8s.aws_instances.yaml" \
    "$SRC/config/crd/common/bases/services.k8s.aws_fieldexports.yaml" \
    "$SRC/config/crd/common/bases/services.k8s.aws_iamroleselectors.yaml"; do
    [[ -f "$f" ]] || die "missing $f"
    echo "$f"
  done
}

# ACK asks STS GetCallerIdentity once at start (its account id; it exits if that fails), and the
# bed's LocalStack serves EC2 only. This answers that one call on loopback, account
# ACK_ACCOUNT_ID (LocalStack's for test/test: 000000000000), and exits when process $1 does.
sts_stub() {
  local stub="$ACK/sts-stub.py"
  cat >"$stub.tmp" <<'PY'
# Written by hack/ack.sh: a loopback STS answering GetCallerIdentity, until process WATCH ends.
# Usage: sts-stub.py WATCH_PID PORT ACCOUNT_ID
import http.server, sys, threading, time, uuid
watch, port, account = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        ok = "Action=GetCallerIdentity" in body
        rid = uuid.uuid4()
        xml = (f'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
               f'<GetCallerIdentityResult><Arn>arn:aws:iam::{account}:root</Arn><UserId>{account}</UserId>'
               f'<Account>{account}</Account></GetCallerIdentityResult>'
               f'<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></GetCallerIdentityResponse>'
               if ok else
               f'<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code>'
               f'<Message>this stub answers GetCallerIdentity only</Message></Error>'
               f'<RequestId>{rid}</RequestId></ErrorResponse>').encode()
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        self.wfile.write(xml)

    def log_message(self, *args):
        pass

def alive(pid):  # running and not a zombie
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
while alive(watch):
    time.sleep(1)
PY
  mv -f "$stub.tmp" "$stub"
  python3 "$stub" "$1" "$2" "${ACK_ACCOUNT_ID:-000000000000}" </dev/null >/dev/null 2>&1 &
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run() {
  [[ -x "$BIN" ]] || die "no $BIN: run '$0 build' first"
  local bedenv
  if [[ -z "${ACK_ENDPOINT_URL:-}" || -z "${KUBECONFIG:-}" ]]; then
    bedenv="$("$ROOT/hack/bed.sh" env)" || die "the bed is not up (hack/bed.sh up), or set ACK_ENDPOINT_URL and KUBECONFIG"
    # shellcheck disable=SC1090
    source <(echo "$bedenv")
  fi
  local endpoint="${ACK_ENDPOINT_URL:-${STRICT_EC2_ENDPOINT:?}}"
  local identity="${ACK_IDENTITY_ENDPOINT_URL:-}" port i
  if [[ -z "$identity" ]]; then
    port="$(free_port)"
    sts_stub $$ "$port" # $$: this shell, which becomes the controller at the exec below
    for ((i = 0; i < 50; i++)); do port_in_use "$port" && break; sleep 0.1; done
    port_in_use "$port" || die "the STS stub did not start on 127.0.0.1:$port"
    identity="http://127.0.0.1:$port"
  fi
  local region="${ACK_AWS_REGION:-${AWS_REGION:-us-east-1}}"
  local metrics="${ACK_METRICS_ADDR:-127.0.0.1:$(free_port)}"
  local healthz="${ACK_HEALTHZ_ADDR:-127.0.0.1:$(free_port)}"
  [[ -f "${KUBECONFIG:?}" ]] || die "KUBECONFIG=$KUBECONFIG: no such file"
  say "EC2 $endpoint, STS $identity, region $region, metrics http://$metrics/metrics, healthz http://$healthz/healthz"
  # The kubeconfig goes by KUBECONFIG: controller-runtime registers --kubeconfig on Go's flag set,
  # which ACK's pflag parsing does not read. AWS_CA_BUNDLE must go: the SDK cannot put a custom CA
  # on the HTTP client ACK passes it, and every reconcile fails. Static test credentials, no
  # shared config files, no IMDS: nothing is looked up outside the bed.
  exec env -u AWS_CA_BUNDLE -u AWS_ENDPOINT_URL -u AWS_PROFILE -u AWS_SESSION_TOKEN \
    -u AWS_ROLE_ARN -u AWS_WEB_IDENTITY_TOKEN_FILE \
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION="$region" AWS_DEFAULT_REGION="$region" \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
    KUBECONFIG="$KUBECONFIG" \
    "$BIN" \
    --aws-region "$region" \
    --aws-endpoint-url "$endpoint" \
    --aws-identity-endpoint-url "$identity" \
    --allow-unsafe-aws-endpoint-urls \
    --metrics-addr "$metrics" \
    --healthz-addr "$healthz" \
    --watch-namespace "${ACK_WATCH_NAMESPACE:-}" \
    --enable-leader-election=false \
    --enable-carm="${ACK_ENABLE_CARM:-true}" \
    --reconcile-resources "${ACK_RECONCILE_RESOURCES:-Instance}" \
    --reconcile-default-resync-seconds "${ACK_RESYNC_SECONDS:-0}" \
    --log-level "${ACK_LOG_LEVEL:-info}" \
    "$@"
}

case "${1:-}" in
  build) build ;;
  crds) crds ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build|crds|run [ARGS...]" >&2; exit 2 ;;
esac
