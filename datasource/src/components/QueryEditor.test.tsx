import React, { useState } from 'react';
import { CoreApp } from '@grafana/data';
import { render, screen, waitFor } from '@testing-library/react';
import userEventLib from '@testing-library/user-event';

// No pause between key presses: nothing here depends on typing speed.
const userEvent = userEventLib.setup({ delay: null });

import { DataSource } from '../datasource';
import { fixtureTypes, loadFixture } from '../testing/fixtures';
import { installGrafana, newDataSource, TestBackendSrv } from '../testing/grafana';
import { HerdwatchQuery, QUERY_TYPES } from '../types';
import { QueryEditor } from './QueryEditor';

const RESOURCES = {
  hosts: [
    { text: 'node-a', value: 'node-a' },
    { text: 'node-b', value: 'node-b' },
  ],
  pools: [
    { text: 'gunicorn shop.app:app', value: 'gunicorn shop.app:app' },
    { text: 'uvicorn billing_async:app', value: 'uvicorn billing_async:app' },
  ],
  'routes?pool=': [
    { text: 'GET /invoices/{id}', value: 'GET /invoices/{id}' },
    { text: 'POST /api/checkout', value: 'POST /api/checkout' },
  ],
  'routes?pool=gunicorn shop.app:app': [{ text: 'POST /api/checkout', value: 'POST /api/checkout' }],
};

/** Grafana keeps the query and re-renders the editor with each change; so does this. */
function Panel({ datasource, written }: { datasource: DataSource; written: HerdwatchQuery[] }) {
  const [query, setQuery] = useState<HerdwatchQuery>({ refId: 'A', ...datasource.getDefaultQuery(CoreApp.Dashboard) });
  return (
    <QueryEditor
      datasource={datasource}
      query={query}
      onChange={(q) => {
        written.push(q);
        setQuery(q);
      }}
      onRunQuery={() => {}}
    />
  );
}

let backend: TestBackendSrv;
let written: HerdwatchQuery[];

async function renderPanel() {
  written = [];
  render(<Panel datasource={newDataSource()} written={written} />);
  // The pickers' lists come from the backend before the user opens them.
  await waitFor(() => expect(backend.requests).toEqual(expect.arrayContaining(['hosts', 'pools'])));
}

beforeEach(() => {
  backend = installGrafana({ host: ['node-a', 'node-b'], pool: 'gunicorn shop.app:app' }, RESOURCES);
});

const last = () => written[written.length - 1];

/** Opens a picker, pastes the option's text into its filter, and takes the first match. */
async function pick(field: string, option: string) {
  const input = screen.getByLabelText(field);
  await userEvent.click(input);
  // Pasted, not typed key by key: each key re-renders Grafana's Select, which costs seconds.
  await userEvent.paste(option);
  await userEvent.keyboard('{Enter}');
}

async function chooseType(label: string) {
  await userEvent.click(screen.getByRole('radio', { name: label }));
}

test('every fixture is a query type the editor offers, and the other way round', () => {
  expect(fixtureTypes()).toEqual(QUERY_TYPES.map((t) => t.value).sort());
});

test('findings: a host variable, one kind, active and past findings', async () => {
  await renderPanel();
  await pick('Hosts', '$host');
  await pick('Kind', 'Blocked-worker starvation');
  await userEvent.click(screen.getByLabelText('Active only'));
  expect(last()).toStrictEqual(loadFixture('findings'));
});

test('occurrences: one kind over time, every finding', async () => {
  await renderPanel();
  await chooseType('Occurrences');
  await pick('Kind', 'Thundering herd');
  expect(last()).toStrictEqual(loadFixture('occurrences'));
});

test('pools: a pool variable', async () => {
  await renderPanel();
  await chooseType('Pools');
  await pick('Pool', '$pool');
  expect(last()).toStrictEqual(loadFixture('pools'));
});

test('routes: a pool from the backend list; its routes are asked for', async () => {
  await renderPanel();
  await chooseType('Routes');
  await pick('Pool', 'gunicorn shop.app:app');
  expect(last()).toStrictEqual(loadFixture('routes'));
  await waitFor(() => expect(backend.requests).toContain('routes?pool=gunicorn shop.app:app'));
});

test('queries: two hosts, a route from the backend list, a text filter', async () => {
  await renderPanel();
  await chooseType('Queries');
  await pick('Hosts', 'node-a');
  await pick('Hosts', 'node-b');
  await pick('Route', 'GET /invoices/{id}');
  await userEvent.type(screen.getByLabelText('Text contains'), 'invoices');
  await userEvent.tab();
  expect(last()).toStrictEqual(loadFixture('queries'));
});

test('switching type keeps the hosts and drops the other type fields', async () => {
  await renderPanel();
  await pick('Hosts', 'node-b');
  await pick('Kind', 'Cron alignment');
  await chooseType('Pools');
  expect(last()).toStrictEqual({ refId: 'A', queryType: 'pools', hosts: ['node-b'], pool: '' });
});

test('a limit beyond the ceiling is clamped when the field is left', async () => {
  await renderPanel();
  await chooseType('Routes');
  const limit = screen.getByLabelText('Limit');
  await userEvent.clear(limit);
  await userEvent.type(limit, '5000');
  await userEvent.tab();
  expect(last().limit).toBe(1000);
  expect(limit).toHaveValue(1000);
});

test('a backend that cannot list pools is named, and a typed pool still works', async () => {
  backend = installGrafana({}, { hosts: [], 'routes?pool=': [] });
  await renderPanel();
  await chooseType('Pools');
  expect(await screen.findByText(/Could not list pools: no resource pools/)).toBeInTheDocument();
  await pick('Pool', 'uvicorn other:app');
  expect(last().pool).toBe('uvicorn other:app');
});
