import { CustomVariableSupport, DataQueryRequest, DataQueryResponse } from '@grafana/data';
import { from, map, Observable, of } from 'rxjs';

import { VariableQueryEditor } from './components/VariableQueryEditor';
import type { DataSource } from './datasource';
import { HerdwatchVariableQuery } from './types';

/**
 * Query variables (Grafana's current API; `setVariableQueryEditor` is deprecated): values
 * come from the backend's `/hosts`, `/pools`, `/routes?pool=…` and `/queries?pool=…`.
 */
export class HerdwatchVariableSupport extends CustomVariableSupport<DataSource, HerdwatchVariableQuery> {
  editor = VariableQueryEditor;

  constructor(private readonly datasource: DataSource) {
    super();
  }

  query(request: DataQueryRequest<HerdwatchVariableQuery>): Observable<DataQueryResponse> {
    const [query] = request.targets;
    if (query === undefined) {
      return of({ data: [] });
    }
    // Grafana takes an array of {text, value} as the variable's values.
    return from(this.datasource.metricFindQuery(query, { scopedVars: request.scopedVars })).pipe(
      map((values) => ({ data: values }))
    );
  }
}
