//! Observable instruments: everything but the latency histograms is read from the latest
//! snapshot when the SDK collects, under the names `/metrics` uses (`names.rs`).
use std::sync::Arc;

use opentelemetry::{KeyValue, metrics::Meter};
use tokio::sync::watch;

use crate::{
    export::{
        names::{self, MetricDef},
        resource::PoolNaming,
    },
    model::Snapshot,
};

type Observation = (f64, Vec<KeyValue>);

/// Registers one observable instrument whose values come from the latest snapshot.
fn observable(
    meter: &Meter,
    def: &'static MetricDef,
    latest: &watch::Receiver<Arc<Snapshot>>,
    read: impl Fn(&Snapshot) -> Vec<Observation> + Send + Sync + 'static,
) {
    let latest = latest.clone();
    let callback = move |observer: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
        let snap = latest.borrow().clone();
        for (value, attrs) in merge_observations(read(&snap)) {
            observer.observe(value, &attrs);
        }
    };
    match def.kind {
        names::Kind::Counter => {
            meter
                .f64_observable_counter(def.name)
                .with_unit(def.unit)
                .with_description(def.help)
                .with_callback(callback)
                .build();
        }
        _ => {
            meter
                .f64_observable_gauge(def.name)
                .with_unit(def.unit)
                .with_description(def.help)
                .with_callback(callback)
                .build();
        }
    }
}

/// Sums observations with the same attribute set. The SDK keeps only the last of several
/// observations of one set in a callback (observable instruments are precomputed values), so
/// two fingerprints sharing a `db.query.summary` would lose all but one count; `/metrics`
/// sums them the same way, so both paths agree. Order of first appearance is kept.
fn merge_observations(observations: Vec<Observation>) -> Vec<Observation> {
    let mut merged: Vec<Observation> = Vec::with_capacity(observations.len());
    let mut index: std::collections::HashMap<Vec<(String, String)>, usize> =
        std::collections::HashMap::with_capacity(observations.len());
    for (value, attrs) in observations {
        let mut key: Vec<(String, String)> = attrs
            .iter()
            .map(|kv| (kv.key.as_str().to_string(), kv.value.as_str().into_owned()))
            .collect();
        key.sort();
        match index.get(&key) {
            Some(i) => merged[*i].0 += value,
            None => {
                index.insert(key, merged.len());
                merged.push((value, attrs));
            }
        }
    }
    merged
}

fn kv(k: &'static str, v: &str) -> KeyValue {
    KeyValue::new(k, v.to_string())
}

/// Route CPU and DB-wait counters for the routes `keep` selects (a pool's, or those outside
/// any pool).
fn observe_route_times(
    meter: &Meter,
    latest: &watch::Receiver<Arc<Snapshot>>,
    keep: impl Fn(&crate::model::RouteStats) -> bool + Clone + Send + Sync + 'static,
) {
    for (def, ns) in names::ROUTE_TIMES {
        let keep = keep.clone();
        observable(meter, def, latest, move |s| {
            s.routes
                .iter()
                .filter(|r| keep(r))
                .map(|r| {
                    let attrs = vec![
                        kv("http.request.method", &r.method),
                        kv("http.route", &r.route),
                    ];
                    (ns(r) as f64 / 1e9, attrs)
                })
                .collect()
        });
    }
}

