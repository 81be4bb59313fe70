import fs from 'fs';
import path from 'path';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const ROOT = path.resolve(__dirname, '..');
const readJson = (p: string) => JSON.parse(fs.readFileSync(path.join(ROOT, p), 'utf8'));

/** Grafana's plugin.json schema, vendored (see .config/plugin.schema.json.md). */
function validator() {
  // Grafana's patterns escape '-' (\-), which JavaScript rejects in unicode mode.
  const ajv = new Ajv({ allErrors: true, strict: false, unicodeRegExp: false });
  addFormats(ajv);
  return ajv.compile(readJson('.config/plugin.schema.json'));
}

test('src/plugin.json is valid against Grafana plugin schema', () => {
  const validate = validator();
  const ok = validate(readJson('src/plugin.json'));
  expect(validate.errors ?? []).toEqual([]);
  expect(ok).toBe(true);
});

test('the schema rejects what Grafana would (so the check above can fail)', () => {
  const validate = validator();
  const plugin = readJson('src/plugin.json');
  expect(validate({ ...plugin, id: 'Herdwatch Fleet' })).toBe(false);
  expect(validate({ ...plugin, backendd: true })).toBe(false);
});

test('plugin.json declares what the backend and the issue need', () => {
  const plugin = readJson('src/plugin.json');
  expect(plugin).toMatchObject({
    id: 'herdwatch-fleet-datasource',
    type: 'datasource',
    backend: true,
    executable: 'gpx_herdwatch',
    alerting: true,
    streaming: true,
    metrics: true,
  });
  // The logo it names exists (Grafana shows a broken image otherwise).
  expect(fs.existsSync(path.join(ROOT, 'src', plugin.info.logos.small))).toBe(true);
});

test('package.json pins every @grafana package to one exact version with React 18', () => {
  const pkg = readJson('package.json');
  const grafana = Object.entries<string>(pkg.dependencies).filter(([name]) => name.startsWith('@grafana/'));
  expect(grafana.length).toBeGreaterThanOrEqual(3);
  const versions = new Set(grafana.map(([, v]) => v));
  expect(versions.size).toBe(1);
  expect([...versions][0]).toMatch(/^\d+\.\d+\.\d+$/);
  expect(readJson('node_modules/react/package.json').version).toMatch(/^18\./);
});
