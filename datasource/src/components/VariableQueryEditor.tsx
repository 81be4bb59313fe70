import React from 'react';
import { QueryEditorProps } from '@grafana/data';
import { InlineField, InlineFieldRow, Input, Select } from '@grafana/ui';

import type { DataSource } from '../datasource';
import { HerdwatchOptions, HerdwatchQuery, HerdwatchVariableQuery, VariableResource } from '../types';

type Props = QueryEditorProps<DataSource, HerdwatchQuery, HerdwatchOptions, HerdwatchVariableQuery>;

const RESOURCES: Array<{ value: VariableResource; label: string }> = [
  { value: 'hosts', label: 'Hosts' },
  { value: 'pools', label: 'Pools' },
  { value: 'routes', label: 'Routes' },
  { value: 'queries', label: 'Queries' },
];

const byPool = (resource: VariableResource) => resource === 'routes' || resource === 'queries';

export function VariableQueryEditor({ query, onChange }: Props) {
  const resource: VariableResource = query.resource ?? 'hosts';
  const refId = query.refId ?? 'HerdwatchVariableQuery';

  return (
    <InlineFieldRow>
      <InlineField label="Values" labelWidth={14} htmlFor="herdwatch-var-resource">
        <Select<VariableResource>
          inputId="herdwatch-var-resource"
          width={20}
          options={RESOURCES}
          value={resource}
          onChange={(s) => {
            const next = s.value ?? 'hosts';
            // Only routes and queries are listed per pool; the others carry no pool.
            onChange(byPool(next) ? { refId, resource: next, pool: query.pool ?? '' } : { refId, resource: next });
          }}
        />
      </InlineField>
      {byPool(resource) && (
        <InlineField
          label="Pool"
          labelWidth={14}
          htmlFor="herdwatch-var-pool"
          tooltip="Empty: every pool; may be $pool"
        >
          <Input
            id="herdwatch-var-pool"
            width={30}
            defaultValue={query.pool ?? ''}
            placeholder="all pools"
            onBlur={(e) => onChange({ refId, resource, pool: e.currentTarget.value })}
          />
        </InlineField>
      )}
    </InlineFieldRow>
  );
}
