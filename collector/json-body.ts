// Reading a small JSON object from an HTTP request, for the collector's write endpoints (sign-in,
// approval votes, verify runs). Bounded, and only as application/json: a browser will not send that
// cross-site without a CORS preflight, which the collector never grants.
import type http from 'node:http';

export const MAX_JSON_BODY = 16_384;

/** A refused body; `status` is the HTTP status it maps to. */
export class BodyError extends Error {
  readonly code = 'bad_request';
  constructor(readonly status: 400 | 413 | 415, message: string) {
    super(message);
    this.name = 'BodyError';
  }
}

export function readJsonObject(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) {
      req.resume();
      return reject(new BodyError(415, 'send the body as application/json'));
    }
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_JSON_BODY) {
        reject(new BodyError(413, `the body is larger than ${MAX_JSON_BODY / 1024} KiB`));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8').trim();
      if (!text) return resolve({});
      try {
        const v = JSON.parse(text) as unknown;
        if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
        resolve(v as Record<string, unknown>);
      } catch {
        reject(new BodyError(400, 'the body must be a JSON object, e.g. {"reason": "..."}'));
      }
    });
    req.on('error', reject);
  });
}
