import { ScopedVars } from '@grafana/data';
import { TemplateSrv } from '@grafana/runtime';

/**
 * Macros the backend expands. Grafana's template service would expand them too (from the
 * time range and the panel's scoped `__interval`), so they are swapped for tokens no
 * variable can match before `replace` and swapped back after.
 */
export const BACKEND_MACROS = ['$__from', '$__to', '$__interval'] as const;

const token = (i: number) => `\u0000herdwatch-macro-${i}\u0000`;

function protect(text: string): string {
  // `$__interval_ms` comes back as written too: its `$__interval` prefix is swapped and restored.
  return BACKEND_MACROS.reduce((t, macro, i) => t.split(macro).join(token(i)), text);
}

function restore(text: string): string {
  return BACKEND_MACROS.reduce((t, macro, i) => t.split(token(i)).join(macro), text);
}

export function expandString(srv: TemplateSrv, text: string, scopedVars: ScopedVars): string {
  return restore(srv.replace(protect(text), scopedVars));
}

/**
 * Each entry may be a multi-value variable (`$host` = node-a, node-b): every value becomes its
 * own host. Empty results are dropped and duplicates removed, order kept.
 */
export function expandHosts(srv: TemplateSrv, hosts: string[], scopedVars: ScopedVars): string[] {
  const out: string[] = [];
  for (const entry of hosts) {
    const expanded = srv.replace(entry, scopedVars, (value: string | string[]) =>
      // A separator no host name can hold: names are DNS labels or node names.
      (Array.isArray(value) ? value : [value]).join('\n')
    );
    for (const host of expanded.split('\n')) {
      const h = host.trim();
      if (h !== '' && !out.includes(h)) {
        out.push(h);
      }
    }
  }
  return out;
}
