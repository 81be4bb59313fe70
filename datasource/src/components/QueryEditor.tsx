import React, { ChangeEvent, useMemo, useState } from 'react';
import { QueryEditorProps, SelectableValue } from '@grafana/data';
import { getTemplateSrv } from '@grafana/runtime';
import { InlineField, InlineFieldRow, InlineSwitch, Input, MultiSelect, RadioButtonGroup, Select } from '@grafana/ui';

import { DataSource } from '../datasource';
import {
  defaultsFor,
  DEFAULT_LIMIT,
  FINDING_KINDS,
  HerdwatchOptions,
  HerdwatchQuery,
  MAX_LIMIT,
  QUERY_TYPES,
  QueryType,
} from '../types';
import { useResource } from './useResource';

type Props = QueryEditorProps<DataSource, HerdwatchQuery, HerdwatchOptions>;

const LABEL_WIDTH = 14;

/** Dashboard variables offered first in every picker, as `$name`. */
function variableOptions(): Array<SelectableValue<string>> {
  return getTemplateSrv()
    .getVariables()
    .map((v) => ({ label: `$${v.name}`, value: `$${v.name}`, description: 'dashboard variable' }));
}

/** The current value stays selectable even when no list offers it (typed, or an agent is down). */
function withCurrent(options: Array<SelectableValue<string>>, current: string | undefined) {
  if (!current || options.some((o) => o.value === current)) {
    return options;
  }
  return [...options, { label: current, value: current }];
}

