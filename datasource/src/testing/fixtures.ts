import fs from 'fs';
import path from 'path';

import { HerdwatchQuery, QueryType } from '../types';

/** The committed query-model fixtures the Rust backend deserializes too (read, never copied). */
export const FIXTURE_DIR = path.resolve(__dirname, '../../fixtures/queries');

export function loadFixture(queryType: QueryType): HerdwatchQuery {
  return JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, `${queryType}.json`), 'utf8'));
}

export function fixtureTypes(): string[] {
  return fs
    .readdirSync(FIXTURE_DIR)
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.replace(/\.json$/, ''))
    .sort();
}
