// Addresses in the one form the BPF maps use: 16 bytes, IPv4 as IPv4-mapped IPv6.
import net from 'node:net';

const V4_MAPPED_PREFIX = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

/** Writes the 16-byte form of `address` into out[0..16); false if it is not an IP address. */
export function ipToBytes16(address: string, out: Buffer): boolean {
  const family = net.isIP(address);
  if (family === 4) {
    V4_MAPPED_PREFIX.copy(out, 0);
    let i = 12;
    for (const part of address.split('.')) out[i++] = Number(part);
    return true;
  }
  if (family !== 6) return false;
  const words = ipv6Words(address);
  words.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  return true;
}

/** The eight 16-bit words of an address net.isIP() accepted as IPv6 (so the syntax is valid). */
function ipv6Words(address: string): number[] {
  let text = address;
  const tail: number[] = [];
  if (text.includes('.')) {
    // Trailing dotted quad, as in ::ffff:127.0.0.1 (how Node reports v4 peers of a dual-stack socket).
    const cut = text.lastIndexOf(':') + 1;
    const p = text.slice(cut).split('.').map(Number) as [number, number, number, number];
    tail.push((p[0] << 8) | p[1], (p[2] << 8) | p[3]);
    text = text.slice(0, cut);
    if (!text.endsWith('::')) text = text.slice(0, -1);
  }
  const hex = (s: string | undefined) => (s ? s.split(':').map((w) => parseInt(w, 16)) : []);
  const halves = text.split('::');
  if (halves.length === 1) return [...hex(halves[0]), ...tail];
  const left = hex(halves[0]);
  const right = [...hex(halves[1]), ...tail];
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}

export function isV4Mapped(b: Buffer): boolean {
  return b.subarray(0, 12).equals(V4_MAPPED_PREFIX);
}

/** Text form for events and for connecting upstream: IPv4-mapped addresses come out dotted. */
export function bytes16ToIp(b: Buffer): string {
  if (isV4Mapped(b)) return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(i).toString(16));
  // Longest run of zero words becomes '::' (RFC 5952).
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return words.join(':');
  return `${words.slice(0, best).join(':')}::${words.slice(best + bestLen).join(':')}`;
}
