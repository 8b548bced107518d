// The CI job a process belongs to, from the variables its CI system put in its environment.
// One mapping table per provider; adding a provider is adding a table to PROVIDERS.
//
// Anything in the job can set these variables, which is why events carry IDENTITY_SOURCE_ENVIRONMENT
// and not a stronger source: an auditor weighs them as the job's own claim.
import { IdentitySource, type JobInfo } from '../../proto/index.js';

export type Env = Readonly<Record<string, string | undefined>>;

type JobField = 'provider' | 'repository' | 'workflow' | 'runId' | 'runAttempt' | 'job' | 'actor' | 'ref' | 'sha' | 'runner' | 'url';

/** A variable name, the first non-empty of several names, or a value built from several. */
type FieldSource = string | readonly string[] | ((env: Env) => string | undefined);

export interface ProviderMapping {
  /** The Job.provider value, unless fields.provider yields one. */
  readonly provider: string;
  /** The provider applies if any of these is set (to `value`, when given). */
  readonly detect: readonly { readonly name: string; readonly value?: string }[];
  readonly fields: Readonly<Partial<Record<JobField, FieldSource>>>;
}

/** All of `names`, joined by `separator`; nothing if any is missing (half a URL is no URL). */
function joined(separator: string, ...names: string[]): (env: Env) => string | undefined {
  return (env) => {
    const parts = names.map((n) => env[n]);
    return parts.every((p) => p !== undefined && p !== '') ? parts.join(separator) : undefined;
  };
}

const RUNGUARD: ProviderMapping = {
  provider: 'runguard',
  detect: [{ name: 'RUNGUARD_JOB_REPOSITORY' }, { name: 'RUNGUARD_JOB_RUN_ID' }],
  fields: {
    provider: 'RUNGUARD_JOB_PROVIDER',
    repository: 'RUNGUARD_JOB_REPOSITORY',
    workflow: 'RUNGUARD_JOB_WORKFLOW',
    runId: 'RUNGUARD_JOB_RUN_ID',
    runAttempt: 'RUNGUARD_JOB_RUN_ATTEMPT',
    job: 'RUNGUARD_JOB_JOB',
    actor: 'RUNGUARD_JOB_ACTOR',
    ref: 'RUNGUARD_JOB_REF',
    sha: 'RUNGUARD_JOB_SHA',
    runner: 'RUNGUARD_JOB_RUNNER',
    url: 'RUNGUARD_JOB_URL',
  },
};

const GITHUB: ProviderMapping = {
  provider: 'github',
  detect: [{ name: 'GITHUB_ACTIONS', value: 'true' }, { name: 'GITHUB_RUN_ID' }],
  fields: {
    repository: 'GITHUB_REPOSITORY',
    workflow: 'GITHUB_WORKFLOW',
    runId: 'GITHUB_RUN_ID',
    runAttempt: 'GITHUB_RUN_ATTEMPT',
    job: 'GITHUB_JOB',
    actor: 'GITHUB_ACTOR',
    ref: 'GITHUB_REF',
    sha: 'GITHUB_SHA',
    runner: 'RUNNER_NAME',
    url: (env) =>
      env.GITHUB_REPOSITORY && env.GITHUB_RUN_ID
        ? `${env.GITHUB_SERVER_URL || 'https://github.com'}/${env.GITHUB_REPOSITORY}/actions/runs/${env.GITHUB_RUN_ID}`
        : undefined,
  },
};

const GITLAB: ProviderMapping = {
  provider: 'gitlab',
  detect: [{ name: 'GITLAB_CI', value: 'true' }],
  fields: {
    repository: 'CI_PROJECT_PATH',
    // A pipeline has a name only when the project sets workflow:name; the source (push, schedule,
    // merge_request_event) is always there.
    workflow: ['CI_PIPELINE_NAME', 'CI_PIPELINE_SOURCE'],
    runId: 'CI_PIPELINE_ID',
    // Names, like GITHUB_JOB, are what policy rules match on; the id is in the URL.
    job: ['CI_JOB_NAME', 'CI_JOB_ID'],
    actor: 'GITLAB_USER_LOGIN',
    ref: 'CI_COMMIT_REF_NAME',
    sha: 'CI_COMMIT_SHA',
    runner: 'CI_RUNNER_DESCRIPTION',
    url: 'CI_JOB_URL',
  },
};

