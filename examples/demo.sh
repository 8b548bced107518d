#!/usr/bin/env bash
# The README's demo: on a fresh Debian 12 machine, as root. Sets itself up, starts a real PostgreSQL
# on 127.0.0.2, starts the runguard agent, runs a simulated GitHub Actions job that talks to the
# database with psql, and shows the audit trail the job left without knowing it was watched.
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/setup.sh >/dev/null

WORK=$(mktemp -d /tmp/runguard-demo.XXXXXX)
chmod 755 "$WORK"
STATE="$WORK/state"
PIN=/sys/fs/bpf/runguard-demo-$$
JOBS=runguard-demo-$$.jobs
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
AGENT_PID=
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  [ -f "$WORK/pg/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  bin/runguard agent --cleanup --state-dir "$STATE" --pin-dir "$PIN" --job-cgroup "$JOBS" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.2:5432 (the 'production' database)"
install -d -o postgres -g postgres "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
  -o "-c listen_addresses=127.0.0.2 -p 5432 -k $WORK/pg" start >/dev/null

say "runguard agent: intercepting 127.0.0.2 for jobs under cgroup $JOBS"
bin/runguard agent --state-dir "$STATE" --pin-dir "$PIN" --job-cgroup "$JOBS" --agent-id demo-runner \
  --intercept 127.0.0.2/32 >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do grep -q '"agent running' "$WORK/agent.log" && break; sleep 0.1; done
grep -q '"agent running' "$WORK/agent.log" || { cat "$WORK/agent.log"; exit 1; }
echo "agent pid $AGENT_PID, proxy on 127.0.0.1:15001, events in $STATE/spool"

say "a GitHub Actions job runs its migration, unchanged (plain psql to 127.0.0.2)"
export GITHUB_ACTIONS=true GITHUB_REPOSITORY=acme/payments GITHUB_WORKFLOW=deploy GITHUB_RUN_ID=4242 \
  GITHUB_RUN_ATTEMPT=1 GITHUB_JOB=migrate GITHUB_ACTOR=alice GITHUB_REF=refs/heads/main \
  GITHUB_SHA=9fceb02d0ae598e95dc970b74767f19372d61af8 RUNNER_NAME=runner-7 DEPLOY_TOKEN=s3cr3t-deploy-t0ken
bin/runguard run --state-dir "$STATE" -- bash -c '
  psql -h 127.0.0.2 -U postgres -q -c "CREATE TABLE invoices (id serial primary key, customer text, amount numeric)"
  psql -h 127.0.0.2 -U postgres -q -c "INSERT INTO invoices (customer, amount) VALUES ('"'"'globex'"'"', 1200)"
  psql -h 127.0.0.2 -U postgres -At -c "SELECT count(*) || '"'"' invoice(s)'"'"' FROM invoices"
  python3 -c "import socket; s=socket.create_connection((\"127.0.0.2\", 5432)); print(\"the job sees its peer as\", s.getpeername())"'
unset GITHUB_ACTIONS GITHUB_REPOSITORY GITHUB_WORKFLOW GITHUB_RUN_ID GITHUB_RUN_ATTEMPT GITHUB_JOB GITHUB_ACTOR GITHUB_REF GITHUB_SHA RUNNER_NAME DEPLOY_TOKEN

say "the audit trail: every connection, tied to the job, commit and command line"
bin/runguard events --state-dir "$STATE" --kind CONNECTION_OPEN --kind CONNECTION_CLOSE
say "one event in full (proto3 JSON, as shipped to the collector)"
bin/runguard events --state-dir "$STATE" --json --kind CONNECTION_OPEN | sed -n 1p | python3 -m json.tool
say "the job's process tree (exec events)"
bin/runguard events --state-dir "$STATE" --kind PROCESS_EXEC | grep -m5 -E 'bin/psql|python3 -c'

say "fail-closed: with the agent stopped, the job cannot reach the database unaudited"
kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=
if bin/runguard run --state-dir "$STATE" -- psql -h 127.0.0.2 -U postgres -c 'SELECT 1' 2>"$WORK/refused.txt" >/dev/null; then
  echo "UNEXPECTED: the job reached the database with the agent down"; exit 1
fi
echo "psql: $(grep -m1 -o 'Operation not permitted\|Connection refused' "$WORK/refused.txt") (as intended)"
echo
echo "done: $(bin/runguard events --state-dir "$STATE" | wc -l) events, gap-free sequence numbers, no secret in them:"
if bin/runguard events --state-dir "$STATE" --json | grep -q 's3cr3t-deploy-t0ken'; then echo "LEAK"; exit 1; else echo "  DEPLOY_TOKEN's value appears nowhere in the trail"; fi
