#!/bin/sh
# ACTIONS_RUNNER_HOOK_JOB_COMPLETED: the GitHub Actions runner runs this after the job's last step.
# runguard moves the Runner.Worker back to the runner service's cgroup and removes the job's cgroup
# and label once the job's processes have exited. It never fails the job (it always exits 0).
set -u
RUNGUARD=/opt/runguard/bin/runguard
STATE_DIR=/var/lib/runguard
if [ "$(id -u)" -eq 0 ]; then
  "$RUNGUARD" hook job-completed --state-dir "$STATE_DIR"
else
  sudo -n "$RUNGUARD" hook job-completed --state-dir "$STATE_DIR"
fi
exit 0
