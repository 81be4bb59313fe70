import { DataSourceJsonData } from '@grafana/data';
import { DataQuery } from '@grafana/schema';

/**
 * The query model. Its JSON is fixed by datasource/fixtures/queries/*.json, which the Rust
 * backend deserializes too; change both sides (and the fixtures) together.
 */
export type QueryType = 'findings' | 'occurrences' | 'pools' | 'routes' | 'queries';

export const QUERY_TYPES: Array<{ value: QueryType; label: string; description: string }> = [
  { value: 'findings', label: 'Findings', description: 'Repeating causes, one row per finding across hosts' },
  { value: 'occurrences', label: 'Occurrences', description: 'Finding occurrences over time' },
  { value: 'pools', label: 'Pools', description: 'Workers busy/idle and accept queue per pool' },
  { value: 'routes', label: 'Routes', description: 'Rate, p99, CPU and DB wait per route' },
  { value: 'queries', label: 'Queries', description: 'Normalised query text, call site, routes, latency' },
];

/** Finding kinds the agent's detectors name; '' = every kind. */
export const FINDING_KINDS: Array<{ value: string; label: string }> = [
  { value: '', label: 'All kinds' },
  { value: 'saturation', label: 'Saturation' },
  { value: 'starvation', label: 'Blocked-worker starvation' },
  { value: 'thundering_herd', label: 'Thundering herd' },
  { value: 'cron_alignment', label: 'Cron alignment' },
  { value: 'pool_saturation', label: 'DB pool saturation' },
];

/** Top-N default and ceiling for routes and queries (the backend clamps to the same ceiling). */
export const DEFAULT_LIMIT = 50;
export const MAX_LIMIT = 1000;

export interface HerdwatchQuery extends DataQuery {
  queryType?: QueryType;
  /** Agent host names to ask; empty = every agent. */
  hosts?: string[];
  kind?: string;
  activeOnly?: boolean;
  findingId?: string;
  pool?: string;
  route?: string;
  textContains?: string;
  limit?: number;
}

/**
 * The fields each query type carries, with their defaults. Switching the type rebuilds the
 * query from this table (keeping only refId and hosts), so a query never carries fields of
 * another type that the backend would have to ignore.
 */
export function defaultsFor(queryType: QueryType): Omit<HerdwatchQuery, 'refId'> {
  switch (queryType) {
    case 'findings':
      return { queryType, hosts: [], kind: '', activeOnly: true };
    case 'occurrences':
      return { queryType, hosts: [], kind: '', findingId: '' };
    case 'pools':
      return { queryType, hosts: [], pool: '' };
    case 'routes':
      return { queryType, hosts: [], pool: '', route: '', limit: DEFAULT_LIMIT };
    case 'queries':
      return { queryType, hosts: [], pool: '', route: '', textContains: '', limit: DEFAULT_LIMIT };
  }
}

export const DEFAULT_QUERY: Partial<HerdwatchQuery> = defaultsFor('findings');

/** A template-variable query: which backend resource lists the values. */
export type VariableResource = 'hosts' | 'pools' | 'routes' | 'queries';

export interface HerdwatchVariableQuery extends DataQuery {
  resource: VariableResource;
  /** For routes and queries: the pool to list them for; '' = all pools. */
  pool?: string;
}

/** One value served by the backend's resources (`GET /hosts`, `/pools`, …). */
export interface ResourceValue {
  text: string;
  value: string;
}

/** Per-instance settings, stored by Grafana and sent to the backend. */
export interface HerdwatchOptions extends DataSourceJsonData {
  /** Agent API addresses, each `https://host:port`. */
  agents?: string[];
  /** `name:port` of a headless Service resolving to every agent (DaemonSet pods). */
  dnsName?: string;
  /** Per-agent timeout in milliseconds. */
  timeoutMs?: number;
  /** Lab only: talk to agents without TLS. */
  insecurePlaintext?: boolean;
}

/** Secrets: write-only from the browser, readable only by the backend. */
export interface HerdwatchSecureOptions {
  token?: string;
  caCert?: string;
}
