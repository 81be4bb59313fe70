import React from 'react';
import { InlineField, InlineFieldRow, Input, Select } from '@grafana/ui';

import { HerdwatchVariableQuery, VariableResource } from '../types';

interface Props {
  query: HerdwatchVariableQuery;
  onChange: (query: HerdwatchVariableQuery, definition: string) => void;
}

const RESOURCES: Array<{ value: VariableResource; label: string }> = [
  { value: 'hosts', label: 'Hosts' },
  { value: 'pools', label: 'Pools' },
  { value: 'routes', label: 'Routes' },
  { value: 'queries', label: 'Queries' },
];

/** The definition Grafana shows in the variable list, e.g. `routes(pool=$pool)`. */
export function definitionOf(q: HerdwatchVariableQuery): string {
  return q.pool !== undefined && (q.resource === 'routes' || q.resource === 'queries')
    ? `${q.resource}(pool=${q.pool})`
    : q.resource;
}

export function VariableQueryEditor({ query, onChange }: Props) {
  const resource: VariableResource = query.resource ?? 'hosts';
  const byPool = resource === 'routes' || resource === 'queries';
  const emit = (next: HerdwatchVariableQuery) => onChange(next, definitionOf(next));

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
            emit(
              next === 'routes' || next === 'queries' ? { resource: next, pool: query.pool ?? '' } : { resource: next }
            );
          }}
        />
      </InlineField>
      {byPool && (
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
            onBlur={(e) => emit({ resource, pool: e.currentTarget.value })}
          />
        </InlineField>
      )}
    </InlineFieldRow>
  );
}
