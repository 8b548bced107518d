// Readers of /proc shared by the tests and the benchmarks.
import { readFileSync } from 'node:fs';

/**
 * The fields of a /proc/PID/stat (or /proc/PID/task/TID/stat) line after the command name, which may
 * itself hold spaces and parentheses, as numbers: [0] is field 3 (state, NaN), [7] minflt, [11]
 * utime, [12] stime, [13] cutime, [14] cstime (clock ticks), [16] nice.
 */
export function statFields(stat: string): number[] {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
}

/** The nice value of one thread of a process. */
export function threadNice(pid: number | 'self', tid: number | string): number {
  return statFields(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'))[16]!;
}
