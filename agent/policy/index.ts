// The policy engine's public surface: one import for handlers and the agent.
export type { Action, Decision, MaskSpec, Operation, OperationContext, Protocol, ReviewSpec } from './types.js';
export { Policy, defaultPolicy, maskCoversColumn, maskByNameOnly, PROTOCOLS, DEFAULT_RULE, type PolicyRule, type RuleMatch, type TargetMatcher } from './policy.js';
export { loadPolicy, parsePolicy, parseDuration, parseTarget, PolicyError, ACTIONS, MASK_DETECTORS, MAX_REVIEW_TIMEOUT_MS } from './load.js';
export { watchPolicy, reloadPolicy, type PolicyLogger, type ReloadResult, type WatchOptions } from './watch.js';
