#!/bin/sh
# ACTIONS_RUNNER_HOOK_JOB_STARTED: the GitHub Actions runner runs this before the job's first step,
# as a child of the Runner.Worker that runs the job, with the job's GITHUB_* variables set.
# runguard moves that worker into a fresh watched cgroup labelled with the job, so every step runs
# watched. It fails closed: if runguard cannot watch the job, this exits non-zero and the runner
# fails the job. To run such jobs unwatched instead, add --fail-open to both commands below.
set -eu
RUNGUARD=/opt/runguard/bin/runguard
STATE_DIR=/var/lib/runguard
if [ "$(id -u)" -eq 0 ]; then
  exec "$RUNGUARD" hook job-started --state-dir "$STATE_DIR"
fi
# The runner runs as an unprivileged user: root through the sudoers rule in sudoers.runguard.
exec sudo -n "$RUNGUARD" hook job-started --state-dir "$STATE_DIR"