const BUILDKITE: ProviderMapping = {
  provider: 'buildkite',
  detect: [{ name: 'BUILDKITE', value: 'true' }],
  fields: {
    repository: 'BUILDKITE_REPO',
    workflow: 'BUILDKITE_PIPELINE_SLUG',
    runId: 'BUILDKITE_BUILD_NUMBER',
    runAttempt: 'BUILDKITE_RETRY_COUNT', // 0 for the first run, unlike GitHub's 1
    job: ['BUILDKITE_LABEL', 'BUILDKITE_JOB_ID'],
    actor: 'BUILDKITE_BUILD_CREATOR',
    ref: 'BUILDKITE_BRANCH',
    sha: 'BUILDKITE_COMMIT',
    runner: 'BUILDKITE_AGENT_NAME',
    url: 'BUILDKITE_BUILD_URL',
  },
};

const CIRCLECI: ProviderMapping = {
  provider: 'circleci',
  detect: [{ name: 'CIRCLECI', value: 'true' }],
  fields: {
    repository: joined('/', 'CIRCLE_PROJECT_USERNAME', 'CIRCLE_PROJECT_REPONAME'),
    workflow: 'CIRCLE_WORKFLOW_ID',
    runId: 'CIRCLE_BUILD_NUM',
    job: 'CIRCLE_JOB',
    actor: 'CIRCLE_USERNAME',
    ref: 'CIRCLE_BRANCH',
    sha: 'CIRCLE_SHA1',
    url: 'CIRCLE_BUILD_URL',
  },
};

const JENKINS: ProviderMapping = {
  provider: 'jenkins',
  detect: [{ name: 'JENKINS_URL' }],
  fields: {
    repository: 'GIT_URL',
    workflow: 'JOB_NAME',
    runId: 'BUILD_NUMBER',
    job: 'STAGE_NAME', // set inside a declarative pipeline stage
    actor: 'BUILD_USER_ID', // only with the build-user-vars plugin
    ref: 'GIT_BRANCH',
    sha: 'GIT_COMMIT',
    runner: 'NODE_NAME',
    url: 'BUILD_URL',
  },
};

/** In order of precedence: RUNGUARD_JOB_* is an explicit statement and overrides any CI system. */
export const PROVIDERS: readonly ProviderMapping[] = [RUNGUARD, GITHUB, GITLAB, BUILDKITE, CIRCLECI, JENKINS];

function valueOf(env: Env, source: FieldSource): string | undefined {
  if (typeof source === 'function') return source(env);
  for (const name of typeof source === 'string' ? [source] : source) {
    const v = env[name];
    if (v !== undefined && v !== '') return v;
  }
  return undefined;
}

function detects(env: Env, mapping: ProviderMapping): boolean {
  return mapping.detect.some(({ name, value }) => {
    const v = env[name];
    return v !== undefined && v !== '' && (value === undefined || v === value);
  });
}

/** The job identity in `env`, or undefined if no known CI system set it. Empty fields are left out. */
export function jobFromEnv(env: Env, providers: readonly ProviderMapping[] = PROVIDERS): JobInfo | undefined {
  const mapping = providers.find((m) => detects(env, m));
  if (mapping === undefined) return undefined;
  const job: JobInfo = { provider: mapping.provider };
  for (const [field, source] of Object.entries(mapping.fields) as [JobField, FieldSource][]) {
    const v = valueOf(env, source);
    if (v !== undefined) job[field] = v;
  }
  job.source = IdentitySource.IDENTITY_SOURCE_ENVIRONMENT;
  return job;
}
