import React, { ChangeEvent } from 'react';
import { DataSourcePluginOptionsEditorProps } from '@grafana/data';
import { Alert, Field, FieldSet, Input, SecretInput, SecretTextArea, Switch, TagsInput } from '@grafana/ui';

import { HerdwatchOptions, HerdwatchSecureOptions } from '../types';

type Props = DataSourcePluginOptionsEditorProps<HerdwatchOptions, HerdwatchSecureOptions>;

/** What the backend accepts as an agent address: https, or http only with plaintext on. */
const agentAddress = (plaintext: boolean) =>
  plaintext ? /^http:\/\/[^\s/:]+:\d{1,5}$/ : /^https:\/\/[^\s/:]+:\d{1,5}$/;
const DNS_NAME = /^[A-Za-z0-9.-]+:\d{1,5}$/;
/** The placeholder only: the backend applies its own default when the field is empty. */
const TIMEOUT_PLACEHOLDER = '5000';

export function ConfigEditor({ options, onOptionsChange }: Props) {
  const { jsonData, secureJsonFields } = options;
  const secureJsonData = options.secureJsonData ?? {};

  const setJson = (patch: Partial<HerdwatchOptions>) =>
    onOptionsChange({ ...options, jsonData: { ...jsonData, ...patch } });

  const setSecret = (key: keyof HerdwatchSecureOptions, value: string) =>
    onOptionsChange({ ...options, secureJsonData: { ...secureJsonData, [key]: value } });

  // Grafana's reset pattern: forget the stored secret and start an empty one.
  const resetSecret = (key: keyof HerdwatchSecureOptions) =>
    onOptionsChange({
      ...options,
      secureJsonFields: { ...secureJsonFields, [key]: false },
      secureJsonData: { ...secureJsonData, [key]: '' },
    });

  const plaintext = jsonData.insecurePlaintext ?? false;
  const scheme = plaintext ? 'http' : 'https';
  const agents = jsonData.agents ?? [];
  const badAgents = agents.filter((a) => !agentAddress(plaintext).test(a));
  const dnsName = jsonData.dnsName ?? '';

  return (
    <>
      <FieldSet label="Agents">
        <Field
          label="Agent addresses"
          description="Each agent's API as https://host:port. Combine with a DNS name or use either."
          invalid={badAgents.length > 0}
          error={`Not ${scheme}://host:port: ${badAgents.join(', ')}`}
        >
          <TagsInput
            id="config-agents"
            placeholder="https://node-a:7443 and Enter"
            tags={agents}
            onChange={(tags) => setJson({ agents: tags })}
          />
        </Field>
        <Field
          label="DNS name"
          description="name:port of a headless Service that resolves to every agent pod (DaemonSet)."
          invalid={dnsName !== '' && !DNS_NAME.test(dnsName)}
          error="Expected name:port, e.g. herdwatch.monitoring.svc:7443"
        >
          <Input
            id="config-dns-name"
            value={dnsName}
            placeholder="herdwatch.monitoring.svc.cluster.local:7443"
            onChange={(e: ChangeEvent<HTMLInputElement>) => setJson({ dnsName: e.currentTarget.value.trim() })}
          />
        </Field>
        <Field
          label="Timeout per agent (ms)"
          description="An agent slower than this is reported as a notice; the others still answer."
        >
          <Input
            id="config-timeout"
            type="number"
            min={1}
            value={jsonData.timeoutMs ?? ''}
            placeholder={TIMEOUT_PLACEHOLDER}
            onChange={(e: ChangeEvent<HTMLInputElement>) => {
              const ms = parseInt(e.currentTarget.value, 10);
              setJson({ timeoutMs: Number.isFinite(ms) && ms > 0 ? ms : undefined });
            }}
          />
        </Field>
      </FieldSet>
      <FieldSet label="Authentication">
        <Field label="API token" description="Bearer token the agents' API requires.">
          <SecretInput
            id="config-token"
            isConfigured={Boolean(secureJsonFields?.token)}
            value={secureJsonData.token ?? ''}
            placeholder="token"
            onReset={() => resetSecret('token')}
            onChange={(e: ChangeEvent<HTMLInputElement>) => setSecret('token', e.currentTarget.value)}
          />
        </Field>
        <Field label="CA certificate" description="PEM of the CA that signed the agents' certificates.">
          <SecretTextArea
            id="config-ca-cert"
            isConfigured={Boolean(secureJsonFields?.caCert)}
            value={secureJsonData.caCert ?? ''}
            placeholder="-----BEGIN CERTIFICATE-----"
            rows={6}
            onReset={() => resetSecret('caCert')}
            onChange={(e: ChangeEvent<HTMLTextAreaElement>) => setSecret('caCert', e.currentTarget.value)}
          />
        </Field>
        <Field
          label="Plaintext, no TLS (lab only)"
          description="Sends the token unencrypted. Never on a network others share."
        >
          <Switch
            id="config-insecure-plaintext"
            value={plaintext}
            onChange={(e: React.FormEvent<HTMLInputElement>) => setJson({ insecurePlaintext: e.currentTarget.checked })}
          />
        </Field>
        {plaintext && (
          <Alert title="Plaintext is on" severity="warning">
            Agents are reached without TLS and the token travels in clear text. Use this only in a lab.
          </Alert>
        )}
      </FieldSet>
    </>
  );
}
