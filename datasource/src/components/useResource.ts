import { useEffect, useState } from 'react';
import { SelectableValue } from '@grafana/data';

import type { DataSource } from '../datasource';
import { VariableResource } from '../types';

export interface ResourceOptions {
  options: Array<SelectableValue<string>>;
  /** Why the list could not be loaded; the field still takes typed values. */
  error?: string;
}

/**
 * Values the backend serves for a picker (`/hosts`, `/pools`, `/routes?pool=…`). A failure
 * leaves the picker usable with typed values and says why the list is empty.
 */
export function useResource(datasource: DataSource, resource: VariableResource, pool?: string): ResourceOptions {
  const [state, setState] = useState<ResourceOptions>({ options: [] });
  useEffect(() => {
    let live = true;
    datasource
      .listResource(resource, pool)
      .then((values) => {
        if (live) {
          setState({ options: values.map((v) => ({ label: v.text, value: v.value })) });
        }
      })
      .catch((e: unknown) => {
        if (live) {
          setState({ options: [], error: `Could not list ${resource}: ${errorText(e)}` });
        }
      });
    return () => {
      live = false;
    };
  }, [datasource, resource, pool]);
  return state;
}

function errorText(e: unknown): string {
  if (e instanceof Error) {
    return e.message;
  }
  if (typeof e === 'object' && e !== null) {
    const r = e as { data?: { message?: unknown }; statusText?: unknown };
    if (typeof r.data?.message === 'string') {
      return r.data.message;
    }
    if (typeof r.statusText === 'string') {
      return r.statusText;
    }
  }
  return String(e);
}
