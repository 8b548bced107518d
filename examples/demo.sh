#!/usr/bin/env bash
# The README's demo, on a fresh Debian 12 machine, as root: `bash examples/demo.sh [--exit]`.
#
# Sets the machine up, then starts the whole of runguard on this one host: a collector (the central,
# tamper-evident log with its dashboard), a real PostgreSQL 15 on 127.0.0.2:5432 standing in for
# production, and the agent with examples/policy.yaml. A simulated GitHub Actions job then runs its
# migration and queries with plain psql, unchanged: one read comes back masked, one statement is
# denied, one is held until a DBA approves it with the CLI, and a secret it uses never reaches the
# trail. At the end: the audit trail, `runguard verify`, and where the dashboard is with its sign-in.
#
# The collector, agent and PostgreSQL then stay up for you to look around until Ctrl-C. With --exit
# (or RUNGUARD_DEMO_EXIT=1: what CI and the tests use) everything is torn down at once. Either way
# the demo leaves nothing behind: processes stopped by pid, BPF pins removed, temp dir deleted.
set -euo pipefail
cd "$(dirname "$0")/.."

EXIT_AT_END=${RUNGUARD_DEMO_EXIT:-0}
for arg in "$@"; do
  case "$arg" in
    --exit) EXIT_AT_END=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option $arg (known: --exit, --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (the agent loads eBPF programs)" >&2; exit 1; }

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD= PLAIN=; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
note() { printf '   %s\n' "$*"; }
indent() { sed 's/^/   | /'; }
die() { printf '\ndemo.sh: %s\n' "$*" >&2; exit 1; }
port_free() { ! ss -Htln "( sport = :$1 )" 2>/dev/null | grep -q . ; }
# The first free port from a preferred one upwards: a fixed, documented port when we can.
pick_port() { local p=$1; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }
# GET a URL to stdout (node's fetch: curl may not be installed).
http_get() { node -e 'fetch(process.argv[1]).then(async (r) => { if (!r.ok) process.exit(1); process.stdout.write(await r.text()); }, () => process.exit(1))' "$1"; }
# Waits up to $2 tenths of a second for a command to succeed.
wait_until() { local what=$1 tenths=$2; shift 2; for _ in $(seq "$tenths"); do "$@" && return 0; sleep 0.1; done; die "timed out waiting for $what"; }

# RUNGUARD_DEMO_SKIP_SETUP=1: the machine is set up and built already (the test suite, which runs
# the demo from the build it is running, must not rebuild it underneath itself).
if [ "${RUNGUARD_DEMO_SKIP_SETUP:-0}" != 1 ]; then
  say "setting up the machine (Debian packages, npm packages, build: only what is missing)"
  bash test/setup.sh >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
RG=bin/runguard

WORK=$(mktemp -d /tmp/runguard-demo.XXXXXX)
chmod 755 "$WORK"
CA="$WORK/ca"; AGENT_TLS="$WORK/agent-tls"; DATA="$WORK/collector"; STATE="$WORK/agent"
PIN=/sys/fs/bpf/runguard-demo-$$
JOBS=runguard-demo-$$.jobs
AGENT_PID= COLLECTOR_PID= JOB_PID=

stop_pid() { # pid: SIGTERM, then up to 10 s for it to exit, then SIGKILL
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$status" != 0 ] && [ "$status" != 130 ] && [ -d "$WORK" ]; then
    for log in agent collector; do
      [ -s "$WORK/$log.log" ] && { echo "--- last lines of the $log log:"; tail -n 15 "$WORK/$log.log"; } >&2
    done
  fi
  echo
  echo "stopping the demo: job, agent, collector, PostgreSQL; removing pins and $WORK"
  stop_pid "$JOB_PID"
  stop_pid "$AGENT_PID"
  "$RG" agent --cleanup --state-dir "$STATE" --pin-dir "$PIN" --job-cgroup "$JOBS" >/dev/null 2>&1 || true
  stop_pid "$COLLECTOR_PID"
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
# The collector and the agent run in their own sessions (setsid keeps their pid), so a Ctrl-C reaches
# only this script, which stops them in order: agent, pins, collector.
trap 'exit 130' INT TERM

if ss -Htln | awk '{print $4}' | grep -qE '^(127\.0\.0\.2|0\.0\.0\.0|\*|\[::\]):5432$'; then
  die "something already listens on 127.0.0.2:5432 (another demo?); stop it first"
fi
HTTP_PORT=$(pick_port 8640)
GRPC_PORT=$(pick_port 8643)
PROXY_PORT=$(pick_port 15001)
URL="http://127.0.0.1:$HTTP_PORT"
RG_PATH="$PWD/bin/runguard"   # in the commands printed for you to copy

say "a CA for the fleet, and the agent enrolled in it (mutual TLS, an Ed25519 key that signs its events)"
"$RG" ca init --dir "$CA" >/dev/null 2>&1
"$RG" enroll --ca "$CA" --agent-id demo-runner --out "$AGENT_TLS" >/dev/null 2>&1
note "checkpoint verifier key: $(cat "$CA/checkpoint.pub")"

# The dashboard's one user: alice, a DBA who may approve. Not the job's actor: nobody approves their
# own job. Her password is made up now, printed once at the end, and gone with the demo's temp dir.
ALICE_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=' | head -c 16)
printf '%s\n' "$ALICE_PASSWORD" | "$RG" user add --data-dir "$DATA" --name alice --role admin --role approver --group dba >/dev/null

say "the collector: gRPC ingest on 127.0.0.1:$GRPC_PORT, dashboard and read API on $URL"
setsid "$RG" collector --data-dir "$DATA" --tls "$CA" --listen "127.0.0.1:$GRPC_PORT" --http "127.0.0.1:$HTTP_PORT" >"$WORK/collector.log" 2>&1 &
COLLECTOR_PID=$!
wait_until "the collector" 150 grep -q '"collector running' "$WORK/collector.log"
note "collector pid $COLLECTOR_PID, log in $DATA"
[ "$HTTP_PORT" = 8640 ] || note "(port 8640 was taken, so the dashboard is on $HTTP_PORT)"

say "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.2:5432 (the 'production' database)"
install -d -o postgres -g postgres "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
  -o "-c listen_addresses=127.0.0.2 -p 5432 -k $WORK/pg" start >/dev/null

say "the agent: redirects the jobs' connections to 127.0.0.2 to its proxy, with examples/policy.yaml"
setsid "$RG" agent --state-dir "$STATE" --pin-dir "$PIN" --job-cgroup "$JOBS" --agent-id demo-runner \
  --proxy-port "$PROXY_PORT" --intercept 127.0.0.2/32 --policy examples/policy.yaml \
  --collector "localhost:$GRPC_PORT" --tls "$AGENT_TLS" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
wait_until "the agent" 200 grep -q '"agent running' "$WORK/agent.log"
note "agent pid $AGENT_PID, proxy on 127.0.0.1:$PROXY_PORT, BPF pins in $PIN, shipping to the collector"
note "policy: deny DROP TABLE/TRUNCATE and DELETE without WHERE; hold ALTER TABLE for a DBA;"
note "        mask columns named like email/password/token in what comes back"

# The job: what a GitHub Actions step would run, unchanged. It knows nothing about runguard.
cat >"$WORK/job.sh" <<'JOB'
set -u
export PGCONNECT_TIMEOUT=10
# psql as a job would run it; verbose errors show the SQLSTATE (the LOCATION line is noise here).
sql() {
  local out status=0
  out=$(psql -X -q -h 127.0.0.2 -U postgres -d postgres -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -v SHOW_CONTEXT=never \
    -P pager=off -P footer=off -c "$1" 2>&1) || status=$?
  [ -z "$out" ] || printf '%s\n' "$out" | grep -v '^LOCATION:'
  return "$status"
}
step() { printf '## %s\n' "$*"; }

step "migrate: create the tables and seed them"
sql "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL, api_token text)"
sql "CREATE TABLE deploys (id serial PRIMARY KEY, sha text, ref text, notify_token text)"
sql "INSERT INTO users (name, email, api_token) VALUES
       ('Ada Lovelace', 'ada@example.com', md5('ada')), ('Alan Turing', 'alan@example.com', md5('alan'))"
step "record the deploy (uses the job's secret \$DEPLOY_TOKEN in a statement)"
sql "INSERT INTO deploys (sha, ref, notify_token) VALUES ('${GITHUB_SHA:0:12}', '$GITHUB_REF', '$DEPLOY_TOKEN')"
step "smoke test: read the users back (the email and token columns come back masked)"
sql "SELECT id, name, email, api_token FROM users ORDER BY id"
step "cleanup step that goes too far: DROP TABLE"
sql "DROP TABLE deploys" || echo "(psql failed; the job carries on)"
step "schema change: ALTER TABLE (held until a DBA approves it)"
sql "ALTER TABLE users ADD COLUMN last_login timestamptz" && echo "ALTER TABLE: done, the job goes on"
step "final check"
sql "SELECT count(*) AS users, count(last_login) AS logged_in FROM users"
JOB

RUN_ID=$((4000 + RANDOM % 1000))
DEPLOY_TOKEN_VALUE="dpl_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"  # the job's secret: never printed
say "a GitHub Actions job (acme/payments, workflow deploy, run $RUN_ID, actor mona) runs its migration with plain psql"
note "runguard run --state-dir $STATE -- bash job.sh    (job output below, prefixed with |)"
env GITHUB_ACTIONS=true CI=true GITHUB_REPOSITORY=acme/payments GITHUB_WORKFLOW=deploy GITHUB_RUN_ID="$RUN_ID" \
  GITHUB_RUN_ATTEMPT=1 GITHUB_JOB=migrate GITHUB_ACTOR=mona GITHUB_REF=refs/heads/main GITHUB_EVENT_NAME=push \
  GITHUB_SHA=9fceb02d0ae598e95dc970b74767f19372d61af8 GITHUB_SERVER_URL=https://github.com RUNNER_NAME=runner-7 \
  DEPLOY_TOKEN="$DEPLOY_TOKEN_VALUE" \
  "$RG" run --state-dir "$STATE" --job-id "gha-$RUN_ID-migrate" -- bash "$WORK/job.sh" >"$WORK/job.out" 2>&1 &
JOB_PID=$!

# Alice's side, in the foreground while the job waits: the pending request, then her approval.
pending_id() {
  RUNGUARD_PASSWORD="$ALICE_PASSWORD" "$RG" approvals --collector "$URL" --user alice --json 2>/dev/null | node -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      const r = s.split("\n").filter(Boolean).map((l) => JSON.parse(l))
        .find((a) => a.job.runId === process.argv[1] && a.operation.type === "ALTER TABLE");
      if (r) console.log(r.id);
    });' "$RUN_ID"
}
APPROVAL_ID=
for _ in $(seq 200); do
  APPROVAL_ID=$(pending_id) && [ -n "$APPROVAL_ID" ] && break
  kill -0 "$JOB_PID" 2>/dev/null || { indent <"$WORK/job.out"; die "the job ended before its ALTER TABLE was held"; }
  sleep 0.2
