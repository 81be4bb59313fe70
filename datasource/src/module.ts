import { DataSourcePlugin } from '@grafana/data';

import { DataSource } from './datasource';
import { ConfigEditor } from './components/ConfigEditor';
import { QueryEditor } from './components/QueryEditor';
import { HerdwatchOptions, HerdwatchQuery } from './types';

export const plugin = new DataSourcePlugin<DataSource, HerdwatchQuery, HerdwatchOptions>(DataSource)
  .setConfigEditor(ConfigEditor)
  .setQueryEditor(QueryEditor);
