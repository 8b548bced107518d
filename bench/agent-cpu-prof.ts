// Loaded into the agent by `node --import dist/bench/agent-cpu-prof.js bin/runguard agent ...` when
// bench/pgbench.ts runs with --cpu-prof: starts the V8 sampling profiler on SIGUSR2 and writes
// $RG_BENCH_CPU_PROF_DIR/agent-PID.cpuprofile when the agent exits.
//
// Not `node --cpu-prof`: the profiler interrupts the main thread with SIGPROF, and a signal pending
// while the kernel verifies a BPF program makes BPF_PROG_LOAD fail with EAGAIN, so an agent profiled
// from its first instruction cannot attach its hooks. Started once the agent runs, it can.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';

const dir = process.env.RG_BENCH_CPU_PROF_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  let started = false;
  process.on('SIGUSR2', () => {
    if (started) return;
    started = true;
    session.post('Profiler.enable');
    session.post('Profiler.start');
  });
  // An in-process session answers synchronously, so this completes inside the exit handler.
  process.on('exit', () => {
    if (!started) return;
    session.post('Profiler.stop', (err, res) => {
      if (err) return void process.stderr.write(`agent-cpu-prof: ${err.message}\n`);
      writeFileSync(path.join(dir, `agent-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
    });
  });
}