export function QueryEditor({ query, onChange, onRunQuery, datasource }: Props) {
  const queryType: QueryType = query.queryType ?? 'findings';
  const variables = useMemo(() => variableOptions(), []);
  const hosts = useResource(datasource, 'hosts');
  const pools = useResource(datasource, 'pools');
  const usesPool = queryType === 'pools' || queryType === 'routes' || queryType === 'queries';
  const usesRoute = queryType === 'routes' || queryType === 'queries';
  // Routes of the chosen pool; a variable as the pool lists every pool's routes.
  const routePool = query.pool && !query.pool.startsWith('$') ? query.pool : '';
  const routes = useResource(datasource, 'routes', routePool);
  const [limitText, setLimitText] = useState(String(query.limit ?? DEFAULT_LIMIT));

  const change = (patch: Partial<HerdwatchQuery>, run = true) => {
    onChange({ ...query, ...patch });
    if (run) {
      onRunQuery();
    }
  };

  const changeType = (next: QueryType) => {
    if (next === query.queryType) {
      return;
    }
    const { refId, datasource: ds, hide, key } = query;
    const kept: HerdwatchQuery = { refId };
    if (ds !== undefined) {
      kept.datasource = ds;
    }
    if (hide !== undefined) {
      kept.hide = hide;
    }
    if (key !== undefined) {
      kept.key = key;
    }
    onChange({ ...kept, ...defaultsFor(next), hosts: query.hosts ?? [] });
    onRunQuery();
  };

  const hostOptions = [...variables, ...hosts.options];
  const poolOptions = withCurrent([{ label: 'All pools', value: '' }, ...variables, ...pools.options], query.pool);
  const routeOptions = withCurrent([{ label: 'All routes', value: '' }, ...variables, ...routes.options], query.route);
  const listErrors = [hosts.error, usesPool ? pools.error : undefined, usesRoute ? routes.error : undefined].filter(
    (e): e is string => e !== undefined
  );

  return (
    <>
      <InlineFieldRow>
        <InlineField label="Query type" labelWidth={LABEL_WIDTH}>
          <RadioButtonGroup<QueryType>
            options={QUERY_TYPES.map(({ value, label, description }) => ({ value, label, description }))}
            value={queryType}
            onChange={changeType}
          />
        </InlineField>
      </InlineFieldRow>
      <InlineFieldRow>
        <InlineField label="Hosts" labelWidth={LABEL_WIDTH} htmlFor="herdwatch-hosts" tooltip="Empty: every agent">
          <MultiSelect<string>
            inputId="herdwatch-hosts"
            width={40}
            placeholder="All hosts"
            allowCustomValue
            options={[
              ...hostOptions,
              ...(query.hosts ?? [])
                .filter((h) => !hostOptions.some((o) => o.value === h))
                .map((h) => ({ label: h, value: h })),
            ]}
            value={query.hosts ?? []}
            onChange={(selected: Array<SelectableValue<string>>) =>
              change({ hosts: selected.map((s) => s.value).filter((v): v is string => typeof v === 'string') })
            }
          />
        </InlineField>
        {(queryType === 'findings' || queryType === 'occurrences') && (
          <InlineField label="Kind" labelWidth={LABEL_WIDTH} htmlFor="herdwatch-kind">
            <Select<string>
              inputId="herdwatch-kind"
              width={30}
              options={FINDING_KINDS}
              value={query.kind ?? ''}
              onChange={(s) => change({ kind: s.value ?? '' })}
            />
          </InlineField>
        )}
        {queryType === 'findings' && (
          <InlineField label="Active only" labelWidth={LABEL_WIDTH} htmlFor="herdwatch-active-only">
            <InlineSwitch
              id="herdwatch-active-only"
              value={query.activeOnly ?? true}
              onChange={(e: React.FormEvent<HTMLInputElement>) => change({ activeOnly: e.currentTarget.checked })}
            />
          </InlineField>
        )}
        {queryType === 'occurrences' && (
          <InlineField
            label="Finding id"
            labelWidth={LABEL_WIDTH}
            htmlFor="herdwatch-finding-id"
            tooltip="Empty: one series per finding"
          >
            <Input
              id="herdwatch-finding-id"
              width={30}
              value={query.findingId ?? ''}
              placeholder="every finding"
              onChange={(e: ChangeEvent<HTMLInputElement>) => change({ findingId: e.currentTarget.value }, false)}
              onBlur={onRunQuery}
            />
          </InlineField>
        )}
      </InlineFieldRow>
      {usesPool && (
        <InlineFieldRow>
          <InlineField label="Pool" labelWidth={LABEL_WIDTH} htmlFor="herdwatch-pool">
            <Select<string>
              inputId="herdwatch-pool"
              width={40}
              allowCustomValue
              options={poolOptions}
              value={query.pool ?? ''}
              onChange={(s) => change(usesRoute ? { pool: s.value ?? '', route: '' } : { pool: s.value ?? '' })}
            />
          </InlineField>
          {usesRoute && (
            <InlineField label="Route" labelWidth={LABEL_WIDTH} htmlFor="herdwatch-route">
              <Select<string>
                inputId="herdwatch-route"
                width={40}
                allowCustomValue
                options={routeOptions}
                value={query.route ?? ''}
                onChange={(s) => change({ route: s.value ?? '' })}
              />
            </InlineField>
          )}
        </InlineFieldRow>
      )}
      {usesRoute && (
        <InlineFieldRow>
          {queryType === 'queries' && (
            <InlineField label="Text contains" labelWidth={LABEL_WIDTH} htmlFor="herdwatch-text-contains">
              <Input
                id="herdwatch-text-contains"
                width={40}
                value={query.textContains ?? ''}
                placeholder="part of the normalised query"
                onChange={(e: ChangeEvent<HTMLInputElement>) => change({ textContains: e.currentTarget.value }, false)}
                onBlur={onRunQuery}
              />
            </InlineField>
          )}
          <InlineField
            label="Limit"
            labelWidth={LABEL_WIDTH}
            htmlFor="herdwatch-limit"
            tooltip={`Top N rows, 1 to ${MAX_LIMIT}`}
          >
            <Input
              id="herdwatch-limit"
              type="number"
              min={1}
              max={MAX_LIMIT}
              width={12}
              value={limitText}
              onChange={(e: ChangeEvent<HTMLInputElement>) => setLimitText(e.currentTarget.value)}
              onBlur={() => {
                // Committed on blur: a half-typed number is not a query yet.
                const limit = clampLimit(limitText);
                setLimitText(String(limit));
                change({ limit });
              }}
            />
          </InlineField>
        </InlineFieldRow>
      )}
      {listErrors.map((e) => (
        <div key={e} role="status">
          {e}
        </div>
      ))}
    </>
  );
}

function clampLimit(text: string): number {
  const n = parseInt(text, 10);
  if (!Number.isFinite(n)) {
    return DEFAULT_LIMIT;
  }
  return Math.min(MAX_LIMIT, Math.max(1, n));
}
