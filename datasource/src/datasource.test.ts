import { ScopedVars } from '@grafana/data';

import { installGrafana, newDataSource } from './testing/grafana';
import { loadFixture } from './testing/fixtures';
import { HerdwatchQuery } from './types';

const VARIABLES = { host: ['node-a', 'node-b'], pool: 'gunicorn shop.app:app', route: 'GET /invoices/{id}' };
/** What a panel passes: Grafana puts the panel's interval here. */
const PANEL_VARS: ScopedVars = {
  __interval: { text: '30s', value: '30s' },
  __interval_ms: { text: '30000', value: 30000 },
};

describe('applyTemplateVariables', () => {
  beforeEach(() => {
    installGrafana(VARIABLES, {});
  });

  test('a multi-value host variable becomes one host per value', () => {
    const out = newDataSource().applyTemplateVariables(loadFixture('findings'), PANEL_VARS);
    expect(out.hosts).toEqual(['node-a', 'node-b']);
    expect(out.kind).toBe('starvation');
  });

  test('variables in string fields are expanded; the query keeps its other fields', () => {
    const query: HerdwatchQuery = { ...loadFixture('queries'), pool: '$pool', route: '${route}', textContains: 'x' };
    const out = newDataSource().applyTemplateVariables(query, PANEL_VARS);
    expect(out).toStrictEqual({ ...query, pool: 'gunicorn shop.app:app', route: 'GET /invoices/{id}' });
  });

  test('$__from, $__to and $__interval are left for the backend', () => {
    const query: HerdwatchQuery = {
      ...loadFixture('queries'),
      textContains: '$__from..$__to by $__interval in $pool',
      route: '$__interval_ms',
    };
    const out = newDataSource().applyTemplateVariables(query, PANEL_VARS);
    expect(out.textContains).toBe('$__from..$__to by $__interval in gunicorn shop.app:app');
    expect(out.route).toBe('$__interval_ms');
  });

  test('hosts: empty and repeated values are dropped, unknown variables kept as typed', () => {
    const query: HerdwatchQuery = {
      refId: 'A',
      queryType: 'pools',
      hosts: ['$host', 'node-a', '$nosuch', ''],
      pool: '',
    };
    expect(newDataSource().applyTemplateVariables(query, {}).hosts).toEqual(['node-a', 'node-b', '$nosuch']);
  });

  test('a query without a type is not sent', () => {
    const ds = newDataSource();
    expect(ds.filterQuery({ refId: 'A' })).toBe(false);
    expect(ds.filterQuery(loadFixture('pools'))).toBe(true);
  });
});

describe('variable support', () => {
  test('values come from the backend resource, a pool variable expanded', async () => {
    const backend = installGrafana(VARIABLES, {
      hosts: [{ text: 'node-a', value: 'node-a' }],
      'queries?pool=gunicorn shop.app:app': [{ text: 'SELECT … FROM invoices', value: 'q1' }],
    });
    const ds = newDataSource();
    expect(await ds.metricFindQuery({ refId: 'V', resource: 'hosts' })).toEqual([{ text: 'node-a', value: 'node-a' }]);
    expect(await ds.metricFindQuery({ refId: 'V', resource: 'queries', pool: '$pool' })).toEqual([
      { text: 'SELECT … FROM invoices', value: 'q1' },
    ]);
    expect(backend.requests).toEqual(['hosts', 'queries?pool=gunicorn shop.app:app']);
  });

  test('a backend answering something other than a list is a clear error', async () => {
    installGrafana(VARIABLES, { pools: { error: 'boom' } });
    await expect(newDataSource().metricFindQuery({ refId: 'V', resource: 'pools' })).rejects.toThrow(
      'herdwatch: /pools answered object, expected a list of {text, value}'
    );
  });

  test('entries without text and value are skipped', async () => {
    installGrafana(VARIABLES, { pools: [{ text: 'a', value: 'a' }, { text: 1 }, null, 'b'] });
    expect(await newDataSource().metricFindQuery({ refId: 'V', resource: 'pools' })).toEqual([
      { text: 'a', value: 'a' },
    ]);
  });
});
