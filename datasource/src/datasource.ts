import { CoreApp, DataSourceInstanceSettings, MetricFindValue, ScopedVars } from '@grafana/data';
import { DataSourceWithBackend, getTemplateSrv } from '@grafana/runtime';

import {
  DEFAULT_QUERY,
  HerdwatchOptions,
  HerdwatchQuery,
  HerdwatchVariableQuery,
  ResourceValue,
  VariableResource,
} from './types';
import { expandHosts, expandString } from './templating';
import { HerdwatchVariableSupport } from './variables';

export class DataSource extends DataSourceWithBackend<HerdwatchQuery, HerdwatchOptions> {
  constructor(instanceSettings: DataSourceInstanceSettings<HerdwatchOptions>) {
    super(instanceSettings);
    this.variables = new HerdwatchVariableSupport(this);
  }

  getDefaultQuery(_: CoreApp): Partial<HerdwatchQuery> {
    return DEFAULT_QUERY;
  }

  /**
   * Expands dashboard variables in every string field before the query goes to the backend.
   * `$__from`, `$__to` and `$__interval` are kept as written: the backend expands them, so
   * alert rules (which never pass through this code) see the same query.
   */
  applyTemplateVariables(query: HerdwatchQuery, scopedVars: ScopedVars): HerdwatchQuery {
    const srv = getTemplateSrv();
    const out: HerdwatchQuery = { ...query };
    if (query.hosts !== undefined) {
      out.hosts = expandHosts(srv, query.hosts, scopedVars);
    }
    for (const key of ['kind', 'findingId', 'pool', 'route', 'textContains'] as const) {
      const value = query[key];
      if (typeof value === 'string') {
        out[key] = expandString(srv, value, scopedVars);
      }
    }
    return out;
  }

  /** A query without a type (an old or hand-edited panel) would only earn a backend error. */
  filterQuery(query: HerdwatchQuery): boolean {
    return !query.hide && query.queryType !== undefined;
  }

  /** Values the backend serves for a resource, e.g. `hosts` or `routes?pool=…`. */
  async listResource(resource: VariableResource, pool?: string): Promise<ResourceValue[]> {
    const params = (resource === 'routes' || resource === 'queries') && pool !== undefined ? { pool } : undefined;
    const values: unknown = await this.getResource(resource, params);
    if (!Array.isArray(values)) {
      throw new Error(`herdwatch: /${resource} answered ${typeof values}, expected a list of {text, value}`);
    }
    return values.filter(isResourceValue);
  }

  /** Template-variable values, for HerdwatchVariableSupport (and Grafana's legacy callers). */
  async metricFindQuery(
    query: HerdwatchVariableQuery,
    options?: { scopedVars?: ScopedVars }
  ): Promise<MetricFindValue[]> {
    const pool =
      query.pool === undefined ? undefined : expandString(getTemplateSrv(), query.pool, options?.scopedVars ?? {});
    const values = await this.listResource(query.resource, pool);
    return values.map(({ text, value }) => ({ text, value }));
  }
}

function isResourceValue(v: unknown): v is ResourceValue {
  if (typeof v !== 'object' || v === null) {
    return false;
  }
  const r = v as Record<string, unknown>;
  return typeof r.text === 'string' && typeof r.value === 'string';
}
