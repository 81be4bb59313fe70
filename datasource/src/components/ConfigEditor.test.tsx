import React, { useState } from 'react';
import { DataSourceSettings } from '@grafana/data';
import { render, screen } from '@testing-library/react';
import userEventLib from '@testing-library/user-event';

// No pause between key presses: nothing here depends on typing speed.
const userEvent = userEventLib.setup({ delay: null });

import { HerdwatchOptions, HerdwatchSecureOptions } from '../types';
import { ConfigEditor } from './ConfigEditor';

type Settings = DataSourceSettings<HerdwatchOptions, HerdwatchSecureOptions>;

function settings(secureJsonFields: Record<string, boolean> = {}): Settings {
  return {
    id: 1,
    uid: 'hw',
    orgId: 1,
    name: 'herdwatch',
    type: 'herdwatch-fleet-datasource',
    typeName: 'herdwatch fleet',
    typeLogoUrl: '',
    access: 'proxy',
    url: '',
    user: '',
    database: '',
    basicAuth: false,
    basicAuthUser: '',
    isDefault: false,
    withCredentials: false,
    readOnly: false,
    jsonData: {},
    secureJsonFields,
  };
}

/** Grafana's data source page keeps the settings and re-renders the editor; so does this. */
function Page({ initial, saved }: { initial: Settings; saved: Settings[] }) {
  const [options, setOptions] = useState(initial);
  return (
    <ConfigEditor
      options={options}
      onOptionsChange={(o) => {
        saved.push(o);
        setOptions(o);
      }}
    />
  );
}

test('every field lands in jsonData or secureJsonData under the name the backend reads', async () => {
  const saved: Settings[] = [];
  render(<Page initial={settings()} saved={saved} />);
  await userEvent.type(screen.getByPlaceholderText(/https:\/\/node-a:7443/), 'https://node-a:7443{Enter}');
  await userEvent.type(screen.getByPlaceholderText(/https:\/\/node-a:7443/), 'https://node-b:7443{Enter}');
  await userEvent.type(screen.getByLabelText(/^DNS name/), 'herdwatch.monitoring.svc:7443');
  await userEvent.type(screen.getByLabelText(/^Timeout per agent/), '2500');
  await userEvent.type(screen.getByLabelText(/^API token/), 's3cret');
  await userEvent.type(screen.getByLabelText(/^CA certificate/), 'PEM');
  const last = saved[saved.length - 1];
  expect(last.jsonData).toStrictEqual({
    agents: ['https://node-a:7443', 'https://node-b:7443'],
    dnsName: 'herdwatch.monitoring.svc:7443',
    timeoutMs: 2500,
  });
  expect(last.secureJsonData).toStrictEqual({ token: 's3cret', caCert: 'PEM' });
  expect(screen.queryByText(/Not https:\/\/host:port/)).not.toBeInTheDocument();
});

test('plaintext is off by default, and turning it on says lab only', async () => {
  const saved: Settings[] = [];
  render(<Page initial={settings()} saved={saved} />);
  const toggle = screen.getByLabelText(/^Plaintext, no TLS \(lab only\)/);
  expect(toggle).not.toBeChecked();
  expect(screen.queryByText('Plaintext is on')).not.toBeInTheDocument();
  await userEvent.click(toggle);
  expect(saved[saved.length - 1].jsonData.insecurePlaintext).toBe(true);
  expect(screen.getByText('Plaintext is on')).toBeInTheDocument();
  // The backend refuses https:// agents with plaintext on (and http:// with it off).
  await userEvent.type(screen.getByPlaceholderText(/https:\/\/node-a:7443/), 'https://node-a:7443{Enter}');
  expect(screen.getByText('Not http://host:port: https://node-a:7443')).toBeInTheDocument();
});

test('a malformed agent address and DNS name are named', async () => {
  render(<Page initial={settings()} saved={[]} />);
  await userEvent.type(screen.getByPlaceholderText(/https:\/\/node-a:7443/), 'node-c{Enter}');
  await userEvent.type(screen.getByLabelText(/^DNS name/), 'no-port');
  expect(screen.getByText('Not https://host:port: node-c')).toBeInTheDocument();
  expect(screen.getByText(/Expected name:port/)).toBeInTheDocument();
});

test('stored secrets show as configured and reset the way Grafana expects', async () => {
  const saved: Settings[] = [];
  render(<Page initial={settings({ token: true, caCert: true })} saved={saved} />);
  // Configured secrets are never sent back to the browser: the fields show a placeholder.
  expect(screen.getByLabelText(/^API token/)).toBeDisabled();
  const resets = screen.getAllByRole('button', { name: 'Reset' });
  expect(resets).toHaveLength(2);
  await userEvent.click(resets[0]);
  let last = saved[saved.length - 1];
  expect(last.secureJsonFields).toStrictEqual({ token: false, caCert: true });
  expect(last.secureJsonData).toStrictEqual({ token: '' });
  await userEvent.type(screen.getByLabelText(/^API token/), 'new');
  last = saved[saved.length - 1];
  expect(last.secureJsonData).toStrictEqual({ token: 'new' });
  expect(last.secureJsonFields.caCert).toBe(true);
});
