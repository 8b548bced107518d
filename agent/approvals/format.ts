/** 120000 -> "2m", 2000 -> "2s", 5400000 -> "1h30m". */
export function formatDuration(ms: number): string {
  if (ms < 1000 || ms % 1000) return `${ms}ms`;
  let s = ms / 1000;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return `${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s ? `${s}s` : ''}`;
}