done
[ -n "$APPROVAL_ID" ] || { indent <"$WORK/job.out"; die "no approval request showed up in 40 s"; }
SHOWN=$(wc -l <"$WORK/job.out")
indent <"$WORK/job.out"

say "the job is waiting: alice (a DBA) lists what waits for approval, and approves it"
note "\$ runguard approvals --collector $URL --user alice"
RUNGUARD_PASSWORD="$ALICE_PASSWORD" "$RG" approvals --collector "$URL" --user alice | indent
note "\$ runguard approve $APPROVAL_ID --collector $URL --user alice"
RUNGUARD_PASSWORD="$ALICE_PASSWORD" "$RG" approve "$APPROVAL_ID" --collector "$URL" --user alice | indent

JOB_STATUS=0
wait "$JOB_PID" || JOB_STATUS=$?
JOB_PID=
tail -n +"$((SHOWN + 1))" "$WORK/job.out" | indent
note "(the job exited with status $JOB_STATUS)"

say "the audit trail on the collector: every statement, tied to the job, with its decision"
LAST_SEQ=$("$RG" events --state-dir "$STATE" --json | tail -n 1 | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>console.log(JSON.parse(s).seq))')
acked() { [ -f "$STATE/shipper.json" ] && node -e 'process.exit(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).ackedSeq >= Number(process.argv[2]) ? 0 : 1)' "$STATE/shipper.json" "$LAST_SEQ"; }
wait_until "the agent to ship its events to the collector" 300 acked
LEAVES=$(node -p 'JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).lastIndex + 1' "$STATE/shipper.json")
checkpointed() { [ "$(http_get "$URL/checkpoint" 2>/dev/null | sed -n 2p)" -ge "$LEAVES" ] 2>/dev/null; }
wait_until "a signed checkpoint covering them" 300 checkpointed
# One line per statement (and approval), as the collector stored them. The decision is the policy's:
# `mask` is the catch-all rule that allows a statement and masks what it reads.
"$RG" events --collector "$URL" --repository acme/payments --run "$RUN_ID" --json | node -e '
  const pad = (v, n) => String(v ?? "").padEnd(n);
  let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
    const events = s.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const j = events.find((e) => e.job)?.job;
    if (j) console.log(`job: ${j.provider} ${j.repository}, workflow ${j.workflow}, run ${j.runId}, job ${j.job}, actor ${j.actor}, commit ${j.sha.slice(0, 7)}, runner ${j.runner}`);
    console.log(`${pad("time", 9)} ${pad("decision", 16)} ${pad("rule", 22)} ${pad("result", 20)} statement`);
    for (const e of events) {
      const t = e.time.slice(11, 19);
      if (e.kind === "EVENT_KIND_STATEMENT") {
        const st = e.statement, d = st.decision ?? {};
        const verdict = d.action === "review" ? `review: ${d.outcome}` : d.action;
        const result = st.errorCode ? `ERROR ${st.errorCode}` : `${st.commandTag ?? ""}${st.maskedValues ? ` (${st.maskedValues} masked)` : ""}`;
        const text = st.text.replace(/\s+/g, " ");
        console.log(`${pad(t, 9)} ${pad(verdict, 16)} ${pad(d.rule, 22)} ${pad(result, 20)} ${text.length > 150 ? text.slice(0, 149) + "…" : text}`);
      } else if (e.kind === "EVENT_KIND_APPROVAL_REQUESTED") {
        const a = e.approvalRequested;
        console.log(`${pad(t, 9)} ${pad("held", 16)} ${pad(a.rule, 22)} approval ${a.approvalId} requested from ${a.approvers}`);
      } else if (e.kind === "EVENT_KIND_APPROVAL_DECIDED") {
        const a = e.approvalDecided;
        console.log(`${pad(t, 9)} ${pad(a.outcome, 16)} ${pad("", 22)} approval ${a.approvalId} ${a.outcome} by ${(a.approvers ?? []).join(", ")} after ${(Number(a.waitedMs ?? 0) / 1000).toFixed(1)} s`);
      }
    }
  });' | indent
