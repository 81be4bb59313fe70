/**
 * Stand-ins for the two Grafana server services the plugin talks to, since no Grafana runs
 * in Jest: the template service (dashboard variables) and the backend service (HTTP to the
 * plugin's backend resources). Each behaves like Grafana's for the calls the plugin makes and
 * records what it was asked, so tests can check the requests the backend would receive.
 */
import { DataSourceInstanceSettings, PluginType, ScopedVars, TypedVariableModel } from '@grafana/data';
import { BackendSrv, setBackendSrv, setTemplateSrv, TemplateSrv } from '@grafana/runtime';
import { defer, Observable } from 'rxjs';

import { DataSource } from '../datasource';
import { HerdwatchOptions } from '../types';

export const DS_UID = 'herdwatch-test';

export function instanceSettings(): DataSourceInstanceSettings<HerdwatchOptions> {
  return {
    id: 1,
    uid: DS_UID,
    type: 'herdwatch-fleet-datasource',
    name: 'herdwatch',
    access: 'proxy',
    readOnly: false,
    jsonData: {},
    meta: {
      id: 'herdwatch-fleet-datasource',
      name: 'herdwatch fleet',
      type: PluginType.datasource,
      module: 'public/plugins/herdwatch-fleet-datasource/module.js',
      baseUrl: 'public/plugins/herdwatch-fleet-datasource',
      info: {
        author: { name: 'herdwatch' },
        description: '',
        links: [],
        logos: { small: '', large: '' },
        screenshots: [],
        updated: '',
        version: '',
      },
    },
  };
}

export function newDataSource(): DataSource {
  return new DataSource(instanceSettings());
}

/** Dashboard variables: name → current value (an array for a multi-value variable). */
export type Variables = Record<string, string | string[]>;

/** The time range Grafana would pass: `$__from`/`$__to` are its epoch milliseconds. */
const TIME_RANGE = { from: 1700000000000, to: 1700003600000 };

type Format = string | ((value: string | string[]) => string) | undefined;

/**
 * Grafana's `$name` / `${name}` interpolation, including the built-ins it expands itself:
 * `$__from`/`$__to` from the time range and `$__interval` from the panel's scoped vars. The
 * plugin must keep those three for its backend; this service expanding them (as Grafana's
 * does) is what lets a test catch a plugin that does not.
 */
export class TestTemplateSrv implements TemplateSrv {
  constructor(private readonly variables: Variables) {}

  getVariables(): TypedVariableModel[] {
    return Object.keys(this.variables).map(
      (name) => ({ name, type: 'custom', id: name, label: name }) as unknown as TypedVariableModel
    );
  }

  containsTemplate(target?: string): boolean {
    return target !== undefined && /\$(\w+|\{\w+\})/.test(target);
  }

  updateTimeRange(): void {}

  replace(target?: string, scopedVars?: ScopedVars, format?: Format): string {
    if (target === undefined) {
      return '';
    }
    return target.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, braced?: string, bare?: string) => {
      const name = braced ?? bare ?? '';
      const value = this.lookup(name, scopedVars);
      if (value === undefined) {
        return whole;
      }
      if (typeof format === 'function') {
        return format(value);
      }
      return Array.isArray(value) ? (value.length === 1 ? value[0] : `{${value.join(',')}}`) : value;
    });
  }

  private lookup(name: string, scopedVars?: ScopedVars): string | string[] | undefined {
    const scoped = scopedVars?.[name];
    if (scoped !== undefined) {
      return String(scoped.value);
    }
    if (name === '__from') {
      return String(TIME_RANGE.from);
    }
    if (name === '__to') {
      return String(TIME_RANGE.to);
    }
    return this.variables[name];
  }
}

/** What the backend serves per resource path (`hosts`, `routes?pool=…`). */
export type Resources = Record<string, unknown>;

/** Records each resource request as `path?query`, e.g. `routes?pool=gunicorn shop.app:app`. */
export class TestBackendSrv {
  readonly requests: string[] = [];

  constructor(private readonly resources: Resources) {}

  /** DataSourceWithBackend.getResource calls `fetch` and takes the last value's `data`. */
  fetch(request: { url: string; params?: Record<string, string> }): Observable<{ data: unknown; status: number }> {
    return defer(async () => ({ data: this.answer(request.url, request.params), status: 200 }));
  }

  private answer(url: string, params?: Record<string, string>): unknown {
    const prefix = `/api/datasources/uid/${DS_UID}/resources/`;
    if (!url.startsWith(prefix)) {
      throw new Error(`unexpected request ${url}`);
    }
    const path = url.slice(prefix.length);
    const query = params ? Object.entries(params).map(([k, v]) => `${k}=${v}`) : [];
    const key = query.length > 0 ? `${path}?${query.join('&')}` : path;
    this.requests.push(key);
    if (!(key in this.resources)) {
      // What Grafana's backend service rejects with when the plugin answers 404.
      throw { status: 404, data: { message: `no resource ${key}` } };
    }
    return this.resources[key];
  }
}

/** Installs both services for one test; returns the backend to inspect its requests. */
export function installGrafana(variables: Variables, resources: Resources): TestBackendSrv {
  setTemplateSrv(new TestTemplateSrv(variables));
  const backend = new TestBackendSrv(resources);
  // Only `fetch` is used (by DataSourceWithBackend.getResource); the rest of BackendSrv is not.
  setBackendSrv(backend as unknown as BackendSrv);
  return backend;
}
