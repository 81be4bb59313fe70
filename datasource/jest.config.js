// force timezone to UTC to allow tests to work regardless of local timezone
// generally used by snapshots, but can affect specific tests
process.env.TZ = 'UTC';

const base = require('./.config/jest.config');

module.exports = {
  // Jest configuration provided by Grafana scaffolding
  ...base,
  // Grafana's Select and user-event's per-key typing are slow on a shared 2-CPU CI machine;
  // this is a hang guard, not a speed assertion.
  testTimeout: 60000,
  transform: {
    ...base.transform,
    // d3-color 3.2 ships only an ES module (.mjs), which the scaffold's transform (.js/.ts)
    // leaves untouched; @grafana/data requires it, so every suite importing it would fail.
    '^.+\\.mjs$': ['@swc/jest', { jsc: { parser: { syntax: 'ecmascript' } }, module: { type: 'commonjs' } }],
  },
};