N_EVENTS=$(http_get "$URL/events?repository=acme/payments&run=$RUN_ID" | wc -l)
note "$N_EVENTS events from this job in all (connections, statements, processes, approvals): runguard events --collector $URL --run $RUN_ID"
# The secret is in the database (the job stored it) and nowhere else: not in the collector's log,
# the agent's spool, or either log file.
if grep -rqF --exclude-dir=pg "$DEPLOY_TOKEN_VALUE" "$WORK" || http_get "$URL/events" | grep -qF "$DEPLOY_TOKEN_VALUE"; then
  die "the deploy token's value is in the trail or a log"
fi
http_get "$URL/events?kind=STATEMENT&run=$RUN_ID" | grep -qF '[REDACTED:env:DEPLOY_TOKEN]' \
  || die "the statement that used DEPLOY_TOKEN does not read [REDACTED:env:DEPLOY_TOKEN] in the trail"
note "DEPLOY_TOKEN's value appears nowhere in the trail or the logs: the statement reads [REDACTED:env:DEPLOY_TOKEN]"

say "runguard verify: every leaf, the Merkle tree, the signed checkpoint, the agent's chain and signatures"
note "\$ runguard verify --collector $URL --key $CA/checkpoint.pub --ca $CA"
VERIFY_STATUS=0
"$RG" verify --collector "$URL" --key "$CA/checkpoint.pub" --ca "$CA" >"$WORK/verify.out" 2>&1 || VERIFY_STATUS=$?
indent <"$WORK/verify.out"
[ "$VERIFY_STATUS" = 0 ] || die "runguard verify failed (status $VERIFY_STATUS)"