/// A pool's own instruments, on its service's meter: its workers, its requests in flight,
/// its CPU and run-queue delay, its routes' CPU and DB wait.
pub(super) fn observe_pool(meter: &Meter, latest: &watch::Receiver<Arc<Snapshot>>, pool: &str) {
    let owned = pool.to_string();
    observe_route_times(meter, latest, move |r| r.pool == owned);
    type PoolValue = fn(&crate::model::PoolView) -> Option<f64>;
    let gauges: [(&'static MetricDef, PoolValue); 4] = [
        (&names::WORKERS_BUSY, |p| Some(p.busy_workers as f64)),
        (&names::WORKERS_IDLE, |p| {
            Some(p.worker_states.len().saturating_sub(p.busy_workers) as f64)
        }),
        (&names::HTTP_SERVER_ACTIVE, |p| {
            Some(p.active_requests as f64)
        }),
        (&names::ACCEPT_QUEUE, |p| p.accept_queue().map(f64::from)),
    ];
    for (def, value) in gauges {
        let pool = pool.to_string();
        observable(meter, def, latest, move |s| {
            // Pools with one name are one service: their values add up, as on `/metrics`.
            let values: Vec<f64> = s
                .pools
                .iter()
                .filter(|p| p.name == pool)
                .filter_map(value)
                .collect();
            if values.is_empty() {
                Vec::new()
            } else {
                vec![(values.iter().sum(), Vec::new())]
            }
        });
    }
    for (def, samples) in names::POOL_TIMES {
        let pool = pool.to_string();
        observable(meter, def, latest, move |s| {
            s.pools
                .iter()
                .filter(|p| p.name == pool)
                .flat_map(samples)
                .map(|(mode, ns)| {
                    let attrs = mode.map(|m| kv("cpu.mode", m)).into_iter().collect();
                    (ns as f64 / 1e9, attrs)
                })
                .collect()
        });
    }
}

/// The agent's own instruments: host, findings, drops, query errors, and the routes of
/// processes outside any pool.
pub(super) fn observe_agent(
    meter: &Meter,
    latest: watch::Receiver<Arc<Snapshot>>,
    naming: Arc<PoolNaming>,
) {
    observe_route_times(meter, &latest, |r| r.pool.is_empty());
    observable(meter, &names::DB_CLIENT_ERRORS, &latest, |s| {
        s.queries
            .iter()
            .flat_map(|q| {
                q.errors_by_sqlstate.iter().map(|(state, n)| {
                    (
                        *n as f64,
                        vec![
                            kv("db.system.name", "postgresql"),
                            kv("db.query.summary", &q.summary),
                            kv("db.response.status_code", state),
                        ],
                    )
                })
            })
            .collect()
    });
    observable(meter, &names::HOST_CPU, &latest, |s| {
        s.host
            .cpu_utilization
            .map(|u| vec![(u, Vec::new())])
            .unwrap_or_default()
    });
    let names = naming.clone();
    observable(meter, &names::FINDING_ACTIVE, &latest, move |s| {
        s.findings
            .iter()
            .map(|f| (if f.active { 1.0 } else { 0.0 }, finding_attrs(f, &names)))
            .collect()
    });
    observable(meter, &names::FINDING_OCCURRENCES, &latest, move |s| {
        s.findings
            .iter()
            .map(|f| (f.occurrences as f64, finding_attrs(f, &naming)))
            .collect()
    });
    observable(meter, &names::FINDING_INFO, &latest, |s| {
        s.findings
            .iter()
            .map(|f| {
                (
                    1.0,
                    vec![
                        kv("finding.id", &f.id),
                        kv("root_cause", &f.root_cause),
                        kv("prevention", &f.prevention),
                        kv("remediation", &f.remediation),
                    ],
                )
            })
            .collect()
    });
    observable(meter, &names::AGENT_DROPS, &latest, |s| {
        s.agent
            .drops()
            .into_iter()
            .map(|(reason, n)| (n as f64, vec![kv("reason", reason)]))
            .collect()
    });
    observable(meter, &names::AGENT_MEMORY, &latest, |s| {
        vec![(s.agent.resident_bytes as f64, Vec::new())]
    });
    observable(meter, &names::AGENT_TABLE_ENTRIES, &latest, |s| {
        s.agent
            .tables
            .entries()
            .into_iter()
            .map(|(table, n)| (n as f64, vec![kv("table", table)]))
            .collect()
    });
}

/// The same labels `/metrics` puts on finding series (`prometheus::finding_labels`), the pool
/// named by its service as there.
fn finding_attrs(f: &crate::model::Finding, naming: &PoolNaming) -> Vec<KeyValue> {
    let service = f
        .subject
        .pool
        .as_deref()
        .map(|p| naming.service_name_by_name(p));
    crate::export::prometheus::finding_labels(f, service.as_deref())
        .into_iter()
        .map(|(k, v)| kv(k, v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_with_one_attribute_set_are_summed_in_any_attribute_order() {
        let a = vec![
            kv("db.query.summary", "SELECT invoices"),
            kv("db.response.status_code", "57014"),
        ];
        let b = vec![
            kv("db.response.status_code", "57014"),
            kv("db.query.summary", "SELECT invoices"),
        ];
        let c = vec![
            kv("db.query.summary", "SELECT orders"),
            kv("db.response.status_code", "57014"),
        ];
        let merged = merge_observations(vec![(2.0, a.clone()), (5.0, c.clone()), (1.0, b)]);
        assert_eq!(merged, vec![(3.0, a), (5.0, c)]);
    }
}
