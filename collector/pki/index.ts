// The collector's PKI: CA and agent enrolment, agent identities from certificates, TLS credentials.
export * from './ca.js';
export * from './identity.js';
export { PkiError } from './files.js';
export { caCommand, enrollCommand } from './cli.js';