say "the dashboard"
# Sign in as alice the way the browser does, and read the job's row of the Jobs page.
DASH_JOB=$(RUNGUARD_PASSWORD="$ALICE_PASSWORD" node -e '
  const [url, repo] = process.argv.slice(1);
  (async () => {
    const login = await fetch(url + "/api/login", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: "alice", password: process.env.RUNGUARD_PASSWORD }) });
    if (!login.ok) throw new Error("sign-in failed: " + login.status);
    const cookie = login.headers.get("set-cookie").split(";")[0];
    const { jobs } = await (await fetch(url + "/api/jobs?repository=" + encodeURIComponent(repo), { headers: { cookie } })).json();
    const j = jobs[0];
    if (!j) throw new Error("the job is not in the dashboard");
    console.log(`${j.repository} · ${j.workflow} · ${j.job} #${j.runId} by ${j.actor}: ${j.events} events, ${j.statements} statements, ${j.denied} denied, ${j.masked} masked, ${j.reviewed} reviewed`);
  })().catch((e) => { console.error(e.message); process.exit(1); });' "$URL" acme/payments) || die "the dashboard does not answer for alice"
note "open      $URL/    (the job: Jobs -> $DASH_JOB)"
note "sign in   alice / $ALICE_PASSWORD    (made up for this demo; gone when it stops)"
if [ "$EXIT_AT_END" = 1 ]; then
  echo
  echo "demo done (--exit): everything stops now. Run it without --exit to keep the collector up and browse."
  exit 0
fi
note "CLI       $RG_PATH events --collector $URL --kind STATEMENT --json"
note "          $RG_PATH verify --collector $URL --key $CA/checkpoint.pub --ca $CA"
note "a job    sudo env GITHUB_ACTIONS=true GITHUB_REPOSITORY=acme/payments GITHUB_ACTOR=mona \\"
note "             $RG_PATH run --state-dir $STATE -- psql -h 127.0.0.2 -U postgres -c 'TRUNCATE users'"
echo
echo "The collector, the agent and PostgreSQL stay up so you can look around. Press Ctrl-C to stop"
echo "everything and remove $WORK (or run the demo with --exit next time)."
wait "$COLLECTOR_PID" || true
die "the collector stopped on its own"
