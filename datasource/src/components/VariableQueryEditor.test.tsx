import React, { useState } from 'react';
import { DataQueryRequest } from '@grafana/data';
import { render, screen } from '@testing-library/react';
import userEventLib from '@testing-library/user-event';
import { lastValueFrom } from 'rxjs';

import { installGrafana, newDataSource } from '../testing/grafana';
import { HerdwatchVariableQuery } from '../types';
import { HerdwatchVariableSupport } from '../variables';
import { VariableQueryEditor } from './VariableQueryEditor';

// No pause between key presses: nothing here depends on typing speed.
const userEvent = userEventLib.setup({ delay: null });

/** Grafana's variable page keeps the query and re-renders the editor; so does this. */
function VariablePage({ written }: { written: HerdwatchVariableQuery[] }) {
  const [query, setQuery] = useState<HerdwatchVariableQuery>({ refId: 'V', resource: 'hosts' });
  return (
    <VariableQueryEditor
      datasource={newDataSource()}
      query={query}
      onChange={(q) => {
        written.push(q);
        setQuery(q);
      }}
      onRunQuery={() => {}}
    />
  );
}

test('routes of a pool variable: the editor writes the query the variable support runs', async () => {
  const backend = installGrafana(
    { pool: 'gunicorn shop.app:app' },
    { 'routes?pool=gunicorn shop.app:app': [{ text: 'POST /api/checkout', value: 'POST /api/checkout' }] }
  );
  const written: HerdwatchVariableQuery[] = [];
  render(<VariablePage written={written} />);
  const input = screen.getByLabelText('Values');
  await userEvent.click(input);
  await userEvent.paste('Routes');
  await userEvent.keyboard('{Enter}');
  await userEvent.type(screen.getByLabelText('Pool'), '$pool');
  await userEvent.tab();
  const query = written[written.length - 1];
  expect(query).toStrictEqual({ refId: 'V', resource: 'routes', pool: '$pool' });

  const ds = newDataSource();
  expect(ds.variables).toBeInstanceOf(HerdwatchVariableSupport);
  const support = ds.variables as HerdwatchVariableSupport;
  // Only the fields the variable support reads; Grafana fills the rest of a request.
  const request = { targets: [query], scopedVars: {} } as unknown as DataQueryRequest<HerdwatchVariableQuery>;
  const response = await lastValueFrom(support.query(request));
  expect(response.data).toEqual([{ text: 'POST /api/checkout', value: 'POST /api/checkout' }]);
  expect(backend.requests).toEqual(['routes?pool=gunicorn shop.app:app']);
});

test('switching to hosts drops the pool', async () => {
  installGrafana({}, {});
  const written: HerdwatchVariableQuery[] = [];
  render(<VariablePage written={written} />);
  const input = screen.getByLabelText('Values');
  await userEvent.click(input);
  await userEvent.paste('Queries');
  await userEvent.keyboard('{Enter}');
  expect(written[written.length - 1]).toStrictEqual({ refId: 'V', resource: 'queries', pool: '' });
  await userEvent.click(input);
  await userEvent.paste('Hosts');
  await userEvent.keyboard('{Enter}');
  expect(written[written.length - 1]).toStrictEqual({ refId: 'V', resource: 'hosts' });
});
